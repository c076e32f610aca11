package agent

import (
	"errors"
	"time"
)

// The agent runs on Linux nodes; on Windows the plugin only needs to build.

type nodeLock struct{}

type lockHolder struct {
	Run   string
	Node  string
	PID   int
	Since time.Time
}

var errLocked = errors.New("another rotation holds this node")

func lockNode(string, lockHolder) (*nodeLock, error) {
	return nil, errors.New("the agent runs on Linux nodes only")
}

func lockedBy(string) string { return "" }

func (l *nodeLock) unlock() {}

func hold(string) (func(), error) { return func() {}, nil }

func held(string) bool { return false }

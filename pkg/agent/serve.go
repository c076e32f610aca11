package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// Serve is the pod's main process: it only waits to be stopped, while the
// plugin execs actions in the container.
func Serve(ctx context.Context) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	return nil
}

var validID = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// Exec reads one request from in, performs it, files the result under the
// request's ID in resultsDir (before answering, so the plugin can fetch it
// if the exec stream broke) and writes it to out.
func (a *Agent) Exec(ctx context.Context, in io.Reader, out io.Writer, resultsDir string) error {
	var req api.Request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	if !validID.MatchString(req.ID) {
		return fmt.Errorf("invalid request id %q", req.ID)
	}
	// A kubelet restart kills nothing in this pod but cuts the exec stream:
	// writes to a closed stdout must not end the process before it filed
	// its result.
	signal.Ignore(syscall.SIGPIPE)
	started := filepath.Join(resultsDir, req.ID+".started")
	if err := os.WriteFile(started, nil, 0o600); err != nil {
		return err
	}
	res := a.Handle(ctx, req)
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if err := pki.WriteAtomic(resultsDir, pki.File{Path: req.ID + ".json", Data: data, Mode: 0o600}); err != nil {
		return err
	}
	_, err = out.Write(append(data, '\n'))
	return err
}

// FetchResult waits up to wait for the result of request id and writes it
// to out. A request that never started is reported as such.
func FetchResult(ctx context.Context, id, resultsDir string, wait time.Duration, out io.Writer) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("invalid request id %q", id)
	}
	deadline := time.Now().Add(wait)
	for {
		data, err := os.ReadFile(filepath.Join(resultsDir, id+".json"))
		if err == nil {
			_, err = out.Write(append(data, '\n'))
			return err
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if _, err := os.Stat(filepath.Join(resultsDir, id+".started")); errors.Is(err, fs.ErrNotExist) && time.Now().After(deadline.Add(-wait/2)) {
			return fmt.Errorf("request %s never reached the agent", id)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("request %s is still running after %s", id, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

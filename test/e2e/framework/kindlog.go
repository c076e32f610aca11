package framework

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	kindlog "sigs.k8s.io/kind/pkg/log"
)

// kindLogger writes kind's user-facing messages (verbosity 0) to an io.Writer, one line each.
type kindLogger struct {
	mu *sync.Mutex
	w  io.Writer
}

func newKindLogger(w io.Writer) kindLogger { return kindLogger{mu: &sync.Mutex{}, w: w} }

func (l kindLogger) line(prefix, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "%s kind: %s%s\n", time.Now().Format("15:04:05"), prefix, strings.TrimRight(msg, "\n"))
}

func (l kindLogger) Warn(message string) { l.line("WARNING: ", message) }
func (l kindLogger) Warnf(format string, args ...any) {
	l.line("WARNING: ", fmt.Sprintf(format, args...))
}
func (l kindLogger) Error(message string) { l.line("ERROR: ", message) }
func (l kindLogger) Errorf(format string, args ...any) {
	l.line("ERROR: ", fmt.Sprintf(format, args...))
}
func (l kindLogger) V(level kindlog.Level) kindlog.InfoLogger {
	return kindInfoLogger{l: l, enabled: level <= 0}
}

type kindInfoLogger struct {
	l       kindLogger
	enabled bool
}

func (i kindInfoLogger) Info(message string) {
	if i.enabled {
		i.l.line("", message)
	}
}

func (i kindInfoLogger) Infof(format string, args ...any) {
	if i.enabled {
		i.l.line("", fmt.Sprintf(format, args...))
	}
}

func (i kindInfoLogger) Enabled() bool { return i.enabled }

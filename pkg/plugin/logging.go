package plugin

import (
	goflag "flag"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

// addKlogFlags registers klog's -v (--v) and --vmodule on fs, as kubectl
// does: -v 2 shows each agent call, its timing and the retries that
// succeeded; -v 6 and above client-go's own log of the API requests.
func addKlogFlags(fs *pflag.FlagSet) {
	gofs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(gofs)
	for _, name := range []string{"v", "vmodule"} {
		f := pflag.PFlagFromGoFlag(gofs.Lookup(name))
		if name == "v" {
			f.Shorthand = "v"
		}
		fs.AddFlag(f)
	}
}

// progressLogger is the logger of a command's progress on out (stderr).
//
// At the default verbosity its lines are plain sentences, one per step and
// node ("node cp-1: renewing etcd, kube-apiserver"), as people read them;
// klog's header (severity, time, PID, source line) would only bury them.
// Once -v is 1 or more, every line, the default ones included, goes through
// klog with its header, so that ours and client-go's (the API requests at
// -v 6) share one format with timestamps and can be read side by side.
func progressLogger(out io.Writer) logr.Logger {
	return logr.New(&progressSink{out: out, mu: &sync.Mutex{}})
}

type progressSink struct {
	out    io.Writer
	mu     *sync.Mutex
	depth  int
	name   string
	values []any
}

var _ logr.CallDepthLogSink = &progressSink{}

func (s *progressSink) Init(info logr.RuntimeInfo) { s.depth += info.CallDepth }

func (s *progressSink) Enabled(level int) bool {
	return level <= 0 || klog.VDepth(s.depth+1, klog.Level(level)).Enabled()
}

func (s *progressSink) Info(level int, msg string, kv ...any) {
	s.print(level, msg, kv)
}

func (s *progressSink) Error(err error, msg string, kv ...any) {
	if err != nil {
		msg += ": " + err.Error()
	}
	s.print(0, msg, kv)
}

func (s *progressSink) print(level int, msg string, kv []any) {
	line := s.line(msg, kv)
	if klog.VDepth(s.depth+2, 1).Enabled() {
		klog.InfoDepth(s.depth+2, line)
		return
	}
	if level > 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintln(s.out, line)
}

// line is the message, prefixed with the logger's name, followed by its
// key/value pairs as key=value.
func (s *progressSink) line(msg string, kv []any) string {
	var b strings.Builder
	if s.name != "" {
		b.WriteString(s.name + ": ")
	}
	b.WriteString(msg)
	all := append(append([]any{}, s.values...), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		fmt.Fprintf(&b, " %v=%v", all[i], all[i+1])
	}
	return b.String()
}

func (s *progressSink) WithValues(kv ...any) logr.LogSink {
	c := *s
	c.values = append(append([]any{}, s.values...), kv...)
	return &c
}

func (s *progressSink) WithName(name string) logr.LogSink {
	c := *s
	if c.name != "" {
		name = c.name + "/" + name
	}
	c.name = name
	return &c
}

func (s *progressSink) WithCallDepth(depth int) logr.LogSink {
	c := *s
	c.depth += depth
	return &c
}

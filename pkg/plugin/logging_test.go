package plugin

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"
)

// setVerbosity parses -v through the root command's flags, as a user gives
// it, and captures klog's output; both are undone when the test ends.
func setVerbosity(t *testing.T, v string) *bytes.Buffer {
	t.Helper()
	cmd := NewCmdRotateCerts(genericiooptions.NewTestIOStreamsDiscard())
	if err := cmd.ParseFlags([]string{"-v", v}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&out)
	t.Cleanup(func() {
		_ = cmd.ParseFlags([]string{"-v", "0"})
		klog.LogToStderr(true)
	})
	return &out
}

// At the default verbosity progress is plain lines, nothing above V(0);
// with -v every line goes through klog with its header, ours and
// client-go's alike.
func TestProgressLogger(t *testing.T) {
	var out bytes.Buffer
	kout := setVerbosity(t, "0")
	log := progressLogger(&out)
	log.Info("node cp-1: renewing etcd")
	log.V(1).Info("node cp-1: verified: etcd serves serial 2")
	log.V(2).Info("node cp-1: agent call renew: done in 2s")
	if got := out.String(); got != "node cp-1: renewing etcd\n" || kout.Len() > 0 {
		t.Errorf("default verbosity printed %q and through klog %q", got, kout.String())
	}

	kout = setVerbosity(t, "2")
	out.Reset()
	log.Info("node cp-1: renewing etcd")
	log.V(2).Info("node cp-1: agent call renew: done in 2s")
	log.V(3).Info("not at -v 2")
	klog.Flush()
	header := regexp.MustCompile(`(?m)^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ logging_test.go:\d+\] node cp-1: (renewing etcd|agent call renew: done in 2s)$`)
	if n := len(header.FindAllString(kout.String(), -1)); n != 2 || out.Len() > 0 || strings.Contains(kout.String(), "not at") {
		t.Errorf("-v 2: %d lines with klog's header naming their caller, plain %q:\n%s", n, out.String(), kout.String())
	}
}

// -v is klog's verbosity, registered on every command as kubectl does.
func TestVerbosityFlag(t *testing.T) {
	cmd := NewCmdRotateCerts(genericiooptions.NewTestIOStreamsDiscard())
	for _, sub := range append(cmd.Commands(), cmd) {
		if f := sub.Flags().ShorthandLookup("v"); f == nil && sub.InheritedFlags().ShorthandLookup("v") == nil && sub.PersistentFlags().ShorthandLookup("v") == nil {
			t.Errorf("%s has no -v", sub.Name())
		}
	}
	setVerbosity(t, "6")
	if !klog.V(6).Enabled() || klog.V(7).Enabled() {
		t.Error("-v 6 does not set klog's verbosity")
	}
}

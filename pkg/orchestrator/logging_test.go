package orchestrator

import (
	"context"
	"strings"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// A stream that breaks under an action (kube-apiserver restarted) and the
// result fetched afterwards is a retry that succeeded: nothing about it at
// the default verbosity; at -v 2 it is there, with every agent call and its
// timing. What each step did is at -v 1.
func TestProgressVerbosity(t *testing.T) {
	for _, tc := range []struct {
		v           int
		want, never []string
	}{
		{0, []string{"node cp-1: renewing etcd", "node w-1: installing the kubelet's certificates"},
			[]string{"stream ended", "agent call", "restarted", "requesting new kubelet certificates"}},
		{2, []string{"node cp-1: renew: the stream ended without an answer (exec in kube-system/", "fetching the result the agent filed",
			"node cp-1: agent call renew (", "): done in ", "node w-1: requesting new kubelet certificates",
			"node cp-1: restarted kube-controller-manager (pid 10 -> 11) in 1.5s", "node cp-1: verified: kube-apiserver serves"}, nil},
	} {
		c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
		f := newFakeAgents(t, c)
		f.breakStream = map[api.Action]bool{api.Renew: true}
		r := newTestRunner(c, f)
		var log syncBuffer
		r.Log = log.logger(tc.v)
		if _, err := r.Rotate(context.Background(), allOptions()); err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(log.String(), w) {
				t.Errorf("-v %d: the log lacks %q:\n%s", tc.v, w, log.String())
			}
		}
		for _, n := range tc.never {
			if strings.Contains(log.String(), n) {
				t.Errorf("-v %d: the log says %q:\n%s", tc.v, n, log.String())
			}
		}
	}
}

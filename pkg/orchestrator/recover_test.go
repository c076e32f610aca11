package orchestrator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/transport"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// fakeHost is a node reached through a transport: it answers the install
// protocol (mktemp, cat, sha256sum, rm) like a shell would and hands agent
// requests to a scripted agent.
type fakeHost struct {
	name     string
	agent    func(req api.Request) api.Result
	mu       sync.Mutex
	files    map[string][]byte
	removed  []string
	commands []string
}

func (h *fakeHost) Name() string { return h.name }
func (h *fakeHost) Close() error { return nil }

func (h *fakeHost) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.commands = append(h.commands, strings.Join(argv, " "))
	switch {
	case argv[0] == "uname":
		return []byte("x86_64\n"), nil
	case argv[0] == "mktemp":
		return []byte(transport.InstallDir + "/rotate-certs.0123456789\n"), nil
	case argv[0] == "chmod":
		return nil, nil
	case argv[0] == "sh": // cat > "$1"
		data, _ := io.ReadAll(stdin)
		h.files[argv[len(argv)-1]] = data
		return nil, nil
	case argv[0] == "sha256sum":
		sum := sha256.Sum256(h.files[argv[1]])
		return []byte(hex.EncodeToString(sum[:]) + "  " + argv[1] + "\n"), nil
	case argv[0] == "rm":
		h.removed = append(h.removed, argv[len(argv)-1])
		return nil, nil
	case strings.HasSuffix(argv[0], "/kubectl-rotate_certs") && len(argv) == 2 && argv[1] == "version":
		return []byte(version.Version + "\n"), nil
	case strings.HasSuffix(argv[0], "/kubectl-rotate_certs") && argv[len(argv)-1] == "exec":
		var req api.Request
		if err := json.NewDecoder(stdin).Decode(&req); err != nil {
			return nil, err
		}
		res := h.agent(req)
		res.AgentVersion, res.Node = version.Version, req.Node
		if res.Outcome == "" {
			res.Outcome = api.Done
		}
		return json.Marshal(res)
	}
	return nil, fmt.Errorf("unexpected command %v", argv)
}

// recoverCluster is a dead cluster of fake hosts with scripted agents,
// recording the order of their actions.
type recoverCluster struct {
	mu     sync.Mutex
	calls  []string
	hosts  []*fakeHost
	tamper bool // the worker's agent asks for cluster-admin
}

func newRecoverCluster(cps, workers []string) *recoverCluster {
	rc := &recoverCluster{}
	for _, n := range append(append([]string{}, cps...), workers...) {
		cp := strings.HasPrefix(n, "cp")
		h := &fakeHost{name: n, files: map[string][]byte{}}
		h.agent = func(req api.Request) api.Result {
			rc.mu.Lock()
			rc.calls = append(rc.calls, h.name+" "+string(req.Action))
			rc.mu.Unlock()
			var res api.Result
			switch req.Action {
			case api.Inspect:
				res.Inspect = &api.InspectResult{ControlPlane: cp, NodeName: h.name, Plan: []api.PlannedChange{{Name: "kubelet-client", Service: "kubelet"}}}
			case api.RecoverRenew:
				res.Renew = &api.RenewResult{Backup: "b", Changes: []api.Change{{Name: "apiserver", OldSerial: "1", NewSerial: "2"}}}
			case api.RecoverRestart:
				res.Renew, res.Kubelet = &api.RenewResult{}, &api.KubeletProcess{PID: 2, StartedAt: time.Now()}
			case api.KubeletCSR:
				res.CSRs = []api.CSR{nodeCSR(h.name)}
				if rc.tamper {
					res.CSRs = []api.CSR{nodeCSR("cp-1")}
				}
			case api.SignKubeletClient:
				res.Certificate = "signed-for-" + req.SignFor
			case api.KubeletInstall:
				res.Renew, res.Kubelet = &api.RenewResult{Changes: []api.Change{{Name: "kubelet-client", NewSerial: req.Issued["kubelet-client"]}}}, &api.KubeletProcess{PID: 3}
			case api.ReadAdminKubeconfig:
				res.Kubeconfig = "admin.conf of " + h.name
			}
			return res
		}
		rc.hosts = append(rc.hosts, h)
	}
	return rc
}

func (rc *recoverCluster) nodes() []transport.Node {
	var out []transport.Node
	for _, h := range rc.hosts {
		out = append(out, h)
	}
	return out
}

func (rc *recoverCluster) options(t *testing.T, connect func([]byte) (kubernetes.Interface, error)) RecoverOptions {
	return RecoverOptions{Nodes: rc.nodes(), Validity: 8760 * time.Hour, Parallelism: Parallelism{Count: 2}, Connect: connect,
		Agent: func(machine string) ([]byte, error) {
			if machine != "x86_64" {
				t.Errorf("machine %q", machine)
			}
			return []byte("agent binary"), nil
		}}
}

func index(calls []string, call string) int {
	for i, c := range calls {
		if c == call {
			return i
		}
	}
	return -1
}

// Recover renews every control plane before it restarts any (etcd needs
// quorum), then has a control plane sign each worker's request, reads the
// renewed admin.conf, checks the recovered API, and removes the agent from
// every node.
func TestRecoverOrder(t *testing.T) {
	rc := newRecoverCluster([]string{"cp-1", "cp-2"}, []string{"w-1"})
	c := fakeCluster(t, []string{"cp-1", "cp-2"}, []string{"w-1"})
	var admin []byte
	r := newTestRunner(c, nil)
	rep, err := r.Recover(context.Background(), rc.options(t, func(b []byte) (kubernetes.Interface, error) { admin = b; return c, nil }))
	if err != nil {
		t.Fatal(err)
	}
	calls := rc.calls
	if index(calls, "cp-2 recover-renew") > index(calls, "cp-1 recover-restart") {
		t.Errorf("a control plane restarted before every one was renewed: %v", calls)
	}
	if index(calls, "cp-2 recover-restart") > index(calls, "w-1 kubelet-csr") || index(calls, "cp-1 sign-kubelet-client") < index(calls, "w-1 kubelet-csr") {
		t.Errorf("order %v", calls)
	}
	if string(admin) != "admin.conf of cp-1" || string(rep.AdminKubeconfig) != "admin.conf of cp-1" {
		t.Errorf("admin.conf %q", admin)
	}
	for _, h := range rc.hosts {
		if len(h.removed) != 1 || h.removed[0] != transport.InstallDir+"/rotate-certs.0123456789" {
			t.Errorf("node %s: the agent's directory was not removed: %v", h.name, h.removed)
		}
	}
	if !strings.Contains(fmt.Sprint(rep.Rows), "signed-for-w-1") {
		t.Errorf("w-1 did not install what cp-1 signed: %v", rep.Rows)
	}
	// Once the API is back, every node recovered gets its audit event.
	events := nodeEvents(t, c)
	for _, n := range []string{"cp-1", "cp-2", "w-1"} {
		if e := events[n]; e.Reason != ReasonRotated || !strings.HasPrefix(e.Message, "kubectl rotate-certs recover run "+rep.Run+" by kubernetes-admin renewed") {
			t.Errorf("node %s: event %s %q", n, e.Reason, e.Message)
		}
	}
	if rep.User != "kubernetes-admin" || len(rep.Nodes) != 3 || !rep.Nodes[0].ControlPlane || rep.Nodes[2].ControlPlane {
		t.Errorf("report user %q nodes %+v", rep.User, rep.Nodes)
	}
}

// A worker whose agent asks for another node's identity gets nothing
// signed, and nothing is installed there.
func TestRecoverRefusesATamperedWorker(t *testing.T) {
	rc := newRecoverCluster([]string{"cp-1"}, []string{"w-1"})
	rc.tamper = true
	_, err := newTestRunner(nil, nil).Recover(context.Background(), rc.options(t, nil))
	if !errors.Is(err, ErrCSRRefused) || !strings.Contains(err.Error(), "node w-1") {
		t.Fatalf("got %v", err)
	}
	if index(rc.calls, "cp-1 sign-kubelet-client") >= 0 || index(rc.calls, "w-1 kubelet-install") >= 0 || index(rc.calls, "w-1 discard-pending") < 0 {
		t.Errorf("calls %v", rc.calls)
	}
}

// Nothing is written anywhere while any node has a problem, and a binary
// that arrives different never runs.
func TestRecoverChangesNothingOnAProblem(t *testing.T) {
	rc := newRecoverCluster([]string{"cp-1"}, []string{"w-1"})
	inner := rc.hosts[1].agent
	rc.hosts[1].agent = func(req api.Request) api.Result {
		res := inner(req)
		if req.Action == api.Inspect {
			res.Inspect.Problems = []string{"not a kubeadm-layout node"}
		}
		return res
	}
	_, err := newTestRunner(nil, nil).Recover(context.Background(), rc.options(t, nil))
	if err == nil || !strings.Contains(err.Error(), "node w-1: not a kubeadm-layout node") || !strings.Contains(err.Error(), "no file on any node was changed") {
		t.Fatalf("got %v", err)
	}
	for _, c := range rc.calls {
		if !strings.HasSuffix(c, " inspect") {
			t.Errorf("%s after a problem", c)
		}
	}
	o := rc.options(t, nil)
	o.Nodes = []transport.Node{corruptingHost{rc.hosts[0]}}
	if _, err := newTestRunner(nil, nil).Recover(context.Background(), o); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("a corrupted copy: %v", err)
	}
}

type corruptingHost struct{ *fakeHost }

func (c corruptingHost) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	if stdin != nil && argv[0] == "sh" {
		data, _ := io.ReadAll(stdin)
		stdin = bytes.NewReader(append(data, '!'))
	}
	return c.fakeHost.Run(ctx, argv, stdin)
}

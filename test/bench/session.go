//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

var staticPods = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// session is one cluster's run.
type session struct {
	t        *testing.T
	c        *framework.Cluster
	client   kubernetes.Interface
	config   *rest.Config
	cps      []string
	workers  []string
	t0       time.Time
	rec      *report.Run
	load     *loadClient
	samplers []*sampler
	// serialNode maps every apiserver.crt serial seen on a control plane
	// to that node, to name the server of each request.
	serialNode map[string]string
}

func newSession(ctx context.Context, t *testing.T, c *framework.Cluster, spec clusterSpec) (*session, error) {
	client, cfg, err := c.Client()
	if err != nil {
		return nil, err
	}
	cps, ws, err := c.Nodes()
	if err != nil {
		return nil, err
	}
	s := &session{t: t, c: c, client: client, config: cfg, cps: cps, workers: ws, t0: time.Now(), serialNode: map[string]string{}}
	run := &report.Run{Schema: report.Schema, T0: s.t0, Env: hostEnv(ctx)}
	run.Cluster = report.ClusterInfo{
		Key: spec.key, Name: c.Name(), ControlPlanes: spec.controlPlanes, Workers: spec.workers,
		NodeImage: framework.NodeImageFromEnv(), AgentImage: agentImage, PluginVersion: pluginVersion,
		Server: cfg.Host,
	}
	for _, n := range cps {
		run.Cluster.Nodes = append(run.Cluster.Nodes, report.NodeInfo{Name: n, ControlPlane: true})
	}
	for _, n := range ws {
		run.Cluster.Nodes = append(run.Cluster.Nodes, report.NodeInfo{Name: n})
	}
	if v, err := client.Discovery().ServerVersion(); err == nil {
		run.Cluster.KubeVersion = v.GitVersion
	}
	if st, err := s.etcdStatus(ctx, cps[0]); err == nil {
		run.Cluster.EtcdVersion = st.Version
	}
	if len(cps) > 1 {
		lb := c.Name() + "-external-load-balancer"
		out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.Config.Image}}", lb).Output()
		if err == nil {
			run.Cluster.LoadBalancer = strings.TrimSpace(string(out))
			label, _ := exec.CommandContext(ctx, "docker", "image", "inspect", "-f", `{{index .Config.Labels "org.rotate-certs.stand-in"}}`, run.Cluster.LoadBalancer).Output()
			if l := strings.TrimSpace(string(label)); l != "" && l != "<no value>" {
				run.Cluster.LoadBalancer += " (" + l + ")"
			}
		}
	}
	s.rec = run
	return s, nil
}

func (s *session) rel(t time.Time) float64 { return t.Sub(s.t0).Seconds() }
func (s *session) now() float64            { return s.rel(time.Now()) }

func (s *session) nodes() []string { return append(append([]string{}, s.cps...), s.workers...) }

// run starts the samplers and the load, runs each method after a settle and
// a baseline, and collects everything.
func (s *session) run(ctx context.Context) *report.Run {
	for _, n := range s.cps {
		s.samplers = append(s.samplers, startSampler(s.c, n, true))
	}
	for _, n := range s.workers {
		s.samplers = append(s.samplers, startSampler(s.c, n, false))
	}
	la := startLoadAvg(s.t0)
	load, err := newLoadClient(ctx, s.config, s.t0)
	if err != nil {
		s.t.Fatalf("load client: %v", err)
	}
	s.load = load
	s.rec.Load = report.LoadInfo{
		RatePerSecond: loadRate, TimeoutSeconds: loadTimeout.Seconds(),
		Description: fmt.Sprintf("one client-go clientset (HTTP/2) through the kubeconfig's server, alternately a GET of ConfigMap %s/%s and a merge PATCH of one of its keys", loadNamespace, loadConfigMap),
	}
	load.start()

	methods := []struct {
		key, title, command string
		run                 func(context.Context, *report.Method) error
	}{
		{report.Manual, "manual", "kubeadm certs renew all + static pods restarted by moving their manifests, one control plane at a time", s.manual},
		{report.Plugin, "--all", "kubectl rotate-certs --all", func(ctx context.Context, m *report.Method) error { return s.plugin(ctx, m, "--all") }},
		{report.PluginRestartAll, "--all --restart=all", "kubectl rotate-certs --all --restart=all", func(ctx context.Context, m *report.Method) error {
			return s.plugin(ctx, m, "--all", "--restart=all")
		}},
	}
	var backoffUntil time.Time
	for _, mm := range methods {
		if !strings.Contains(","+methodKeys+",", ","+mm.key+",") {
			continue
		}
		m := report.Method{Key: mm.key, Title: mm.title, Command: mm.command}
		if d := time.Until(backoffUntil); d > 0 {
			logf("%s: waiting %s: the previous method restarted control-plane containers and not the kubelet", s.c.Name(), d.Round(time.Second))
			m.Notes = append(m.Notes, fmt.Sprintf("started %s after the previous method's last control-plane container start, so that the kubelet's restart back-off it left had expired", backoffWait))
			time.Sleep(d)
		}
		if err := s.settle(ctx); err != nil {
			m.Notes = append(m.Notes, "before the method the cluster did not settle: "+err.Error())
		}
		m.Baseline.From = s.now()
		logf("%s: baseline of %s before %s", s.c.Name(), baseline, mm.title)
		time.Sleep(baseline)
		m.Baseline.To = s.now()
		m.Before = s.processes(ctx)
		s.serials(ctx)
		if st, err := s.etcdCluster(ctx); err == nil {
			m.Etcd.TermBefore, m.Etcd.LeaderBefore = st.term, st.leader
		}
		logf("%s: %s starts", s.c.Name(), mm.title)
		m.Start = s.now()
		if err := mm.run(ctx, &m); err != nil {
			m.Error = err.Error()
			logf("%s: %s failed: %v", s.c.Name(), mm.title, err)
		}
		m.End = s.now()
		m.ReadyAt = s.waitNodesReady(ctx)
		total, failed := s.load.since(m.Start)
		logf("%s: %s done in %.1fs (all Ready at %.1fs); %d/%d requests failed so far", s.c.Name(), mm.title, m.End-m.Start, m.ReadyAt-m.Start, failed, total)
		m.After = s.processes(ctx)
		s.serials(ctx)
		m.Exited = s.exited(ctx, m.Start, m.ReadyAt)
		if st, err := s.etcdCluster(ctx); err == nil {
			m.Etcd.TermAfter, m.Etcd.LeaderAfter = st.term, st.leader
		}
		m.Started = s.containersStarted(ctx, m.Start, m.ReadyAt)
		backoffUntil = s.backoffUntil(&m)
		s.rec.Methods = append(s.rec.Methods, m)
	}
	// A little tail, so the last method's aftermath is on record.
	time.Sleep(10 * time.Second)
	s.serials(ctx)
	var serials []string
	s.rec.Requests, serials = load.stop()
	for _, sn := range serials {
		s.rec.Servers = append(s.rec.Servers, report.Server{Serial: sn, Node: s.serialNode[sn]})
	}
	s.rec.LoadAvg = la.stop()
	for _, sp := range s.samplers {
		sp.stop()
		tr, err := sp.trace(s.t0)
		if err != nil {
			s.t.Errorf("sampler: %v", err)
		}
		s.rec.Nodes = append(s.rec.Nodes, tr)
	}
	return s.rec
}

// backoffUntil is backoffWait after the last static-pod container start
// of the method on a node whose kubelet the method did not restart.
func (s *session) backoffUntil(m *report.Method) time.Time {
	var until time.Time
	for _, c := range m.Started {
		if !slices.Contains(staticPods, c.Component) || m.Before[c.Node+"/kubelet"] != m.After[c.Node+"/kubelet"] {
			continue
		}
		if t := s.t0.Add(time.Duration(c.Created*float64(time.Second)) + backoffWait); t.After(until) {
			until = t
		}
	}
	return until
}

// settle waits until every node is Ready and every control plane runs its
// four components with kube-apiserver ready and etcd healthy, then 20 s more.
func (s *session) settle(ctx context.Context) error {
	deadline := time.Now().Add(5 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		last = s.healthy(ctx)
		if last == nil {
			time.Sleep(20 * time.Second)
			return nil
		}
		time.Sleep(2 * time.Second)
	}
	return last
}

func (s *session) healthy(ctx context.Context) error {
	if err := s.allReady(ctx); err != nil {
		return err
	}
	for _, cp := range s.cps {
		if err := s.nodeHealthy(ctx, cp, nil); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) allReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nodes, err := s.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(nodes.Items) != len(s.nodes()) {
		return fmt.Errorf("%d nodes, want %d", len(nodes.Items), len(s.nodes()))
	}
	for _, n := range nodes.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			return fmt.Errorf("node %s not Ready", n.Name)
		}
	}
	return nil
}

// waitNodesReady polls until every node is Ready and returns when it saw
// it (seconds since t0).
func (s *session) waitNodesReady(ctx context.Context) float64 {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		if s.allReady(ctx) == nil {
			return s.now()
		}
		time.Sleep(500 * time.Millisecond)
	}
	s.t.Errorf("%s: nodes not all Ready 10 minutes after the method", s.c.Name())
	return s.now()
}

// nodeHealthy: the four control-plane containers run (with IDs other than
// those in old, if given), kube-apiserver's /readyz is 200, etcd's /health
// true.
func (s *session) nodeHealthy(ctx context.Context, node string, old map[string]string) error {
	ids, err := s.staticIDs(ctx, node)
	if err != nil {
		return err
	}
	for _, p := range staticPods {
		if ids[p] == "" {
			return fmt.Errorf("%s: %s not running", node, p)
		}
		if old != nil && old[p] == ids[p] {
			return fmt.Errorf("%s: %s still runs container %.12s", node, p, ids[p])
		}
	}
	out, err := s.c.Exec(ctx, node, nil, "sh", "-c",
		`curl -sk -m 2 -o /dev/null -w '%{http_code} ' https://127.0.0.1:6443/readyz; curl -s -m 2 http://127.0.0.1:2381/health`)
	if err != nil {
		return err
	}
	if f := strings.Fields(string(out)); len(f) < 2 || f[0] != "200" || !strings.Contains(string(out), `"health":"true"`) {
		return fmt.Errorf("%s: readyz/etcd health: %s", node, strings.TrimSpace(string(out)))
	}
	return nil
}

// staticIDs are the running containers of the static pods of a node.
func (s *session) staticIDs(ctx context.Context, node string) (map[string]string, error) {
	out, err := s.c.Exec(ctx, node, nil, "crictl", "ps", "--state", "running", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Containers []struct {
			ID       string `json:"id"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"containers"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, err
	}
	ids := map[string]string{}
	for _, c := range list.Containers {
		ids[c.Metadata.Name] = c.ID
	}
	return ids, nil
}

// processes records which container runs each static pod and which PID
// the kubelet has, on every node.
func (s *session) processes(ctx context.Context) map[string]string {
	out := map[string]string{}
	for _, n := range s.nodes() {
		if pid, err := s.c.Exec(ctx, n, nil, "systemctl", "show", "-p", "MainPID", "--value", "kubelet"); err == nil {
			out[n+"/kubelet"] = strings.TrimSpace(string(pid))
		}
	}
	for _, n := range s.cps {
		ids, err := s.staticIDs(ctx, n)
		if err != nil {
			continue
		}
		for _, p := range staticPods {
			out[n+"/"+p] = ids[p]
		}
	}
	return out
}

// crictlContainer is one container as `crictl ps -o json` lists it, with
// its creation in seconds since the session's start.
type crictlContainer struct {
	ID, Name string
	Attempt  int
	Created  float64
}

// containers lists a node's containers created in [from, to] (crictl ps
// with args); a node that cannot be asked lists none.
func (s *session) containers(ctx context.Context, node string, from, to float64, args ...string) []crictlContainer {
	raw, err := s.c.Exec(ctx, node, nil, append([]string{"crictl", "ps", "-a", "-o", "json"}, args...)...)
	if err != nil {
		return nil
	}
	var list struct {
		Containers []struct {
			ID       string `json:"id"`
			Metadata struct {
				Name    string `json:"name"`
				Attempt int    `json:"attempt"`
			} `json:"metadata"`
			CreatedAt string `json:"createdAt"`
		} `json:"containers"`
	}
	if json.Unmarshal(raw, &list) != nil {
		return nil
	}
	var out []crictlContainer
	for _, c := range list.Containers {
		ns, err := strconv.ParseInt(c.CreatedAt, 10, 64)
		if err != nil {
			continue
		}
		if t := s.rel(time.Unix(0, ns)); t >= from && t <= to {
			out = append(out, crictlContainer{ID: c.ID, Name: c.Metadata.Name, Attempt: c.Metadata.Attempt, Created: t})
		}
	}
	return out
}

// containersStarted lists the containers created in [from, to] on every
// node (crictl ps -a).
func (s *session) containersStarted(ctx context.Context, from, to float64) []report.ContainerStart {
	var out []report.ContainerStart
	for _, n := range s.nodes() {
		for _, c := range s.containers(ctx, n, from, to) {
			out = append(out, report.ContainerStart{Node: n, Component: c.Name, ID: c.ID[:min(12, len(c.ID))], Created: c.Created, Attempt: c.Attempt})
		}
	}
	return out
}

// serials records the serial of every control plane's apiserver.crt.
func (s *session) serials(ctx context.Context) {
	for _, n := range s.cps {
		out, err := s.c.Exec(ctx, n, nil, "cat", "/etc/kubernetes/pki/apiserver.crt")
		if err != nil {
			continue
		}
		if c, err := pki.ParseCertificatePEM(out); err == nil {
			s.serialNode[c.SerialNumber.String()] = n
		}
	}
}

// exited lists the static-pod containers created in [from, to] that had
// exited by now, with their exit and the end of their logs.
func (s *session) exited(ctx context.Context, from, to float64) []report.Exited {
	var out []report.Exited
	for _, n := range s.cps {
		for _, c := range s.containers(ctx, n, from, to, "--state", "exited") {
			if !slices.Contains(staticPods, c.Name) {
				continue
			}
			e := report.Exited{Node: n, Component: c.Name, ID: c.ID[:min(12, len(c.ID))], Created: c.Created}
			if raw, err := s.c.Exec(ctx, n, nil, "crictl", "inspect", "-o", "json", c.ID); err == nil {
				var st struct {
					Status struct {
						ExitCode   int       `json:"exitCode"`
						Reason     string    `json:"reason"`
						FinishedAt time.Time `json:"finishedAt"`
					} `json:"status"`
				}
				if json.Unmarshal(raw, &st) == nil {
					e.ExitCode, e.Reason, e.Finished = st.Status.ExitCode, st.Status.Reason, s.rel(st.Status.FinishedAt)
				}
			}
			// crictl logs writes the container's stderr to its own stderr.
			if logs, err := s.c.Exec(ctx, n, nil, "sh", "-c", "crictl logs --tail 4 "+c.ID+" 2>&1"); err == nil {
				e.Log = strings.TrimSpace(string(logs))
				if len(e.Log) > 1200 {
					e.Log = e.Log[len(e.Log)-1200:]
				}
			}
			out = append(out, e)
		}
	}
	return out
}

type etcdMember struct {
	Header struct {
		MemberID string `json:"member_id"`
	} `json:"header"`
	Version  string `json:"version"`
	Leader   string `json:"leader"`
	RaftTerm string `json:"raftTerm"`
}

// etcdStatus is a member's maintenance status, through etcd's gRPC gateway.
func (s *session) etcdStatus(ctx context.Context, node string) (*etcdMember, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	const pki = "/etc/kubernetes/pki/etcd"
	out, err := s.c.Exec(ctx, node, nil, "curl", "-s", "-m", "3", "--cacert", pki+"/ca.crt", "--cert", pki+"/healthcheck-client.crt",
		"--key", pki+"/healthcheck-client.key", "-X", "POST", "-d", "{}", "https://127.0.0.1:2379/v3/maintenance/status")
	if err != nil {
		return nil, err
	}
	var m etcdMember
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("etcd status on %s: %w: %.200s", node, err, out)
	}
	return &m, nil
}

type etcdView struct {
	term   uint64
	leader string
}

// etcdCluster is the highest raft term any member reports and the leader.
func (s *session) etcdCluster(ctx context.Context) (etcdView, error) {
	var v etcdView
	var errs []string
	for _, n := range s.cps {
		m, err := s.etcdStatus(ctx, n)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if t := report.Term(m.RaftTerm); t > v.term {
			v.term = t
		}
		if m.Leader != "" && m.Leader != "0" {
			v.leader = m.Leader
		}
	}
	if v.term == 0 {
		return v, fmt.Errorf("no etcd member answered: %s", strings.Join(errs, "; "))
	}
	return v, nil
}

func readLoadAvg() (float64, error) {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0, fmt.Errorf("empty /proc/loadavg")
	}
	return strconv.ParseFloat(f[0], 64)
}

package report

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestLongestGap(t *testing.T) {
	reqs := []Request{
		{Start: 0.0, Latency: 0.01},
		{Start: 0.05, Latency: 0.01},
		{Start: 0.10, Latency: 4, Err: "timeout"}, // a failure ends no gap
		{Start: 0.15, Latency: 3.0},               // slow success: answered at 3.15
		{Start: 3.5, Latency: 0.01},
	}
	g := LongestGap(reqs, 0, 4)
	if !near(g.Seconds, 3.15-0.06) || !near(g.From, 0.06) || !near(g.To, 3.15) {
		t.Errorf("gap %+v, want 0.06 -> 3.15", g)
	}
	// The window's end counts: nothing after 3.51 until 10.
	if g := LongestGap(reqs, 0, 10); !near(g.Seconds, 10-3.51) {
		t.Errorf("gap %+v, want until the window's end", g)
	}
	if g := LongestGap(nil, 2, 5); !near(g.Seconds, 3) {
		t.Errorf("no requests: gap %+v, want the whole window", g)
	}
}

func TestPercentile(t *testing.T) {
	var v []float64
	for i := 1; i <= 100; i++ {
		v = append(v, float64(i))
	}
	for _, tc := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {1, 1}} {
		if got := Percentile(v, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 99) != 0 {
		t.Error("empty: want 0")
	}
}

func TestWindowStats(t *testing.T) {
	reqs := []Request{
		{Start: 1, Latency: 0.010},
		{Start: 2, Latency: 0.020, Write: true},
		{Start: 3, Latency: 0.5, Err: "EOF", Write: true},
		{Start: 9, Latency: 0.030}, // outside
	}
	s := WindowStats(reqs, 0.5, 5)
	if s.Requests != 3 || s.Failed != 1 || s.Max != 20 || s.P50 != 10 {
		t.Errorf("stats %+v", s)
	}
}

func TestRequestJSON(t *testing.T) {
	in := []Request{{Start: 1.23456, Latency: 0.0123, Write: true, Code: 200, Server: 1, Conn: 40000}, {Start: 2, Latency: 10, Server: -1, Err: "context deadline exceeded"}}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(data); got != `[[1.2346,0.0123,1,200,1,40000],[2,10,0,0,-1,0,"context deadline exceeded"]]` {
		t.Errorf("json %s", got)
	}
	var out []Request
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	if !out[0].Write || out[0].Code != 200 || out[0].Server != 1 || out[0].Conn != 40000 || out[1].Server != -1 || !out[0].OK() || out[1].OK() || out[1].Err != "context deadline exceeded" {
		t.Errorf("round trip: %+v", out)
	}
}

func trace(name string, cp bool, changes map[string][]Change) NodeTrace {
	return NodeTrace{Name: name, ControlPlane: cp, First: 0, Last: 100, Samples: 200, Changes: changes}
}

func TestPIDChanges(t *testing.T) {
	n := trace("cp", true, map[string][]Change{
		// killed at ~10 (gone from 10 to 12), then a graceful replacement
		// where old and new overlap from 30 to 31.
		"kube-apiserver": {{0, "100"}, {10, "0"}, {12, "200"}, {30, "200,300"}, {31, "300"}},
		// a fork of the kubelet seen before its exec is no restart
		"kubelet": {{0, "50"}, {20, "50,55"}, {20.5, "50"}, {40, "60"}},
	})
	rs := PIDChanges(&n, "kube-apiserver", 0, 100)
	if len(rs) != 2 {
		t.Fatalf("restarts %+v, want 2", rs)
	}
	if rs[0].From != 10 || rs[0].To != 12 || rs[1].From != 30 || rs[1].To != 31 {
		t.Errorf("restarts %+v", rs)
	}
	if rs := PIDChanges(&n, "kube-apiserver", 20, 100); len(rs) != 1 {
		t.Errorf("window from 20: %+v", rs)
	}
	if rs := PIDChanges(&n, "kubelet", 0, 100); len(rs) != 1 || rs[0].From != 40 {
		t.Errorf("kubelet: %+v", rs)
	}
	if got := n.ValueAt("kube-apiserver", 11); got != "0" {
		t.Errorf("ValueAt 11 = %q", got)
	}
}

func TestLeaderChanges(t *testing.T) {
	nodes := []NodeTrace{
		trace("cp1", true, map[string][]Change{"etcd-leader": {{0, "A"}, {10, ""}, {14, "B"}}}),
		trace("cp2", true, map[string][]Change{"etcd-leader": {{0, "A"}, {11, "B"}, {50, "C"}}}),
	}
	if got := leaderChanges(nodes, 5, 40); got != 1 {
		t.Errorf("leader changes in [5,40] = %d, want 1 (A -> B)", got)
	}
	if got := leaderChanges(nodes, 5, 60); got != 2 {
		t.Errorf("leader changes in [5,60] = %d, want 2", got)
	}
}

func pluginMethod() *Method {
	return &Method{
		Key: Plugin, Title: "--all", Start: 100, End: 160, ReadyAt: 161,
		Lines: []Event{
			{100.5, "Starting 2 agent pod(s) (image x, run r)"},
			{102, "node cp: renewing etcd, kube-apiserver"},
			{105, "node cp: verified: etcd serves etcd-server serial 1 on 127.0.0.1:2379"},
			{105.1, "node cp: restarted kube-scheduler (pid 1 -> 2) in 1.0s"},
			{105.2, "node cp: requesting new kubelet certificates"},
			{124, "node cp: installing the kubelet's certificates and restarting it"},
			{127, "node cp: restarted kubelet (pid 3 -> 4) in 0.6s"},
			{128, "node w: requesting new kubelet certificates"},
			{128.2, "node w: installing the kubelet's certificates and restarting it"},
			{131, "node w: restarted kubelet (pid 5 -> 6) in 0.6s"},
		},
	}
}

func TestPluginPhases(t *testing.T) {
	m := pluginMethod()
	acts := PluginActions(m)
	var names []string
	for _, a := range acts {
		names = append(names, a.Node+"/"+a.Name)
	}
	if got := strings.Join(names, " "); got != "cp/inspect cp/renew cp/kubelet-csr cp/kubelet-install w/inspect w/kubelet-csr w/kubelet-install" {
		t.Errorf("actions %s", got)
	}
	if acts[0].From != 100 || acts[0].To != 102 || acts[len(acts)-1].To != 160 {
		t.Errorf("action bounds %+v", acts)
	}
	ph := PluginPhases(m)
	if len(ph) != 3 {
		t.Fatalf("phases %+v", ph)
	}
	if ph[0].Name != "renew" || ph[0].From != 102 || ph[0].To != 105.1 {
		t.Errorf("renew phase %+v", ph[0])
	}
	if ph[1].Name != "kubelet" || ph[1].From != 105.2 || ph[1].To != 127 {
		t.Errorf("kubelet phase %+v", ph[1])
	}
}

func sampleRun() *Run {
	m := pluginMethod()
	m.Baseline = Window{From: 40, To: 100}
	m.Etcd = EtcdObs{TermBefore: 2, TermAfter: 2}
	m.Started = []ContainerStart{{Node: "cp", Component: "kube-scheduler", Created: 105}, {Node: "cp", Component: "rotate-certs-agent", Created: 101}}
	man := &Method{Key: Manual, Title: "manual", Start: 10, End: 38, ReadyAt: 38, Baseline: Window{From: 0, To: 10},
		Steps: []Step{{Node: "cp", Name: "renew", From: 10, To: 12}, {Node: "cp", Name: "manifests out", From: 12, To: 32}, {Node: "cp", Name: "manifests back", From: 32, To: 38}}}
	r := &Run{
		Schema: Schema, T0: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Cluster: ClusterInfo{Key: "single", Name: "rc-bench-single", ControlPlanes: 1, Workers: 1,
			Nodes: []NodeInfo{{Name: "cp", ControlPlane: true}, {Name: "w"}}},
		Methods: []Method{*man, *m},
		Nodes: []NodeTrace{
			trace("cp", true, map[string][]Change{
				"kube-apiserver": {{0, "100"}, {12.1, "0"}, {35, "200"}},
				"readyz":         {{0, "200"}, {12.1, "000"}, {36, "200"}},
				"kubelet":        {{0, "7"}, {126, "8"}},
			}),
			trace("w", false, map[string][]Change{"kubelet": {{0, "9"}, {130, "10"}}}),
		},
		LoadAvg: []Point{{50, 3}, {110, 5}, {150, 7}},
	}
	r.Nodes[0].AgentMem = []MemSample{{T: 101, Bytes: 10 << 20, RSS: 5 << 20}, {T: 102.5, Bytes: 30 << 20, RSS: 8 << 20}, {T: 125, Bytes: 20 << 20, RSS: 9 << 20}}
	r.Nodes[1].AgentMem = []MemSample{{T: 129, Bytes: 15 << 20}}
	for i := 0; i < 3000; i++ {
		t := float64(i) * 0.05
		req := Request{Start: t, Latency: 0.01, Write: i%2 == 1, Code: 200}
		if t > 12.1 && t < 36 {
			req = Request{Start: t, Latency: 0.001, Server: -1, Err: `Get "https://127.0.0.1:40000/api": dial tcp 127.0.0.1:40000: connect: connection refused`}
		}
		r.Requests = append(r.Requests, req)
	}
	return r
}

func TestSummarize(t *testing.T) {
	r := sampleRun()
	sums := Summarize(r)
	man, plug := sums[0], sums[1]
	if man.Failed == 0 || man.LongestGap.Seconds < 23 || man.LongestGap.Seconds > 24.1 {
		t.Errorf("manual: %d failed, gap %+v", man.Failed, man.LongestGap)
	}
	if len(man.FailureBursts) != 1 || !strings.Contains(man.FailureBursts[0].Context, "cp: manifests out, local /readyz 000") {
		t.Errorf("manual bursts %+v", man.FailureBursts)
	}
	if e := man.FailureBursts[0].Errors; len(e) != 1 {
		t.Errorf("errors not grouped: %v", e)
	}
	if by := man.FailureBursts[0].ServedBy; by["none"] != man.Failed {
		t.Errorf("served by %v", by)
	}
	if plug.Failed != 0 || plug.Restarts["kube-scheduler"] != 1 || plug.Restarts["kubelet"] != 2 || plug.Restarts["rotate-certs-agent"] != 0 {
		t.Errorf("plugin: %d failed, restarts %v", plug.Failed, plug.Restarts)
	}
	if plug.LoadAvgMax != 7 || plug.WallSeconds != 61 {
		t.Errorf("plugin: load %v, wall %v", plug.LoadAvgMax, plug.WallSeconds)
	}
	peaks := map[string]uint64{}
	for _, p := range plug.AgentPeaks {
		peaks[p.Action+"/"+p.Role] = p.Bytes
		if p.Action == "whole run" && p.Role == "control plane" && p.RSS != 9<<20 {
			t.Errorf("whole run RSS %d", p.RSS)
		}
	}
	if peaks["renew/control plane"] != 30<<20 || peaks["inspect/control plane"] != 30<<20 || peaks["kubelet-install/worker"] != 15<<20 || peaks["whole run/control plane"] != 30<<20 {
		t.Errorf("agent peaks %v", peaks)
	}
}

func TestTrimRequestsKeepsTheFigures(t *testing.T) {
	r := sampleRun()
	r.Methods[1].Baseline = Window{From: 70, To: 100} // a wait from 38 to 70
	before := Summarize(r)
	n := len(r.Requests)
	TrimRequests(r)
	if len(r.Requests) >= n {
		t.Fatalf("kept %d of %d requests", len(r.Requests), n)
	}
	after := Summarize(r)
	for i := range before {
		if before[i].Failed != after[i].Failed || before[i].Requests != after[i].Requests || before[i].During != after[i].During || before[i].Baseline != after[i].Baseline {
			t.Errorf("%s: figures changed: %+v -> %+v", before[i].Method, before[i], after[i])
		}
	}
}

func TestMarkdownAndTimeline(t *testing.T) {
	single := sampleRun()
	ha := sampleRun()
	ha.Cluster.Key = "ha"
	for _, r := range []*Run{single, ha} {
		r.Summaries = Summarize(r)
	}
	fp := &Footprint{PluginBytes: 40 << 20, AgentImageBytes: 50 << 20, AgentImage: "img", SimSecond: "100ms",
		Simulation: []SimResult{{Workers: 10, SimSeconds: 62, RealSeconds: 6.4, APICallsPerNode: 14.4, PeakHeapMB: 26}}}
	md := Markdown([]*Run{single, ha}, fp, "my analysis", "benchmarks/timeline-ha.svg")
	for _, want := range []string{
		"| **requests failed / total** |",
		"| HA | `--all` | 0 failed requests |",
		"| single control plane | `--all --restart=all` | longest window without a successful request ≤ 5 s |",
		AnalysisBegin + "\nmy analysis\n" + AnalysisEnd,
		"![timeline of the HA runs](benchmarks/timeline-ha.svg)",
		"| 10 | 62 s (1.0 min) | 6.4 s | 14.4 | 26.0 MB |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if got := Preserved(md); got != "my analysis" {
		t.Errorf("Preserved = %q", got)
	}
	var svg bytes.Buffer
	if err := WriteTimeline(&svg, ha); err != nil {
		t.Fatal(err)
	}
	if path := os.Getenv("ROTATE_CERTS_BENCH_TIMELINE_PNG"); path != "" {
		// A look at the picture without an SVG viewer.
		var png bytes.Buffer
		if err := WriteTimelinePNG(&png, ha); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(svg.String(), "<svg") || !strings.Contains(svg.String(), "API ok %") {
		t.Errorf("not an SVG timeline: %.200s", svg.String())
	}
}

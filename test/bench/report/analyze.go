package report

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Components are the static pods of a control plane, then the kubelet.
var Components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"}

// Summary is a method's figures on one cluster.
type Summary struct {
	Cluster string `json:"cluster"`
	Method  string `json:"method"`
	Title   string `json:"title"`
	// WallSeconds runs from the start until every node was Ready.
	WallSeconds float64 `json:"wallSeconds"`
	// ProcedureSeconds runs from the start until the procedure or the
	// plugin ended.
	ProcedureSeconds float64 `json:"procedureSeconds"`
	Requests         int     `json:"requests"`
	Failed           int     `json:"failed"`
	// LongestGap is the longest time without a successful answer.
	LongestGap       Gap                       `json:"longestGap"`
	Baseline         Stats                     `json:"baseline"`
	During           Stats                     `json:"during"`
	EtcdElections    int                       `json:"etcdElections"`
	LeaderChanges    int                       `json:"leaderChanges"`
	Restarts         map[string]int            `json:"restarts"`
	RestartsByNode   map[string]map[string]int `json:"restartsByNode"`
	AgentPeaks       []AgentPeak               `json:"agentPeaks,omitempty"`
	PluginMaxRSSKiB  int64                     `json:"pluginMaxRSSKiB,omitempty"`
	LoadAvgMean      float64                   `json:"loadAvgMean"`
	LoadAvgMax       float64                   `json:"loadAvgMax"`
	FailureBursts    []Burst                   `json:"failureBursts,omitempty"`
	Error            string                    `json:"error,omitempty"`
	BaselineRequests int                       `json:"baselineRequests"`
	BaselineFailed   int                       `json:"baselineFailed"`
}

// Gap is a period without a successful answer.
type Gap struct {
	Seconds float64 `json:"seconds"`
	From    float64 `json:"from"`
	To      float64 `json:"to"`
}

// Stats are the latencies (ms) of the successful requests of a window.
type Stats struct {
	Requests   int     `json:"requests"`
	Failed     int     `json:"failed"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
	Max        float64 `json:"max"`
	LongestGap Gap     `json:"longestGap"`
}

// AgentPeak is the agents' highest memory in one action, per role: the
// cgroup's peak (RSS and page cache), and the highest RSS sampled.
type AgentPeak struct {
	Action string `json:"action"`
	Role   string `json:"role"` // "control plane" or "worker"
	Bytes  uint64 `json:"bytes"`
	RSS    uint64 `json:"rss"`
	Node   string `json:"node"`
}

// Burst is a run of failed requests less than a second apart.
type Burst struct {
	From   float64        `json:"from"`
	To     float64        `json:"to"`
	Count  int            `json:"count"`
	Writes int            `json:"writes"`
	Errors map[string]int `json:"errors"`
	// ServedBy counts the failed requests by the node whose kube-apiserver
	// had their connection ("none": no connection was made).
	ServedBy map[string]int `json:"servedBy"`
	Context  string         `json:"context"`
}

// WindowStats computes the figures of the requests started in [from, to].
func WindowStats(reqs []Request, from, to float64) Stats {
	var s Stats
	var lat []float64
	for _, r := range reqs {
		if r.Start < from || r.Start > to {
			continue
		}
		s.Requests++
		if !r.OK() {
			s.Failed++
			continue
		}
		lat = append(lat, r.Latency*1000)
	}
	sort.Float64s(lat)
	s.P50, s.P99 = Percentile(lat, 50), Percentile(lat, 99)
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	s.LongestGap = LongestGap(reqs, from, to)
	return s
}

// Percentile is the nearest-rank percentile of sorted values (0 if none).
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// LongestGap is the longest part of [from, to] in which no request got a
// successful answer (by the time each answer arrived).
func LongestGap(reqs []Request, from, to float64) Gap {
	var ends []float64
	for _, r := range reqs {
		if r.OK() && r.End() >= from && r.End() <= to {
			ends = append(ends, r.End())
		}
	}
	sort.Float64s(ends)
	best := Gap{}
	prev := from
	for _, e := range append(ends, to) {
		if e-prev > best.Seconds {
			best = Gap{Seconds: e - prev, From: prev, To: e}
		}
		prev = e
	}
	return best
}

// Summarize computes the figures of each method of a run.
func Summarize(run *Run) []Summary {
	var out []Summary
	for i := range run.Methods {
		out = append(out, summarize(run, &run.Methods[i]))
	}
	return out
}

func summarize(run *Run, m *Method) Summary {
	end := m.ReadyAt
	if end < m.End {
		end = m.End
	}
	s := Summary{
		Cluster:          run.Cluster.Key,
		Method:           m.Key,
		Title:            m.Title,
		WallSeconds:      end - m.Start,
		ProcedureSeconds: m.End - m.Start,
		Baseline:         WindowStats(run.Requests, m.Baseline.From, m.Baseline.To),
		During:           WindowStats(run.Requests, m.Start, end),
		PluginMaxRSSKiB:  m.PluginMaxRSSKiB,
		Error:            m.Error,
	}
	s.Requests, s.Failed, s.LongestGap = s.During.Requests, s.During.Failed, s.During.LongestGap
	s.BaselineRequests, s.BaselineFailed = s.Baseline.Requests, s.Baseline.Failed
	if m.Etcd.TermAfter >= m.Etcd.TermBefore && m.Etcd.TermBefore > 0 {
		s.EtcdElections = int(m.Etcd.TermAfter - m.Etcd.TermBefore)
	}
	s.LeaderChanges = leaderChanges(run.Nodes, m.Start, end)
	s.Restarts, s.RestartsByNode = restarts(run.Nodes, m, end)
	s.AgentPeaks = agentPeaks(run, m)
	var n int
	for _, p := range run.LoadAvg {
		if p.T >= m.Start && p.T <= end {
			n++
			s.LoadAvgMean += p.V
			s.LoadAvgMax = math.Max(s.LoadAvgMax, p.V)
		}
	}
	if n > 0 {
		s.LoadAvgMean /= float64(n)
	}
	s.FailureBursts = bursts(run, m, end)
	return s
}

// ValueAt is a field's value at t (empty before its first change point).
func (n *NodeTrace) ValueAt(field string, t float64) string {
	v := ""
	for _, c := range n.Changes[field] {
		if c.T > t {
			break
		}
		v = c.V
	}
	return v
}

// leaderChanges counts how often the etcd leader the members report moved
// to another member in [from, to] (from the samplers).
func leaderChanges(nodes []NodeTrace, from, to float64) int {
	type obs struct {
		t float64
		v string
	}
	var all []obs
	for _, n := range nodes {
		for _, c := range n.Changes["etcd-leader"] {
			all = append(all, obs{c.T, c.V})
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].t < all[j].t })
	last, changes := "", 0
	for _, o := range all {
		if o.v == "" || o.v == "0" {
			continue
		}
		if o.t >= from && o.t <= to && last != "" && o.v != last {
			changes++
		}
		last = o.v
	}
	return changes
}

// restarts counts, per component, the static-pod containers crictl lists as
// created in the method's window, and the kubelet's new PIDs.
func restarts(nodes []NodeTrace, m *Method, end float64) (map[string]int, map[string]map[string]int) {
	total := map[string]int{}
	byNode := map[string]map[string]int{}
	add := func(node, comp string) {
		total[comp]++
		if byNode[node] == nil {
			byNode[node] = map[string]int{}
		}
		byNode[node][comp]++
	}
	for _, c := range m.Started {
		if c.Created >= m.Start && c.Created <= end && slices.Contains(Components, c.Component) {
			add(c.Node, c.Component)
		}
	}
	for _, n := range nodes {
		for _, c := range PIDChanges(&n, "kubelet", m.Start, end) {
			_ = c
			add(n.Name, "kubelet")
		}
	}
	return total, byNode
}

// Restart is a component process replaced: the last sample with the old
// PID(s) and the first with new ones only.
type Restart struct {
	Component string
	From, To  float64
	Old, New  string
}

// PIDChanges lists the times a component's process was replaced in
// [from, to]: the sampler saw a set of PIDs that shares none with the last
// stable one. From is the first change point after the old set was last
// seen alone (the start of a period without any process, or of old and new
// running side by side), To when only new processes ran. A process that
// appears beside the old one and goes again (a fork before an exec, say)
// is no replacement.
func PIDChanges(n *NodeTrace, comp string, from, to float64) []Restart {
	var out []Restart
	cs := n.Changes[comp]
	stable := -1 // index of the last value that had no PID the old set lacked
	for i, c := range cs {
		if c.V == "0" || c.V == "" {
			continue
		}
		if stable < 0 {
			stable = i
			continue
		}
		old, cur := pidSet(cs[stable].V), pidSet(c.V)
		switch {
		case disjoint(old, cur):
			r := Restart{Component: comp, From: cs[stable+1].T, To: c.T, Old: cs[stable].V, New: c.V}
			if r.To >= from && r.From <= to {
				out = append(out, r)
			}
			stable = i
		case subset(cur, old):
			stable = i
		}
	}
	return out
}

func subset(a, b map[string]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func pidSet(v string) map[string]bool {
	out := map[string]bool{}
	for _, p := range strings.Split(v, ",") {
		if p != "" && p != "0" {
			out[p] = true
		}
	}
	return out
}

func disjoint(a, b map[string]bool) bool {
	for k := range a {
		if b[k] {
			return false
		}
	}
	return true
}

// Intervals returns the periods in [from, to] where a field's value
// satisfies bad.
func (n *NodeTrace) Intervals(field string, from, to float64, bad func(string) bool) []Window {
	var out []Window
	cs := n.Changes[field]
	for i, c := range cs {
		if !bad(c.V) {
			continue
		}
		end := n.Last
		if i+1 < len(cs) {
			end = cs[i+1].T
		}
		s, e := math.Max(c.T, from), math.Min(end, to)
		if e > s {
			out = append(out, Window{From: s, To: e})
		}
	}
	return out
}

// Phase is a span of a node's work in a method.
type Phase struct {
	Node string
	Name string
	From float64
	To   float64
}

var lineRE = regexp.MustCompile(`^node (\S+): (.*)$`)

// phaseStarts maps the plugin's progress lines that begin a node's action
// to the action's name.
var phaseStarts = []struct{ prefix, name string }{
	{"renewing ", "renew"},
	{"requesting new kubelet certificates", "kubelet-csr"},
	{"installing the kubelet's certificates", "kubelet-install"},
	{"restarting kubelet", "restart-kubelet"},
}

// PluginActions splits each node's time in a plugin run into its agent's
// actions, from the progress lines: "inspect" (pod start and inspection,
// then idle until the node's turn) up to the node's first action, each
// action up to the next one, the last up to the plugin's end.
func PluginActions(m *Method) []Phase {
	type start struct {
		t    float64
		name string
	}
	starts := map[string][]start{}
	var order []string
	for _, l := range m.Lines {
		g := lineRE.FindStringSubmatch(l.Text)
		if g == nil {
			continue
		}
		for _, p := range phaseStarts {
			if strings.HasPrefix(g[2], p.prefix) {
				if _, ok := starts[g[1]]; !ok {
					order = append(order, g[1])
				}
				starts[g[1]] = append(starts[g[1]], start{l.T, p.name})
			}
		}
	}
	var out []Phase
	for _, node := range order {
		ss := starts[node]
		out = append(out, Phase{Node: node, Name: "inspect", From: m.Start, To: ss[0].t})
		for i, s := range ss {
			to := m.End
			if i+1 < len(ss) {
				to = ss[i+1].t
			}
			out = append(out, Phase{Node: node, Name: s.name, From: s.t, To: to})
		}
	}
	return out
}

// PluginPhases are the spans drawn on the timeline: each action from its
// first progress line to the node's last line before its next action (the
// agent's answer: verified, restarted).
func PluginPhases(m *Method) []Phase {
	var out []Phase
	for _, a := range PluginActions(m) {
		if a.Name == "inspect" {
			continue
		}
		end := a.From
		for _, l := range m.Lines {
			g := lineRE.FindStringSubmatch(l.Text)
			if g != nil && g[1] == a.Node && l.T >= a.From && l.T < a.To {
				end = l.T
			}
		}
		name := a.Name
		if strings.HasPrefix(name, "kubelet") || name == "restart-kubelet" {
			name = "kubelet"
		}
		if n := len(out); n > 0 && out[n-1].Node == a.Node && out[n-1].Name == name {
			out[n-1].To = math.Max(end, out[n-1].To)
			continue
		}
		out = append(out, Phase{Node: a.Node, Name: name, From: a.From, To: math.Max(end, a.From)})
	}
	return out
}

// ManualPhases are the manual procedure's steps as phases.
func ManualPhases(m *Method) []Phase {
	var out []Phase
	for _, s := range m.Steps {
		out = append(out, Phase{Node: s.Node, Name: s.Name, From: s.From, To: s.To})
	}
	return out
}

// Phases are a method's phases, whichever kind it is.
func Phases(m *Method) []Phase {
	if len(m.Steps) > 0 {
		return ManualPhases(m)
	}
	return PluginPhases(m)
}

// agentPeaks attributes each agent memory sample, which covers the time
// since the previous one, to every action of its node that overlaps it, and
// keeps the highest per action and role.
func agentPeaks(run *Run, m *Method) []AgentPeak {
	if len(m.Lines) == 0 {
		return nil
	}
	actions := PluginActions(m)
	cp := map[string]bool{}
	for _, n := range run.Cluster.Nodes {
		cp[n.Name] = n.ControlPlane
	}
	peaks := map[[2]string]AgentPeak{}
	for _, n := range run.Nodes {
		prev := math.Inf(-1)
		for _, s := range n.AgentMem {
			from := prev
			prev = s.T
			if s.T < m.Start || s.T > m.End+2 {
				continue
			}
			if math.IsInf(from, -1) || s.T-from > 2 {
				from = s.T - 0.5
			}
			role := "worker"
			if cp[n.Name] {
				role = "control plane"
			}
			add := func(action string) {
				k := [2]string{action, role}
				p := peaks[k]
				if s.Bytes > p.Bytes {
					p.Action, p.Role, p.Bytes, p.Node = action, role, s.Bytes, n.Name
				}
				p.RSS = max(p.RSS, s.RSS)
				peaks[k] = p
			}
			for _, a := range actions {
				if a.Node == n.Name && a.To >= from && a.From <= s.T {
					add(a.Name)
				}
			}
			add("whole run")
		}
	}
	var out []AgentPeak
	for _, p := range peaks {
		out = append(out, p)
	}
	rank := map[string]int{"inspect": 0, "renew": 1, "kubelet-csr": 2, "kubelet-install": 3, "restart-kubelet": 4, "whole run": 5}
	sort.Slice(out, func(i, j int) bool {
		if rank[out[i].Action] != rank[out[j].Action] {
			return rank[out[i].Action] < rank[out[j].Action]
		}
		return out[i].Role < out[j].Role
	})
	return out
}

// bursts groups the failed requests of a method into runs less than a
// second apart and says what each node was doing when a run began.
func bursts(run *Run, m *Method, end float64) []Burst {
	var out []Burst
	for _, r := range run.Requests {
		if r.OK() || r.Start < m.Start || r.Start > end {
			continue
		}
		if n := len(out); n == 0 || r.Start-out[n-1].To >= 1 {
			out = append(out, Burst{From: r.Start, To: r.Start, Errors: map[string]int{}, ServedBy: map[string]int{},
				Context: Context(run, m, r.Start, r.End())})
		}
		b := &out[len(out)-1]
		b.To = r.Start
		b.Count++
		if r.Write {
			b.Writes++
		}
		b.Errors[shortErr(r.Err)]++
		srv := run.ServerNode(r.Server)
		if srv == "" {
			srv = "none"
			if r.Server >= 0 {
				srv = "unknown"
			}
		}
		b.ServedBy[srv]++
	}
	return out
}

var (
	addrRE = regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}:\d+\b`)
	urlRE  = regexp.MustCompile(`"https://[^"]*"`)
)

// shortErr keeps an error's kind and drops what varies (ports, URLs).
func shortErr(e string) string {
	e = urlRE.ReplaceAllString(e, `"…"`)
	e = addrRE.ReplaceAllString(e, "…")
	if len(e) > 160 {
		e = e[:160] + "…"
	}
	return e
}

// Context says what each node was doing between from and to: the step or
// phase it was in, its kube-apiserver's /readyz, and the components whose
// process was replaced around then.
func Context(run *Run, m *Method, from, to float64) string {
	phases := Phases(m)
	var parts []string
	for i := range run.Nodes {
		n := &run.Nodes[i]
		var what []string
		for _, p := range phases {
			if p.Node == n.Name && p.From <= to && p.To >= from {
				what = append(what, p.Name)
			}
		}
		if n.ControlPlane {
			if v := n.ValueAt("readyz", from); v != "" && v != "200" {
				what = append(what, "local /readyz "+v)
			}
		}
		for _, c := range Components {
			for _, r := range PIDChanges(n, c, from-3, to+3) {
				if r.From <= to+3 && r.To >= from-3 {
					what = append(what, fmt.Sprintf("%s replaced %+.1f…%+.1f s", c, r.From-from, r.To-from))
				}
			}
		}
		if len(what) > 0 {
			parts = append(parts, n.Name+": "+strings.Join(dedupe(what), ", "))
		}
	}
	return strings.Join(parts, "; ")
}

func dedupe(s []string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// Term parses an etcd raft term.
func Term(v string) uint64 {
	t, _ := strconv.ParseUint(v, 10, 64)
	return t
}

// KeptMargin is how much load is kept around each method's baseline and
// window when a run is written.
const KeptMargin = 15.0

// TrimRequests drops the requests that no figure uses: those outside every
// method's [baseline start, end] widened by KeptMargin (the waits between
// methods). Summaries must be computed before or after alike.
func TrimRequests(run *Run) {
	keep := func(t float64) bool {
		for _, m := range run.Methods {
			if t >= m.Baseline.From-KeptMargin && t <= math.Max(m.ReadyAt, m.End)+KeptMargin {
				return true
			}
		}
		return false
	}
	var out []Request
	for _, r := range run.Requests {
		if keep(r.Start) {
			out = append(out, r)
		}
	}
	run.Requests = out
}

// Package report holds what `make bench` records (the JSON under
// docs/benchmarks/), the figures computed from it, and the renderers of
// docs/benchmarks.md and its timeline picture. It has no build tag, so the
// computations are unit-tested by `go test -short ./...`; the harness that
// runs the clusters is test/bench (build tag bench).
//
// Every time in a Run is in seconds since Run.T0 (the start of the
// cluster's session), on the host's clock; node containers share it.
package report

import "time"

// Schema is the version of the JSON layout.
const Schema = 2

// Method keys, in the order they run on each cluster.
const (
	Manual           = "manual"
	Plugin           = "plugin"
	PluginRestartAll = "plugin-restart-all"
)

// Run is one cluster's session: the methods run on it in sequence, under one
// steady load.
type Run struct {
	Schema  int         `json:"schema"`
	T0      time.Time   `json:"t0"`
	Cluster ClusterInfo `json:"cluster"`
	Env     Env         `json:"env"`
	Load    LoadInfo    `json:"load"`
	Methods []Method    `json:"methods"`
	// Requests are the load client's requests, in start order (those in
	// the waits between methods are dropped: TrimRequests).
	Requests []Request `json:"requests"`
	// Servers are the kube-apiservers the load client's connections reached,
	// by the serial of the serving certificate each presented.
	Servers []Server `json:"servers"`
	// Nodes are what the node-side samplers saw, as change points.
	Nodes []NodeTrace `json:"nodes"`
	// LoadAvg is the host's 1-minute load average, sampled.
	LoadAvg []Point `json:"loadavg"`
	// Summaries are computed from the above (Summarize) and stored so that a
	// later run can be compared without recomputing.
	Summaries []Summary `json:"summaries"`
}

// ClusterInfo describes the kind cluster.
type ClusterInfo struct {
	Key           string     `json:"key"` // "single" or "ha"
	Name          string     `json:"name"`
	ControlPlanes int        `json:"controlPlanes"`
	Workers       int        `json:"workers"`
	Nodes         []NodeInfo `json:"nodes"`
	KubeVersion   string     `json:"kubeVersion"`
	EtcdVersion   string     `json:"etcdVersion"`
	NodeImage     string     `json:"nodeImage"`
	AgentImage    string     `json:"agentImage"`
	PluginVersion string     `json:"pluginVersion"`
	// Server is the kubeconfig's server: kind's load balancer on HA.
	Server string `json:"server"`
	// LoadBalancer names the image behind Server on HA.
	LoadBalancer string `json:"loadBalancer,omitempty"`
}

// Server is a kube-apiserver as the load client saw it.
type Server struct {
	Serial string `json:"serial"`
	// Node is the control plane whose apiserver.crt had that serial
	// (empty if none did when the harness looked).
	Node string `json:"node"`
}

// ServerNode is the node that served a request ("" if unknown).
func (r *Run) ServerNode(i int) string {
	if i < 0 || i >= len(r.Servers) {
		return ""
	}
	return r.Servers[i].Node
}

// NodeInfo is one node.
type NodeInfo struct {
	Name         string `json:"name"`
	ControlPlane bool   `json:"controlPlane"`
}

// Env is the machine the run shared with other work.
type Env struct {
	CPU           string `json:"cpu"`
	Cores         int    `json:"cores"`
	MemoryGiB     int    `json:"memoryGiB"`
	Kernel        string `json:"kernel"`
	OS            string `json:"os"`
	Docker        string `json:"docker"`
	CgroupVersion string `json:"cgroupVersion"`
	Kind          string `json:"kind"`
	Go            string `json:"go"`
}

// LoadInfo describes the load client.
type LoadInfo struct {
	RatePerSecond  int     `json:"ratePerSecond"`
	TimeoutSeconds float64 `json:"timeoutSeconds"`
	Description    string  `json:"description"`
	// Switches are the moments the client started using another kubeconfig
	// (the manual procedure's refreshed admin.conf).
	Switches []Event `json:"switches,omitempty"`
}

// Event is a moment with a description.
type Event struct {
	T    float64 `json:"t"`
	Text string  `json:"text"`
}

// Point is a sampled value.
type Point struct {
	T float64 `json:"t"`
	V float64 `json:"v"`
}

// Request is one request of the load client: [start, latency (s), op
// (0 GET, 1 PATCH), HTTP status (0: none), server (index in Run.Servers,
// -1: no connection), connection (the client's local port, 0: none), error
// (empty when it succeeded)]. It is stored as a JSON array to keep the
// files small.
type Request struct {
	Start   float64
	Latency float64
	Write   bool
	Code    int
	// Server is the kube-apiserver that served the request's connection,
	// known by the serial of the certificate it presented.
	Server int
	Conn   int
	Err    string
}

// OK tells whether the request succeeded.
func (r Request) OK() bool { return r.Err == "" }

// End is when the client had its answer (or gave up).
func (r Request) End() float64 { return r.Start + r.Latency }

// Method is one way of rotating, as run on the cluster.
type Method struct {
	Key     string `json:"key"`
	Title   string `json:"title"`
	Command string `json:"command"`
	// Baseline is the quiet period just before Start.
	Baseline Window  `json:"baseline"`
	Start    float64 `json:"start"`
	// End: the procedure (or the plugin) finished.
	End float64 `json:"end"`
	// ReadyAt: every node Ready after End (first poll that saw it).
	ReadyAt float64 `json:"readyAt"`
	Error   string  `json:"error,omitempty"`
	// Steps are the manual procedure's own steps.
	Steps []Step `json:"steps,omitempty"`
	// Lines are the plugin's progress lines (stderr), timestamped as read.
	Lines []Event `json:"lines,omitempty"`
	// PluginMaxRSSKiB is the plugin process's peak resident memory.
	PluginMaxRSSKiB int64 `json:"pluginMaxRSSKiB,omitempty"`
	// Processes before and after: "node/component" -> container ID
	// (static pods, crictl) or PID (kubelet).
	Before map[string]string `json:"before"`
	After  map[string]string `json:"after"`
	// Started are the containers crictl lists as created in [Start, ReadyAt].
	Started []ContainerStart `json:"started"`
	// Etcd is the cluster's raft term and leader around the method.
	Etcd EtcdObs `json:"etcd"`
	// Exited are the control-plane containers created during the method
	// that had exited when it ended (a crash after a restart), with the
	// end of their logs.
	Exited []Exited `json:"exited,omitempty"`
	// Notes say what the harness did beyond the command.
	Notes []string `json:"notes,omitempty"`
}

// Window is a time range.
type Window struct {
	From float64 `json:"from"`
	To   float64 `json:"to"`
}

// Step is a step of the manual procedure on a node.
type Step struct {
	Node   string  `json:"node"`
	Name   string  `json:"name"`
	From   float64 `json:"from"`
	To     float64 `json:"to"`
	Detail string  `json:"detail,omitempty"`
}

// ContainerStart is a container created during a method.
type ContainerStart struct {
	Node      string  `json:"node"`
	Component string  `json:"component"`
	ID        string  `json:"id"`
	Created   float64 `json:"created"`
	Attempt   int     `json:"attempt"`
}

// Exited is a container that ended.
type Exited struct {
	Node      string  `json:"node"`
	Component string  `json:"component"`
	ID        string  `json:"id"`
	Created   float64 `json:"created"`
	Finished  float64 `json:"finished"`
	ExitCode  int     `json:"exitCode"`
	Reason    string  `json:"reason"`
	Log       string  `json:"log"`
}

// EtcdObs is what etcd's maintenance status said before and after a method.
type EtcdObs struct {
	TermBefore   uint64 `json:"termBefore"`
	TermAfter    uint64 `json:"termAfter"`
	LeaderBefore string `json:"leaderBefore"`
	LeaderAfter  string `json:"leaderAfter"`
}

// NodeTrace is what a node's sampler saw (about twice a second), stored as
// the points where a field changed. Fields: "kubelet" (PID), "etcd",
// "kube-apiserver", "kube-controller-manager", "kube-scheduler" (their PIDs,
// comma-separated, "0" when none runs), "readyz" (HTTP status of the local
// kube-apiserver's /readyz, "000" when it did not answer), "etcd-leader" and
// "etcd-term" (from the local member's maintenance status).
type NodeTrace struct {
	Name         string              `json:"name"`
	ControlPlane bool                `json:"controlPlane"`
	First        float64             `json:"first"`
	Last         float64             `json:"last"`
	Samples      int                 `json:"samples"`
	Changes      map[string][]Change `json:"changes"`
	// AgentMem: the agent container's memory.max_usage_in_bytes since the
	// previous sample (the sampler resets it after each read).
	AgentMem []MemSample `json:"agentMem,omitempty"`
}

// Change is a field's new value from T on.
type Change struct {
	T float64 `json:"t"`
	V string  `json:"v"`
}

// MemSample is an agent container's peak memory over (previous sample, T]
// (memory.max_usage_in_bytes: RSS and page cache), and its memory.stat
// total_rss and total_cache at T.
type MemSample struct {
	T         float64 `json:"t"`
	Container string  `json:"container"`
	Bytes     uint64  `json:"bytes"`
	RSS       uint64  `json:"rss"`
	Cache     uint64  `json:"cache"`
}

// Footprint is what does not need a cluster: sizes and the simulated rollout.
type Footprint struct {
	Schema          int            `json:"schema"`
	Date            time.Time      `json:"date"`
	Env             Env            `json:"env"`
	PluginVersion   string         `json:"pluginVersion"`
	PluginBytes     int64          `json:"pluginBytes"`
	AgentImage      string         `json:"agentImage"`
	AgentImageBytes int64          `json:"agentImageBytes"`
	SimSecond       string         `json:"simSecond"`
	Simulation      []SimResult    `json:"simulation"`
	SimCommand      string         `json:"simCommand"`
	SimMaxRSSKiB    int64          `json:"simMaxRSSKiB"`
	SimLoadAvg      []Point        `json:"simLoadAvg,omitempty"`
	Extra           map[string]any `json:"extra,omitempty"`
}

// SimResult is one size of BenchmarkRotateWorkers.
type SimResult struct {
	Workers         int     `json:"workers"`
	SimSeconds      float64 `json:"simSeconds"`
	RealSeconds     float64 `json:"realSeconds"`
	APICallsPerNode float64 `json:"apiCallsPerNode"`
	PeakHeapMB      float64 `json:"peakHeapMB"`
}

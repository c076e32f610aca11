//go:build bench

// Package bench measures certificate rotation against kubeadm's manual
// procedure on real kind clusters, side by side in one run (issue 11): the
// manual procedure, `kubectl rotate-certs --all` and `--all --restart=all`,
// in sequence on the same cluster under a steady API load. Run it with
// hack/bench.sh (make bench), which prepares the node image, the plugin and
// the agent image as hack/e2e.sh does, then renders docs/benchmarks.md from
// the JSON this writes (test/bench/report).
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// What hack/bench.sh prepared, and the knobs.
var (
	pluginBin     = os.Getenv("ROTATE_CERTS_PLUGIN")
	agentImage    = os.Getenv("ROTATE_CERTS_IMAGE")
	pluginVersion = os.Getenv("VERSION")
	// outDir receives <cluster>.json and footprint.json.
	outDir = envOr("ROTATE_CERTS_BENCH_OUT", "../../docs/benchmarks")
	// clusters to run: single (1 control plane + 2 workers), ha (3 + 1).
	clusterKeys = envOr("ROTATE_CERTS_BENCH_CLUSTERS", "single,ha")
	// methodKeys selects methods (default all, in order), e.g. to measure
	// one again after a change.
	methodKeys = envOr("ROTATE_CERTS_BENCH_METHODS", strings.Join([]string{report.Manual, report.Plugin, report.PluginRestartAll}, ","))
	// baseline is the quiet period recorded before each method.
	baseline = envDuration("ROTATE_CERTS_BENCH_BASELINE", 60*time.Second)
	// backoffWait: after a method restarted control-plane containers and not
	// the kubelet, the next method starts only this long after the last
	// restart, so it does not inherit the kubelet's restart back-off (an
	// entry lives until a container's exit is 2 x MaxContainerBackOff = 10
	// min after its last update; a kubelet restart clears them all).
	backoffWait = envDuration("ROTATE_CERTS_BENCH_BACKOFF", 10*time.Minute+30*time.Second)
	// keep leaves the clusters behind for inspection.
	keep = os.Getenv("ROTATE_CERTS_BENCH_KEEP") == "1"
)

type clusterSpec struct {
	key                    string
	controlPlanes, workers int
}

var specs = []clusterSpec{{"single", 1, 2}, {"ha", 3, 1}}

func envOr(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

func envDuration(k string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(k)); err == nil && d > 0 {
		return d
	}
	return def
}

var logMu sync.Mutex

// logf prints progress with the time, for an unattended run's log.
func logf(format string, args ...any) {
	logMu.Lock()
	defer logMu.Unlock()
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func TestBench(t *testing.T) {
	if pluginBin == "" || agentImage == "" {
		t.Fatal("ROTATE_CERTS_PLUGIN and ROTATE_CERTS_IMAGE must be set: run through hack/bench.sh (make bench)")
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("ROTATE_CERTS_BENCH_SKIP_FOOTPRINT") != "1" {
		t.Run("footprint", func(t *testing.T) {
			fp, err := measureFootprint(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			writeJSON(t, filepath.Join(outDir, "footprint.json"), fp)
		})
	}
	for _, s := range specs {
		if !strings.Contains(","+clusterKeys+",", ","+s.key+",") {
			continue
		}
		t.Run(s.key, func(t *testing.T) {
			run := runCluster(t, s)
			run.Summaries = report.Summarize(run)
			report.TrimRequests(run) // the waits between methods: no figure uses them
			writeJSON(t, filepath.Join(outDir, s.key+".json"), run)
			for _, sum := range run.Summaries {
				logf("%s %s: %d/%d failed, longest gap %.2fs, wall %.1fs, p99 %.0f->%.0f ms, elections %d, restarts %v",
					s.key, sum.Method, sum.Failed, sum.Requests, sum.LongestGap.Seconds, sum.WallSeconds, sum.Baseline.P99, sum.During.P99, sum.EtcdElections, sum.Restarts)
			}
		})
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	logf("wrote %s (%d bytes)", path, len(data))
}

// runCluster creates the cluster, starts the samplers and the load, runs
// the three methods in sequence and returns everything recorded. A method
// that fails is recorded with its error; the next still runs.
func runCluster(t *testing.T, spec clusterSpec) *report.Run {
	ctx := context.Background()
	c, err := framework.CreateCluster(ctx, framework.Options{
		Name: spec.key, ControlPlanes: spec.controlPlanes, Workers: spec.workers,
		KubeconfigPath: filepath.Join(t.TempDir(), "kubeconfig"),
	}, os.Stderr)
	if err != nil {
		t.Fatalf("creating kind cluster: %v", err)
	}
	t.Cleanup(func() {
		if keep {
			logf("keeping cluster %s (ROTATE_CERTS_BENCH_KEEP=1)", c.Name())
			return
		}
		if err := c.Delete(); err != nil {
			t.Errorf("deleting cluster %s: %v", c.Name(), err)
		}
	})
	if err := c.LoadImage(ctx, agentImage); err != nil {
		t.Fatalf("loading agent image: %v", err)
	}
	s, err := newSession(ctx, t, c, spec)
	if err != nil {
		t.Fatal(err)
	}
	return s.run(ctx)
}

package orchestrator

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// simSecond is how long a simulated second of node work takes here
// (ROTATE_CERTS_BENCH_SIMSECOND; make bench uses 100ms, so that the fake
// API's own cost, which a real API server does not add to the plugin, stays
// small against the simulated node work).
var simSecond = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("ROTATE_CERTS_BENCH_SIMSECOND")); err == nil && d > 0 {
		return d
	}
	return 10 * time.Millisecond
}()

// simLatency is what each agent action costs on a node, from the e2e runs
// on kind (docs/benchmarks.md): a kubelet's transaction is its restart, the
// served-certificate check and the API check, and the node lease renewal
// that follows (up to 10 s; 5 on average).
func simLatency(a api.Action) time.Duration {
	sec := map[api.Action]float64{
		api.Inspect: 0.3, api.Renew: 3, api.KubeletCSR: 0.5, api.KubeletInstall: 3 + 5,
	}[a]
	return time.Duration(sec * float64(simSecond))
}

// BenchmarkRotateWorkers rotates the kubelets of N simulated workers (one
// control plane) with the default parallelism, against a fake API and
// agents whose actions take the e2e's times, and reports the simulated wall
// time, the API requests per node and the plugin's peak heap. Sizes come
// from ROTATE_CERTS_BENCH_WORKERS (default 10,100; make bench adds 1000),
// the parallelism from ROTATE_CERTS_BENCH_PARALLELISM (default: the
// plugin's):
//
//	go test -run '^$' -bench BenchmarkRotateWorkers -benchtime 1x ./pkg/orchestrator
func BenchmarkRotateWorkers(b *testing.B) {
	sizes := os.Getenv("ROTATE_CERTS_BENCH_WORKERS")
	if sizes == "" {
		sizes = "10,100"
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			for range b.N {
				simulateRotation(b, n)
			}
		})
	}
}

func simulateRotation(b *testing.B, workers int) {
	b.Helper()
	var names []string
	for i := range workers {
		names = append(names, fmt.Sprintf("w-%04d", i))
	}
	t := &testing.T{}
	c := fakeCluster(t, []string{"cp-1"}, names)
	f := newFakeAgents(t, c)
	f.latency = simLatency
	r := newTestRunner(c, f)
	r.Timeout = time.Minute
	o := allOptions()
	o.Services = []pki.Service{pki.ServiceKubelet}
	o.Parallelism = DefaultParallelism
	if p := os.Getenv("ROTATE_CERTS_BENCH_PARALLELISM"); p != "" {
		var err error
		if o.Parallelism, err = ParseParallelism(p); err != nil {
			b.Fatal(err)
		}
	}

	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	_, err := r.Rotate(context.Background(), o)
	elapsed := time.Since(start)
	close(done)
	if err != nil {
		b.Fatal(err)
	}
	if got := len(f.callsOf(api.KubeletInstall)); got != workers+1 {
		b.Fatalf("%d kubelets installed, want %d", got, workers+1)
	}
	b.ReportMetric(float64(elapsed)/float64(simSecond), "sim-s")
	b.ReportMetric(float64(len(c.Actions()))/float64(workers+1), "api-calls/node")
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MB")
}

// The simulated rollout runs in make test at small sizes: every kubelet is
// rotated and the rollout grows past its canary.
func TestSimulatedRolloutRotatesEveryWorker(t *testing.T) {
	res := testing.Benchmark(func(b *testing.B) { simulateRotation(b, 20) })
	if res.N == 0 {
		t.Fatal("the simulation failed")
	}
	t.Logf("20 workers: %.0f simulated s, %.1f API calls per node", res.Extra["sim-s"], res.Extra["api-calls/node"])
}

//go:build bench

package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// simSecond and simWorkers are the simulation's settings (issue 11).
const (
	simSecond  = "100ms"
	simWorkers = "10,100,1000"
)

var benchLineRE = regexp.MustCompile(`^BenchmarkRotateWorkers/workers=(\d+)(?:-\d+)?\s+\d+\s+(\d+) ns/op\s+(.*)$`)

// measureFootprint: the plugin binary's and the agent image's sizes, and
// the simulated rollout of pkg/orchestrator's BenchmarkRotateWorkers,
// compiled with go test -c and run directly so that its peak RSS is the
// benchmark process's own.
func measureFootprint(ctx context.Context) (*report.Footprint, error) {
	fp := &report.Footprint{
		Schema: report.Schema, Date: time.Now(), Env: hostEnv(ctx), PluginVersion: pluginVersion,
		AgentImage: agentImage, SimSecond: simSecond,
		SimCommand: fmt.Sprintf("ROTATE_CERTS_BENCH_SIMSECOND=%s ROTATE_CERTS_BENCH_WORKERS=%s go test -run '^$' -bench BenchmarkRotateWorkers -benchtime 1x ./pkg/orchestrator", simSecond, simWorkers),
	}
	st, err := os.Stat(pluginBin)
	if err != nil {
		return nil, err
	}
	fp.PluginBytes = st.Size()
	out, err := exec.CommandContext(ctx, "docker", "image", "inspect", "-f", "{{.Size}}", agentImage).Output()
	if err != nil {
		return nil, fmt.Errorf("docker image inspect %s: %w", agentImage, err)
	}
	if fp.AgentImageBytes, err = strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "rc-bench-sim-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "orchestrator.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, "../../pkg/orchestrator")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go test -c ./pkg/orchestrator: %w: %s", err, out)
	}
	logf("simulation: %s", fp.SimCommand)
	t0 := time.Now()
	la := startLoadAvg(t0)
	cmd := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", "BenchmarkRotateWorkers", "-test.benchtime", "1x")
	cmd.Dir = "../../pkg/orchestrator"
	cmd.Env = append(os.Environ(), "ROTATE_CERTS_BENCH_SIMSECOND="+simSecond, "ROTATE_CERTS_BENCH_WORKERS="+simWorkers)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	err = cmd.Run()
	fp.SimLoadAvg = la.stop()
	if err != nil {
		return nil, fmt.Errorf("simulation: %w: %s", err, stdout.String())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		fp.SimMaxRSSKiB = ru.Maxrss
	}
	sim, err := parseBench(stdout.String())
	if err != nil {
		return nil, err
	}
	fp.Simulation = sim
	return fp, nil
}

func parseBench(out string) ([]report.SimResult, error) {
	var res []report.SimResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fmt.Fprintln(os.Stderr, sc.Text())
		g := benchLineRE.FindStringSubmatch(sc.Text())
		if g == nil {
			continue
		}
		var r report.SimResult
		r.Workers, _ = strconv.Atoi(g[1])
		ns, _ := strconv.ParseFloat(g[2], 64)
		r.RealSeconds = ns / 1e9
		f := strings.Fields(g[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "sim-s":
				r.SimSeconds = v
			case "api-calls/node":
				r.APICallsPerNode = v
			case "peak-heap-MB":
				r.PeakHeapMB = v
			}
		}
		res = append(res, r)
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("no BenchmarkRotateWorkers result in:\n%s", out)
	}
	return res, nil
}

// hostEnv describes this machine.
func hostEnv(ctx context.Context) report.Env {
	e := report.Env{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			e.MemoryGiB = int((kb + (1 << 19)) >> 20)
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				e.OS = strings.Trim(v, `"`)
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").Output(); err == nil {
		e.Docker = strings.TrimSpace(string(out))
	}
	e.CgroupVersion, _ = framework.DockerCgroupVersion(ctx)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "sigs.k8s.io/kind" {
				e.Kind = d.Version
			}
		}
	}
	if e.Kind == "" { // test binaries may carry no dependency list
		if data, err := os.ReadFile("../../go.mod"); err == nil {
			for _, l := range strings.Split(string(data), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "sigs.k8s.io/kind" {
					e.Kind = f[1]
				}
			}
		}
	}
	return e
}

// Command kind-lb-standin is an offline test fixture: a stand-in for the envoy image
// (docker.io/envoyproxy/envoy) that kind >= v0.32 runs as the load balancer of clusters with
// several control planes, for machines that cannot pull that image. hack/build-node-image.sh
// builds it into an image FROM scratch under the tag kind expects, only when the real image
// cannot be pulled, and labels it as a stand-in.
//
// It implements exactly what kind drives (sigs.k8s.io/kind pkg/cluster/internal/loadbalancer),
// and nothing else of envoy:
//
//   - `envoy -c BOOTSTRAP`: the bootstrap names the CDS and LDS files (dynamic_resources with
//     path_config_source); the admin listener kind configures is not served (kind never uses it).
//   - The LDS and CDS files are re-read whenever their content changes (kind writes them after
//     the container starts, by renaming temporary files into place, and rewrites them when the
//     set of control planes changes); an update that cannot be parsed or applied is logged and
//     the running configuration stays, as envoy does.
//   - Listeners: one tcp_proxy filter to a named cluster. Clusters: STRICT_DNS (endpoint names
//     resolved through the container's resolver, every dns_refresh_rate, V4_PREFERRED honoured)
//     or STATIC, ROUND_ROBIN, connect_timeout, and one active health check: HTTP(S) GET of the
//     path expecting 200 (TLS without chain verification when the health check's
//     transport_socket_match_criteria select an UpstreamTlsContext with ACCEPT_UNTRUSTED, as
//     kind's does), or TCP connect, with interval, timeout and the healthy/unhealthy thresholds.
//   - Traffic goes to healthy hosts in round-robin order; a host that refuses the TCP connection
//     within connect_timeout is skipped for the next. With no healthy host every host is tried
//     the same way, so a connection only ever reaches a control plane that accepted it. (Envoy's
//     panic threshold is not implemented: it would send traffic to hosts failing their checks.)
package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// pollInterval is how often the LDS and CDS files are compared with what was applied.
const pollInterval = 250 * time.Millisecond

func main() {
	logger := log.New(os.Stdout, "kind-lb-standin: ", log.LstdFlags|log.Lmicroseconds)
	configPath, err := parseArgs(os.Args[1:], logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kind-lb-standin (stand-in for envoy, as kind drives it):", err)
		os.Exit(1)
	}
	cdsPath, ldsPath, err := parseBootstrap(configPath)
	if err != nil {
		logger.Printf("bootstrap: %v", err)
		os.Exit(1)
	}
	logger.Printf("stand-in for envoy: bootstrap %s, clusters from %s, listeners from %s", configPath, cdsPath, ldsPath)
	p := newProxy(logger)
	w := &watcher{p: p, cdsPath: cdsPath, ldsPath: ldsPath}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		w.sync()
		select {
		case s := <-sigs:
			logger.Printf("%s: exiting", s)
			p.stop()
			return
		case <-tick.C:
		}
	}
}

// parseArgs accepts envoy's -c/--config-path; other flags are logged and ignored.
func parseArgs(args []string, logger *log.Logger) (string, error) {
	path := ""
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-c", "--config-path":
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a file", a)
			}
			path = args[i+1]
			i++
		default:
			logger.Printf("ignoring argument %q", a)
		}
	}
	if path == "" {
		return "", fmt.Errorf("usage: envoy -c BOOTSTRAP.yaml")
	}
	return path, nil
}

// watcher applies the CDS file, then the LDS file, whenever their content differs from what was
// last applied. Clusters go first, so that a new listener never points at a missing cluster.
type watcher struct {
	p                *proxy
	cdsPath, ldsPath string
	cds, lds         []byte // applied content
	cdsErr, ldsErr   string // last error logged, to log each one once
}

func (w *watcher) sync() {
	if data, err := os.ReadFile(w.cdsPath); err == nil && !bytes.Equal(data, w.cds) {
		if cs, err := parseClusters(w.cdsPath); err != nil {
			w.fail(&w.cdsErr, err)
		} else {
			w.p.applyClusters(cs)
			w.cds, w.cdsErr = data, ""
		}
	}
	if data, err := os.ReadFile(w.ldsPath); err == nil && !bytes.Equal(data, w.lds) {
		ls, err := parseListeners(w.ldsPath)
		if err == nil {
			err = w.p.applyListeners(ls)
		}
		if err != nil {
			w.fail(&w.ldsErr, err)
		} else {
			w.lds, w.ldsErr = data, ""
		}
	}
}

func (w *watcher) fail(last *string, err error) {
	if err.Error() != *last {
		w.p.logf("update rejected, keeping the running configuration: %v", err)
		*last = err.Error()
	}
}

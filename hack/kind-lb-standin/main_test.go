package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The shape kind v0.33.0 writes (pkg/cluster/internal/loadbalancer), with this test's endpoints
// and a faster health check.
const ldsTemplate = `
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: listener_apiserver
  address:
    socket_address:
      address: "127.0.0.1"
      port_value: %d
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: ingress_tcp
        cluster: kube_apiservers
`

const cdsTemplate = `
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: kube_apiservers
  connect_timeout: 0.25s
  type: STRICT_DNS
  lb_policy: ROUND_ROBIN
  dns_lookup_family: V4_PREFERRED
  health_checks:
  - timeout: 1s
    interval: 0.1s
    unhealthy_threshold: 2
    healthy_threshold: 1
    initial_jitter: 0s
    no_traffic_interval: 3s
    always_log_health_check_failures: true
    always_log_health_check_success: true
    event_log_path: /dev/stdout
    http_health_check:
      path: /healthz
    transport_socket_match_criteria:
      tls_mode: "true"
  transport_socket_matches:
  - name: "health_check_tls"
    match:
      tls_mode: "true"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context:
            trust_chain_verification: ACCEPT_UNTRUSTED
  load_assignment:
    cluster_name: kube_apiservers
    endpoints:
    - lb_endpoints:
%s`

func endpoints(hostPorts ...string) string {
	var b strings.Builder
	for _, hp := range hostPorts {
		h, p, _ := net.SplitHostPort(hp)
		fmt.Fprintf(&b, "      - endpoint:\n          address:\n            socket_address:\n              address: %s\n              port_value: %s\n", h, p)
	}
	return b.String()
}

// upstream is an HTTPS server like a kube-apiserver: /healthz answers healthz, /name its name.
func upstream(t *testing.T, name string, healthz int) *httptest.Server {
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(healthz)
			return
		}
		fmt.Fprint(w, name)
	}))
	t.Cleanup(s.Close)
	return s
}

func hostPort(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "https://") }

// writeAtomic writes like kind does: a temporary file renamed into place.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(data), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// served asks the listener for /name n times (new connection each) and counts the answers.
func served(port, n int) map[string]int {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // test upstreams
	}}
	out := map[string]int{}
	for i := 0; i < n; i++ {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/name", port))
		if err != nil {
			out["error"]++
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out[string(b)]++
	}
	return out
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFollowsKindConfig(t *testing.T) {
	a := upstream(t, "a", http.StatusOK)
	b := upstream(t, "b", http.StatusInternalServerError) // accepts TCP, fails its health check
	c := upstream(t, "c", http.StatusOK)
	closed := hostPort(c)
	c.Close() // refuses TCP
	d := upstream(t, "d", http.StatusOK)

	dir := t.TempDir()
	cds, lds := filepath.Join(dir, "cds.yaml"), filepath.Join(dir, "lds.yaml")
	// As kind's bootstrap command does before the first configuration: empty resources.
	writeAtomic(t, cds, "resources: []")
	writeAtomic(t, lds, "resources: []")
	p := newProxy(log.New(newTestWriter(t), "", 0))
	defer p.stop()
	w := &watcher{p: p, cdsPath: cds, ldsPath: lds}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			w.sync()
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-done }()

	// a is named "localhost" (resolved, V4_PREFERRED), the others by address.
	_, aPort, _ := net.SplitHostPort(hostPort(a))
	port := freePort(t)
	writeAtomic(t, cds, fmt.Sprintf(cdsTemplate, endpoints("localhost:"+aPort, hostPort(b), closed)))
	writeAtomic(t, lds, fmt.Sprintf(ldsTemplate, port))
	waitFor(t, "a to be served", func() bool { return served(port, 1)["a"] == 1 })
	if got := served(port, 30); got["a"] != 30 {
		t.Errorf("with a healthy, b failing /healthz and c refusing TCP: served %v, want only a", got)
	}

	// kind rewrites the clusters: d replaces a.
	writeAtomic(t, cds, fmt.Sprintf(cdsTemplate, endpoints(hostPort(d), hostPort(b), closed)))
	waitFor(t, "d to be served", func() bool { return served(port, 1)["d"] == 1 })
	if got := served(port, 30); got["d"] != 30 {
		t.Errorf("after the update: served %v, want only d", got)
	}

	// Round robin over two healthy hosts.
	e := upstream(t, "e", http.StatusOK)
	writeAtomic(t, cds, fmt.Sprintf(cdsTemplate, endpoints(hostPort(d), hostPort(e))))
	waitFor(t, "e to be served", func() bool { return served(port, 2)["e"] >= 1 })
	if got := served(port, 20); got["d"] != 10 || got["e"] != 10 {
		t.Errorf("round robin over d and e: served %v, want 10 each", got)
	}

	// No healthy host: only hosts that accept TCP get traffic (b), never the closed one.
	writeAtomic(t, cds, fmt.Sprintf(cdsTemplate, endpoints(closed, hostPort(b))))
	waitFor(t, "b to be served", func() bool { return served(port, 1)["b"] == 1 })
	if got := served(port, 10); got["b"] != 10 {
		t.Errorf("with no healthy host: served %v, want only b (the one accepting TCP)", got)
	}

	// An update that cannot be parsed is rejected; the running configuration stays.
	writeAtomic(t, cds, "resources:\n- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: x\n  lb_policy: MAGLEV\n")
	time.Sleep(200 * time.Millisecond)
	if got := served(port, 4); got["b"] != 4 {
		t.Errorf("after a rejected update: served %v, want b still", got)
	}

	// The listener moves to another port.
	writeAtomic(t, cds, fmt.Sprintf(cdsTemplate, endpoints(hostPort(a))))
	port2 := freePort(t)
	writeAtomic(t, lds, fmt.Sprintf(ldsTemplate, port2))
	waitFor(t, "the new port", func() bool { return served(port2, 1)["a"] == 1 })
	if got := served(port, 1); got["error"] != 1 {
		t.Errorf("old port still answers: %v", got)
	}
}

func TestParseRejectsWhatIsNotImplemented(t *testing.T) {
	dir := t.TempDir()
	for name, cfg := range map[string]string{
		"unknown field":  strings.Replace(fmt.Sprintf(cdsTemplate, endpoints("h:1")), "lb_policy:", "outlier_detection: {}\n  lb_policy:", 1),
		"lb policy":      strings.Replace(fmt.Sprintf(cdsTemplate, endpoints("h:1")), "ROUND_ROBIN", "RING_HASH", 1),
		"verified chain": strings.Replace(fmt.Sprintf(cdsTemplate, endpoints("h:1")), "ACCEPT_UNTRUSTED", "VERIFY_TRUST_CHAIN", 1),
	} {
		path := filepath.Join(dir, "cds.yaml")
		writeAtomic(t, path, cfg)
		if _, err := parseClusters(path); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	path := filepath.Join(dir, "ok.yaml")
	writeAtomic(t, path, fmt.Sprintf(cdsTemplate, endpoints("kind-control-plane:6443", "kind-control-plane2:6443")))
	cs, err := parseClusters(path)
	if err != nil {
		t.Fatal(err)
	}
	h := cs[0].health
	if len(cs) != 1 || !cs[0].dns || cs[0].connectTimeout != 250*time.Millisecond || len(cs[0].endpoints) != 2 ||
		h == nil || !h.tls || h.httpPath != "/healthz" || h.unhealthyThreshold != 2 || h.healthyMin != 1 || h.interval != 100*time.Millisecond {
		t.Errorf("parsed %+v (health %+v)", cs, h)
	}
}

// testWriter logs through t until the test ends (health checks may still log after that).
type testWriter struct {
	t    *testing.T
	done *atomic.Bool
}

func newTestWriter(t *testing.T) testWriter {
	w := testWriter{t: t, done: &atomic.Bool{}}
	t.Cleanup(func() { w.done.Store(true) })
	return w
}

func (w testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

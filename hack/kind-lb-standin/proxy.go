package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"
)

// proxy holds the running listeners and clusters and applies configuration updates.
type proxy struct {
	logf      func(format string, args ...any)
	resolver  *net.Resolver
	mu        sync.Mutex
	clusters  map[string]*clusterState
	listeners map[string]*listenerState // by listener name
}

func newProxy(logger *log.Logger) *proxy {
	return &proxy{
		logf:      logger.Printf,
		resolver:  net.DefaultResolver,
		clusters:  map[string]*clusterState{},
		listeners: map[string]*listenerState{},
	}
}

// hostState is one upstream address of a cluster and its active health.
type hostState struct {
	addr      string // ip:port
	healthy   bool   // passed the health check (hosts of clusters without one are always healthy)
	checked   bool   // at least one check finished
	successes int    // consecutive
	failures  int    // consecutive
}

type clusterState struct {
	cfg    cluster
	cancel context.CancelFunc
	mu     sync.Mutex
	hosts  []*hostState
	next   int // round robin
}

type listenerState struct {
	cfg listener
	ln  net.Listener
}

// applyClusters replaces the cluster set. A cluster whose configuration is unchanged keeps its
// hosts and their health.
func (p *proxy) applyClusters(cs []cluster) {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[string]cluster{}
	for _, c := range cs {
		want[c.name] = c
	}
	for name, st := range p.clusters {
		if c, ok := want[name]; ok && sameCluster(c, st.cfg) {
			delete(want, name)
			continue
		}
		st.cancel()
		delete(p.clusters, name)
		p.logf("cluster %s removed or changed", name)
	}
	for name, c := range want {
		ctx, cancel := context.WithCancel(context.Background())
		st := &clusterState{cfg: c, cancel: cancel}
		p.clusters[name] = st
		p.logf("cluster %s: endpoints %v, health check %s", name, c.endpoints, describeHealth(c.health))
		go p.run(ctx, st)
	}
}

func sameCluster(a, b cluster) bool {
	return a.name == b.name && a.connectTimeout == b.connectTimeout && a.dns == b.dns &&
		a.dnsRefresh == b.dnsRefresh && a.preferIPv4 == b.preferIPv4 &&
		slices.Equal(a.endpoints, b.endpoints) && fmt.Sprint(a.health) == fmt.Sprint(b.health)
}

func describeHealth(h *healthCheck) string {
	switch {
	case h == nil:
		return "none (every host is used)"
	case h.httpPath == "":
		return fmt.Sprintf("TCP connect every %s", h.interval)
	case h.tls:
		return fmt.Sprintf("HTTPS GET %s every %s (chain not verified)", h.httpPath, h.interval)
	default:
		return fmt.Sprintf("HTTP GET %s every %s", h.httpPath, h.interval)
	}
}

// applyListeners replaces the listener set: new addresses are bound, removed ones closed, and
// a listener whose address is unchanged only switches cluster. An address that cannot be bound
// is an error and leaves the previous listeners in place.
func (p *proxy) applyListeners(ls []listener) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[string]listener{}
	for _, l := range ls {
		want[l.name] = l
	}
	opened := map[string]*listenerState{}
	for name, l := range want {
		if st, ok := p.listeners[name]; ok && st.cfg.address == l.address {
			continue
		}
		ln, err := net.Listen("tcp", l.address)
		if err != nil {
			for _, o := range opened {
				o.ln.Close()
			}
			return fmt.Errorf("listener %s: %w", name, err)
		}
		opened[name] = &listenerState{cfg: l, ln: ln}
	}
	for name, st := range p.listeners {
		l, keep := want[name]
		if keep && opened[name] == nil {
			st.cfg = l // same address; the cluster may have changed
			continue
		}
		st.ln.Close()
		delete(p.listeners, name)
		p.logf("listener %s on %s closed", name, st.cfg.address)
	}
	for name, st := range opened {
		p.listeners[name] = st
		p.logf("listener %s on %s -> cluster %s", name, st.cfg.address, st.cfg.cluster)
		go p.serve(st)
	}
	return nil
}

func (p *proxy) serve(st *listenerState) {
	for {
		conn, err := st.ln.Accept()
		if err != nil {
			return // closed by applyListeners
		}
		p.mu.Lock()
		cl := p.clusters[st.cfg.cluster]
		p.mu.Unlock()
		go p.forward(conn, cl, st.cfg.cluster)
	}
}

// forward proxies one downstream connection to the first host, in round-robin order among the
// healthy ones, that accepts a TCP connection within the cluster's connect timeout. If no host is
// healthy (or none has been checked yet) every host is tried the same way, so a connection only
// ever reaches an upstream that accepted it.
func (p *proxy) forward(down net.Conn, cl *clusterState, name string) {
	defer down.Close()
	if cl == nil {
		p.logf("connection from %s: no cluster %s", down.RemoteAddr(), name)
		return
	}
	var up net.Conn
	for _, addr := range cl.candidates() {
		c, err := net.DialTimeout("tcp", addr, cl.cfg.connectTimeout)
		if err == nil {
			up = c
			break
		}
		p.logf("cluster %s: upstream %s: %v", name, addr, err)
	}
	if up == nil {
		p.logf("connection from %s: no upstream of cluster %s accepted it", down.RemoteAddr(), name)
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, down)
	go pipe(down, up)
	<-done
	<-done
}

// candidates are the host addresses to try, healthy ones first in round-robin order.
func (c *clusterState) candidates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.hosts)
	if n == 0 {
		return nil
	}
	start := c.next % n
	c.next++
	var healthy, rest []string
	for i := 0; i < n; i++ {
		h := c.hosts[(start+i)%n]
		if h.healthy {
			healthy = append(healthy, h.addr)
		} else {
			rest = append(rest, h.addr)
		}
	}
	if len(healthy) > 0 {
		return healthy
	}
	return rest
}

// run resolves the cluster's endpoints (every dnsRefresh for STRICT_DNS) and health-checks its
// hosts until ctx ends.
func (p *proxy) run(ctx context.Context, c *clusterState) {
	resolve := time.NewTimer(0)
	defer resolve.Stop()
	var check <-chan time.Time
	if c.cfg.health != nil {
		t := time.NewTicker(c.cfg.health.interval)
		defer t.Stop()
		check = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-resolve.C:
			p.resolve(ctx, c)
			if c.cfg.health != nil {
				p.checkAll(ctx, c)
			}
			if c.cfg.dns {
				resolve.Reset(c.cfg.dnsRefresh)
			}
		case <-check:
			p.checkAll(ctx, c)
		}
	}
}

func (p *proxy) resolve(ctx context.Context, c *clusterState) {
	var addrs []string
	for _, ep := range c.cfg.endpoints {
		host, port, _ := net.SplitHostPort(ep)
		if !c.cfg.dns || net.ParseIP(host) != nil {
			addrs = append(addrs, ep)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ips, err := p.resolver.LookupIPAddr(rctx, host)
		cancel()
		if err != nil {
			p.logf("cluster %s: resolving %s: %v", c.cfg.name, host, err)
			continue
		}
		sort.SliceStable(ips, func(i, j int) bool {
			return c.cfg.preferIPv4 && ips[i].IP.To4() != nil && ips[j].IP.To4() == nil
		})
		for _, ip := range ips {
			addrs = append(addrs, net.JoinHostPort(ip.IP.String(), port))
			if c.cfg.preferIPv4 && ip.IP.To4() != nil {
				break // V4_PREFERRED: the IPv4 addresses only, when there are any
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := map[string]*hostState{}
	for _, h := range c.hosts {
		old[h.addr] = h
	}
	var hosts []*hostState
	for _, a := range addrs {
		if h, ok := old[a]; ok {
			hosts = append(hosts, h)
			delete(old, a)
			continue
		}
		hosts = append(hosts, &hostState{addr: a, healthy: c.cfg.health == nil})
		p.logf("cluster %s: host %s added", c.cfg.name, a)
	}
	for a := range old {
		p.logf("cluster %s: host %s removed", c.cfg.name, a)
	}
	c.hosts = hosts
}

func (p *proxy) checkAll(ctx context.Context, c *clusterState) {
	c.mu.Lock()
	hosts := slices.Clone(c.hosts)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func(h *hostState) {
			defer wg.Done()
			err := probe(ctx, c.cfg.health, h.addr)
			c.mu.Lock()
			defer c.mu.Unlock()
			was := h.healthy
			first := !h.checked
			h.checked = true
			if err == nil {
				h.failures = 0
				h.successes++
				if h.successes >= c.cfg.health.healthyMin {
					h.healthy = true
				}
			} else {
				h.successes = 0
				h.failures++
				if h.failures >= c.cfg.health.unhealthyThreshold {
					h.healthy = false
				}
			}
			if first || was != h.healthy {
				state := "healthy"
				if !h.healthy {
					state = fmt.Sprintf("unhealthy (%v)", err)
				}
				p.logf("cluster %s: host %s %s", c.cfg.name, h.addr, state)
			}
		}(h)
	}
	wg.Wait()
}

// probe runs one health check: a TCP connect, or an HTTP(S) GET that must answer 200 (envoy's
// default expected status).
func probe(ctx context.Context, h *healthCheck, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if h.httpPath == "" {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	scheme := "http"
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	if h.tls {
		scheme = "https"
		// ACCEPT_UNTRUSTED: the chain is not verified; no SNI, as envoy's UpstreamTlsContext
		// without an sni field sends none.
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // what the configuration asks for
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+h.httpPath, nil)
	if err != nil {
		return err
	}
	req.Host = h.httpHost
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", h.httpPath, strconv.Itoa(resp.StatusCode))
	}
	return nil
}

// stop closes every listener and stops every cluster.
func (p *proxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.listeners {
		l.ln.Close()
	}
	for _, c := range p.clusters {
		c.cancel()
	}
}

package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// fakeNode is a kubeadm node laid out in a temp dir, with in-process
// stand-ins for everything the agent talks to: its processes (a /proc of
// its own), systemd, and real TLS servers that serve the node's files the
// way the components do (etcd and kube-apiserver re-read them per
// handshake; the kubelet loads its serving certificate when it starts; the
// API server authenticates client certificates against the cluster CA).
// The agent may dial nothing else: any other address fails the test.
type fakeNode struct {
	t    *testing.T
	root string
	name string
	node *pkitest.Node
	proc *fakeProc
	// apiAddr is the API server's address (the control plane's).
	apiAddr string
	api     *http.Server
	// signals records "name SIGNAL" for every signal a component got.
	signals []string
	// onAPIServerDown, if set, runs when kube-apiserver is signalled (what
	// its clients do when it goes away).
	onAPIServerDown func()

	mu sync.Mutex
	// apiRejects makes the API server answer 401 to every client.
	apiRejects bool
	// etcdStale makes etcd keep serving the certificate it had at start.
	etcdStale bool
	// kubeletServing is what the kubelet loaded when it (re)started.
	kubeletServing *tls.Certificate
	// kubeletClientCAs and etcdCAs are the CAs the kubelet and etcd
	// loaded when they (re)started.
	kubeletClientCAs *x509.CertPool
	etcdCAs          *x509.CertPool
	allowed          map[string]bool
	restarts         map[string]int
}

// newFakeNode lays out a control plane (cp nil) or a worker of cp's
// cluster, whose API server it then uses.
func newFakeNode(t *testing.T, name string, alg pkitest.Algorithm, cp *fakeNode) *fakeNode {
	t.Helper()
	return newFakeNodeSince(t, name, alg, cp, time.Now().Add(-300*24*time.Hour))
}

// newFakeNodeSince is newFakeNode for a control plane whose PKI was made at
// start (its leaves expired if that is more than a year ago).
func newFakeNodeSince(t *testing.T, name string, alg pkitest.Algorithm, cp *fakeNode, start time.Time) *fakeNode {
	t.Helper()
	f := &fakeNode{t: t, root: t.TempDir(), name: name, allowed: map[string]bool{}, restarts: map[string]int{}}
	var api string
	if cp == nil {
		f.node = pkitest.ControlPlaneSince(t, f.root, name, alg, start)
		api = f.serveAPIServer("127.0.0.1:0")
	} else {
		ca, err := pki.LoadAuthority(cp.root, pki.ClusterCA)
		must(t, err)
		f.node = pkitest.Worker(t, f.root, name, alg, ca)
		api = f.allow(cp.apiAddr)
	}
	f.apiAddr = api
	f.proc = newFakeProc(t, f.restarted)
	f.proc.onSignal = f.signalled
	f.proc.start("kubelet")
	f.reloadKubelet()
	kubelet := f.serveTLSConfig(func() *tls.Config {
		f.mu.Lock()
		defer f.mu.Unlock()
		return &tls.Config{Certificates: []tls.Certificate{*f.kubeletServing}, ClientCAs: f.kubeletClientCAs, ClientAuth: tls.VerifyClientCertIfGiven}
	}, okHandler())
	kubeletHealth := f.serveHTTP(okHandler())
	f.node.SetServer(t, pki.KubeletKubeconfig, "https://"+api)
	must(t, os.WriteFile(filepath.Join(f.root, pki.KubeletConfigFile), []byte(fmt.Sprintf(
		"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: 127.0.0.1\nport: %s\nhealthzBindAddress: 127.0.0.1\nhealthzPort: %s\nauthentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\n",
		port(kubelet), port(kubeletHealth))), 0o644))
	must(t, os.MkdirAll(filepath.Join(f.root, "run/systemd"), 0o755))
	must(t, os.WriteFile(filepath.Join(f.root, "run/systemd/private"), nil, 0o600)) // stands in for the socket
	if cp != nil {
		return f
	}
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		f.proc.start(c)
	}
	f.etcdCAs = f.pool(pki.EtcdCA)
	etcdCert := func(base string) func() *tls.Config {
		current := f.fileCert(base)
		atStart, err := current()
		must(t, err)
		return func() *tls.Config {
			f.mu.Lock()
			stale, cas := f.etcdStale, f.etcdCAs
			f.mu.Unlock()
			c := atStart
			if !stale {
				c, err = current()
				must(t, err)
			}
			return &tls.Config{Certificates: []tls.Certificate{*c}, ClientCAs: cas, ClientAuth: tls.RequireAndVerifyClientCert}
		}
	}
	defer f.watchManifest("kube-controller-manager")
	f.node.WriteManifests(t, pkitest.Endpoints{
		APIServer:     api,
		EtcdClient:    f.serveTLSConfig(etcdCert("etc/kubernetes/pki/etcd/server"), okHandler()),
		EtcdPeer:      f.serveTLSConfig(etcdCert("etc/kubernetes/pki/etcd/peer"), okHandler()),
		EtcdHealth:    f.serveHTTP(okHandler()),
		ControllerMgr: f.serveHTTPS(okHandler()),
		Scheduler:     f.serveHTTPS(okHandler()),
	})
	return f
}

// watchManifest plays the kubelet for a static pod: when its manifest
// changes, the pod is re-created with the manifest's command line.
func (f *fakeNode) watchManifest(name string) {
	read := func() ([]byte, []string) {
		data, err := pki.ReadFile(f.root, pki.ManifestsDir+"/"+name+".yaml")
		if err != nil {
			return nil, nil
		}
		pod, err := pki.ParseStaticPod(data)
		if err != nil || len(pod.Spec.Containers) == 0 {
			return data, nil
		}
		c := pod.Spec.Containers[0]
		return data, append(append([]string{}, c.Command[1:]...), c.Args...)
	}
	seen, args := read()
	f.proc.setArgs(name, args)
	stop := make(chan struct{})
	f.t.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if data, args := read(); data != nil && string(data) != string(seen) {
				seen = data
				f.proc.recreate(name, args)
			}
		}
	}()
}

// agent is an agent for this node that reaches only the node's servers.
func (f *fakeNode) agent() *Agent {
	a := New(f.root)
	a.ProcDir = f.proc.dir
	a.Timeout = 2 * time.Second
	a.Signal = f.proc.signal
	a.RestartUnit = func(ctx context.Context, unit string) error {
		if unit != "kubelet.service" {
			return fmt.Errorf("unexpected unit %s", unit)
		}
		return f.proc.restart("kubelet")
	}
	a.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.mu.Lock()
		ok := f.allowed[addr]
		f.mu.Unlock()
		if !ok {
			f.t.Errorf("the agent dialed %s, which is not a server of this test", addr)
			return nil, fmt.Errorf("%s is outside the test", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return a
}

// signalled plays a component's answer to a signal: kube-apiserver, sent
// SIGTERM, stops listening and drains (it exits later); anything else dies
// and is restarted at once (the kubelet does it for static pods).
func (f *fakeNode) signalled(name string, sig syscall.Signal) (restart bool) {
	f.mu.Lock()
	f.signals = append(f.signals, name+" "+sig.String())
	api := f.api
	f.mu.Unlock()
	if name == "kube-apiserver" && f.onAPIServerDown != nil {
		f.onAPIServerDown()
	}
	if name == "kube-apiserver" && api != nil {
		_ = api.Close()
		if sig == syscall.SIGTERM {
			return false
		}
		f.serveAPIServer(f.apiAddr)
	}
	return true
}

func (f *fakeNode) restarted(name string) {
	f.mu.Lock()
	f.restarts[name]++
	f.mu.Unlock()
	if name == "kubelet" {
		f.reloadKubelet()
	}
	if name == "etcd" {
		pool := f.pool(pki.EtcdCA)
		f.mu.Lock()
		f.etcdCAs = pool
		f.mu.Unlock()
	}
}

func (f *fakeNode) restartsOf(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restarts[name]
}

// reloadKubelet loads the serving certificate as the kubelet does at start.
func (f *fakeNode) reloadKubelet() {
	base := pki.KubeletSelfSignedCert
	keyFile := pki.KubeletSelfSignedKey
	if pki.Exists(f.root, pki.KubeletServerCurrent) {
		base, keyFile = pki.KubeletServerCurrent, pki.KubeletServerCurrent
	}
	c, err := loadPair(f.root, base, keyFile)
	if err != nil {
		f.t.Fatalf("kubelet serving certificate: %v", err)
	}
	pool := f.pool(pki.ClusterCA) // kubeadm's clientCAFile
	f.mu.Lock()
	f.kubeletServing, f.kubeletClientCAs = c, pool
	f.mu.Unlock()
}

func loadPair(root, certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := pki.ReadFile(root, certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.ReadFile(root, keyFile)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	return &c, err
}

// fileCert reads base.crt and base.key on every handshake, as etcd and
// kube-apiserver do.
func (f *fakeNode) fileCert(base string) func() (*tls.Certificate, error) {
	return func() (*tls.Certificate, error) { return loadPair(f.root, base+".crt", base+".key") }
}

func (f *fakeNode) pool(ca pki.CA) *x509.CertPool {
	data, err := pki.ReadFile(f.root, ca.CertFile)
	must(f.t, err)
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(data)
	return p
}

// apiServer answers /readyz, and GET node only to a client certificate the
// cluster CA signed (and not at all when apiRejects).
func (f *fakeNode) apiServer(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	rejects := f.apiRejects
	f.mu.Unlock()
	if r.URL.Path == "/readyz" {
		return
	}
	if rejects || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/api/v1/nodes/") {
		http.NotFound(w, r)
	}
}

func okHandler() http.Handler { return http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}) }

func (f *fakeNode) allow(addr string) string {
	f.mu.Lock()
	f.allowed[addr] = true
	f.mu.Unlock()
	return addr
}

// serveAPIServer starts the API server on addr ("host:0" for any port);
// a SIGTERM to kube-apiserver closes it (kube-apiserver stops listening at
// once), its restart opens it again on the same address.
func (f *fakeNode) serveAPIServer(addr string) string {
	ln, err := net.Listen("tcp", addr)
	must(f.t, err)
	srv := f.serveTLSOn(ln, f.fileCert("etc/kubernetes/pki/apiserver"), f.pool(pki.ClusterCA), tls.VerifyClientCertIfGiven, http.HandlerFunc(f.apiServer))
	f.mu.Lock()
	f.api = srv
	f.mu.Unlock()
	return f.allow(ln.Addr().String())
}

func (f *fakeNode) serveTLSOn(ln net.Listener, cert func() (*tls.Certificate, error), clientCAs *x509.CertPool, auth tls.ClientAuthType, h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, TLSConfig: &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert() },
		ClientCAs:      clientCAs, ClientAuth: auth,
	}, ErrorLog: nullLog()}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	f.t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// serveTLSConfig serves with the TLS configuration config returns for
// each connection: what the component loaded (and reloads).
func (f *fakeNode) serveTLSConfig(config func() *tls.Config, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(f.t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: nullLog(), TLSConfig: &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return config(), nil },
	}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	f.t.Cleanup(func() { _ = srv.Close() })
	return f.allow(ln.Addr().String())
}

func (f *fakeNode) serveHTTP(h http.Handler) string {
	s := httptest.NewServer(h)
	f.t.Cleanup(s.Close)
	return f.allow(s.Listener.Addr().String())
}

func (f *fakeNode) serveHTTPS(h http.Handler) string {
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = nullLog()
	s.StartTLS()
	f.t.Cleanup(s.Close)
	return f.allow(s.Listener.Addr().String())
}

func nullLog() *log.Logger { return log.New(io.Discard, "", 0) }

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// fakeProc is a /proc of the node's own: each process a directory with
// cmdline and stat. A signalled or restarted process comes back at once
// with a new PID, as the kubelet (static pods) and systemd make them.
type fakeProc struct {
	t       *testing.T
	dir     string
	mu      sync.Mutex
	next    int
	pids    map[string]int
	args    map[string][]string // command-line arguments after argv[0]
	onStart func(name string)
	// onSignal, if set, says whether a signalled process dies (and so
	// comes back with a new PID).
	onSignal func(name string, sig syscall.Signal) bool
}

func newFakeProc(t *testing.T, onRestart func(string)) *fakeProc {
	p := &fakeProc{t: t, dir: t.TempDir(), next: 1000, pids: map[string]int{}, args: map[string][]string{}, onStart: onRestart}
	must(t, os.WriteFile(filepath.Join(p.dir, "stat"), []byte(fmt.Sprintf("cpu 1 2 3\nbtime %d\n", time.Now().Add(-time.Hour).Unix())), 0o644))
	return p
}

func (p *fakeProc) start(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	pid := p.next
	dir := filepath.Join(p.dir, strconv.Itoa(pid))
	must(p.t, os.MkdirAll(dir, 0o755))
	p.writeCmdline(dir, name)
	// starttime (field 22) in ticks since boot: an hour ago plus the pid.
	must(p.t, os.WriteFile(filepath.Join(dir, "stat"), []byte(fmt.Sprintf("%d (%s) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0", pid, name, 360000+pid)), 0o644))
	p.pids[name] = pid
	return pid
}

// writeCmdline writes the process's command line (into its /proc dir).
func (p *fakeProc) writeCmdline(dir, name string) {
	args := p.args[name]
	if args == nil {
		args = []string{"--v=2"}
	}
	cmdline := "/usr/bin/" + name + "\x00"
	for _, a := range args {
		cmdline += a + "\x00"
	}
	must(p.t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte(cmdline), 0o644))
}

// setArgs gives the running process name these arguments.
func (p *fakeProc) setArgs(name string, args []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.args[name] = args
	p.writeCmdline(filepath.Join(p.dir, strconv.Itoa(p.pids[name])), name)
}

// recreate replaces a process by one with new arguments, as the kubelet
// re-creates a static pod whose manifest changed.
func (p *fakeProc) recreate(name string, args []string) {
	p.mu.Lock()
	p.args[name] = args
	p.mu.Unlock()
	_ = p.restart(name)
}

func (p *fakeProc) pid(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pids[name]
}

func (p *fakeProc) restart(name string) error {
	old := p.pid(name)
	if old == 0 {
		return fmt.Errorf("no %s process", name)
	}
	must(p.t, os.RemoveAll(filepath.Join(p.dir, strconv.Itoa(old))))
	p.start(name)
	p.onStart(name)
	return nil
}

// signal restarts the process pid names; it never signals a real process.
func (p *fakeProc) signal(pid int, sig syscall.Signal) error {
	p.mu.Lock()
	var name string
	for n, q := range p.pids {
		if q == pid {
			name = n
		}
	}
	p.mu.Unlock()
	if name == "" {
		return errors.New("no such process")
	}
	if p.onSignal != nil && !p.onSignal(name, sig) {
		return nil
	}
	return p.restart(name)
}

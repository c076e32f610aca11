package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// staticPod is a control-plane component as its kubeadm manifest describes it.
type staticPod struct {
	name  string            // kube-apiserver, etcd, ...
	flags map[string]string // --key=value flags of its command
	probe *corev1.HTTPGetAction
	ports map[string]int32 // named container ports (kubeadm's probes use "probe-port")
}

// readStaticPod parses /etc/kubernetes/manifests/<name>.yaml.
func readStaticPod(root, name string) (*staticPod, error) {
	data, err := pki.ReadFile(root, filepath.Join(pki.ManifestsDir, name+".yaml"))
	if err != nil {
		return nil, err
	}
	pod, err := pki.ParseStaticPod(data)
	if err != nil {
		return nil, fmt.Errorf("/%s/%s.yaml: %w", pki.ManifestsDir, name, err)
	}
	c := pod.Spec.Containers[0]
	sp := &staticPod{name: name, flags: pki.ContainerFlags(c), ports: map[string]int32{}}
	for _, p := range c.Ports {
		if p.Name != "" {
			sp.ports[p.Name] = p.ContainerPort
		}
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe, c.LivenessProbe} {
		if p != nil && p.HTTPGet != nil {
			sp.probe = p.HTTPGet
			break
		}
	}
	return sp, nil
}

// healthURL is the component's own HTTP health endpoint from its manifest.
func (sp *staticPod) healthURL() (string, error) {
	if sp.probe == nil {
		return "", fmt.Errorf("%s: manifest has no HTTP probe to check health with", sp.name)
	}
	host := sp.probe.Host
	if host == "" {
		host = "127.0.0.1"
	}
	scheme := strings.ToLower(string(sp.probe.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	port := sp.probe.Port.String()
	if sp.probe.Port.Type == intstr.String {
		p, ok := sp.ports[sp.probe.Port.StrVal]
		if !ok {
			return "", fmt.Errorf("%s: manifest probe names port %q, which the container does not declare", sp.name, sp.probe.Port.StrVal)
		}
		port = strconv.Itoa(int(p))
	}
	return fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, port), sp.probe.Path), nil
}

// healthy asks a component's health endpoint. Their serving certificates
// are self-signed (kube-controller-manager, kube-scheduler) or are what is
// being rotated, so they are not verified here; the serial checks are.
func (a *Agent) healthy(ctx context.Context, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:     a.dial,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // health only
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", u, resp.Status)
	}
	return nil
}

// dialFunc opens a connection; the agent's is replaceable so tests reach
// only their own servers.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// servedCertificate makes a TLS handshake without SNI (as kube-apiserver and
// etcd peers connect) and returns the leaf the server presented. A client
// certificate is offered where the server requires one (etcd).
func servedCertificate(ctx context.Context, dial dialFunc, addr string, client *tls.Certificate) (*x509.Certificate, error) {
	var served *x509.Certificate
	cfg := &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // we compare the serial ourselves
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				served = cs.PeerCertificates[0]
			}
			return nil
		},
	}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := dial(dctx, "tcp", addr)
	if err == nil {
		conn := tls.Client(raw, cfg)
		err = conn.HandshakeContext(dctx)
		conn.Close()
	}
	if served != nil {
		return served, nil
	}
	return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
}

// waitServes waits until addr serves the certificate with the given serial.
func waitServes(ctx context.Context, dial dialFunc, addr, serial string, client *tls.Certificate, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		c, err := servedCertificate(ctx, dial, addr, client)
		if err == nil && c.SerialNumber.String() == serial {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "still serves serial " + c.SerialNumber.String()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not serve the new certificate (serial %s) after %s: %s", addr, serial, timeout, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// hostPort extracts host:port of the first https URL in a comma-separated
// list such as etcd's --listen-client-urls.
func hostPort(urls string) (string, error) {
	for _, s := range strings.Split(urls, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err == nil && u.Scheme == "https" && u.Port() != "" {
			return u.Host, nil
		}
	}
	return "", fmt.Errorf("no https URL with a port in %q", urls)
}

// process is a running process found in the host's /proc (the agent pod
// shares the host's PID namespace).
type process struct {
	pid       int
	startTick uint64 // start time in clock ticks since boot
}

// findProcesses lists processes whose argv[0] has the given base name.
func findProcesses(procDir, name string) ([]process, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, err
	}
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(procDir, e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		if filepath.Base(string(argv0)) != name {
			continue
		}
		start, err := startTicks(procDir, pid)
		if err != nil {
			continue
		}
		out = append(out, process{pid: pid, startTick: start})
	}
	return out, nil
}

// startTicks reads field 22 (starttime) of /proc/PID/stat.
func startTicks(procDir string, pid int) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after it are
	// counted from the closing parenthesis.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat of pid %d", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed stat of pid %d", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// onlyProcess returns the single process named name; several (another
// cluster's nodes would be in other PID namespaces) or none is an error.
func onlyProcess(procDir, name string) (process, error) {
	ps, err := findProcesses(procDir, name)
	if err != nil {
		return process{}, err
	}
	if len(ps) != 1 {
		return process{}, fmt.Errorf("expected one %s process on the node, found %d", name, len(ps))
	}
	return ps[0], nil
}

// restartStatic stops a static pod's process with sig; the kubelet starts
// a new container at once (restartPolicy Always). It waits for a new process
// and for the component's health endpoint. Stopping the process instead of
// editing the manifest keeps the outage to seconds (see docs: reload.md).
func (a *Agent) restartStatic(ctx context.Context, sp *staticPod, sig syscall.Signal) (oldPID, newPID int, err error) {
	old, err := onlyProcess(a.ProcDir, sp.name)
	if err != nil {
		return 0, 0, err
	}
	if err := a.Signal(old.pid, sig); err != nil {
		return old.pid, 0, fmt.Errorf("signalling %s (pid %d): %w", sp.name, old.pid, err)
	}
	newPID, err = a.awaitNewProcess(ctx, sp, old)
	return old.pid, newPID, err
}

// awaitNewProcess waits until the static pod runs a process other than old
// (none, if old is the zero process) and its health endpoint answers.
func (a *Agent) awaitNewProcess(ctx context.Context, sp *staticPod, old process) (int, error) {
	u, err := sp.healthURL()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	var last error
	for {
		ps, err := findProcesses(a.ProcDir, sp.name)
		if err == nil && len(ps) == 1 && ps[0] != old {
			if last = a.healthy(ctx, u); last == nil {
				return ps[0].pid, nil
			}
		} else if err != nil {
			last = err
		} else {
			last = fmt.Errorf("waiting for a new %s process (found %d)", sp.name, len(ps))
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s did not come back healthy within %s: %v", sp.name, a.Timeout, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

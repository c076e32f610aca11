package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// systemdRestart asks systemd on the host, over its private D-Bus socket,
// to restart a unit. It returns once systemd accepted the job.
func systemdRestart(socket string) func(ctx context.Context, unit string) error {
	return func(ctx context.Context, unit string) error {
		conn, err := dbus.Dial("unix:path="+socket, dbus.WithContext(ctx))
		if err != nil {
			return fmt.Errorf("connecting to systemd at %s: %w", socket, err)
		}
		defer conn.Close()
		if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			return fmt.Errorf("authenticating to systemd: %w", err)
		}
		var job dbus.ObjectPath
		obj := conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
		if err := obj.CallWithContext(ctx, "org.freedesktop.systemd1.Manager.RestartUnit", 0, unit, "replace").Store(&job); err != nil {
			return fmt.Errorf("systemd: restarting %s: %w", unit, err)
		}
		return nil
	}
}

// restartKubeletAndWait restarts kubelet.service and waits for a new
// kubelet process (not oldPID; 0 reads the current one first) that answers
// its health endpoint. res, if given, records the restart.
func (a *Agent) restartKubeletAndWait(ctx context.Context, oldPID int, res *api.RenewResult) (*api.KubeletProcess, error) {
	if oldPID == 0 {
		if st, err := a.kubeletStatus(ctx); err == nil {
			oldPID = st.PID
		}
	}
	start := time.Now()
	if err := a.RestartUnit(ctx, "kubelet.service"); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	var last string
	for {
		st, err := a.kubeletStatus(ctx)
		switch {
		case err != nil:
			last = err.Error()
		case st.PID == oldPID:
			last = "kubelet still runs as the old process"
		case !st.Healthy:
			last = "the new kubelet is not healthy yet"
		default:
			if res != nil {
				res.Restarted = append(res.Restarted, api.Restarted{Component: "kubelet", OldPID: oldPID, NewPID: st.PID, Seconds: time.Since(start).Seconds()})
			}
			return st, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kubelet did not come back healthy within %s: %s", a.Timeout, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// kubeletStatus reports the running kubelet and whether it answers its
// health endpoint.
func (a *Agent) kubeletStatus(ctx context.Context) (*api.KubeletProcess, error) {
	p, err := onlyProcess(a.ProcDir, "kubelet")
	if err != nil {
		return nil, err
	}
	boot, err := bootTime(a.ProcDir)
	if err != nil {
		return nil, err
	}
	// Clock ticks are 1/100 s on every Linux architecture Kubernetes runs on.
	started := boot.Add(time.Duration(p.startTick) * 10 * time.Millisecond)
	st := &api.KubeletProcess{PID: p.pid, StartedAt: started.UTC()}
	st.Healthy = a.healthy(ctx, "http://"+a.kubeletConfig().healthz()) == nil
	return st, nil
}

// kubeletConfig is what the agent needs of /var/lib/kubelet/config.yaml.
type kubeletConfig struct {
	Address            string `json:"address"`
	Port               int    `json:"port"`
	HealthzBindAddress string `json:"healthzBindAddress"`
	HealthzPort        *int   `json:"healthzPort"`
}

func (a *Agent) kubeletConfig() kubeletConfig {
	var cfg kubeletConfig
	if data, err := pki.ReadFile(a.Root, pki.KubeletConfigFile); err == nil {
		_ = yaml.Unmarshal(data, &cfg)
	}
	return cfg
}

// healthz is host:port/path of the kubelet's healthz endpoint (kubeadm's
// default 127.0.0.1:10248).
func (c kubeletConfig) healthz() string {
	host, port := "127.0.0.1", 10248
	if c.HealthzBindAddress != "" && !unspecified(c.HealthzBindAddress) {
		host = c.HealthzBindAddress
	}
	if c.HealthzPort != nil && *c.HealthzPort > 0 {
		port = *c.HealthzPort
	}
	return net.JoinHostPort(host, strconv.Itoa(port)) + "/healthz"
}

// kubeletServingAddr is where the kubelet serves its API (:10250).
func (a *Agent) kubeletServingAddr() string {
	c := a.kubeletConfig()
	host, port := "127.0.0.1", 10250
	if c.Address != "" && !unspecified(c.Address) {
		host = c.Address
	}
	if c.Port > 0 {
		port = c.Port
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func unspecified(addr string) bool {
	ip := net.ParseIP(addr)
	return ip != nil && ip.IsUnspecified()
}

// verifyKubeletClient proves the kubelet's new client certificate
// authenticates: it asks the API server that kubelet.conf names, verified
// against kubelet.conf's CA, for the node's own Node object with that
// certificate. Any answer but 401 means the certificate was accepted.
func (a *Agent) verifyKubeletClient(ctx context.Context, node string, certPEM, keyPEM []byte) (string, error) {
	server, caPEM, err := a.kubeletServer()
	if err != nil {
		return "", err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return "", fmt.Errorf("/%s: no CA certificate to verify %s with", pki.KubeletKubeconfig, server)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     a.dial,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
	}}
	defer client.CloseIdleConnections()
	u := strings.TrimSuffix(server, "/") + "/api/v1/nodes/" + url.PathEscape(node)
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return "", err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				return fmt.Sprintf("the API server at %s accepts the new kubelet client certificate (GET node: %s)", server, resp.Status), nil
			}
			last = "401 Unauthorized"
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the API server at %s does not accept the new kubelet client certificate: %s", server, last)
		case <-time.After(time.Second):
		}
	}
}

// kubeletServer is the server kubelet.conf's current context names, with
// the CA certificate it trusts for it.
func (a *Agent) kubeletServer() (server string, caPEM []byte, err error) {
	data, err := pki.ReadFile(a.Root, pki.KubeletKubeconfig)
	if err != nil {
		return "", nil, err
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return "", nil, fmt.Errorf("/%s: %w", pki.KubeletKubeconfig, err)
	}
	kctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return "", nil, fmt.Errorf("/%s: current context %q not found", pki.KubeletKubeconfig, cfg.CurrentContext)
	}
	cluster, ok := cfg.Clusters[kctx.Cluster]
	if !ok || cluster.Server == "" {
		return "", nil, fmt.Errorf("/%s: cluster %q has no server", pki.KubeletKubeconfig, kctx.Cluster)
	}
	caPEM = cluster.CertificateAuthorityData
	if len(caPEM) == 0 && cluster.CertificateAuthority != "" {
		if caPEM, err = pki.ReadFile(a.Root, strings.TrimPrefix(filepath.Clean(cluster.CertificateAuthority), "/")); err != nil {
			return "", nil, err
		}
	}
	return cluster.Server, caPEM, nil
}

func bootTime(procDir string) (time.Time, error) {
	f, err := os.Open(filepath.Join(procDir, "stat"))
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Unix(sec, 0), err
		}
	}
	return time.Time{}, errors.New("no btime in /proc/stat")
}

package agent

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// kubeletCert describes one of the kubelet's CSR-signed certificates.
type kubeletCert struct {
	name    string // inventory name
	prefix  string // file prefix of the kubelet's certificate store
	current string // the symlink the kubelet reads
	signer  string
	usage   certificatesv1.KeyUsage
}

var (
	kubeletClient  = kubeletCert{"kubelet-client", "kubelet-client", pki.KubeletClientCurrent, certificatesv1.KubeAPIServerClientKubeletSignerName, certificatesv1.UsageClientAuth}
	kubeletServing = kubeletCert{"kubelet-serving", "kubelet-server", pki.KubeletServerCurrent, certificatesv1.KubeletServingSignerName, certificatesv1.UsageServerAuth}
)

func pendingKeyPath(name string) string {
	return pki.KubeletPKIDir + "/.rotate-certs-pending-" + name + ".key"
}

func (a *Agent) kubeletCerts(l layout) []kubeletCert {
	if l.servingByCSR {
		return []kubeletCert{kubeletClient, kubeletServing}
	}
	return []kubeletCert{kubeletClient}
}

// kubeletCSR generates the new key(s) on the node, keeps them in
// /var/lib/kubelet/pki (0600) until the certificates arrive, and returns
// the requests. The subject and SANs are those of the current certificate.
func (a *Agent) kubeletCSR(req api.Request) ([]api.CSR, error) {
	l, err := a.detectLayout()
	if err != nil {
		return nil, err
	}
	var out []api.CSR
	for _, kc := range a.kubeletCerts(l) {
		old, err := pki.ReadCertificate(a.Root, pki.Cert{Name: kc.name, CertFile: kc.current})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kc.name, err)
		}
		if kc == kubeletClient && old.Subject.CommonName != "system:node:"+req.Node {
			return nil, fmt.Errorf("kubelet-client: /%s is for %q, not for node %q", kc.current, old.Subject.CommonName, req.Node)
		}
		keyPEM, csrPEM, err := pki.NewCSR(old.Subject, old)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kc.name, err)
		}
		if err := pki.WriteAtomic(a.Root, pki.File{Path: pendingKeyPath(kc.name), Data: keyPEM, Mode: 0o600}); err != nil {
			return nil, err
		}
		usages := []string{string(certificatesv1.UsageDigitalSignature), string(kc.usage)}
		if strings.HasPrefix(pki.KeyAlgorithm(old.PublicKey), "RSA") || old.KeyUsage&x509.KeyUsageKeyEncipherment != 0 {
			usages = append(usages, string(certificatesv1.UsageKeyEncipherment))
		}
		out = append(out, api.CSR{Name: kc.name, SignerName: kc.signer, Request: string(csrPEM), Usages: usages})
	}
	return out, nil
}

// kubeletInstall installs the issued certificates next to the kubelet's own
// rotated files, repoints the *-current.pem links, makes kubelet.conf use
// the rotating file, and renews a self-signed serving certificate.
func (a *Agent) kubeletInstall(req api.Request) (*api.RenewResult, error) {
	l, err := a.detectLayout()
	if err != nil {
		return nil, err
	}
	caPEM, err := pki.ReadFile(a.Root, pki.ClusterCA.CertFile)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	ca, err := pki.ParseCertificatePEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA /%s: %w", pki.ClusterCA.CertFile, err)
	}
	type install struct {
		kc      kubeletCert
		certPEM []byte
		keyPEM  []byte
	}
	var installs []install
	for _, kc := range a.kubeletCerts(l) {
		certPEM, ok := req.Issued[kc.name]
		if !ok {
			return nil, fmt.Errorf("%s: no issued certificate in the request", kc.name)
		}
		keyPEM, err := pki.ReadFile(a.Root, pendingKeyPath(kc.name))
		if err != nil {
			return nil, fmt.Errorf("%s: the key generated for this request is gone (run again): %w", kc.name, err)
		}
		if _, err := pki.CheckIssued([]byte(certPEM), keyPEM, ca); err != nil {
			return nil, fmt.Errorf("%s: %w", kc.name, err)
		}
		installs = append(installs, install{kc, []byte(certPEM), keyPEM})
	}
	now := a.Now()
	b, err := newBackup(a.Root, "kubelet", now)
	if err != nil {
		return nil, err
	}
	res := &api.RenewResult{Backup: b.Name}
	err = func() error {
		for _, in := range installs {
			old, err := pki.ReadCertificate(a.Root, pki.Cert{CertFile: in.kc.current})
			if err != nil {
				return err
			}
			file := pki.KubeletRotatedName(in.kc.prefix, now)
			for _, p := range []string{file, in.kc.current} {
				if err := b.add(p); err != nil {
					return err
				}
			}
			if err := pki.WriteAtomic(a.Root, pki.File{Path: file, Data: pki.KubeletBundle(in.certPEM, in.keyPEM), Mode: 0o600}); err != nil {
				return err
			}
			if err := pki.SymlinkAtomic(a.Root, in.kc.current, filepath.Base(file)); err != nil {
				return err
			}
			res.Changes = append(res.Changes, change(in.kc.name, in.kc.current, old, in.certPEM))
		}
		if !l.servingByCSR {
			if err := a.renewSelfSignedServing(req, b, now, res); err != nil {
				return err
			}
		}
		return a.pointKubeletConfAtRotatingFile(b, res)
	}()
	if err != nil {
		if rerr := b.restore(); rerr != nil {
			return res, fmt.Errorf("%w; restoring the backup %s also failed: %v", err, b.Dir(), rerr)
		}
		return res, fmt.Errorf("%w; every file was restored from %s", err, b.Dir())
	}
	for _, in := range installs {
		_ = os.Remove(filepath.Join(a.Root, pendingKeyPath(in.kc.name)))
	}
	return res, nil
}

func change(name, path string, old *x509.Certificate, newPEM []byte) api.Change {
	c := api.Change{Name: name, Path: "/" + path, OldSerial: old.SerialNumber.String(), OldNotAfter: old.NotAfter.UTC()}
	if n, err := pki.ParseCertificatePEM(newPEM); err == nil {
		c.NewSerial, c.NewNotAfter = n.SerialNumber.String(), n.NotAfter.UTC()
	}
	return c
}

func (a *Agent) renewSelfSignedServing(req api.Request, b *backup, now time.Time, res *api.RenewResult) error {
	c := pki.Cert{Name: "kubelet-serving", CertFile: pki.KubeletSelfSignedCert, KeyFile: pki.KubeletSelfSignedKey}
	old, err := pki.ReadCertificate(a.Root, c)
	if errors.Is(err, pki.ErrMissing) {
		res.Notes = append(res.Notes, "kubelet-serving: no self-signed kubelet.crt (the kubelet uses a configured tlsCertFile): left alone")
		return nil
	}
	if err != nil {
		return fmt.Errorf("kubelet-serving: %w", err)
	}
	validity := req.Validity
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	certPEM, keyPEM, leaf, err := pki.NewSelfSignedServing(old, validity, now)
	if err != nil {
		return err
	}
	for _, f := range []pki.File{{Path: c.CertFile, Data: certPEM, Mode: 0o644}, {Path: c.KeyFile, Data: keyPEM, Mode: 0o600}} {
		if err := b.add(f.Path); err != nil {
			return err
		}
		if err := pki.WriteAtomic(a.Root, f); err != nil {
			return err
		}
	}
	res.Changes = append(res.Changes, api.Change{Name: c.Name, Path: "/" + c.CertFile,
		OldSerial: old.SerialNumber.String(), NewSerial: leaf.SerialNumber.String(),
		OldNotAfter: old.NotAfter.UTC(), NewNotAfter: leaf.NotAfter.UTC()})
	return nil
}

// pointKubeletConfAtRotatingFile fixes a kubelet.conf that embeds a client
// certificate (kubeadm's first control plane before 1.17, and a common
// cause of nodes going NotReady after a year): it then names
// kubelet-client-current.pem, which the kubelet rotates itself.
func (a *Agent) pointKubeletConfAtRotatingFile(b *backup, res *api.RenewResult) error {
	data, err := pki.ReadFile(a.Root, pki.KubeletKubeconfig)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return fmt.Errorf("/%s: %w", pki.KubeletKubeconfig, err)
	}
	fixed := false
	for name, user := range cfg.AuthInfos {
		if len(user.ClientCertificateData) == 0 {
			continue
		}
		user.ClientCertificateData, user.ClientKeyData = nil, nil
		user.ClientCertificate = "/" + pki.KubeletClientCurrent
		user.ClientKey = "/" + pki.KubeletClientCurrent
		res.Notes = append(res.Notes, fmt.Sprintf("kubelet.conf: user %q embedded a client certificate; it now uses /%s, which the kubelet rotates", name, pki.KubeletClientCurrent))
		fixed = true
	}
	if !fixed {
		return nil
	}
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	if err := b.add(pki.KubeletKubeconfig); err != nil {
		return err
	}
	return pki.WriteAtomic(a.Root, pki.File{Path: pki.KubeletKubeconfig, Data: out, Mode: 0o600})
}

// restartKubelet asks systemd on the host, over its private D-Bus socket, to
// restart kubelet.service. It returns once systemd accepted the job; the
// plugin then waits through KubeletStatus (this exec stream itself passes
// through the kubelet and may break).
func (a *Agent) restartKubelet(ctx context.Context) error {
	conn, err := dbus.Dial("unix:path="+a.SystemdSocket, dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("connecting to systemd at %s: %w", a.SystemdSocket, err)
	}
	defer conn.Close()
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		return fmt.Errorf("authenticating to systemd: %w", err)
	}
	var job dbus.ObjectPath
	obj := conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
	if err := obj.CallWithContext(ctx, "org.freedesktop.systemd1.Manager.RestartUnit", 0, "kubelet.service", "replace").Store(&job); err != nil {
		return fmt.Errorf("systemd: restarting kubelet.service: %w", err)
	}
	return nil
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
	st.Healthy = healthy(ctx, "http://"+a.kubeletHealthz()) == nil
	return st, nil
}

// kubeletHealthz is host:port/path of the kubelet's healthz endpoint from
// its config file (kubeadm's default 127.0.0.1:10248).
func (a *Agent) kubeletHealthz() string {
	cfg := struct {
		HealthzBindAddress string `json:"healthzBindAddress"`
		HealthzPort        *int   `json:"healthzPort"`
	}{}
	if data, err := pki.ReadFile(a.Root, "var/lib/kubelet/config.yaml"); err == nil {
		_ = yaml.Unmarshal(data, &cfg)
	}
	host, port := "127.0.0.1", 10248
	if cfg.HealthzBindAddress != "" && cfg.HealthzBindAddress != "0.0.0.0" {
		host = cfg.HealthzBindAddress
	}
	if cfg.HealthzPort != nil && *cfg.HealthzPort > 0 {
		port = *cfg.HealthzPort
	}
	return fmt.Sprintf("%s:%d/healthz", host, port)
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

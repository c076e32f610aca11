package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// kubeletCert describes one of the kubelet's CSR-signed certificates.
type kubeletCert struct {
	name    string // inventory name, and the name the plugin signs it by
	prefix  string // file prefix of the kubelet's certificate store
	current string // the symlink the kubelet reads
}

var (
	kubeletClient  = kubeletCert{"kubelet-client", "kubelet-client", pki.KubeletClientCurrent}
	kubeletServing = kubeletCert{"kubelet-serving", "kubelet-server", pki.KubeletServerCurrent}
)

const pendingPrefix = ".rotate-certs-pending-"

// pendingKeyPath is where the key made for a run's request waits for its
// certificate (0600, in the kubelet's own key directory).
func pendingKeyPath(run, name string) string {
	return pki.KubeletPKIDir + "/" + pendingPrefix + run + "-" + name + ".key"
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
// Keys left by other runs (whose signing failed) are removed first.
func (a *Agent) kubeletCSR(req api.Request) ([]api.CSR, error) {
	l, err := a.detectLayout()
	if err != nil {
		return nil, err
	}
	t, err := a.lockTxn(req)
	if err != nil {
		return nil, err
	}
	defer t.end()
	if err := a.removePending(""); err != nil {
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
		// The subject is the node's identity; a serving certificate keeps
		// its names, a client certificate has none.
		var dns []string
		var ips []net.IP
		if kc == kubeletServing {
			dns, ips = old.DNSNames, old.IPAddresses
		}
		keyPEM, csrPEM, err := pki.NewCSR(pki.KubeletClientSubject(req.Node), old.PublicKey, dns, ips)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kc.name, err)
		}
		if err := pki.WriteAtomic(a.Root, pki.File{Path: pendingKeyPath(req.Run, kc.name), Data: keyPEM, Mode: 0o600}); err != nil {
			return nil, err
		}
		out = append(out, api.CSR{Name: kc.name, Request: string(csrPEM), KeyEncipherment: old.KeyUsage&x509.KeyUsageKeyEncipherment != 0})
	}
	return out, nil
}

// removePending removes the pending keys of a run ("" for every run).
func (a *Agent) removePending(run string) error {
	dir, err := pki.Resolve(a.Root, pki.KubeletPKIDir)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading /%s: %w", pki.KubeletPKIDir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), pendingPrefix+run) && strings.HasSuffix(e.Name(), ".key") {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// discardPending removes the keys of a request that will not be installed.
func (a *Agent) discardPending(req api.Request) error {
	if !validName.MatchString(req.Run) {
		return fmt.Errorf("invalid run %q", req.Run)
	}
	return a.removePending(req.Run + "-")
}

// installItem is an issued certificate with the key made for it.
type installItem struct {
	kc      kubeletCert
	certPEM []byte
	keyPEM  []byte
	cert    *x509.Certificate
}

// kubeletInstall is the kubelet's transaction: install the issued
// certificates next to the kubelet's own rotated files, re-point the
// *-current.pem links, renew a self-signed serving certificate, make
// kubelet.conf use the rotating file, restart the kubelet, and prove the new
// kubelet runs, serves the new serving certificate and that its new client
// certificate authenticates to the API server. On any failure every file is
// restored and the kubelet restarted on them again.
func (a *Agent) kubeletInstall(ctx context.Context, req api.Request) (*api.RenewResult, *api.KubeletProcess, error) {
	l, t, res, err := a.beginTxn(req)
	if err != nil {
		return nil, nil, err
	}
	items, err := a.checkIssued(req, l)
	if err != nil {
		t.end()
		return res, nil, err
	}
	// A kubelet that is not running (its certificate expired: recover) is
	// simply started on the new files.
	oldPID := 0
	if before, err := a.kubeletStatus(ctx); err == nil {
		oldPID = before.PID
	}
	if err := t.start("kubelet"); err != nil {
		t.end()
		return res, nil, err
	}
	res.Backup = t.b.Name
	txCtx, cancel := context.WithTimeout(ctx, api.WorkTimeout(a.Timeout))
	defer cancel()
	restarted := false
	proc, err := func() (*api.KubeletProcess, error) {
		servingSerial, err := a.installKubeletFiles(t, req, l, items, res)
		if err != nil {
			return nil, err
		}
		restarted = true
		proc, err := a.restartKubeletAndWait(txCtx, oldPID, res)
		if err != nil {
			return nil, err
		}
		if servingSerial != "" {
			addr := a.kubeletServingAddr()
			if err := waitServes(txCtx, a.dial, addr, servingSerial, nil, a.Timeout); err != nil {
				return nil, fmt.Errorf("kubelet: %w", err)
			}
			res.Verified = append(res.Verified, fmt.Sprintf("kubelet serves kubelet-serving serial %s on %s", servingSerial, addr))
		}
		for _, it := range items {
			if it.kc == kubeletClient {
				v, err := a.verifyKubeletClient(txCtx, req.Node, it.certPEM, it.keyPEM)
				if err != nil {
					return nil, err
				}
				res.Verified = append(res.Verified, v)
			}
		}
		return proc, nil
	}()
	if err != nil {
		return res, nil, a.abortKubelet(t, err, restarted)
	}
	if err := a.commit(t, res); err != nil {
		return res, proc, err
	}
	_ = a.removePending(req.Run + "-")
	return res, proc, nil
}

// checkIssued pairs each issued certificate with the key made for it and
// refuses one that is not for that key or not signed by the cluster CA.
func (a *Agent) checkIssued(req api.Request, l layout) ([]installItem, error) {
	caPEM, err := pki.ReadFile(a.Root, pki.ClusterCA.CertFile)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	// During a CA rotation the file holds the old and the new CA.
	cas, err := pki.ParseCABundle(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA /%s: %w", pki.ClusterCA.CertFile, err)
	}
	var items []installItem
	for _, kc := range a.kubeletCerts(l) {
		certPEM, ok := req.Issued[kc.name]
		if !ok {
			return nil, fmt.Errorf("%s: no issued certificate in the request", kc.name)
		}
		keyPEM, err := pki.ReadFile(a.Root, pendingKeyPath(req.Run, kc.name))
		if err != nil {
			return nil, fmt.Errorf("%s: the key generated for this request is gone (run again): %w", kc.name, err)
		}
		var cert *x509.Certificate
		for _, ca := range cas {
			if cert, err = pki.CheckIssued([]byte(certPEM), keyPEM, ca); err == nil {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kc.name, err)
		}
		items = append(items, installItem{kc, []byte(certPEM), keyPEM, cert})
	}
	return items, nil
}

// installKubeletFiles writes the kubelet's new files through the
// transaction and returns the serial the kubelet must serve afterwards
// ("" when its serving certificate is not ours to check).
func (a *Agent) installKubeletFiles(t *txn, req api.Request, l layout, items []installItem, res *api.RenewResult) (servingSerial string, err error) {
	now := a.Now()
	for _, it := range items {
		old, err := pki.ReadCertificate(a.Root, pki.Cert{CertFile: it.kc.current})
		if err != nil {
			return "", err
		}
		file := pki.KubeletRotatedName(it.kc.prefix, now)
		if err := t.write(pki.File{Path: file, Data: pki.KubeletBundle(it.certPEM, it.keyPEM), Mode: 0o600}); err != nil {
			return "", err
		}
		if err := t.link(it.kc.current, "/"+file); err != nil {
			return "", err
		}
		res.Changes = append(res.Changes, change(it.kc.name, it.kc.current, old, it.cert))
		if it.kc == kubeletServing {
			servingSerial = it.cert.SerialNumber.String()
		}
	}
	if !l.servingByCSR {
		if servingSerial, err = a.renewSelfSignedServing(t, req, now, res); err != nil {
			return "", err
		}
	}
	return servingSerial, a.pointKubeletConfAtRotatingFile(t, res)
}

func change(name, path string, old, cert *x509.Certificate) api.Change {
	return api.Change{Name: name, Path: "/" + path,
		OldSerial: old.SerialNumber.String(), OldNotAfter: old.NotAfter.UTC(),
		NewSerial: cert.SerialNumber.String(), NewNotAfter: cert.NotAfter.UTC()}
}

func (a *Agent) renewSelfSignedServing(t *txn, req api.Request, now time.Time, res *api.RenewResult) (string, error) {
	c := pki.Cert{Name: "kubelet-serving", CertFile: pki.KubeletSelfSignedCert, KeyFile: pki.KubeletSelfSignedKey}
	old, err := pki.ReadCertificate(a.Root, c)
	if errors.Is(err, pki.ErrMissing) {
		res.Notes = append(res.Notes, "kubelet-serving: no self-signed kubelet.crt (the kubelet uses a configured tlsCertFile): left alone")
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("kubelet-serving: %w", err)
	}
	validity := req.Validity
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	certPEM, keyPEM, leaf, err := pki.NewSelfSignedServing(old, validity, now)
	if err != nil {
		return "", err
	}
	for _, f := range []pki.File{{Path: c.CertFile, Data: certPEM, Mode: 0o644}, {Path: c.KeyFile, Data: keyPEM, Mode: 0o600}} {
		if err := t.write(f); err != nil {
			return "", err
		}
	}
	res.Changes = append(res.Changes, change(c.Name, c.CertFile, old, leaf))
	return leaf.SerialNumber.String(), nil
}

// pointKubeletConfAtRotatingFile fixes a kubelet.conf that embeds a client
// certificate (kubeadm's first control plane before 1.17, and a common
// cause of nodes going NotReady after a year): it then names
// kubelet-client-current.pem, which the kubelet rotates itself.
func (a *Agent) pointKubeletConfAtRotatingFile(t *txn, res *api.RenewResult) error {
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
	return t.write(pki.File{Path: pki.KubeletKubeconfig, Data: out, Mode: 0o600})
}

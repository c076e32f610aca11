package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// The CA rotation's node side. The new CAs are made on one control plane
// (caPrepare) and staged there; the other control planes get them through
// the encrypted hand-over (caHandoverKey on the receiver, caHandoverSeal on
// the sender, caHandoverOpen on the receiver again); caTrust then makes
// every trust point of a node hold what the phase asks. Each change is one
// transaction (txn.go), so an interrupted step is undone by the next one.

// errNotStaged: the node has no staged CAs for the rotation.
var errNotStaged = errors.New("no new CAs are staged on this node")

// rotationCAs are the CAs a rotation replaces on this node: on a control
// plane all of kubeadm's (etcd's where it runs etcd, stacked), on a worker
// the cluster CA, the only one it holds.
func (l layout) rotationCAs() []pki.CA {
	if !l.controlPlane {
		return []pki.CA{pki.ClusterCA}
	}
	out := []pki.CA{pki.ClusterCA, pki.FrontProxyCA}
	if !l.externalEtcd {
		out = append(out, pki.EtcdCA)
	}
	return out
}

func caRequest(req api.Request) (*api.CARequest, error) {
	if req.CA == nil || !validName.MatchString(req.CA.Rotation) {
		return nil, errors.New("a CA rotation request needs the rotation's name")
	}
	return req.CA, nil
}

// readStaged loads the CAs staged for the rotation. A staging folder of
// another rotation is an error that says what to do; none at all, or an
// incomplete one, is errNotStaged.
func (a *Agent) readStaged(l layout, rotation string) ([]*pki.Authority, error) {
	marker, err := pki.ReadFile(a.Root, pki.RotationFile)
	if errors.Is(err, pki.ErrMissing) {
		return nil, errNotStaged
	}
	if err != nil {
		return nil, err
	}
	if got := strings.TrimSpace(string(marker)); got != rotation {
		return nil, fmt.Errorf("/%s holds the new CAs of another CA rotation (%q): finish it, or undo it with `kubectl rotate-certs ca rollback`", pki.StagingDir, got)
	}
	var out []*pki.Authority
	for _, ca := range l.rotationCAs() {
		s, err := pki.LoadAuthority(a.Root, pki.Staged(ca))
		if errors.Is(err, pki.ErrMissing) || errors.Is(err, pki.ErrExternalCA) {
			return nil, errNotStaged
		}
		if err != nil {
			return nil, err
		}
		s.CA = ca
		out = append(out, s)
	}
	return out, nil
}

// stagedFor reads a CA request and the CAs staged on this node for its
// rotation, for an action that only reads them (no transaction).
func (a *Agent) stagedFor(req api.Request) (*api.CARequest, []*pki.Authority, error) {
	cr, err := caRequest(req)
	if err != nil {
		return nil, nil, err
	}
	l, err := a.detectLayout()
	if err != nil {
		return nil, nil, err
	}
	staged, err := a.readStaged(l, cr.Rotation)
	return cr, staged, err
}

func stagedResult(cas []*pki.Authority) *api.CAResult {
	res := &api.CAResult{Staged: map[string]string{}}
	for _, s := range cas {
		res.Staged[s.CA.Name] = string(pki.EncodeCertPEM(s.Cert))
	}
	return res
}

// stagingFiles are the files that stage cas for a rotation.
func stagingFiles(rotation string, cas []*pki.Authority) ([]pki.File, error) {
	files := []pki.File{{Path: pki.RotationFile, Data: []byte(rotation + "\n"), Mode: 0o600}}
	for _, s := range cas {
		keyPEM, err := pki.EncodeKeyPEM(s.Key)
		if err != nil {
			return nil, err
		}
		st := pki.Staged(s.CA)
		files = append(files, pki.File{Path: st.CertFile, Data: pki.EncodeCertPEM(s.Cert), Mode: 0o644}, pki.File{Path: st.KeyFile, Data: keyPEM, Mode: 0o600})
	}
	return files, nil
}

// stage writes cas into the staging folder (root-only) as one transaction.
func (a *Agent) stage(t *txn, rotation string, cas []*pki.Authority) error {
	files, err := stagingFiles(rotation, cas)
	if err != nil {
		t.end()
		return err
	}
	if err := a.mkStaging(); err != nil {
		t.end()
		return err
	}
	if err := t.start("ca-prepare"); err != nil {
		t.end()
		return err
	}
	for _, f := range files {
		if err := t.write(f); err != nil {
			return t.abort(err)
		}
	}
	_, err = t.commit()
	return err
}

// mkStaging makes the staging folder, 0700: it holds CA keys.
func (a *Agent) mkStaging() error {
	dir, err := pki.Resolve(a.Root, pki.StagingDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// caPrepare makes the successors of the node's CAs (same subject, new key,
// the request's algorithm and validity) and stages them; a node that has
// them staged for this rotation already answers with those.
func (a *Agent) caPrepare(req api.Request) (*api.CAResult, error) {
	cr, err := caRequest(req)
	if err != nil {
		return nil, err
	}
	l, t, _, err := a.beginTxn(req)
	if err != nil {
		return nil, err
	}
	if !l.controlPlane {
		t.end()
		return nil, errors.New("new CAs are made on a control plane, and this node is none")
	}
	current := map[string]string{}
	var curs []*pki.Authority
	for _, ca := range l.rotationCAs() {
		cur, err := pki.LoadAuthority(a.Root, ca)
		if errors.Is(err, pki.ErrExternalCA) {
			t.end()
			return nil, fmt.Errorf("CA %s has no key on this node (an external CA): its owner rotates it, kubectl rotate-certs cannot", ca.Name)
		}
		if err != nil {
			t.end()
			return nil, err
		}
		current[ca.Name] = string(pki.EncodeCertPEM(cur.Cert))
		curs = append(curs, cur)
	}
	staged, err := a.readStaged(l, cr.Rotation)
	if err == nil {
		t.end()
		res := stagedResult(staged)
		res.Current = current
		return res, nil
	}
	if !errors.Is(err, errNotStaged) {
		t.end()
		return nil, err
	}
	now := a.Now()
	var next []*pki.Authority
	for _, cur := range curs {
		if !now.Before(cur.Cert.NotAfter) {
			t.end()
			return nil, fmt.Errorf("CA %s expired on %s: nothing in the cluster trusts anything any more, so there is no downtime to avoid; a CA rotation starts from a working cluster", cur.CA.Name, cur.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		n, _, err := pki.NewCALike(cur, cr.KeyAlgorithm, cr.Validity, now)
		if err != nil {
			t.end()
			return nil, err
		}
		next = append(next, n)
	}
	if err := a.stage(t, cr.Rotation, next); err != nil {
		return nil, err
	}
	res := stagedResult(next)
	res.Current = current
	return res, nil
}

// caHandoverKey makes the receiving control plane's hand-over key pair and
// keeps its private half in the staging folder until caHandoverOpen uses
// it; a node that has the rotation's CAs staged already needs none.
func (a *Agent) caHandoverKey(req api.Request) (*api.CAResult, error) {
	cr, err := caRequest(req)
	if err != nil {
		return nil, err
	}
	l, t, _, err := a.beginTxn(req)
	if err != nil {
		return nil, err
	}
	defer t.end()
	if !l.controlPlane {
		return nil, errors.New("only control planes receive the new CA keys")
	}
	if staged, err := a.readStaged(l, cr.Rotation); err == nil {
		return stagedResult(staged), nil
	} else if !errors.Is(err, errNotStaged) {
		return nil, err
	}
	r, err := pki.NewHandoverReceiver()
	if err != nil {
		return nil, err
	}
	priv, err := r.PrivateKeyBytes()
	if err != nil {
		return nil, err
	}
	if err := a.mkStaging(); err != nil {
		return nil, err
	}
	if err := pki.WriteAtomic(a.Root, pki.File{Path: pki.HandoverKeyFile, Data: priv, Attr: &pki.Attr{Mode: 0o600}}); err != nil {
		return nil, err
	}
	clear(priv)
	return &api.CAResult{PublicKey: r.PublicKey()}, nil
}

// caHandoverSeal encrypts the CAs staged here to the receiver's public key,
// bound to the rotation, this node and the receiver.
func (a *Agent) caHandoverSeal(req api.Request) (*api.CAResult, error) {
	cr, staged, err := a.stagedFor(req)
	if err != nil {
		return nil, err
	}
	p, err := pki.NewHandoverPayload(staged...)
	if err != nil {
		return nil, err
	}
	sealed, err := pki.SealHandover(cr.PublicKey, pki.HandoverBinding{RunID: cr.Rotation, Sender: req.Node, Receiver: cr.Peer}, p)
	if err != nil {
		return nil, err
	}
	return &api.CAResult{Sealed: sealed}, nil
}

// caHandoverOpen opens a hand-over with the key caHandoverKey kept, checks
// that it carries exactly the new CAs the plugin says the rotation made
// (CARequest.New) and stages them.
func (a *Agent) caHandoverOpen(req api.Request) (*api.CAResult, error) {
	cr, err := caRequest(req)
	if err != nil {
		return nil, err
	}
	l, t, _, err := a.beginTxn(req)
	if err != nil {
		return nil, err
	}
	if staged, err := a.readStaged(l, cr.Rotation); err == nil {
		t.end()
		return stagedResult(staged), nil
	} else if !errors.Is(err, errNotStaged) {
		t.end()
		return nil, err
	}
	priv, err := pki.ReadFile(a.Root, pki.HandoverKeyFile)
	if err != nil {
		t.end()
		return nil, fmt.Errorf("this node's hand-over key: %w (ask for a new one)", err)
	}
	r, err := pki.LoadHandoverReceiver(priv)
	clear(priv)
	if err != nil {
		t.end()
		return nil, err
	}
	p, err := r.Open(pki.HandoverBinding{RunID: cr.Rotation, Sender: cr.Peer, Receiver: req.Node}, cr.Sealed)
	if err != nil {
		t.end()
		return nil, err
	}
	got, err := p.Authorities()
	if err != nil {
		t.end()
		return nil, err
	}
	if err := matchNew(l, got, cr.New); err != nil {
		t.end()
		return nil, fmt.Errorf("%w: %w", pki.ErrHandoverRefused, err)
	}
	if err := a.stage(t, cr.Rotation, got); err != nil {
		return nil, err
	}
	if err := pki.Remove(a.Root, pki.HandoverKeyFile); err != nil {
		return nil, err
	}
	return stagedResult(got), nil
}

// matchNew checks that cas are exactly the node's rotation CAs with the
// certificates want names.
func matchNew(l layout, cas []*pki.Authority, want map[string]string) error {
	if len(cas) != len(l.rotationCAs()) {
		return fmt.Errorf("%d CAs received, this node rotates %d", len(cas), len(l.rotationCAs()))
	}
	for _, a := range cas {
		w, ok := want[a.CA.Name]
		if !ok {
			return fmt.Errorf("CA %s received, which the rotation did not make", a.CA.Name)
		}
		c, err := pki.ParseCertificatePEM([]byte(w))
		if err != nil || !c.Equal(a.Cert) {
			return fmt.Errorf("CA %s received is not the one the rotation made (%s)", a.CA.Name, pki.CAID(a.Cert))
		}
	}
	return nil
}

// caDiscard removes the rotation's staged CAs (and a hand-over key) as one
// transaction: the rollback of caPrepare.
func (a *Agent) caDiscard(req api.Request) error {
	cr, err := caRequest(req)
	if err != nil {
		return err
	}
	l, t, _, err := a.beginTxn(req)
	if err != nil {
		return err
	}
	if _, err := a.readStaged(l, cr.Rotation); err != nil && !errors.Is(err, errNotStaged) {
		t.end()
		return err
	}
	var paths []string
	for _, rel := range []string{pki.HandoverKeyFile, pki.RotationFile} {
		if pki.Exists(a.Root, rel) {
			paths = append(paths, rel)
		}
	}
	for _, ca := range pki.CAs {
		for _, rel := range []string{pki.Staged(ca).CertFile, pki.Staged(ca).KeyFile} {
			if pki.Exists(a.Root, rel) {
				paths = append(paths, rel)
			}
		}
	}
	if len(paths) == 0 {
		t.end()
		return nil
	}
	if err := t.start("ca-discard"); err != nil {
		t.end()
		return err
	}
	for _, rel := range paths {
		if err := t.remove(rel); err != nil {
			return t.abort(err)
		}
	}
	if _, err := t.commit(); err != nil {
		return err
	}
	// The folder itself, once empty (a restore of this transaction makes
	// it again).
	if dir, err := pki.Resolve(a.Root, pki.StagingDir); err == nil {
		_ = os.Remove(dir)
	}
	return nil
}

// retrustPlan is what caTrust writes: every trust point of the node
// changed for the mode, each file once.
type retrustPlan struct {
	files   []pki.File
	changed []string
}

// planRetrust computes the new content of every trust point of the node
// (CA files, the files the static pods' CA flags name, every kubeconfig's
// CA data, the kubelet's clientCAFile) for the mode, with respect to the
// new CAs. It writes nothing. A trust point it cannot read stops it.
func (a *Agent) planRetrust(l layout, next map[string]*x509.Certificate, mode string) (*retrustPlan, error) {
	tr := a.readTrust(l)
	p := &retrustPlan{}
	done := map[string]bool{}
	for _, tp := range tr.points {
		if tp.Error != "" {
			return nil, fmt.Errorf("trust point %s (%s %s): %s", tp.Path, tp.Reader, tp.Setting, tp.Error)
		}
		n := next[tp.CA]
		rel := strings.TrimPrefix(tp.Path, "/")
		if n == nil || done[rel] {
			continue
		}
		done[rel] = true
		data, err := pki.ReadFile(a.Root, rel)
		if err != nil {
			return nil, err
		}
		var out []byte
		var changed bool
		if strings.HasSuffix(tp.Setting, "certificate-authority-data") {
			out, changed, err = pki.RetrustKubeconfig(data, n, mode)
		} else {
			out, changed, err = pki.RetrustBundle(data, n, mode)
		}
		if err != nil {
			return nil, fmt.Errorf("trust point %s (%s %s): %w", tp.Path, tp.Reader, tp.Setting, err)
		}
		if !changed {
			continue
		}
		p.files = append(p.files, pki.File{Path: rel, Data: out, Mode: 0o644})
		p.changed = append(p.changed, fmt.Sprintf("%s (%s %s)", tp.Path, tp.Reader, tp.Setting))
	}
	sort.Strings(p.changed)
	return p, nil
}

// signerSplit gives kube-controller-manager's signer files of its own
// (ca-signer.crt/.key, the CA ca.key belongs to) before ca.crt becomes a
// bundle: its signer accepts exactly one certificate (kubeadm#1350).
func (a *Agent) signerSplit(l layout) ([]pki.File, error) {
	if !l.controlPlane || !pki.Exists(a.Root, pki.ControllerManagerManifest) {
		return nil, nil
	}
	manifest, err := pki.ReadFile(a.Root, pki.ControllerManagerManifest)
	if err != nil {
		return nil, err
	}
	split, err := pki.SplitControllerManagerSigner(manifest)
	if err != nil {
		return nil, err
	}
	signer, err := pki.LoadAuthority(a.Root, pki.ClusterCA)
	if err != nil {
		return nil, err
	}
	files, err := split.Files(signer)
	if err != nil {
		return nil, err
	}
	// Only what differs: a split signer that already holds the CA is left.
	var out []pki.File
	for _, f := range files {
		if cur, err := pki.ReadFile(a.Root, f.Path); err == nil && string(cur) == string(f.Data) {
			continue
		}
		out = append(out, f)
	}
	return out, nil
}

// newCAs parses the request's new CA certificates for this node's CAs.
func newCAs(l layout, want map[string]string) (map[string]*x509.Certificate, error) {
	out := map[string]*x509.Certificate{}
	for _, ca := range l.rotationCAs() {
		w, ok := want[ca.Name]
		if !ok {
			return nil, fmt.Errorf("the request names no new CA %s", ca.Name)
		}
		c, err := pki.ParseCertificatePEM([]byte(w))
		if err != nil {
			return nil, fmt.Errorf("new CA %s: %w", ca.Name, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("new CA %s: not a CA certificate", ca.Name)
		}
		out[ca.Name] = c
	}
	return out, nil
}

// caTrust makes every trust point of the node hold what the mode says, as
// one transaction: plan every file, back up, write (kube-controller-
// manager's signer split first), then restart everything that reads a CA
// only at start (etcd, kube-apiserver for its etcd CA, kube-controller-
// manager, kube-scheduler, the kubelet) and, adding the new CAs on a
// control plane, prove with certificates of the staged new CAs that
// kube-apiserver, etcd and the kubelet accept them. A node whose trust
// points hold it all already is left alone.
func (a *Agent) caTrust(ctx context.Context, req api.Request) (*api.RenewResult, *api.CAResult, error) {
	cr, err := caRequest(req)
	if err != nil {
		return nil, nil, err
	}
	l, t, res, err := a.beginTxn(req)
	if err != nil {
		return nil, nil, err
	}
	next, err := newCAs(l, cr.New)
	if err != nil {
		t.end()
		return res, nil, err
	}
	var staged []*pki.Authority
	if l.controlPlane && cr.Trust == pki.TrustBoth {
		if staged, err = a.readStaged(l, cr.Rotation); err != nil {
			t.end()
			return res, nil, fmt.Errorf("%w (run the prepare phase first)", err)
		}
		for _, s := range staged {
			if !s.Cert.Equal(next[s.CA.Name]) {
				t.end()
				return res, nil, fmt.Errorf("the CA %s staged on this node is not the rotation's new CA", s.CA.Name)
			}
		}
	}
	var files []pki.File
	if cr.Trust == pki.TrustBoth {
		if files, err = a.signerSplit(l); err != nil {
			t.end()
			return res, nil, err
		}
	}
	plan, err := a.planRetrust(l, next, cr.Trust)
	if err != nil {
		t.end()
		return res, nil, err
	}
	files = append(files, plan.files...)
	out := &api.CAResult{Changed: plan.changed}
	if len(files) == 0 {
		t.end()
		return res, out, nil
	}
	oldPID := 0
	if st, err := a.kubeletStatus(ctx); err == nil {
		oldPID = st.PID
	}
	manifestChanged := false
	for _, f := range files {
		manifestChanged = manifestChanged || f.Path == pki.ControllerManagerManifest
	}
	if err := t.start("ca-trust-" + cr.Trust); err != nil {
		t.end()
		return res, nil, err
	}
	res.Backup = t.b.Name
	txCtx, cancel := context.WithTimeout(ctx, api.WorkTimeout(a.Timeout))
	defer cancel()
	restarted := false
	err = func() error {
		for _, f := range files {
			if err := t.write(f); err != nil {
				return err
			}
			if f.Path == pki.ControllerManagerManifest {
				out.Changed = append(out.Changed, "/"+f.Path+" (kube-controller-manager --cluster-signing-cert-file, --cluster-signing-key-file)")
			}
		}
		if l.controlPlane {
			all := map[pki.Service]bool{pki.ServiceEtcd: true, pki.ServiceAPIServer: true, pki.ServiceControllerManager: true, pki.ServiceScheduler: true}
			// A changed manifest has the kubelet re-create
			// kube-controller-manager by itself: it is waited for below.
			reread := map[pki.Service]bool{pki.ServiceControllerManager: !manifestChanged, pki.ServiceScheduler: true}
			if err := a.settle(txCtx, l, all, reread, nil, true, req.Graceful, res); err != nil {
				return err
			}
			if manifestChanged {
				if err := a.awaitRecreated(txCtx, "kube-controller-manager", "--cluster-signing-cert-file=", pki.SignerCertName, res); err != nil {
					return err
				}
			}
		}
		restarted = true
		if _, err := a.restartKubeletAndWait(txCtx, oldPID, res); err != nil {
			return err
		}
		return a.proveTrusted(txCtx, l, staged, res)
	}()
	if err != nil {
		return res, nil, a.abortKubelet(t, err, restarted)
	}
	return res, out, a.commit(t, res)
}

// probeName is the user the trust probes authenticate as: no RBAC grants
// it anything, so an API that trusts its certificate answers 403.
const probeName = "rotate-certs:trust-probe"

// proveTrusted makes throwaway client certificates of the staged new CAs
// (in memory, never written) and proves that kube-apiserver and the
// kubelet authenticate them (any answer but 401) and that etcd's client
// port accepts them: the new CAs are trusted where they will sign next.
func (a *Agent) proveTrusted(ctx context.Context, l layout, staged []*pki.Authority, res *api.RenewResult) error {
	by := map[string]*pki.Authority{}
	for _, s := range staged {
		by[s.CA.Name] = s
	}
	type probe struct {
		what, url string
		ca        *pki.Authority
		healthy   bool // needs 200 (etcd), else anything but 401
	}
	var probes []probe
	if ca := by[pki.ClusterCA.Name]; ca != nil {
		sp, err := readStaticPod(a.Root, "kube-apiserver")
		if err != nil {
			return err
		}
		probes = append(probes,
			probe{"kube-apiserver", "https://" + a.apiserverAddr(sp) + "/api", ca, false},
			probe{"kubelet", "https://" + a.kubeletServingAddr() + "/healthz", ca, false})
	}
	if ca := by[pki.EtcdCA.Name]; ca != nil && !l.externalEtcd {
		sp, err := readStaticPod(a.Root, "etcd")
		if err != nil {
			return err
		}
		addr, err := hostPort(sp.flags["listen-client-urls"])
		if err != nil {
			return fmt.Errorf("etcd --listen-client-urls: %w", err)
		}
		probes = append(probes, probe{"etcd", "https://" + addr + "/health", ca, true})
	}
	for _, p := range probes {
		cert, err := probeCertificate(p.ca, a.Now())
		if err != nil {
			return err
		}
		if err := a.waitAccepted(ctx, p.url, cert, p.healthy); err != nil {
			return fmt.Errorf("%s does not accept a client certificate of the new CA %s: %w", p.what, p.ca.CA.Name, err)
		}
		res.Verified = append(res.Verified, fmt.Sprintf("%s accepts client certificates of the new CA %s (%s)", p.what, p.ca.CA.Name, pki.CAID(p.ca.Cert)))
	}
	return nil
}

// probeCertificate is a client certificate of ca for probeName, valid for
// ten minutes, with a key that exists in memory only.
func probeCertificate(ca *pki.Authority, now time.Time) (*tls.Certificate, error) {
	key, err := pki.NewECDSAKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: probeName},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(10 * time.Minute),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	issued, err := ca.Issue(tmpl, key.Public(), 10*time.Minute, now)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
	clear(issued.KeyPEM)
	return &c, err
}

// waitAccepted asks url with the client certificate until the server
// authenticates it: any status but 401 (or 200 only, with healthy).
func (a *Agent) waitAccepted(ctx context.Context, url string, cert *tls.Certificate, healthy bool) error {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: a.dial,
			//nolint:gosec // the server's certificate is not what is proven here
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}},
		},
	}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	var last string
	for {
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(r)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if (healthy && resp.StatusCode == http.StatusOK) || (!healthy && resp.StatusCode != http.StatusUnauthorized) {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s after %s: %s", path.Base(url), a.Timeout, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// awaitRecreated waits until the kubelet re-created a static pod from its
// changed manifest: one process of it whose command line has an argument
// starting with flag and ending with value, healthy.
func (a *Agent) awaitRecreated(ctx context.Context, name, flag, value string, res *api.RenewResult) error {
	sp, err := readStaticPod(a.Root, name)
	if err != nil {
		return err
	}
	u, err := sp.healthURL()
	if err != nil {
		return err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	last := fmt.Errorf("no %s process started from the new manifest yet", name)
	for {
		ps, err := findProcesses(a.ProcDir, name)
		if err == nil && len(ps) == 1 && hasArg(a.ProcDir, ps[0].pid, flag, value) {
			if last = a.healthy(ctx, u); last == nil {
				res.Restarted = append(res.Restarted, api.Restarted{Component: name, NewPID: ps[0].pid, Seconds: time.Since(start).Seconds()})
				res.Verified = append(res.Verified, fmt.Sprintf("the kubelet re-created %s from its changed manifest (pid %d, %s...%s)", name, ps[0].pid, flag, value))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s was not re-created from its changed manifest within %s: %v", name, a.Timeout, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// hasArg tells whether a process's command line has an argument that
// starts with prefix and ends with suffix.
func hasArg(procDir string, pid int, prefix, suffix string) bool {
	data, err := os.ReadFile(path.Join(procDir, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	for _, arg := range strings.Split(string(data), "\x00") {
		if strings.HasPrefix(arg, prefix) && strings.HasSuffix(arg, suffix) {
			return true
		}
	}
	return false
}

// caSwitchServices are what the switch re-issues on a control plane; the
// kubelet's certificates come through the CSR API (the plugin's part).
var caSwitchServices = []string{string(pki.ServiceEtcd), string(pki.ServiceAPIServer), string(pki.ServiceControllerManager), string(pki.ServiceScheduler), string(pki.ServiceAdmin)}

// caSwitch makes the staged new CAs the signers of a control plane and
// re-issues with them every certificate its CAs signed there, as one
// transaction: each CA file becomes new-then-old with the new key,
// kube-controller-manager's signer files the new cluster CA, every leaf
// (etcd, kube-apiserver, front-proxy, the kubeconfigs) is re-issued with
// its subject, names and key algorithm; then everything is restarted
// (kube-apiserver drained first behind a load balancer) and the new
// serving certificates are proven served. The trust phase must be done:
// every trust point trusts the new CAs before they sign anything.
func (a *Agent) caSwitch(ctx context.Context, req api.Request) (*api.RenewResult, *api.CAResult, error) {
	cr, err := caRequest(req)
	if err != nil {
		return nil, nil, err
	}
	l, t, res, err := a.beginTxn(req)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*api.RenewResult, *api.CAResult, error) {
		t.end()
		return res, nil, err
	}
	if !l.controlPlane {
		return fail(errors.New("issuers switch on control planes; a worker only gets its kubelet certificates anew"))
	}
	staged, err := a.readStaged(l, cr.Rotation)
	if err != nil {
		return fail(err)
	}
	var files []pki.File
	signers := map[string]*pki.Authority{}
	for _, s := range staged {
		if want := cr.New[s.CA.Name]; want != string(pki.EncodeCertPEM(s.Cert)) {
			return fail(fmt.Errorf("the CA %s staged on this node is not the rotation's new CA", s.CA.Name))
		}
		bundle, err := pki.ReadFile(a.Root, s.CA.CertFile)
		if err != nil {
			return fail(err)
		}
		led, changed, err := pki.LeadCABundle(bundle, s.Cert)
		if errors.Is(err, pki.ErrNotInBundle) {
			return fail(fmt.Errorf("/%s does not trust the new CA %s yet: run the trust phase first (kubectl rotate-certs ca trust)", s.CA.CertFile, s.CA.Name))
		}
		if err != nil {
			return fail(fmt.Errorf("/%s: %w", s.CA.CertFile, err))
		}
		if changed {
			files = append(files, pki.File{Path: s.CA.CertFile, Data: led, Mode: 0o644})
		}
		keyPEM, err := pki.EncodeKeyPEM(s.Key)
		if err != nil {
			return fail(err)
		}
		if cur, err := pki.ReadFile(a.Root, s.CA.KeyFile); err != nil || string(cur) != string(keyPEM) {
			files = append(files, pki.File{Path: s.CA.KeyFile, Data: keyPEM, Mode: 0o600})
		}
		prev, err := pki.Predecessor(bundle, s.Cert)
		if err != nil {
			return fail(err)
		}
		signers[s.CA.Name] = &pki.Authority{CA: s.CA, Cert: s.Cert, Key: s.Key, Replaces: prev}
	}
	signerFiles, err := a.switchSigner(signers[pki.ClusterCA.Name])
	if err != nil {
		return fail(err)
	}
	files = append(files, signerFiles...)
	req.Services = caSwitchServices
	p, err := a.planWith(req, l, signers)
	if err != nil {
		return fail(err)
	}
	if len(p.problems) > 0 {
		return fail(fmt.Errorf("nothing was changed on this node: %s", strings.Join(p.problems, "; ")))
	}
	res.Notes = append(res.Notes, p.notes...)
	out := &api.CAResult{}
	if len(files) == 0 && len(p.renewals) == 0 {
		t.end()
		return res, out, nil
	}
	if err := t.start("ca-switch"); err != nil {
		t.end()
		return res, nil, err
	}
	res.Backup = t.b.Name
	txCtx, cancel := context.WithTimeout(ctx, api.WorkTimeout(a.Timeout))
	defer cancel()
	err = func() error {
		for _, f := range files {
			if err := t.write(f); err != nil {
				return err
			}
			out.Changed = append(out.Changed, "/"+f.Path)
		}
		changed, serials, err := writeRenewals(t, p, res)
		if err != nil {
			return err
		}
		// The signer's files make kube-controller-manager restart too.
		changed[pki.ServiceControllerManager] = changed[pki.ServiceControllerManager] || len(signerFiles) > 0
		return a.settle(txCtx, l, p.services, changed, serials, true, req.Graceful, res)
	}()
	if err != nil {
		return res, nil, t.abort(err)
	}
	return res, out, a.commit(t, res)
}

// switchSigner is what makes kube-controller-manager sign with the new
// cluster CA: its split signer files (the trust phase split them) with the
// new CA, where they differ.
func (a *Agent) switchSigner(next *pki.Authority) ([]pki.File, error) {
	manifest, err := pki.ReadFile(a.Root, pki.ControllerManagerManifest)
	if errors.Is(err, pki.ErrMissing) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	split, err := pki.SplitControllerManagerSigner(manifest)
	if err != nil {
		return nil, err
	}
	if split.Changed {
		return nil, errors.New("kube-controller-manager still signs with ca.crt: run the trust phase first (kubectl rotate-certs ca trust)")
	}
	files, err := split.Files(next)
	if err != nil {
		return nil, err
	}
	var out []pki.File
	for _, f := range files {
		if cur, err := pki.ReadFile(a.Root, f.Path); err != nil || string(cur) != string(f.Data) {
			out = append(out, f)
		}
	}
	return out, nil
}

// caSign signs a client certificate request with the rotation's new
// cluster CA (staged here): the new version of a user's kubeconfig, whose
// key stays where the user made it. The certificate keeps the request's
// subject and is for client authentication only.
func (a *Agent) caSign(req api.Request) (*api.CAResult, error) {
	cr, staged, err := a.stagedFor(req)
	if err != nil {
		return nil, err
	}
	var ca *pki.Authority
	for _, s := range staged {
		if s.CA == pki.ClusterCA {
			ca = s
		}
	}
	if ca == nil {
		return nil, errors.New("the new cluster CA is not staged on this node")
	}
	csr, err := pki.CheckClientCSR([]byte(cr.CSR))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{Subject: csr.Subject, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	validity := req.Validity
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	cert, err := ca.SignRequest(csr, tmpl, validity, a.Now())
	if err != nil {
		return nil, err
	}
	return &api.CAResult{Certificate: string(cert)}, nil
}

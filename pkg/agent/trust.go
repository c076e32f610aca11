package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"path"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// caFlag is a flag of a static pod that names a CA file.
type caFlag struct {
	component, flag string
	ca              pki.CA // the kubeadm CA it is meant to name
	signer          bool   // the CA it signs with, not one it trusts
}

// caFlags are the CA files kubeadm's static pods are given. kube-controller-
// manager's --cluster-signing-cert-file is the CA it issues certificates
// (CSRs) with: a signer, not a trust point.
var caFlags = []caFlag{
	{"kube-apiserver", "client-ca-file", pki.ClusterCA, false},
	{"kube-apiserver", "requestheader-client-ca-file", pki.FrontProxyCA, false},
	{"kube-apiserver", "etcd-cafile", pki.EtcdCA, false},
	{"etcd", "trusted-ca-file", pki.EtcdCA, false},
	{"etcd", "peer-trusted-ca-file", pki.EtcdCA, false},
	{"kube-controller-manager", "root-ca-file", pki.ClusterCA, false},
	{"kube-controller-manager", "client-ca-file", pki.ClusterCA, false},
	{"kube-controller-manager", "requestheader-client-ca-file", pki.FrontProxyCA, false},
	{"kube-controller-manager", "cluster-signing-cert-file", pki.ClusterCA, true},
}

// kubeconfigReaders are the kubeconfigs kubeadm writes and who uses each:
// the CA data of their cluster is what that client trusts in the server.
var kubeconfigReaders = []struct {
	file, reader string
	controlPlane bool // written on control planes only
	optional     bool // may be absent there (super-admin.conf: first control plane only)
}{
	{"admin.conf", "admin", true, false},
	{"super-admin.conf", "admin", true, true},
	{"controller-manager.conf", "kube-controller-manager", true, false},
	{"scheduler.conf", "kube-scheduler", true, false},
	{"kubelet.conf", "kubelet", false, false},
}

// trustReader gathers a node's trust points and the CAs in them.
type trustReader struct {
	root        string
	points      []api.TrustPoint
	signers     []api.TrustPoint
	authorities []api.Authority
	index       map[string]int // authority id -> its place in authorities
	// caFiles are the certificates of the node's CA files: the issuers a
	// certificate's signature is checked against.
	caFiles []*x509.Certificate
}

// readTrust reads every trust point of the node: kubeadm's CA files, what
// the static pods are told to trust, the CA data of every kubeconfig, and
// the kubelet's clientCAFile. Every path is resolved below the root as the
// host would resolve it (pki.ReadFile): no link leads outside it.
func (a *Agent) readTrust(l layout) *trustReader {
	t := &trustReader{root: a.Root, index: map[string]int{}}
	for _, ca := range pki.CAs {
		expected := (l.controlPlane || ca == pki.ClusterCA) && (ca != pki.EtcdCA || !l.externalEtcd)
		if !expected && !pki.Exists(a.Root, ca.CertFile) {
			continue
		}
		t.caFiles = append(t.caFiles, t.add(&t.points, "kubeadm", ca.Name, ca, ca.CertFile)...)
	}
	t.manifests()
	for _, k := range kubeconfigReaders {
		rel := "etc/kubernetes/" + k.file
		if !pki.Exists(a.Root, rel) && (k.optional || (k.controlPlane && !l.controlPlane)) {
			continue
		}
		t.kubeconfig(k.reader, rel)
	}
	t.kubeletClientCA()
	return t
}

// add reads the CA bundle at rel as a trust point (or signer) of reader,
// meant to hold kubeadm's CA ca, and returns its certificates.
func (t *trustReader) add(list *[]api.TrustPoint, reader, setting string, ca pki.CA, rel string) []*x509.Certificate {
	tp := api.TrustPoint{Path: "/" + rel, Reader: reader, Setting: setting, CA: ca.Name}
	certs, err := pki.ReadCABundle(t.root, rel)
	if err != nil {
		tp.Error = readError(err, rel)
	}
	tp.CAs = t.ids(certs)
	*list = append(*list, tp)
	return certs
}

// fail records a trust point that could not be read.
func (t *trustReader) fail(reader, setting string, ca pki.CA, rel string, err error) {
	t.points = append(t.points, api.TrustPoint{Path: "/" + rel, Reader: reader, Setting: setting, CA: ca.Name, Error: err.Error()})
}

// ids returns the ids of certs and records each CA once, with the earliest
// expiry of its copies (the one that ends trust first).
func (t *trustReader) ids(certs []*x509.Certificate) []string {
	var ids []string
	for _, c := range certs {
		id := pki.CAID(c)
		ids = append(ids, id)
		if i, ok := t.index[id]; ok {
			if c.NotAfter.Before(t.authorities[i].NotAfter) {
				t.authorities[i].NotAfter = c.NotAfter.UTC()
			}
			continue
		}
		t.index[id] = len(t.authorities)
		t.authorities = append(t.authorities, api.Authority{ID: id, CommonName: c.Subject.CommonName, NotAfter: c.NotAfter.UTC()})
	}
	return ids
}

// readError says why a trust point could not be read, and whether the
// agent can see the file at all: read-only agent pods mount only
// /etc/kubernetes, /var/lib/kubelet/pki and the kubelet's config.yaml.
func readError(err error, rel string) string {
	if errors.Is(err, pki.ErrMissing) && !strings.HasPrefix(rel, "etc/kubernetes/") && !strings.HasPrefix(rel, pki.KubeletPKIDir+"/") {
		return err.Error() + " (the agent sees only /etc/kubernetes and /var/lib/kubelet/pki)"
	}
	return err.Error()
}

// manifests adds the CA files the static pods' flags name.
func (t *trustReader) manifests() {
	pods := map[string]*staticPod{}
	for _, f := range caFlags {
		sp, seen := pods[f.component]
		if !seen {
			var err error
			sp, err = readStaticPod(t.root, f.component)
			switch {
			case errors.Is(err, pki.ErrMissing): // not on this node
			case err != nil:
				t.fail(f.component, "static pod manifest", f.ca, pki.ManifestsDir+"/"+f.component+".yaml", err)
			}
			pods[f.component] = sp
		}
		if sp == nil || sp.flags[f.flag] == "" {
			continue
		}
		list := &t.points
		if f.signer {
			list = &t.signers
		}
		t.add(list, f.component, "--"+f.flag, f.ca, hostPath("", sp.flags[f.flag]))
	}
}

// kubeconfig adds the CAs a kubeconfig's current cluster trusts: embedded
// (certificate-authority-data) or in a file (certificate-authority, which
// a relative path names from the kubeconfig's folder).
func (t *trustReader) kubeconfig(reader, rel string) {
	name := path.Base(rel)
	setting := name + " certificate-authority-data"
	data, err := pki.ReadFile(t.root, rel)
	if err != nil {
		t.fail(reader, setting, pki.ClusterCA, rel, err)
		return
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		t.fail(reader, setting, pki.ClusterCA, rel, fmt.Errorf("/%s: not a valid kubeconfig: %w", rel, err))
		return
	}
	var cluster string
	if ctx := cfg.Contexts[cfg.CurrentContext]; ctx != nil {
		cluster = ctx.Cluster
	}
	c := cfg.Clusters[cluster]
	switch {
	case c == nil:
		t.fail(reader, setting, pki.ClusterCA, rel, fmt.Errorf("/%s: no cluster for the current context %q", rel, cfg.CurrentContext))
	case len(c.CertificateAuthorityData) > 0:
		tp := api.TrustPoint{Path: "/" + rel, Reader: reader, Setting: setting, CA: pki.ClusterCA.Name}
		certs, err := pki.ParseCABundle(c.CertificateAuthorityData)
		if err != nil {
			tp.Error = fmt.Sprintf("/%s: certificate-authority-data: %v", rel, err)
		}
		tp.CAs = t.ids(certs)
		t.points = append(t.points, tp)
	case c.CertificateAuthority != "":
		t.add(&t.points, reader, name+" certificate-authority", pki.ClusterCA, hostPath(path.Dir(rel), c.CertificateAuthority))
	case c.InsecureSkipTLSVerify:
		t.fail(reader, setting, pki.ClusterCA, rel, fmt.Errorf("/%s: insecure-skip-tls-verify: trusts any server", rel))
	default:
		t.fail(reader, setting, pki.ClusterCA, rel, fmt.Errorf("/%s: neither certificate-authority-data nor certificate-authority: trusts the system's CAs", rel))
	}
}

// kubeletClientCA adds the kubelet's clientCAFile: the CAs whose client
// certificates its API accepts (kube-apiserver's, for logs and exec).
// A relative path is relative to the config file's folder, as the kubelet
// reads it.
func (t *trustReader) kubeletClientCA() {
	const setting = "clientCAFile"
	data, err := pki.ReadFile(t.root, pki.KubeletConfigFile)
	if err != nil {
		t.fail("kubelet", setting, pki.ClusterCA, pki.KubeletConfigFile, err)
		return
	}
	var cfg struct {
		Authentication struct {
			X509 struct {
				ClientCAFile string `json:"clientCAFile"`
			} `json:"x509"`
		} `json:"authentication"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.fail("kubelet", setting, pki.ClusterCA, pki.KubeletConfigFile, fmt.Errorf("/%s: %w", pki.KubeletConfigFile, err))
		return
	}
	file := cfg.Authentication.X509.ClientCAFile
	if file == "" {
		t.fail("kubelet", setting, pki.ClusterCA, pki.KubeletConfigFile, fmt.Errorf("/%s: no authentication.x509.clientCAFile: the kubelet accepts no client certificate", pki.KubeletConfigFile))
		return
	}
	t.add(&t.points, "kubelet", setting, pki.ClusterCA, hostPath(path.Dir(pki.KubeletConfigFile), file))
}

// hostPath turns a path a component was given into one relative to the
// root: absolute paths from the host's /, relative ones from dir.
func hostPath(dir, p string) string {
	if !path.IsAbs(p) {
		p = path.Join("/", dir, p)
	}
	return strings.TrimPrefix(path.Clean(p), "/")
}

// issuer names the CA, among the node's CA files, whose signature c's
// certificate carries. The kubelet's own serving certificate is
// self-signed, or signed by a CA the kubelet made and keeps in the same
// file.
func (t *trustReader) issuer(c pki.Cert) string {
	cert, err := pki.ReadCertificate(t.root, c)
	if err != nil {
		return "" // the certificate's own entry says why
	}
	if c.Method == pki.SelfSigned && t.selfSigned(cert, c.CertFile) {
		return api.IssuerSelfSigned
	}
	ca, err := pki.SignedBy(cert, t.caFiles)
	if err != nil {
		return api.IssuerUnknown
	}
	return pki.CAID(ca)
}

// selfSigned tells whether cert carries its own signature or that of a
// CA certificate that follows it in its file.
func (t *trustReader) selfSigned(cert *x509.Certificate, rel string) bool {
	if cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature) == nil {
		return true
	}
	data, err := pki.ReadFile(t.root, rel)
	if err != nil {
		return false
	}
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil {
		return false
	}
	_, err = pki.SignedBy(cert, certs[1:])
	return err == nil
}

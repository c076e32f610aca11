package agent

import (
	"context"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// kubeadmTrust gives a generated control plane the CA flags kubeadm
// writes in its static pod manifests, and the kubelet's config.yaml.
func kubeadmTrust(t *testing.T, root string) {
	t.Helper()
	manifest := func(name string, flags ...string) {
		cmd := "[" + name + ", " + strings.Join(flags, ", ") + "]"
		must(t, os.WriteFile(filepath.Join(root, pki.ManifestsDir, name+".yaml"), []byte(
			"apiVersion: v1\nkind: Pod\nmetadata: {name: "+name+", namespace: kube-system}\nspec:\n  containers:\n  - name: "+name+"\n    command: "+cmd+"\n"), 0o600))
	}
	if pki.Exists(root, pki.ManifestsDir+"/kube-apiserver.yaml") {
		manifest("kube-apiserver", "--client-ca-file=/etc/kubernetes/pki/ca.crt", "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt", "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt")
		manifest("etcd", "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt", "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt")
		manifest("kube-controller-manager", "--root-ca-file=/etc/kubernetes/pki/ca.crt", "--client-ca-file=/etc/kubernetes/pki/ca.crt",
			"--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt", "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt")
	}
	writeKubeletConfig(t, root, "/etc/kubernetes/pki/ca.crt")
}

func writeKubeletConfig(t *testing.T, root, clientCAFile string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(root, "var/lib/kubelet"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, pki.KubeletConfigFile), []byte(
		"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nauthentication:\n  x509:\n    clientCAFile: "+clientCAFile+"\n"), 0o644))
}

func inspectTrust(t *testing.T, root string) *api.InspectResult {
	t.Helper()
	req := request(api.Inspect)
	req.Trust, req.ReadOnly = true, true
	res := newTestAgent(t, root).Handle(context.Background(), req)
	if res.Outcome != api.Done {
		t.Fatalf("inspect: %s %s", res.Outcome, res.Error)
	}
	// What the plugin requires of an answer (orchestrator's checkTrust):
	// every id it names is a CA it describes, once.
	in := res.Inspect
	described := map[string]bool{}
	for _, a := range in.Authorities {
		if described[a.ID] || !pki.ValidCAID(a.ID) {
			t.Errorf("authority %q twice or malformed", a.ID)
		}
		described[a.ID] = true
	}
	for _, tp := range append(append([]api.TrustPoint{}, in.TrustPoints...), in.Signers...) {
		for _, id := range tp.CAs {
			if !described[id] {
				t.Errorf("%s names CA %s, not among the authorities", tp.Path, id)
			}
		}
	}
	for _, c := range in.Certs {
		if c.Issuer != "" && c.Issuer != api.IssuerSelfSigned && c.Issuer != api.IssuerUnknown && !described[c.Issuer] {
			t.Errorf("%s: issuer %s not among the authorities", c.Name, c.Issuer)
		}
	}
	return in
}

func caID(t *testing.T, root string, ca pki.CA) string {
	t.Helper()
	a, err := pki.LoadAuthority(root, ca)
	must(t, err)
	return pki.CAID(a.Cert)
}

// trusts maps "reader setting" to the ids it trusts, or to "error: ...".
func trusts(points []api.TrustPoint) map[string]string {
	out := map[string]string{}
	for _, p := range points {
		v := strings.Join(p.CAs, ",")
		if p.Error != "" {
			v = "error: " + p.Error
		}
		out[p.Reader+" "+p.Setting] = v
	}
	return out
}

func TestTrustOfAKubeadmControlPlane(t *testing.T) {
	n := pkitest.ControlPlane(t, t.TempDir(), "cp-1", pkitest.ECDSA)
	kubeadmTrust(t, n.Root)
	ca, etcd, fp := caID(t, n.Root, pki.ClusterCA), caID(t, n.Root, pki.EtcdCA), caID(t, n.Root, pki.FrontProxyCA)
	in := inspectTrust(t, n.Root)
	want := map[string]string{
		"kubeadm ca": ca, "kubeadm etcd-ca": etcd, "kubeadm front-proxy-ca": fp,
		"kube-apiserver --client-ca-file": ca, "kube-apiserver --requestheader-client-ca-file": fp, "kube-apiserver --etcd-cafile": etcd,
		"etcd --trusted-ca-file": etcd, "etcd --peer-trusted-ca-file": etcd,
		"kube-controller-manager --root-ca-file": ca, "kube-controller-manager --client-ca-file": ca, "kube-controller-manager --requestheader-client-ca-file": fp,
		"admin admin.conf certificate-authority-data": ca, "admin super-admin.conf certificate-authority-data": ca,
		"kube-controller-manager controller-manager.conf certificate-authority-data": ca, "kube-scheduler scheduler.conf certificate-authority-data": ca,
		"kubelet kubelet.conf certificate-authority-data": ca, "kubelet clientCAFile": ca,
	}
	if got := trusts(in.TrustPoints); len(got) != len(want) || len(in.TrustPoints) != len(want) {
		t.Errorf("trust points:\n got %v\nwant %v", got, want)
	} else {
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s trusts %q, want %q", k, got[k], v)
			}
		}
	}
	if len(in.Signers) != 1 || in.Signers[0].Setting != "--cluster-signing-cert-file" || strings.Join(in.Signers[0].CAs, ",") != ca {
		t.Errorf("signers %+v, want kube-controller-manager signing with %s", in.Signers, ca)
	}
	names := map[string]string{}
	for _, a := range in.Authorities {
		names[a.ID] = a.CommonName
	}
	if len(in.Authorities) != 3 || names[ca] != "kubernetes" || names[etcd] != "etcd-ca" || names[fp] != "front-proxy-ca" {
		t.Errorf("authorities %+v", in.Authorities)
	}
	byCA := map[string]string{pki.ClusterCA.Name: ca, pki.EtcdCA.Name: etcd, pki.FrontProxyCA.Name: fp}
	for _, tp := range in.TrustPoints {
		if strings.Join(tp.CAs, ",") != byCA[tp.CA] {
			t.Errorf("%s %s is meant to hold CA %q (%s), holds %v", tp.Reader, tp.Setting, tp.CA, byCA[tp.CA], tp.CAs)
		}
	}
	for _, c := range in.Certs {
		want := byCA[c.CA]
		if c.Name == "kubelet-serving" {
			want = api.IssuerSelfSigned
		}
		if c.Issuer != want {
			t.Errorf("%s: issuer %q, want %q", c.Name, c.Issuer, want)
		}
	}
}

// A worker has the cluster CA, kubelet.conf and the kubelet's
// clientCAFile; a kubelet.conf that trusts a second CA shows both.
func TestTrustOfAWorkerWithASecondCA(t *testing.T) {
	cp := pkitest.ControlPlane(t, t.TempDir(), "cp-1", pkitest.ECDSA)
	old, err := pki.LoadAuthority(cp.Root, pki.ClusterCA)
	must(t, err)
	w := pkitest.Worker(t, t.TempDir(), "w-1", pkitest.ECDSA, old)
	kubeadmTrust(t, w.Root)
	next := w.NewCA(t, pki.CA{Name: "next", CertFile: "tmp/next.crt", KeyFile: "tmp/next.key"}, "kubernetes-next")
	cfg, err := clientcmd.LoadFromFile(filepath.Join(w.Root, pki.KubeletKubeconfig))
	must(t, err)
	for _, c := range cfg.Clusters {
		c.CertificateAuthorityData = append(pki.EncodeCertPEM(old.Cert), pki.EncodeCertPEM(next.Cert)...)
	}
	must(t, clientcmd.WriteToFile(*cfg, filepath.Join(w.Root, pki.KubeletKubeconfig)))

	in := inspectTrust(t, w.Root)
	oldID, nextID := pki.CAID(old.Cert), pki.CAID(next.Cert)
	want := map[string]string{"kubeadm ca": oldID, "kubelet kubelet.conf certificate-authority-data": oldID + "," + nextID, "kubelet clientCAFile": oldID}
	if got := trusts(in.TrustPoints); len(got) != len(want) || got["kubeadm ca"] != want["kubeadm ca"] ||
		got["kubelet kubelet.conf certificate-authority-data"] != want["kubelet kubelet.conf certificate-authority-data"] || got["kubelet clientCAFile"] != want["kubelet clientCAFile"] {
		t.Errorf("trust points:\n got %v\nwant %v", got, want)
	}
	if len(in.Authorities) != 2 || in.Authorities[1].ID != nextID || in.Authorities[1].CommonName != "kubernetes-next" || len(in.Signers) != 0 {
		t.Errorf("authorities %+v signers %+v", in.Authorities, in.Signers)
	}
}

// A leaf signed by another CA of the node shows that CA; one signed by a
// CA the node does not hold shows as unknown; a trust file holding a leaf
// is an error, not a CA.
func TestIssuersAreProvenBySignature(t *testing.T) {
	n := pkitest.ControlPlane(t, t.TempDir(), "cp-1", pkitest.ECDSA)
	kubeadmTrust(t, n.Root)
	ca, err := pki.LoadAuthority(n.Root, pki.ClusterCA)
	must(t, err)
	// front-proxy-client signed by the cluster CA instead of front-proxy-ca.
	c, _ := n.Leaf(t, ca, pkix.Name{CommonName: "front-proxy-client"}, nil, nil, nil)
	must(t, os.WriteFile(filepath.Join(n.Root, "etc/kubernetes/pki/front-proxy-client.crt"), c, 0o644))
	// apiserver.crt signed by a CA named like the cluster CA, with another key.
	impostor := n.NewCA(t, pki.CA{Name: "x", CertFile: "tmp/x.crt", KeyFile: "tmp/x.key"}, "kubernetes")
	c, _ = n.Leaf(t, impostor, pkix.Name{CommonName: "kube-apiserver"}, nil, nil, nil)
	must(t, os.WriteFile(filepath.Join(n.Root, "etc/kubernetes/pki/apiserver.crt"), c, 0o644))
	// The kubelet is told to trust a leaf.
	writeKubeletConfig(t, n.Root, "/etc/kubernetes/pki/apiserver-kubelet-client.crt")

	in := inspectTrust(t, n.Root)
	issuers := map[string]string{}
	for _, c := range in.Certs {
		issuers[c.Name] = c.Issuer
	}
	if issuers["front-proxy-client"] != pki.CAID(ca.Cert) || issuers["apiserver"] != api.IssuerUnknown || issuers["apiserver-kubelet-client"] != pki.CAID(ca.Cert) {
		t.Errorf("issuers %v", issuers)
	}
	if got := trusts(in.TrustPoints)["kubelet clientCAFile"]; !strings.Contains(got, `error: /etc/kubernetes/pki/apiserver-kubelet-client.crt: certificate 1 of the bundle (subject "CN=kube-apiserver-kubelet-client,O=kubeadm:cluster-admins") is not a CA certificate`) {
		t.Errorf("kubelet clientCAFile: %s", got)
	}
}

// A link that climbs out of the root is resolved as the host would with
// the root as /: it never reaches the file outside.
func TestTrustPointLinksStayBelowTheRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	n := pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	outside := &pkitest.Node{Root: filepath.Join(dir, "outside"), Alg: pkitest.ECDSA, Start: n.Start}
	evil := outside.NewCA(t, pki.ClusterCA, "outside")
	kubeadmTrust(t, root)
	must(t, os.Symlink("../../../../outside/etc/kubernetes/pki/ca.crt", filepath.Join(root, "etc/kubernetes/pki/relative.crt")))
	must(t, os.Symlink(filepath.Join(dir, "outside/etc/kubernetes/pki/ca.crt"), filepath.Join(root, "etc/kubernetes/pki/absolute.crt")))
	for _, link := range []string{"relative.crt", "absolute.crt"} {
		writeKubeletConfig(t, root, "/etc/kubernetes/pki/"+link)
		in := inspectTrust(t, root)
		got := trusts(in.TrustPoints)["kubelet clientCAFile"]
		if !strings.Contains(got, "error: /etc/kubernetes/pki/"+link+": file does not exist") {
			t.Errorf("%s: the kubelet trust point says %q", link, got)
		}
		for _, a := range in.Authorities {
			if a.ID == pki.CAID(evil.Cert) {
				t.Errorf("%s: read the CA outside the root", link)
			}
		}
	}
}

// A kubeconfig may name its CA file instead of embedding it (relative to
// its folder), or trust any server.
func TestKubeconfigCAFiles(t *testing.T) {
	n := pkitest.ControlPlane(t, t.TempDir(), "cp-1", pkitest.ECDSA)
	kubeadmTrust(t, n.Root)
	edit := func(file string, change func(c *clientcmdapi.Cluster)) {
		p := filepath.Join(n.Root, "etc/kubernetes", file)
		cfg, err := clientcmd.LoadFromFile(p)
		must(t, err)
		for _, c := range cfg.Clusters {
			c.CertificateAuthorityData = nil
			change(c)
		}
		must(t, clientcmd.WriteToFile(*cfg, p))
	}
	edit("scheduler.conf", func(c *clientcmdapi.Cluster) { c.CertificateAuthority = "pki/front-proxy-ca.crt" })
	edit("admin.conf", func(c *clientcmdapi.Cluster) { c.InsecureSkipTLSVerify = true })
	in := inspectTrust(t, n.Root)
	var scheduler api.TrustPoint
	for _, tp := range in.TrustPoints {
		if tp.Reader == "kube-scheduler" {
			scheduler = tp
		}
	}
	if scheduler.Path != "/etc/kubernetes/pki/front-proxy-ca.crt" || scheduler.Setting != "scheduler.conf certificate-authority" ||
		scheduler.CA != "ca" || strings.Join(scheduler.CAs, ",") != caID(t, n.Root, pki.FrontProxyCA) {
		t.Errorf("scheduler.conf naming front-proxy-ca.crt: %+v", scheduler)
	}
	if got := trusts(in.TrustPoints)["admin admin.conf certificate-authority-data"]; got != "error: /etc/kubernetes/admin.conf: insecure-skip-tls-verify: trusts any server" {
		t.Errorf("admin.conf: %s", got)
	}
}

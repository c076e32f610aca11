// Package pkitest lays out a kubeadm-shaped node (PKI, kubeconfigs,
// manifests, kubelet certificates) in a temp dir, for tests.
package pkitest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// NodeIP is the address generated nodes have: TEST-NET-1 (RFC 5737), which
// is never routed, so nothing a test did not start itself can answer there.
const NodeIP = "192.0.2.10"

// Endpoints are where a control plane's components listen (host:port),
// as its static pod manifests say. Tests point them at their own servers.
type Endpoints struct {
	APIServer     string // kube-apiserver's secure port (its readiness probe too)
	EtcdClient    string // etcd's client URL (127.0.0.1 in kubeadm's layout)
	EtcdPeer      string
	EtcdHealth    string // etcd's plain HTTP metrics/health port
	ControllerMgr string // kube-controller-manager's health endpoint (HTTPS)
	Scheduler     string // kube-scheduler's health endpoint (HTTPS)
}

// DefaultEndpoints are kubeadm's ports on NodeIP.
func DefaultEndpoints() Endpoints {
	return Endpoints{
		APIServer: NodeIP + ":6443", EtcdClient: "127.0.0.1:2379", EtcdPeer: NodeIP + ":2380",
		EtcdHealth: "127.0.0.1:2381", ControllerMgr: "127.0.0.1:10257", Scheduler: "127.0.0.1:10259",
	}
}

// Algorithm is the key type of the generated PKI.
type Algorithm string

const (
	RSA   Algorithm = "RSA"   // kubeadm's default (RSA-2048)
	ECDSA Algorithm = "ECDSA" // kubeadm's encryptionAlgorithm: ECDSA-P256
)

// Node is a generated node layout.
type Node struct {
	Root string
	Name string
	Alg  Algorithm
	// Start is the NotBefore of everything generated.
	Start time.Time
	// Validity of the leaves (CAs get ten years).
	Validity time.Duration
}

func (n *Node) key(t testing.TB) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	if n.Alg == ECDSA {
		k, err = pki.NewECDSAKey()
	} else {
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (n *Node) write(t testing.TB, rel string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(n.Root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

// NewCA writes a CA's certificate and key.
func (n *Node) NewCA(t testing.TB, ca pki.CA, cn string) *pki.Authority {
	t.Helper()
	key := n.key(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: n.Start, NotAfter: n.Start.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	n.write(t, ca.CertFile, pki.EncodeCertPEM(cert), 0o644)
	n.write(t, ca.KeyFile, keyPEM, 0o600)
	return &pki.Authority{CA: ca, Cert: cert, Key: key}
}

// Leaf issues a leaf certificate; it returns PEMs without writing.
func (n *Node) Leaf(t testing.TB, a *pki.Authority, subject pkix.Name, dns []string, ips []net.IP, usage []x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key := n.key(t)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: subject, DNSNames: dns, IPAddresses: ips,
		NotBefore: n.Start, NotAfter: n.Start.Add(n.Validity),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: usage, BasicConstraintsValid: true,
	}
	cert, _, err := a.Sign(tmpl, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = pki.EncodeKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return pki.EncodeCertPEM(cert), keyPEM
}

func (n *Node) kubeconfig(t testing.TB, rel, user string, certPEM, keyPEM []byte, caPEM []byte) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: "https://" + NodeIP + ":6443", CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[user+"@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: user}
	cfg.CurrentContext = user + "@kubernetes"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.write(t, rel, data, 0o600)
}

var (
	server = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	both   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// ControlPlane lays out a kubeadm control-plane node below root.
func ControlPlane(t testing.TB, root, name string, alg Algorithm) *Node {
	t.Helper()
	return ControlPlaneSince(t, root, name, alg, time.Now().Add(-300*24*time.Hour))
}

// ControlPlaneSince lays out a control plane whose PKI was made at start:
// its leaves (a year each) expired if start lies more than a year back.
func ControlPlaneSince(t testing.TB, root, name string, alg Algorithm, start time.Time) *Node {
	t.Helper()
	n := &Node{Root: root, Name: name, Alg: alg, Start: start.Truncate(time.Second), Validity: 365 * 24 * time.Hour}
	ca := n.NewCA(t, pki.ClusterCA, "kubernetes")
	etcdCA := n.NewCA(t, pki.EtcdCA, "etcd-ca")
	fpCA := n.NewCA(t, pki.FrontProxyCA, "front-proxy-ca")
	ip := net.ParseIP(NodeIP)
	leaves := []struct {
		base string
		a    *pki.Authority
		subj pkix.Name
		dns  []string
		ips  []net.IP
		use  []x509.ExtKeyUsage
	}{
		{"apiserver", ca, pkix.Name{CommonName: "kube-apiserver"}, []string{name, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}, []net.IP{net.ParseIP("10.96.0.1"), ip, net.ParseIP("127.0.0.1")}, server},
		{"apiserver-kubelet-client", ca, pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"kubeadm:cluster-admins"}}, nil, nil, client},
		{"apiserver-etcd-client", etcdCA, pkix.Name{CommonName: "kube-apiserver-etcd-client"}, nil, nil, client},
		{"front-proxy-client", fpCA, pkix.Name{CommonName: "front-proxy-client"}, nil, nil, client},
		{"etcd/server", etcdCA, pkix.Name{CommonName: name}, []string{name, "localhost"}, []net.IP{ip, net.ParseIP("127.0.0.1"), net.IPv6loopback}, both},
		{"etcd/peer", etcdCA, pkix.Name{CommonName: name}, []string{name, "localhost"}, []net.IP{ip, net.ParseIP("127.0.0.1"), net.IPv6loopback}, both},
		{"etcd/healthcheck-client", etcdCA, pkix.Name{CommonName: "kube-etcd-healthcheck-client"}, nil, nil, client},
	}
	for _, l := range leaves {
		c, k := n.Leaf(t, l.a, l.subj, l.dns, l.ips, l.use)
		n.write(t, "etc/kubernetes/pki/"+l.base+".crt", c, 0o644)
		n.write(t, "etc/kubernetes/pki/"+l.base+".key", k, 0o600)
	}
	caPEM := pki.EncodeCertPEM(ca.Cert)
	for _, kc := range []struct{ file, user string }{
		{"admin.conf", "kubernetes-admin"}, {"super-admin.conf", "kubernetes-super-admin"},
		{"controller-manager.conf", "system:kube-controller-manager"}, {"scheduler.conf", "system:kube-scheduler"},
	} {
		org := []string(nil)
		if kc.file == "admin.conf" {
			org = []string{"kubeadm:cluster-admins"}
		}
		c, k := n.Leaf(t, ca, pkix.Name{CommonName: kc.user, Organization: org}, nil, nil, client)
		n.kubeconfig(t, "etc/kubernetes/"+kc.file, kc.user, c, k, caPEM)
	}
	n.WriteManifests(t, DefaultEndpoints())
	n.kubelet(t, ca)
	return n
}

// Worker lays out a kubeadm worker node below root, whose kubelet
// certificate is signed by the given cluster CA.
func Worker(t testing.TB, root, name string, alg Algorithm, ca *pki.Authority) *Node {
	t.Helper()
	n := &Node{Root: root, Name: name, Alg: alg, Start: ca.Cert.NotBefore.Add(65 * 24 * time.Hour).Truncate(time.Second), Validity: 365 * 24 * time.Hour}
	n.write(t, pki.ClusterCA.CertFile, pki.EncodeCertPEM(ca.Cert), 0o644)
	n.kubelet(t, ca)
	return n
}

// kubelet writes the kubelet's rotating client certificate (a symlinked
// bundle, absolute link target as the kubelet writes it), its self-signed
// serving certificate and a kubelet.conf that points at the bundle.
func (n *Node) kubelet(t testing.TB, ca *pki.Authority) {
	t.Helper()
	c, k := n.Leaf(t, ca, pki.KubeletClientSubject(n.Name), nil, nil, client)
	file := pki.KubeletRotatedName("kubelet-client", n.Start)
	n.write(t, file, pki.KubeletBundle(c, k), 0o600)
	if err := os.Symlink("/"+file, filepath.Join(n.Root, pki.KubeletClientCurrent)); err != nil {
		t.Fatal(err)
	}
	self := n.NewCA(t, pki.CA{Name: "kubelet-ca", CertFile: "tmp/kubelet-ca.crt", KeyFile: "tmp/kubelet-ca.key"}, n.Name+"-ca@1")
	sc, sk := n.Leaf(t, self, pkix.Name{CommonName: n.Name + "@1"}, []string{n.Name}, nil, server)
	n.write(t, pki.KubeletSelfSignedCert, append(sc, pki.EncodeCertPEM(self.Cert)...), 0o644)
	n.write(t, pki.KubeletSelfSignedKey, sk, 0o600)
	_ = os.RemoveAll(filepath.Join(n.Root, "tmp"))
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: "https://" + NodeIP + ":6443", CertificateAuthorityData: pki.EncodeCertPEM(ca.Cert)}
	cfg.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: "/" + pki.KubeletClientCurrent, ClientKey: "/" + pki.KubeletClientCurrent}
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "default-auth"}
	cfg.CurrentContext = "default"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.write(t, pki.KubeletKubeconfig, data, 0o600)
}

// WriteManifests writes the control plane's static pod manifests (as far as
// the agent reads them: flags, ports, probes) for the given endpoints.
func (n *Node) WriteManifests(t testing.TB, ep Endpoints) {
	t.Helper()
	split := func(hp string) (string, string) {
		h, p, err := net.SplitHostPort(hp)
		if err != nil {
			t.Fatal(err)
		}
		return h, p
	}
	apiHost, apiPort := split(ep.APIServer)
	n.write(t, "etc/kubernetes/manifests/kube-apiserver.yaml", []byte(fmt.Sprintf(apiserverManifest, apiPort, apiHost)), 0o600)
	healthHost, healthPort := split(ep.EtcdHealth)
	n.write(t, "etc/kubernetes/manifests/etcd.yaml", []byte(fmt.Sprintf(etcdManifest, ep.EtcdClient, ep.EtcdPeer, healthPort, healthHost)), 0o600)
	for name, hp := range map[string]string{"kube-controller-manager": ep.ControllerMgr, "kube-scheduler": ep.Scheduler} {
		h, p := split(hp)
		manifest := simpleManifest
		if name == "kube-controller-manager" {
			manifest = controllerManagerManifest
		}
		n.write(t, "etc/kubernetes/manifests/"+name+".yaml", []byte(fmt.Sprintf(manifest, name, p, h)), 0o600)
	}
}

// SetServer points a kubeconfig below the root at server.
func (n *Node) SetServer(t testing.TB, rel, server string) {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(filepath.Join(n.Root, rel))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		c.Server = server
	}
	if err := clientcmd.WriteToFile(*cfg, filepath.Join(n.Root, rel)); err != nil {
		t.Fatal(err)
	}
}

const apiserverManifest = `apiVersion: v1
kind: Pod
metadata: {name: kube-apiserver, namespace: kube-system}
spec:
  containers:
  - name: kube-apiserver
    command: [kube-apiserver, --secure-port=%[1]s, --etcd-servers=https://127.0.0.1:2379, --client-ca-file=/etc/kubernetes/pki/ca.crt, --etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt, --requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt, --proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt, --proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key]
    ports: [{containerPort: %[1]s, name: probe-port, protocol: TCP}]
    readinessProbe: {httpGet: {host: %[2]s, path: /readyz, port: probe-port, scheme: HTTPS}}
`

const etcdManifest = `apiVersion: v1
kind: Pod
metadata: {name: etcd, namespace: kube-system}
spec:
  containers:
  - name: etcd
    command: [etcd, --listen-client-urls=https://%[1]s, --listen-peer-urls=https://%[2]s, --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt, --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt]
    ports: [{containerPort: %[3]s, name: probe-port, protocol: TCP}]
    livenessProbe: {httpGet: {host: %[4]s, path: /livez, port: probe-port, scheme: HTTP}}
`

const simpleManifest = `apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: kube-system}
spec:
  containers:
  - name: %[1]s
    command: [%[1]s, --bind-address=127.0.0.1]
    ports: [{containerPort: %[2]s, name: probe-port, protocol: TCP}]
    livenessProbe: {httpGet: {host: %[3]s, path: /healthz, port: probe-port, scheme: HTTPS}}
`

// controllerManagerManifest is kubeadm's kube-controller-manager as far as
// CA files go: what it trusts, what it signs with, and the hostPath volume
// they come through.
const controllerManagerManifest = `apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: kube-system}
spec:
  containers:
  - name: %[1]s
    command:
    - %[1]s
    - --bind-address=127.0.0.1
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt
    - --cluster-signing-key-file=/etc/kubernetes/pki/ca.key
    - --requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt
    - --root-ca-file=/etc/kubernetes/pki/ca.crt
    ports: [{containerPort: %[2]s, name: probe-port, protocol: TCP}]
    livenessProbe: {httpGet: {host: %[3]s, path: /healthz, port: probe-port, scheme: HTTPS}}
    volumeMounts:
    - {mountPath: /etc/kubernetes/pki, name: k8s-certs, readOnly: true}
  volumes:
  - hostPath: {path: /etc/kubernetes/pki, type: DirectoryOrCreate}
    name: k8s-certs
`

// ServingByCSR gives the node a cluster-signed kubelet serving certificate
// in a rotating file, as the kubelet keeps it with serverTLSBootstrap.
func (n *Node) ServingByCSR(t testing.TB, ca *pki.Authority) {
	t.Helper()
	c, k := n.Leaf(t, ca, pki.KubeletClientSubject(n.Name), []string{n.Name}, []net.IP{net.ParseIP(NodeIP)}, server)
	file := pki.KubeletRotatedName("kubelet-server", n.Start)
	n.write(t, file, pki.KubeletBundle(c, k), 0o600)
	if err := os.Symlink("/"+file, filepath.Join(n.Root, pki.KubeletServerCurrent)); err != nil {
		t.Fatal(err)
	}
}

// KubesprayLayout moves the node's certificates to /etc/kubernetes/ssl and
// links /etc/kubernetes/pki to it with an absolute target, as kubespray
// does.
func KubesprayLayout(t testing.TB, root string) {
	t.Helper()
	pkiDir, sslDir := filepath.Join(root, pki.PKIDir), filepath.Join(root, "etc/kubernetes/ssl")
	if err := os.Rename(pkiDir, sslDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/kubernetes/ssl", pkiDir); err != nil {
		t.Fatal(err)
	}
}

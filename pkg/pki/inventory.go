// Package pki knows the kubeadm certificate layout and renews its leaf
// certificates with the CA already on disk; for CA rotation it makes
// successor CAs and bundles (caroll.go), hands CA keys over encrypted
// (handover.go) and splits kube-controller-manager's signer from ca.crt
// (signersplit.go). It is a pure library: it reads and
// writes only below a root directory it is given ("/host" in the agent pod, a
// temp dir in tests) and never talks to the cluster.
package pki

import (
	"fmt"
	"sort"
	"strings"
)

// Service is a component whose certificates are rotated together and which
// is restarted (or proven to have reloaded) afterwards.
type Service string

// The services a user can name with --service.
const (
	ServiceEtcd              Service = "etcd"
	ServiceAPIServer         Service = "kube-apiserver"
	ServiceControllerManager Service = "kube-controller-manager"
	ServiceScheduler         Service = "kube-scheduler"
	ServiceKubelet           Service = "kubelet"
	ServiceKubeProxy         Service = "kube-proxy"
	// ServiceAdmin covers the administrator kubeconfigs. It has no process to
	// restart and is only rotated by --all.
	ServiceAdmin Service = "admin"
)

// Services lists the services a user can name, in rotation order: etcd first
// because kube-apiserver depends on it.
var Services = []Service{ServiceEtcd, ServiceAPIServer, ServiceControllerManager, ServiceScheduler, ServiceKubelet, ServiceKubeProxy}

// ParseService returns the service for a user-given name, or an error that
// lists the valid ones.
func ParseService(name string) (Service, error) {
	for _, s := range Services {
		if string(s) == strings.TrimSpace(name) {
			return s, nil
		}
	}
	names := make([]string, len(Services))
	for i, s := range Services {
		names[i] = string(s)
	}
	return "", fmt.Errorf("unknown service %q: valid services are %s", name, strings.Join(names, ", "))
}

// Method says how a certificate is renewed.
type Method string

const (
	// SignedOnDisk certificates are signed by a CA whose key is on the node.
	SignedOnDisk Method = "ca-on-disk"
	// SignedByCSR certificates are signed by the cluster through the
	// CertificateSigningRequest API; the key is generated on the node.
	SignedByCSR Method = "csr"
	// SelfSigned is the kubelet's own serving certificate.
	SelfSigned Method = "self-signed"
)

// CA is a certificate authority of the kubeadm layout.
type CA struct {
	Name     string // kubeadm's name: ca, etcd-ca, front-proxy-ca
	CertFile string // relative to the root
	KeyFile  string
}

// The kubeadm CAs.
var (
	ClusterCA    = CA{Name: "ca", CertFile: "etc/kubernetes/pki/ca.crt", KeyFile: "etc/kubernetes/pki/ca.key"}
	EtcdCA       = CA{Name: "etcd-ca", CertFile: "etc/kubernetes/pki/etcd/ca.crt", KeyFile: "etc/kubernetes/pki/etcd/ca.key"}
	FrontProxyCA = CA{Name: "front-proxy-ca", CertFile: "etc/kubernetes/pki/front-proxy-ca.crt", KeyFile: "etc/kubernetes/pki/front-proxy-ca.key"}
	CAs          = []CA{ClusterCA, EtcdCA, FrontProxyCA}
)

// Cert describes one certificate of the layout. Exactly one of
// (CertFile, KeyFile) or Kubeconfig is set.
type Cert struct {
	Name       string // kubeadm's name as `kubeadm certs check-expiration` prints it
	Service    Service
	CA         CA     // the signing CA (zero for SelfSigned)
	Method     Method // how it is renewed
	CertFile   string // relative to the root; for the kubelet a PEM bundle with cert and key
	KeyFile    string
	Kubeconfig string // a kubeconfig with embedded client certificate and key
	// ControlPlaneOnly certificates exist only where the control-plane
	// static pods run.
	ControlPlaneOnly bool
	// Optional certificates may be absent without that being a fault
	// (super-admin.conf exists only on the first kubeadm control plane).
	Optional bool
}

// Path is the file that holds the certificate, relative to the root.
func (c Cert) Path() string {
	if c.Kubeconfig != "" {
		return c.Kubeconfig
	}
	return c.CertFile
}

// Kubelet file locations.
const (
	KubeletPKIDir         = "var/lib/kubelet/pki"
	KubeletClientCurrent  = KubeletPKIDir + "/kubelet-client-current.pem"
	KubeletServerCurrent  = KubeletPKIDir + "/kubelet-server-current.pem"
	KubeletSelfSignedCert = KubeletPKIDir + "/kubelet.crt"
	KubeletSelfSignedKey  = KubeletPKIDir + "/kubelet.key"
	KubeletKubeconfig     = "etc/kubernetes/kubelet.conf"
	KubeletConfigFile     = "var/lib/kubelet/config.yaml"
	ManifestsDir          = "etc/kubernetes/manifests"
	PKIDir                = "etc/kubernetes/pki"
)

// Inventory is the kubeadm layout: the single list of certificates that
// rotation, status, dry-run and the tests all read.
var Inventory = []Cert{
	{Name: "etcd-server", Service: ServiceEtcd, CA: EtcdCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/etcd/server.crt", KeyFile: "etc/kubernetes/pki/etcd/server.key", ControlPlaneOnly: true},
	{Name: "etcd-peer", Service: ServiceEtcd, CA: EtcdCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/etcd/peer.crt", KeyFile: "etc/kubernetes/pki/etcd/peer.key", ControlPlaneOnly: true},
	{Name: "etcd-healthcheck-client", Service: ServiceEtcd, CA: EtcdCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/etcd/healthcheck-client.crt", KeyFile: "etc/kubernetes/pki/etcd/healthcheck-client.key", ControlPlaneOnly: true},
	{Name: "apiserver", Service: ServiceAPIServer, CA: ClusterCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/apiserver.crt", KeyFile: "etc/kubernetes/pki/apiserver.key", ControlPlaneOnly: true},
	{Name: "apiserver-kubelet-client", Service: ServiceAPIServer, CA: ClusterCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/apiserver-kubelet-client.crt", KeyFile: "etc/kubernetes/pki/apiserver-kubelet-client.key", ControlPlaneOnly: true},
	{Name: "apiserver-etcd-client", Service: ServiceAPIServer, CA: EtcdCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/apiserver-etcd-client.crt", KeyFile: "etc/kubernetes/pki/apiserver-etcd-client.key", ControlPlaneOnly: true},
	{Name: "front-proxy-client", Service: ServiceAPIServer, CA: FrontProxyCA, Method: SignedOnDisk, CertFile: "etc/kubernetes/pki/front-proxy-client.crt", KeyFile: "etc/kubernetes/pki/front-proxy-client.key", ControlPlaneOnly: true},
	{Name: "controller-manager.conf", Service: ServiceControllerManager, CA: ClusterCA, Method: SignedOnDisk, Kubeconfig: "etc/kubernetes/controller-manager.conf", ControlPlaneOnly: true},
	{Name: "scheduler.conf", Service: ServiceScheduler, CA: ClusterCA, Method: SignedOnDisk, Kubeconfig: "etc/kubernetes/scheduler.conf", ControlPlaneOnly: true},
	{Name: "admin.conf", Service: ServiceAdmin, CA: ClusterCA, Method: SignedOnDisk, Kubeconfig: "etc/kubernetes/admin.conf", ControlPlaneOnly: true},
	{Name: "super-admin.conf", Service: ServiceAdmin, CA: ClusterCA, Method: SignedOnDisk, Kubeconfig: "etc/kubernetes/super-admin.conf", ControlPlaneOnly: true, Optional: true},
	{Name: "kubelet-client", Service: ServiceKubelet, CA: ClusterCA, Method: SignedByCSR, CertFile: KubeletClientCurrent, KeyFile: KubeletClientCurrent},
	// The serving certificate is either the kubelet's self-signed kubelet.crt
	// or, with serverTLSBootstrap, kubelet-server-current.pem; the agent
	// resolves which one a node uses (see KubeletServing).
	{Name: "kubelet-serving", Service: ServiceKubelet, Method: SelfSigned, CertFile: KubeletSelfSignedCert, KeyFile: KubeletSelfSignedKey},
}

// KubeletServingCSR is the kubelet-serving entry for nodes that use
// serverTLSBootstrap: a cluster-CA-signed certificate in a rotating file.
var KubeletServingCSR = Cert{Name: "kubelet-serving", Service: ServiceKubelet, CA: ClusterCA, Method: SignedByCSR, CertFile: KubeletServerCurrent, KeyFile: KubeletServerCurrent}

// SortServices orders services as Services does, with admin last.
func SortServices(s []Service) {
	rank := func(x Service) int {
		for i, y := range Services {
			if x == y {
				return i
			}
		}
		return len(Services)
	}
	sort.SliceStable(s, func(i, j int) bool { return rank(s[i]) < rank(s[j]) })
}

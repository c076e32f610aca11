package pki

import (
	"crypto/x509"
	"errors"
	"fmt"

	"k8s.io/client-go/tools/clientcmd"
)

// A CA rotation keeps the new CAs of a control plane, from the phase that
// makes them (prepare) to the one that makes them the signers (switch), in
// a folder of their own next to kubeadm's: nothing reads them there, and
// the keys never leave the node except end-to-end encrypted to another
// control plane (handover.go).
const (
	// StagingDir holds the new CAs, named like kubeadm's CAs
	// (ca.crt/.key, front-proxy-ca.*, etcd-ca.*).
	StagingDir = PKIDir + "/rotate-certs-next"
	// RotationFile names the rotation the staged CAs belong to.
	RotationFile = StagingDir + "/rotation"
	// HandoverKeyFile is a receiving control plane's hand-over private key
	// between the agent process that made it and the one that opens the
	// hand-over with it (each action runs in a process of its own). It is
	// 0600 in the 0700 staging folder, and removed by the opening.
	HandoverKeyFile = StagingDir + "/handover.key"
)

// Staged is where a rotation keeps the successor of ca.
func Staged(ca CA) CA {
	return CA{Name: ca.Name, CertFile: StagingDir + "/" + ca.Name + ".crt", KeyFile: StagingDir + "/" + ca.Name + ".key"}
}

// CAByName returns the kubeadm CA with that name (ca, etcd-ca,
// front-proxy-ca).
func CAByName(name string) (CA, bool) { return caByName(name) }

// Trust modes: what a CA rotation makes a trust point hold.
const (
	// TrustBoth adds the new CAs: old and new are trusted.
	TrustBoth = "both"
	// TrustOld removes the new CAs again (a rollback of TrustBoth).
	TrustOld = "old"
	// TrustNew removes every CA but the new ones (the rotation's end).
	TrustNew = "new"
)

// ErrNotInBundle is returned (wrapped) by RetrustBundle for TrustNew when
// the bundle does not hold the new CA: removing the others would leave it
// trusting nothing the cluster uses.
var ErrNotInBundle = errors.New("the new CA is not in the bundle")

// RetrustBundle returns a trust bundle changed for mode with respect to
// the new CA next: TrustBoth appends it (after the CAs there: clients that
// pick the first match keep the old CA's leaves verifying), TrustOld
// removes it, TrustNew keeps only it. A bundle that is already as asked
// comes back byte for byte, with changed false.
func RetrustBundle(bundle []byte, next *x509.Certificate, mode string) (out []byte, changed bool, err error) {
	certs, err := parseTrustBundle(bundle)
	if err != nil {
		return nil, false, err
	}
	has := false
	for _, c := range certs {
		has = has || SameCA(c, next)
	}
	switch mode {
	case TrustBoth:
		if has {
			return bundle, false, nil
		}
		out, err = MergeCABundles(bundle, EncodeCertPEM(next))
	case TrustOld:
		if !has {
			return bundle, false, nil
		}
		out, err = RemoveFromCABundle(bundle, next)
	case TrustNew:
		if !has {
			return nil, false, fmt.Errorf("%w (%s)", ErrNotInBundle, CAID(next))
		}
		if len(certs) == 1 {
			return bundle, false, nil
		}
		out = EncodeCertPEM(next)
	default:
		return nil, false, fmt.Errorf("unknown trust mode %q", mode)
	}
	if err != nil {
		return nil, false, err
	}
	return out, true, nil
}

// RetrustKubeconfig changes the CA data of a kubeconfig's current cluster
// as RetrustBundle changes a bundle. A kubeconfig that names a CA file
// instead (certificate-authority) is left alone (changed false, and the
// file is a trust point of its own); one that trusts no CA of its own is
// an error.
func RetrustKubeconfig(data []byte, next *x509.Certificate, mode string) (out []byte, changed bool, err error) {
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return nil, false, fmt.Errorf("not a valid kubeconfig: %w", err)
	}
	var name string
	if ctx := cfg.Contexts[cfg.CurrentContext]; ctx != nil {
		name = ctx.Cluster
	}
	cluster := cfg.Clusters[name]
	switch {
	case cluster == nil:
		return nil, false, fmt.Errorf("no cluster for the current context %q", cfg.CurrentContext)
	case len(cluster.CertificateAuthorityData) == 0 && cluster.CertificateAuthority != "":
		return data, false, nil
	case len(cluster.CertificateAuthorityData) == 0:
		return nil, false, errors.New("no certificate-authority-data: it trusts no CA of the cluster's")
	}
	bundle, changed, err := RetrustBundle(cluster.CertificateAuthorityData, next, mode)
	if err != nil || !changed {
		return data, false, err
	}
	cluster.CertificateAuthorityData = bundle
	out, err = clientcmd.Write(*cfg)
	if err != nil {
		return nil, false, fmt.Errorf("encoding kubeconfig: %w", err)
	}
	return out, true, nil
}

// LeadCABundle puts next first in a bundle that holds it (the switch of
// issuers: kubeadm and other tools take a CA file's first certificate as
// the one its key belongs to), the others after it in their order. A
// bundle led by next already comes back byte for byte, changed false; one
// without it is ErrNotInBundle.
func LeadCABundle(bundle []byte, next *x509.Certificate) (out []byte, changed bool, err error) {
	certs, err := parseTrustBundle(bundle)
	if err != nil {
		return nil, false, err
	}
	lead := -1
	for i, c := range certs {
		if SameCA(c, next) && lead < 0 {
			lead = i
		}
	}
	switch lead {
	case -1:
		return nil, false, fmt.Errorf("%w (%s)", ErrNotInBundle, CAID(next))
	case 0:
		return bundle, false, nil
	}
	ordered := append([]*x509.Certificate{certs[lead]}, certs[:lead]...)
	ordered = append(ordered, certs[lead+1:]...)
	return encodeTrustBundle(ordered), true, nil
}

// Predecessor is the CA in a bundle that next replaces: the first one that
// is not next. Nil if the bundle holds no other CA.
func Predecessor(bundle []byte, next *x509.Certificate) (*x509.Certificate, error) {
	certs, err := parseTrustBundle(bundle)
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		if !SameCA(c, next) {
			return c, nil
		}
	}
	return nil, nil
}

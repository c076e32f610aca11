package plugin

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// trustNewCA prepares the plugin's own connection for a rotation whose new
// CA signs (or will sign) the API server's certificate: it reads the
// rotation's record, trusts its old and new cluster CA, refuses to finish
// with credentials of an old CA, and (switch, --write-kubeconfig) has a
// client certificate of the new CA made for the user's key.
func (o *CAPhaseOptions) trustNewCA(ctx context.Context, opts *orchestrator.CAOptions) error {
	rec, err := o.runner.CARecord(ctx)
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return fmt.Errorf("%w: the API server presents a certificate of the new CA and your kubeconfig trusts only the old one: use the kubeconfig ca switch --write-kubeconfig wrote, or add the new CA (kube-public/cluster-info holds both) with --certificate-authority", err)
	}
	if err != nil {
		return err
	}
	if rec == nil {
		return errors.New("no CA rotation is under way: start one with kubectl rotate-certs ca prepare")
	}
	bundle, err := rec.ClusterCABundle()
	if err != nil {
		return err
	}
	if err := o.factory.TrustCAs(bundle); err != nil {
		return err
	}
	if err := o.connect(); err != nil {
		return err
	}
	cfg, err := o.factory.RESTConfig()
	if err != nil {
		return err
	}
	if o.phase == caPhaseFinish {
		return refuseOldCredentials(cfg.CertData, cfg.CertFile, rec)
	}
	if o.writeKubeconfig == "" {
		return nil
	}
	subject, err := clientSubject(cfg.CertData, cfg.CertFile)
	if err != nil {
		return err
	}
	key, err := pki.NewECDSAKey()
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		return err
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	next, err := pki.ParseCertificatePEM([]byte(rec.New[pki.ClusterCA.Name]))
	if err != nil {
		return err
	}
	opts.ClientCSR = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	opts.OnClientCertificate = func(certPEM []byte) error {
		// The node's answer is checked: the new CA's signature, our key,
		// the subject asked for, client authentication only.
		c, err := pki.ParseCertificatePEM(certPEM)
		if err != nil {
			return fmt.Errorf("the signed client certificate: %w", err)
		}
		switch {
		case c.CheckSignatureFrom(next) != nil:
			return errors.New("the signed client certificate is not signed by the new CA")
		case !pki.SamePublicKey(c.PublicKey, key.Public()):
			return errors.New("the signed client certificate is not for the key made here")
		case c.Subject.String() != subject.String():
			return fmt.Errorf("the signed client certificate is for %q, not %q", c.Subject, subject)
		case c.IsCA || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth:
			return errors.New("the signed client certificate is not a client certificate only")
		}
		return o.writeNewKubeconfig(cfg.Host, bundle, certPEM, keyPEM)
	}
	return nil
}

// clientSubject is the subject of the kubeconfig's client certificate:
// the same user, in the new version.
func clientSubject(certData []byte, certFile string) (pkix.Name, error) {
	data, err := clientCert(certData, certFile)
	if err != nil {
		return pkix.Name{}, err
	}
	if data == nil {
		return pkix.Name{}, errors.New("--write-kubeconfig: your kubeconfig authenticates without a client certificate, which a CA rotation does not affect; give it the new CA only (kube-public/cluster-info holds old and new)")
	}
	c, err := pki.ParseCertificatePEM(data)
	if err != nil {
		return pkix.Name{}, fmt.Errorf("your kubeconfig's client certificate: %w", err)
	}
	return c.Subject, nil
}

func clientCert(certData []byte, certFile string) ([]byte, error) {
	if len(certData) > 0 {
		return certData, nil
	}
	if certFile == "" {
		return nil, nil
	}
	return os.ReadFile(certFile)
}

// refuseOldCredentials refuses to finish with a client certificate an old
// CA signed: the phase removes that CA from kube-apiserver's trust, and
// the plugin would lock itself out half-way.
func refuseOldCredentials(certData []byte, certFile string, rec *orchestrator.CARotation) error {
	data, err := clientCert(certData, certFile)
	if err != nil || data == nil {
		return err
	}
	c, err := pki.ParseCertificatePEM(data)
	if err != nil {
		return fmt.Errorf("your kubeconfig's client certificate: %w", err)
	}
	old, err := pki.ParseCertificatePEM([]byte(rec.Old[pki.ClusterCA.Name]))
	if err != nil {
		return err
	}
	if c.CheckSignatureFrom(old) == nil {
		return errors.New("your kubeconfig authenticates with a certificate of the old CA, which ca finish stops trusting: use the kubeconfig ca switch --write-kubeconfig wrote (--kubeconfig FILE); nothing was changed")
	}
	return nil
}

// writeNewKubeconfig writes the user's kubeconfig in its new version: one
// context, the API server as now, old and new CA trusted, the new client
// certificate with the key made here; 0600, atomically.
func (o *CAPhaseOptions) writeNewKubeconfig(server string, caBundle, certPEM, keyPEM []byte) error {
	const name = "rotate-certs"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caBundle}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(o.writeKubeconfig), ".kubeconfig-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := errors.Join(tmp.Chmod(0o600), writeAll(tmp, data), tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), o.writeKubeconfig); err != nil {
		return err
	}
	fmt.Fprintf(o.ErrOut, "wrote your kubeconfig in its new version to %s (0600; server %s; a client certificate of the new CA)\n", o.writeKubeconfig, server)
	return nil
}

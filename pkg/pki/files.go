package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	securejoin "github.com/cyphar/filepath-securejoin"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// ErrMissing is returned (wrapped) when a file of the layout does not exist.
var ErrMissing = errors.New("file does not exist")

// ReadFile reads a file below root. A missing file yields an error wrapping
// ErrMissing.
func ReadFile(root, rel string) ([]byte, error) {
	full, err := Resolve(root, rel)
	if err != nil {
		return nil, fmt.Errorf("reading /%s: %w", rel, err)
	}
	b, err := os.ReadFile(full)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("/%s: %w", rel, ErrMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("reading /%s: %w", rel, err)
	}
	return b, nil
}

// Resolve returns where rel lies below root, following every symbolic link
// on the way as the host would, with root as "/": kubespray links
// /etc/kubernetes/pki to /etc/kubernetes/ssl, and the kubelet links
// kubelet-client-current.pem to an absolute host path; inside the agent pod
// both lie below root. No link can lead outside root.
func Resolve(root, rel string) (string, error) {
	return securejoin.SecureJoin(root, rel)
}

// resolveParent resolves the directory of rel but not its last element:
// the path of a symbolic link itself rather than of its target.
func resolveParent(root, rel string) (string, error) {
	dir, err := Resolve(root, filepath.Dir(rel))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(rel)), nil
}

// Exists reports whether a file below root exists.
func Exists(root, rel string) bool {
	full, err := Resolve(root, rel)
	if err != nil {
		return false
	}
	_, err = os.Stat(full)
	return err == nil
}

// ParseCertificatePEM returns the first certificate of a PEM bundle
// (client-go's certutil reads it).
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParsePrivateKeyPEM returns the first private key of a PEM bundle (PKCS#1,
// SEC 1 or PKCS#8, as client-go's keyutil reads them).
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	k, err := keyutil.ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

// ReadCertificate reads and parses the certificate of an inventory entry:
// from its PEM file, or embedded in its kubeconfig.
func ReadCertificate(root string, c Cert) (*x509.Certificate, error) {
	if c.Kubeconfig != "" {
		_, user, err := readKubeconfigUser(root, c.Kubeconfig)
		if err != nil {
			return nil, err
		}
		cert, err := ParseCertificatePEM(user.ClientCertificateData)
		if err != nil {
			return nil, fmt.Errorf("/%s: client-certificate-data: %w", c.Kubeconfig, err)
		}
		return cert, nil
	}
	data, err := ReadFile(root, c.CertFile)
	if err != nil {
		return nil, err
	}
	cert, err := ParseCertificatePEM(data)
	if err != nil {
		return nil, fmt.Errorf("/%s: %w", c.CertFile, err)
	}
	return cert, nil
}

// readKubeconfigUser loads a kubeconfig and returns the user of its current
// context, which must embed its client certificate and key.
func readKubeconfigUser(root, rel string) (*clientcmdapi.Config, *clientcmdapi.AuthInfo, error) {
	data, err := ReadFile(root, rel)
	if err != nil {
		return nil, nil, err
	}
	cfg, user, err := ParseKubeconfigUser(data)
	if err != nil {
		return nil, nil, fmt.Errorf("/%s: %w", rel, err)
	}
	return cfg, user, nil
}

// ParseKubeconfigUser parses a kubeconfig and returns the user of its
// current context, which must embed its client certificate and key.
func ParseKubeconfigUser(data []byte) (*clientcmdapi.Config, *clientcmdapi.AuthInfo, error) {
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return nil, nil, fmt.Errorf("not a valid kubeconfig: %w", err)
	}
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return nil, nil, fmt.Errorf("current context %q not found", cfg.CurrentContext)
	}
	user, ok := cfg.AuthInfos[ctx.AuthInfo]
	if !ok {
		return nil, nil, fmt.Errorf("user %q of the current context not found", ctx.AuthInfo)
	}
	if len(user.ClientCertificateData) == 0 || len(user.ClientKeyData) == 0 {
		return nil, nil, fmt.Errorf("user %q does not embed client-certificate-data and client-key-data; only embedded credentials are rotated", ctx.AuthInfo)
	}
	return cfg, user, nil
}

// CertificateIn returns the certificate a file holds: a PEM certificate
// (the first of a bundle), or the client certificate a kubeconfig embeds.
func CertificateIn(data []byte) (*x509.Certificate, error) {
	if c, err := ParseCertificatePEM(data); err == nil {
		return c, nil
	}
	_, user, err := ParseKubeconfigUser(data)
	if err != nil {
		return nil, err
	}
	return ParseCertificatePEM(user.ClientCertificateData)
}

// readKeyPair reads the certificate and private key of an entry and checks
// that they belong together.
func readKeyPair(root string, c Cert) (*x509.Certificate, crypto.Signer, error) {
	cert, err := ReadCertificate(root, c)
	if err != nil {
		return nil, nil, err
	}
	var keyPEM []byte
	if c.Kubeconfig != "" {
		_, user, err := readKubeconfigUser(root, c.Kubeconfig)
		if err != nil {
			return nil, nil, err
		}
		keyPEM = user.ClientKeyData
	} else if keyPEM, err = ReadFile(root, c.KeyFile); err != nil {
		return nil, nil, err
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("/%s: private key: %w", keyPath(c), err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("/%s: private key does not match the certificate /%s", keyPath(c), c.Path())
	}
	return cert, key, nil
}

func keyPath(c Cert) string {
	if c.Kubeconfig != "" {
		return c.Kubeconfig
	}
	return c.KeyFile
}

// SamePublicKey reports whether two public keys are equal.
func SamePublicKey(a, b crypto.PublicKey) bool { return publicKeysEqual(a, b) }

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// KeyAlgorithm names a public key's algorithm and size, e.g. "RSA-2048" or
// "ECDSA-P256".
func KeyAlgorithm(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA-" + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

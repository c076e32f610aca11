package pki

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// kube-controller-manager reads --cluster-signing-cert-file as exactly one
// certificate, the one it signs CSRs with (its CSR signer's caProvider
// wants "1 certificate" and a tls.X509KeyPair with the key), and refuses a
// bundle (kubernetes/kubeadm#1350). kubeadm points that flag at ca.crt, the
// file a CA rotation turns into an old+new bundle. Before ca.crt becomes a
// bundle, the signer therefore gets files of its own: ca-signer.crt and
// ca-signer.key next to ca.crt. kubeadm has no name for such a file (#1350
// is open); the name follows the "-signer" naming OpenShift uses for its
// controller-manager signers (csr-signer, kubelet-signer), collides with
// none of kubeadm's files, and lies in the certificates directory that the
// k8s-certs hostPath volume already mounts into the pod. --root-ca-file
// (published as every namespace's kube-root-ca.crt) and --client-ca-file
// (which authenticates clients of the controller-manager's own port, read
// into a certificate pool, so a bundle works) keep pointing at ca.crt: both
// must carry old and new CA. The signer files are watched and reloaded
// (dynamiccertificates), so switching the signer to the new CA later is a
// rewrite of ca-signer.crt/.key.
//
// kubeadm regenerates the manifest on `kubeadm upgrade` and for a joining
// control plane from its ClusterConfiguration: a rotation that splits the
// signer must also set controllerManager.extraArgs cluster-signing-cert-file
// and cluster-signing-key-file there, or an upgrade during the rotation
// points the signer at the bundle again.

// The signer's own files, in kubeadm's certificates directory.
const (
	SignerCertName = "ca-signer.crt"
	SignerKeyName  = "ca-signer.key"
	// ControllerManagerManifest is kube-controller-manager's static pod.
	ControllerManagerManifest = ManifestsDir + "/kube-controller-manager.yaml"
)

const (
	flagSigningCert = "cluster-signing-cert-file"
	flagSigningKey  = "cluster-signing-key-file"
)

// perSignerFlags are the signer-specific files (kube-controller-manager
// 1.19+); kubeadm sets none, and a manifest that does is not ours to edit.
var perSignerFlags = []string{"kubelet-serving", "kubelet-client", "kube-apiserver-client", "legacy-unknown"}

// SignerSplit is kube-controller-manager's manifest with the signer on its
// own files.
type SignerSplit struct {
	// Manifest is the manifest to write: the input with the values of
	// --cluster-signing-cert-file and --cluster-signing-key-file replaced
	// and every other byte kept, or the input itself when it was split
	// already (Changed false).
	Manifest []byte
	Changed  bool
	// CertFile and KeyFile are where the signer's certificate and key go,
	// relative to the root: the host paths of the flags' files through the
	// pod's hostPath volume.
	CertFile, KeyFile string
}

// SplitControllerManagerSigner points kube-controller-manager's signer at
// ca-signer.crt/.key next to the ca.crt/.key kubeadm gave it. It is pure
// (the manifest in, the manifest out) and idempotent: a manifest whose
// signer is split already comes back unchanged. It refuses what it does not
// understand: no kube-controller-manager container, signer flags missing,
// empty (kubeadm's external CA mode), given twice or as two arguments,
// pointing at other files than kubeadm's pair or the split one,
// signer-specific flags, files that no hostPath volume of the pod covers,
// or flags it cannot find in the text to replace them in place.
func SplitControllerManagerSigner(manifest []byte) (*SignerSplit, error) {
	refuse := func(format string, args ...any) (*SignerSplit, error) {
		return nil, fmt.Errorf("kube-controller-manager manifest: %s", fmt.Sprintf(format, args...))
	}
	pod, err := ParseStaticPod(manifest)
	if err != nil {
		return refuse("%v", err)
	}
	c, err := controllerManagerContainer(pod)
	if err != nil {
		return refuse("%v", err)
	}
	args := append(append([]string{}, c.Command...), c.Args...)
	values := map[string]string{}
	for _, flag := range []string{flagSigningCert, flagSigningKey} {
		v, err := singleFlag(args, flag)
		if err != nil {
			return refuse("%v", err)
		}
		values[flag] = v
	}
	for _, s := range perSignerFlags {
		for _, kind := range []string{"cert", "key"} {
			f := "cluster-signing-" + s + "-" + kind + "-file"
			if _, err := singleFlag(args, f); err == nil {
				return refuse("--%s is set: signer-specific files are not supported", f)
			}
		}
	}
	cert, key := values[flagSigningCert], values[flagSigningKey]
	dir := path.Dir(cert)
	var split bool
	switch {
	case cert == "" || key == "":
		return refuse("--%s=%q --%s=%q: kubeadm's external CA mode, the controller-manager signs nothing", flagSigningCert, cert, flagSigningKey, key)
	case !path.IsAbs(cert) || path.Clean(cert) != cert || path.Dir(key) != dir:
		return refuse("--%s=%s and --%s=%s are not two clean absolute paths in one directory", flagSigningCert, cert, flagSigningKey, key)
	case path.Base(cert) == "ca.crt" && path.Base(key) == "ca.key":
	case path.Base(cert) == SignerCertName && path.Base(key) == SignerKeyName:
		split = true
	default:
		return refuse("--%s=%s and --%s=%s are neither kubeadm's ca.crt/ca.key nor %s/%s", flagSigningCert, cert, flagSigningKey, key, SignerCertName, SignerKeyName)
	}
	newCert, newKey := path.Join(dir, SignerCertName), path.Join(dir, SignerKeyName)
	out := &SignerSplit{Manifest: manifest, Changed: !split}
	if out.CertFile, err = hostFile(pod, c, newCert); err != nil {
		return refuse("%v", err)
	}
	if out.KeyFile, err = hostFile(pod, c, newKey); err != nil {
		return refuse("%v", err)
	}
	if split {
		return out, nil
	}
	edited := manifest
	for flag, v := range map[string]string{flagSigningCert: newCert, flagSigningKey: newKey} {
		if edited, err = replaceFlagText(edited, flag, values[flag], v); err != nil {
			return refuse("%v", err)
		}
	}
	// The text edit must have changed exactly the two flags and nothing else.
	want := pod.DeepCopy()
	wc, _ := controllerManagerContainer(want)
	for _, list := range [][]string{wc.Command, wc.Args} {
		for i, a := range list {
			switch a {
			case "--" + flagSigningCert + "=" + cert:
				list[i] = "--" + flagSigningCert + "=" + newCert
			case "--" + flagSigningKey + "=" + key:
				list[i] = "--" + flagSigningKey + "=" + newKey
			}
		}
	}
	got, err := ParseStaticPod(edited)
	if err != nil || !equality.Semantic.DeepEqual(got, want) {
		return refuse("editing the signer flags in place changed more than them (%v); edit it by hand", err)
	}
	out.Manifest = edited
	return out, nil
}

// Files are what applying the split writes, in order: the signer's
// certificate and key (before the manifest makes the controller-manager
// read them), then the manifest if it changed. The signer is one CA: the
// cluster CA that signs, the old one until the rotation switches issuers.
func (s *SignerSplit) Files(signer *Authority) ([]File, error) {
	if signer == nil || signer.Cert == nil || signer.Key == nil || !signer.Cert.IsCA {
		return nil, errors.New("the controller-manager's signer must be a CA with its key")
	}
	if !publicKeysEqual(signer.Cert.PublicKey, signer.Key.Public()) {
		return nil, fmt.Errorf("CA %s: the key does not belong to the certificate", signer.CA.Name)
	}
	keyPEM, err := EncodeKeyPEM(signer.Key)
	if err != nil {
		return nil, err
	}
	files := []File{
		{Path: s.CertFile, Data: EncodeCertPEM(signer.Cert), Mode: 0o644},
		{Path: s.KeyFile, Data: keyPEM, Mode: 0o600},
	}
	if s.Changed {
		files = append(files, File{Path: ControllerManagerManifest, Data: s.Manifest, Mode: 0o600})
	}
	return files, nil
}

func controllerManagerContainer(pod *corev1.Pod) (*corev1.Container, error) {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == "kube-controller-manager" {
			return &pod.Spec.Containers[i], nil
		}
	}
	return nil, errors.New("no container named kube-controller-manager")
}

// singleFlag returns the value of a --flag=value given exactly once.
func singleFlag(args []string, flag string) (string, error) {
	var values []string
	for _, a := range args {
		if a == "--"+flag {
			return "", fmt.Errorf("--%s is given as two arguments; only --%s=value is understood", flag, flag)
		}
		if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
			values = append(values, v)
		}
	}
	switch len(values) {
	case 0:
		return "", fmt.Errorf("no --%s", flag)
	case 1:
		return values[0], nil
	}
	return "", fmt.Errorf("--%s is given %d times", flag, len(values))
}

// hostFile is where a file the container sees at p lies on the host,
// relative to the root: through the volume mount that covers p's directory
// (the deepest one), which must be a hostPath volume.
func hostFile(pod *corev1.Pod, c *corev1.Container, p string) (string, error) {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		mp := path.Clean(m.MountPath)
		if strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/") && (best == nil || len(mp) > len(path.Clean(best.MountPath))) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return "", fmt.Errorf("no volume mount of the container covers %s", p)
	}
	if best.SubPath != "" || best.SubPathExpr != "" {
		return "", fmt.Errorf("the volume mount %s that covers %s has a subPath", best.Name, p)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name != best.Name {
			continue
		}
		if v.HostPath == nil {
			return "", fmt.Errorf("volume %s that covers %s is not a hostPath", v.Name, p)
		}
		host := path.Join(v.HostPath.Path, strings.TrimPrefix(p, path.Clean(best.MountPath)))
		if !path.IsAbs(host) {
			return "", fmt.Errorf("volume %s: hostPath %q is not absolute", v.Name, v.HostPath.Path)
		}
		return strings.TrimPrefix(host, "/"), nil
	}
	return "", fmt.Errorf("the volume %s mounted at %s is not defined", best.Name, best.MountPath)
}

// replaceFlagText replaces --flag=old by --flag=to where it stands in the
// manifest's text, keeping every other byte: it must stand there exactly
// once as a whole YAML scalar (plain or quoted, in a block or flow list).
func replaceFlagText(manifest []byte, flag, old, to string) ([]byte, error) {
	token := []byte("--" + flag + "=" + old)
	var at []int
	for i := 0; ; {
		j := bytes.Index(manifest[i:], token)
		if j < 0 {
			break
		}
		start, end := i+j, i+j+len(token)
		if (start == 0 || bytes.IndexByte([]byte(" \t[,\"'"), manifest[start-1]) >= 0) &&
			(end == len(manifest) || bytes.IndexByte([]byte(" \t\r\n],\"'#"), manifest[end]) >= 0) {
			at = append(at, start)
		}
		i = end
	}
	if len(at) != 1 {
		return nil, fmt.Errorf("--%s=%s stands %d times in the text, not once; edit it by hand", flag, old, len(at))
	}
	out := make([]byte, 0, len(manifest)+len(to))
	out = append(out, manifest[:at[0]]...)
	out = append(out, "--"+flag+"="+to...)
	return append(out, manifest[at[0]+len(token):]...), nil
}

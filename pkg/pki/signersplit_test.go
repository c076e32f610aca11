package pki_test

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	certutil "k8s.io/client-go/util/cert"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// kubeadmManifests are real manifests (testdata/kube-controller-manager)
// and kubeadm's certificates directory in each.
var kubeadmManifests = map[string]string{
	"kubeadm-v1.37.2.yaml":              "/etc/kubernetes/pki",
	"kubeadm-v1.37.2-cert-dir-ssl.yaml": "/etc/kubernetes/ssl",
	"kind-v1.37.2.yaml":                 "/etc/kubernetes/pki",
}

func readManifest(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata/kube-controller-manager", name))
	must(t, err)
	return b
}

func kcmFlags(t *testing.T, manifest []byte) map[string]string {
	t.Helper()
	pod, err := pki.ParseStaticPod(manifest)
	must(t, err)
	return pki.ContainerFlags(pod.Spec.Containers[0])
}

func TestSplitControllerManagerSignerOnKubeadmManifests(t *testing.T) {
	for name, dir := range kubeadmManifests {
		t.Run(name, func(t *testing.T) {
			in := readManifest(t, name)
			s, err := pki.SplitControllerManagerSigner(in)
			must(t, err)
			if !s.Changed {
				t.Fatal("not changed")
			}
			// Exactly the two flag lines differ.
			inLines, outLines := strings.Split(string(in), "\n"), strings.Split(string(s.Manifest), "\n")
			if len(inLines) != len(outLines) {
				t.Fatalf("%d lines, was %d", len(outLines), len(inLines))
			}
			var changed []string
			for i := range inLines {
				if inLines[i] != outLines[i] {
					changed = append(changed, outLines[i])
				}
			}
			want := []string{"    - --cluster-signing-cert-file=" + dir + "/ca-signer.crt", "    - --cluster-signing-key-file=" + dir + "/ca-signer.key"}
			if !reflect.DeepEqual(changed, want) {
				t.Errorf("changed lines %q, want %q", changed, want)
			}
			before, after := kcmFlags(t, in), kcmFlags(t, s.Manifest)
			if after["root-ca-file"] != dir+"/ca.crt" || after["client-ca-file"] != dir+"/ca.crt" {
				t.Errorf("--root-ca-file=%s --client-ca-file=%s, want both at ca.crt", after["root-ca-file"], after["client-ca-file"])
			}
			for _, f := range []string{"cluster-signing-cert-file", "cluster-signing-key-file"} {
				delete(before, f)
				delete(after, f)
			}
			if !reflect.DeepEqual(before, after) {
				t.Errorf("other flags changed: %v -> %v", before, after)
			}
			host := strings.TrimPrefix(dir, "/")
			if s.CertFile != host+"/ca-signer.crt" || s.KeyFile != host+"/ca-signer.key" {
				t.Errorf("files %s %s", s.CertFile, s.KeyFile)
			}
			// Applying it again changes nothing.
			again, err := pki.SplitControllerManagerSigner(s.Manifest)
			must(t, err)
			if again.Changed || !bytes.Equal(again.Manifest, s.Manifest) || again.CertFile != s.CertFile || again.KeyFile != s.KeyFile {
				t.Errorf("second application: changed=%v files %s %s", again.Changed, again.CertFile, again.KeyFile)
			}
		})
	}
}

// splitEdit is the kubeadm manifest with the signer flags (as they stand in
// the text) replaced by the split ones.
func splitEdit(s string) string {
	s = strings.Replace(s, "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt", "--cluster-signing-cert-file=/etc/kubernetes/pki/ca-signer.crt", 1)
	return strings.Replace(s, "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key", "--cluster-signing-key-file=/etc/kubernetes/pki/ca-signer.key", 1)
}

func TestSplitControllerManagerSignerKeepsEveryOtherByte(t *testing.T) {
	kubeadm := string(readManifest(t, "kubeadm-v1.37.2.yaml"))
	flow := strings.Replace(kubeadm, `  - command:
    - kube-controller-manager
    - --authentication-kubeconfig=/etc/kubernetes/controller-manager.conf
    - --authorization-kubeconfig=/etc/kubernetes/controller-manager.conf
    - --bind-address=127.0.0.1
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --cluster-name=kubernetes
    - --cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt
    - --cluster-signing-key-file=/etc/kubernetes/pki/ca.key
`, `  - command: [kube-controller-manager, --authentication-kubeconfig=/etc/kubernetes/controller-manager.conf,
      --authorization-kubeconfig=/etc/kubernetes/controller-manager.conf, --bind-address=127.0.0.1,
      --client-ca-file=/etc/kubernetes/pki/ca.crt, --cluster-name=kubernetes,
      --cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt, --cluster-signing-key-file=/etc/kubernetes/pki/ca.key]
    args:
`, 1)
	for name, in := range map[string]string{
		"comments": "# kube-controller-manager, edited by hand\n" + strings.Replace(kubeadm,
			"    - --cluster-signing-key-file=/etc/kubernetes/pki/ca.key\n",
			"    - --cluster-signing-key-file=/etc/kubernetes/pki/ca.key   # the CA key\n    # signer above\n", 1) + "# end\n",
		"quoted": strings.Replace(strings.Replace(kubeadm,
			"- --cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt", `- "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt"`, 1),
			"- --cluster-signing-key-file=/etc/kubernetes/pki/ca.key", `- '--cluster-signing-key-file=/etc/kubernetes/pki/ca.key'`, 1),
		"CRLF":          strings.ReplaceAll(kubeadm, "\n", "\r\n"),
		"flow sequence": flow,
		"flags in args": strings.Replace(kubeadm, "    - --cluster-name=kubernetes\n", "    args:\n    - --cluster-name=kubernetes\n", 1),
	} {
		t.Run(name, func(t *testing.T) {
			if name == "flow sequence" && !strings.Contains(in, "command: [") {
				t.Fatal("the test's edit did not apply")
			}
			s, err := pki.SplitControllerManagerSigner([]byte(in))
			must(t, err)
			if got, want := string(s.Manifest), splitEdit(in); got != want || !s.Changed {
				t.Errorf("changed=%v, got\n%s\nwant\n%s", s.Changed, got, want)
			}
			again, err := pki.SplitControllerManagerSigner(s.Manifest)
			must(t, err)
			if again.Changed || !bytes.Equal(again.Manifest, s.Manifest) {
				t.Error("the second application changed it")
			}
		})
	}
}

func TestSplitControllerManagerSignerFollowsTheHostPath(t *testing.T) {
	in := strings.Replace(string(readManifest(t, "kubeadm-v1.37.2.yaml")), "      path: /etc/kubernetes/pki\n", "      path: /srv/kube/certs/\n", 1)
	s, err := pki.SplitControllerManagerSigner([]byte(in))
	must(t, err)
	if s.CertFile != "srv/kube/certs/ca-signer.crt" || s.KeyFile != "srv/kube/certs/ca-signer.key" {
		t.Errorf("files %s %s, want them below the hostPath srv/kube/certs", s.CertFile, s.KeyFile)
	}
	if !strings.Contains(string(s.Manifest), "--cluster-signing-cert-file=/etc/kubernetes/pki/ca-signer.crt") {
		t.Error("the flag does not name the path the container sees")
	}
}

func TestSplitControllerManagerSignerRefuses(t *testing.T) {
	kubeadm := string(readManifest(t, "kubeadm-v1.37.2.yaml"))
	certFlag, keyFlag := "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt", "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key"
	rep := func(old, new string) string {
		if !strings.Contains(kubeadm, old) {
			t.Fatalf("the test's edit %q does not apply", old)
		}
		return strings.Replace(kubeadm, old, new, 1)
	}
	for name, c := range map[string]struct {
		manifest, want string
	}{
		// kubeadm's external CA mode (ca.key absent) writes both flags empty.
		"external CA":           {strings.Replace(rep(certFlag, "--cluster-signing-cert-file="), keyFlag, "--cluster-signing-key-file=", 1), "external CA mode"},
		"no signer":             {strings.Replace(rep("    - "+certFlag+"\n", ""), "    - "+keyFlag+"\n", "", 1), "no --cluster-signing-cert-file"},
		"signer twice":          {rep(certFlag, certFlag+"\n    - "+certFlag), "given 2 times"},
		"two arguments":         {rep(certFlag, "--cluster-signing-cert-file\n    - /etc/kubernetes/pki/ca.crt"), "two arguments"},
		"per-signer files":      {rep(keyFlag, keyFlag+"\n    - --cluster-signing-kubelet-serving-cert-file=/etc/kubernetes/pki/kubelet-ca.crt"), "signer-specific"},
		"other files":           {strings.Replace(rep(certFlag, "--cluster-signing-cert-file=/etc/kubernetes/pki/my.crt"), keyFlag, "--cluster-signing-key-file=/etc/kubernetes/pki/my.key", 1), "neither kubeadm's"},
		"half split":            {rep(keyFlag, "--cluster-signing-key-file=/etc/kubernetes/pki/ca-signer.key"), "neither kubeadm's"},
		"key elsewhere":         {rep(keyFlag, "--cluster-signing-key-file=/root/ca.key"), "one directory"},
		"relative paths":        {strings.Replace(rep(certFlag, "--cluster-signing-cert-file=pki/ca.crt"), keyFlag, "--cluster-signing-key-file=pki/ca.key", 1), "absolute"},
		"no pki mount":          {rep("    - mountPath: /etc/kubernetes/pki\n      name: k8s-certs\n      readOnly: true\n", ""), "no volume mount"},
		"pki not a hostPath":    {rep("  - hostPath:\n      path: /etc/kubernetes/pki\n      type: DirectoryOrCreate\n    name: k8s-certs\n", "  - emptyDir: {}\n    name: k8s-certs\n"), "not a hostPath"},
		"pki volume undefined":  {rep("    name: k8s-certs\n  - hostPath:", "    name: other-certs\n  - hostPath:"), "not defined"},
		"pki mounted subPath":   {rep("      name: k8s-certs\n      readOnly: true\n", "      name: k8s-certs\n      readOnly: true\n      subPath: pki\n"), "subPath"},
		"flag in a comment too": {"# was " + certFlag + "\n" + kubeadm, "2 times in the text"},
		// The flag written with a YAML escape, its plain text only in a
		// comment: the text edit would hit the comment, and is caught.
		"escaped flag":      {"# " + certFlag + "\n" + rep("- "+certFlag, `- "\x2D-cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt"`), "changed more than them"},
		"renamed container": {rep("    name: kube-controller-manager\n", "    name: kcm\n"), "no container named kube-controller-manager"},
		"not YAML":          {"{{{", "kube-controller-manager manifest"},
		"empty":             {"", "no container"},
	} {
		s, err := pki.SplitControllerManagerSigner([]byte(c.manifest))
		if err == nil || !strings.Contains(err.Error(), c.want) || s != nil {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}

func TestSignerSplitFiles(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	old, err := pki.LoadAuthority(root, pki.ClusterCA)
	must(t, err)
	in := readManifest(t, "kubeadm-v1.37.2.yaml")
	s, err := pki.SplitControllerManagerSigner(in)
	must(t, err)
	files, err := s.Files(old)
	must(t, err)
	var paths []string
	for _, f := range files {
		paths = append(paths, f.Path)
	}
	if want := []string{"etc/kubernetes/pki/ca-signer.crt", "etc/kubernetes/pki/ca-signer.key", pki.ControllerManagerManifest}; !reflect.DeepEqual(paths, want) {
		t.Fatalf("files %v, want %v (signer before manifest)", paths, want)
	}
	if files[1].Mode != 0o600 || files[2].Mode != 0o600 || !bytes.Equal(files[2].Data, s.Manifest) {
		t.Errorf("modes %v %v", files[1].Mode, files[2].Mode)
	}
	for _, f := range files {
		must(t, pki.WriteAtomic(root, f))
	}
	// ca.crt becomes a bundle; the signer's files stay one CA and its key,
	// which is what the controller-manager loads.
	nu, _, err := pki.NewCALike(old, "", tenYears, old.Cert.NotBefore.Add(pki.ClockSkew))
	must(t, err)
	bundle, err := pki.MergeCABundles(pki.EncodeCertPEM(old.Cert), pki.EncodeCertPEM(nu.Cert))
	must(t, err)
	must(t, pki.WriteAtomic(root, pki.File{Path: pki.ClusterCA.CertFile, Data: bundle}))
	flags := kcmFlags(t, mustReadFile(t, root, pki.ControllerManagerManifest))
	certPEM, keyPEM := mustReadFile(t, root, flags["cluster-signing-cert-file"]), mustReadFile(t, root, flags["cluster-signing-key-file"])
	certs, err := certutil.ParseCertsPEM(certPEM)
	must(t, err)
	if len(certs) != 1 || !certs[0].Equal(old.Cert) {
		t.Errorf("the signer file holds %d certificates", len(certs))
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("signer key pair: %v", err)
	}
	if roots, err := certutil.ParseCertsPEM(mustReadFile(t, root, flags["root-ca-file"])); err != nil || len(roots) != 2 {
		t.Errorf("--root-ca-file holds %d CAs (%v), want old and new", len(roots), err)
	}
	// Again: the same files, and no manifest to write.
	again, err := pki.SplitControllerManagerSigner(mustReadFile(t, root, pki.ControllerManagerManifest))
	must(t, err)
	files2, err := again.Files(old)
	must(t, err)
	if len(files2) != 2 || !bytes.Equal(files2[0].Data, files[0].Data) || !bytes.Equal(files2[1].Data, files[1].Data) {
		t.Errorf("second application: %d files, or other data", len(files2))
	}

	mixed := *old
	mixed.Key = nu.Key
	if _, err := s.Files(&mixed); err == nil {
		t.Error("a key of another CA was accepted")
	}
	if _, err := s.Files(nil); err == nil {
		t.Error("no signer was accepted")
	}
	leaf := &pki.Authority{CA: pki.ClusterCA, Cert: mustRead(t, root, pki.Inventory[indexOf(t, "apiserver")]), Key: old.Key}
	if _, err := s.Files(leaf); err == nil {
		t.Error("a leaf was accepted as the signer")
	}
}

func mustReadFile(t *testing.T, root, rel string) []byte {
	t.Helper()
	b, err := pki.ReadFile(root, strings.TrimPrefix(rel, "/"))
	must(t, err)
	return b
}

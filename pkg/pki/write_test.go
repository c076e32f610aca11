package pki_test

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

func ownerOf(t *testing.T, path string) (uid, gid int, mode os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	must(t, err)
	s := st.Sys().(*syscall.Stat_t)
	return int(s.Uid), int(s.Gid), st.Mode().Perm()
}

// Hardened layouts run etcd and the control plane as their own users
// (kubeadm's RootlessControlPlane): a rewritten file keeps its owner, group
// and mode.
func TestWriteAtomicKeepsOwnerGroupAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files another owner")
	}
	root := t.TempDir()
	p := filepath.Join(root, "etc/kubernetes/pki/etcd/server.key")
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte("old"), 0o640))
	must(t, os.Chown(p, 1234, 2345))
	must(t, pki.WriteAtomic(root, pki.File{Path: "etc/kubernetes/pki/etcd/server.key", Data: []byte("new"), Mode: 0o600}))
	if uid, gid, mode := ownerOf(t, p); uid != 1234 || gid != 2345 || mode != 0o640 {
		t.Errorf("owner %d:%d mode %v, want 1234:2345 0640", uid, gid, mode)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Errorf("content %q", b)
	}
	// A new file gets the given mode; an explicit Attr wins over what exists.
	must(t, pki.WriteAtomic(root, pki.File{Path: "etc/kubernetes/pki/new.key", Data: []byte("k"), Mode: 0o600}))
	if _, _, mode := ownerOf(t, filepath.Join(root, "etc/kubernetes/pki/new.key")); mode != 0o600 {
		t.Errorf("new file mode %v", mode)
	}
	must(t, pki.WriteAtomic(root, pki.File{Path: "etc/kubernetes/pki/etcd/server.key", Data: []byte("back"), Attr: &pki.Attr{Mode: 0o600, UID: 42, GID: 43}}))
	if uid, gid, mode := ownerOf(t, p); uid != 42 || gid != 43 || mode != 0o600 {
		t.Errorf("restored attributes %d:%d %v", uid, gid, mode)
	}
}

// kubespray keeps the certificates in /etc/kubernetes/ssl and links
// /etc/kubernetes/pki to it with an absolute target; inside the agent pod
// the host's / is the root, so the link must resolve below the root. A
// certificate that is itself a link is replaced where it points.
func TestSymlinkedLayouts(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	pkitest.KubesprayLayout(t, root)
	if fi, err := os.Lstat(filepath.Join(root, pki.PKIDir)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("pki is not a link: %v", err)
	}
	if !pki.Exists(root, pki.ClusterCA.CertFile) {
		t.Fatal("ca.crt not found through the absolute pki link")
	}
	c := pki.Inventory[indexOf(t, "apiserver")]
	mustRead(t, root, c)
	must(t, pki.WriteAtomic(root, pki.File{Path: c.CertFile, Data: []byte("x"), Mode: 0o644}))
	if b, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/ssl/apiserver.crt")); string(b) != "x" {
		t.Errorf("write did not land in /etc/kubernetes/ssl: %q", b)
	}

	// A file that is a link (to a file in another directory).
	must(t, os.MkdirAll(filepath.Join(root, "srv/certs"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "srv/certs/front-proxy-client.crt"), []byte("old"), 0o644))
	link := filepath.Join(root, "etc/kubernetes/ssl/front-proxy-client.crt")
	must(t, os.Remove(link))
	must(t, os.Symlink("/srv/certs/front-proxy-client.crt", link))
	must(t, pki.WriteAtomic(root, pki.File{Path: "etc/kubernetes/pki/front-proxy-client.crt", Data: []byte("new"), Mode: 0o644}))
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the linked certificate became a regular file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "srv/certs/front-proxy-client.crt")); string(b) != "new" {
		t.Errorf("the link's target holds %q", b)
	}
}

// A link never leads outside the root, whatever it says.
func TestLinksStayBelowRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("outside"), 0o600))
	must(t, os.MkdirAll(filepath.Join(root, "etc/kubernetes"), 0o755))
	must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "etc/kubernetes/abs")))
	must(t, os.Symlink("../../../../../../.."+outside+"/secret", filepath.Join(root, "etc/kubernetes/rel")))
	for _, l := range []string{"etc/kubernetes/abs", "etc/kubernetes/rel"} {
		if b, err := pki.ReadFile(root, l); err == nil && bytes.Equal(b, []byte("outside")) {
			t.Errorf("%s read a file outside the root", l)
		}
		// The link's target below the root does not exist: an error, or a
		// file below the root, never a write outside.
		_ = pki.WriteAtomic(root, pki.File{Path: l, Data: []byte("in"), Mode: 0o600})
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "outside" {
		t.Errorf("a write through a link changed a file outside the root: %q", b)
	}
}

// Checking that a directory is writable creates nothing there.
func TestCheckWritableCreatesNothing(t *testing.T) {
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc/kubernetes"), 0o755))
	must(t, pki.CheckWritable(root, "etc/kubernetes"))
	if entries, _ := os.ReadDir(filepath.Join(root, "etc/kubernetes")); len(entries) != 0 {
		t.Errorf("left %v", entries)
	}
	if err := pki.CheckWritable(root, "etc/missing"); err == nil {
		t.Error("a missing directory is writable?")
	}
}

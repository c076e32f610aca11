//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// snapshot is a copy of a node's /etc/kubernetes and /var/lib/kubelet/pki,
// taken through the node container (not through the plugin), so the tests
// judge the plugin by an independent view of the files.
type snapshot struct {
	node string
	root string            // a temp dir laid out like the node's /
	sums map[string]string // path -> sha256 of every regular file
}

func takeSnapshot(t *testing.T, c *framework.Cluster, node string) *snapshot {
	t.Helper()
	out, err := c.Exec(context.Background(), node, nil, "tar", "-C", "/", "--exclude", "etc/kubernetes/rotate-certs-backup", "-cf", "-", "etc/kubernetes", "var/lib/kubelet/pki")
	if err != nil {
		t.Fatalf("node %s: tar: %v", node, err)
	}
	s := &snapshot{node: node, root: t.TempDir(), sums: map[string]string{}}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("node %s: reading tar: %v", node, err)
		}
		dst := filepath.Join(s.root, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			_ = os.MkdirAll(dst, 0o755)
		case tar.TypeSymlink:
			_ = os.MkdirAll(filepath.Dir(dst), 0o755)
			_ = os.Symlink(h.Linkname, dst)
			s.sums[h.Name] = "-> " + h.Linkname
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			_ = os.MkdirAll(filepath.Dir(dst), 0o755)
			if err := os.WriteFile(dst, data, 0o600); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			s.sums[h.Name] = hex.EncodeToString(sum[:])
		}
	}
	return s
}

// cert reads an inventory entry from the snapshot (nil if absent).
func (s *snapshot) cert(t *testing.T, c pki.Cert) *x509.Certificate {
	t.Helper()
	cert, err := pki.ReadCertificate(s.root, c)
	if errors.Is(err, pki.ErrMissing) {
		return nil
	}
	if err != nil {
		t.Fatalf("node %s: %s: %v", s.node, c.Name, err)
	}
	return cert
}

// changedFiles lists files whose content differs between two snapshots
// (added and removed files count).
func changedFiles(a, b *snapshot) []string {
	var out []string
	seen := map[string]bool{}
	for p, sum := range a.sums {
		seen[p] = true
		if b.sums[p] != sum {
			out = append(out, p)
		}
	}
	for p := range b.sums {
		if !seen[p] {
			out = append(out, p)
		}
	}
	return out
}

// checkUnchanged asserts that no node's files differ from before.
func (e *env) checkUnchanged(before map[string]*snapshot, what string) {
	e.t.Helper()
	after := e.snapshots()
	for n := range before {
		if c := changedFiles(before[n], after[n]); len(c) > 0 {
			e.t.Errorf("node %s: %s changed %v", n, what, c)
		}
	}
}

package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

var testEntries = []entry{
	{name: "kubectl-rotate_certs", mode: 0o755, data: []byte("binary")},
	{name: "LICENSE", mode: 0o644, data: []byte("license")},
}

func TestTarGzIsDeterministic(t *testing.T) {
	mtime := time.Unix(1700000000, 0).UTC()
	var a, b bytes.Buffer
	if err := writeTarGz(&a, testEntries, mtime); err != nil {
		t.Fatal(err)
	}
	if err := writeTarGz(&b, testEntries, mtime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two tar.gz of the same input differ")
	}
	gz, err := gzip.NewReader(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if gz.Name != "" || !gz.ModTime.IsZero() {
		t.Errorf("gzip header carries name %q / time %v", gz.Name, gz.ModTime)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if !h.ModTime.Equal(mtime) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		if h.Name == "kubectl-rotate_certs" && h.Mode != 0o755 {
			t.Errorf("binary mode %o", h.Mode)
		}
	}
	if strings.Join(names, ",") != "LICENSE,kubectl-rotate_certs" {
		t.Errorf("entries %v, want sorted LICENSE,kubectl-rotate_certs", names)
	}
}

func TestZipIsDeterministic(t *testing.T) {
	mtime := time.Unix(1700000000, 0).UTC()
	var a, b bytes.Buffer
	if err := writeZip(&a, testEntries, mtime); err != nil {
		t.Fatal(err)
	}
	if err := writeZip(&b, testEntries, mtime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two zips of the same input differ")
	}
	zr, err := zip.NewReader(bytes.NewReader(a.Bytes()), int64(a.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if len(zr.File) != 2 || zr.File[0].Name != "LICENSE" {
		t.Fatalf("unexpected entries")
	}
	for _, f := range zr.File {
		if !f.Modified.Equal(mtime) {
			t.Errorf("%s: modified %v", f.Name, f.Modified)
		}
	}
}

func TestRenderManifestSubsetAndURIBase(t *testing.T) {
	dir := t.TempDir()
	const v = "v1.2.3"
	if err := os.WriteFile(filepath.Join(dir, archiveName(v, "linux/amd64")), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &manifestFlags{
		dist:     dir,
		version:  v,
		template: filepath.Join("..", "..", "..", "krew", "rotate-certs.yaml"),
		uriBase:  "http://127.0.0.1:1/",
	}
	out := filepath.Join(dir, "rotate-certs.yaml")
	if err := renderManifest(m, []string{"linux/amd64"}, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		"  version: v1.2.3\n",
		"    uri: http://127.0.0.1:1/kubectl-rotate_certs_v1.2.3_linux_amd64.tar.gz\n",
		// sha256("x")
		"    sha256: 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("manifest lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "darwin") || strings.Contains(s, "{{") || strings.Count(s, "- selector:") != 1 {
		t.Errorf("manifest should hold exactly the linux/amd64 platform:\n%s", s)
	}
	// A platform without its archive is an error, not a half-filled manifest.
	if err := renderManifest(m, []string{"linux/amd64", "linux/arm64"}, out); err == nil {
		t.Error("rendering with a missing archive succeeded")
	}
}

// Every archive holds the completion script kubectl runs (a .cmd on
// windows, executable elsewhere), and the krew manifest installs exactly the
// files each platform's archive holds.
func TestArchivesShipCompletion(t *testing.T) {
	comp, err := readCompletion(filepath.Join("..", "..", "..", "completion"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(comp[completionName], []byte("__complete \"$@\"")) || !bytes.Contains(comp[completionName+".cmd"], []byte("__complete %*\r\n")) {
		t.Errorf("completion scripts do not call __complete: %q", comp)
	}
	tmpl, err := os.ReadFile(filepath.Join("..", "..", "..", "krew", "rotate-certs.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range allPlatforms {
		goos, _, _ := strings.Cut(p, "/")
		var names []string
		for _, e := range archiveEntries(goos, []byte("bin"), []byte("license"), comp) {
			names = append(names, e.name)
			if strings.HasPrefix(e.name, completionName) && (len(e.data) == 0 || e.mode != 0o755) {
				t.Errorf("%s: %s is empty or not executable (%o)", p, e.name, e.mode)
			}
		}
		block, err := keepPlatforms(string(tmpl), []string{p})
		if err != nil {
			t.Fatal(err)
		}
		var from []string
		for _, l := range strings.Split(block, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "-" && f[1] == "from:" {
				from = append(from, f[2])
			}
		}
		sort.Strings(names)
		sort.Strings(from)
		if strings.Join(names, ",") != strings.Join(from, ",") {
			t.Errorf("%s: the archive holds %v, the manifest installs %v", p, names, from)
		}
	}
}

// Command krewdist packages the cross-compiled binaries of kubectl
// rotate-certs into release archives that are byte-for-byte reproducible,
// and renders the krew manifest from its template. hack/dist.sh drives it;
// hack/test-krew.sh also uses its loopback file server.
//
//	krewdist package  -dist DIR -version V -epoch SECONDS -license FILE -completion DIR -template FILE [-uri-base URL] [-platforms "os/arch ..."]
//	krewdist manifest -dist DIR -version V -template FILE -out FILE [-uri-base URL] [-platforms "os/arch ..."]
//	krewdist serve    -dir DIR -port-file FILE [-addr 127.0.0.1:0]
//
// package expects DIR/bin/<os>_<arch>/kubectl-rotate_certs[.exe] and writes
// DIR/kubectl-rotate_certs_<version>_<os>_<arch>.tar.gz (.zip on windows),
// each holding the binary, LICENSE and the completion script kubectl runs
// (kubectl_complete-rotate_certs, a .cmd on windows, from -completion), then
// DIR/checksums.txt and
// DIR/rotate-certs.yaml. Archives carry no build-machine state: entries are
// sorted, owned by 0:0 with fixed modes, stamped with -epoch (the commit
// time), and gzip headers carry neither name nor time.
//
// The manifest template uses the same template language as krew-release-bot
// (.TagName and addURIAndSha), so the file that the bot renders on release and
// the one rendered here cannot drift apart. Here addURIAndSha takes the
// checksum of the local archive instead of downloading it, and -uri-base
// replaces everything before the archive's file name (to point the manifest at
// a mirror or a loopback server).
package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"text/template"
	"time"
)

const (
	binName = "kubectl-rotate_certs"
	// completionName is what kubectl (1.26+) runs to complete the
	// plugin's arguments; windows finds it by its .cmd extension.
	completionName = "kubectl_complete-rotate_certs"
)

// allPlatforms are the platforms of a release, in manifest order.
var allPlatforms = []string{
	"linux/amd64", "linux/arm64",
	"darwin/amd64", "darwin/arm64",
	"windows/amd64", "windows/arm64",
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("krewdist: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: krewdist package|manifest|serve [flags]")
	}
	var err error
	switch os.Args[1] {
	case "package":
		err = runPackage(os.Args[2:])
	case "manifest":
		err = runManifest(os.Args[2:])
	case "serve":
		err = runServe(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

type manifestFlags struct {
	dist, version, template, uriBase, platforms string
}

func (m *manifestFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.dist, "dist", "dist", "directory with the archives")
	fs.StringVar(&m.version, "version", "", "version (the release tag), e.g. v0.1.0")
	fs.StringVar(&m.template, "template", "krew/rotate-certs.yaml", "krew manifest template")
	fs.StringVar(&m.uriBase, "uri-base", "", "if set, archive URIs become <uri-base>/<archive file name>")
	fs.StringVar(&m.platforms, "platforms", strings.Join(allPlatforms, " "), "space-separated os/arch list")
}

func (m *manifestFlags) platformList() ([]string, error) {
	ps := strings.Fields(m.platforms)
	if len(ps) == 0 {
		return nil, errors.New("no platforms")
	}
	for _, p := range ps {
		if !contains(allPlatforms, p) {
			return nil, fmt.Errorf("unsupported platform %q (want one of %v)", p, allPlatforms)
		}
	}
	return ps, nil
}

func runPackage(args []string) error {
	fs := flag.NewFlagSet("package", flag.ExitOnError)
	var m manifestFlags
	m.register(fs)
	epoch := fs.Int64("epoch", -1, "modification time of all archive entries, seconds since 1970 (SOURCE_DATE_EPOCH)")
	license := fs.String("license", "LICENSE", "license file to ship in every archive")
	completion := fs.String("completion", "completion", "directory with the completion scripts "+completionName+" and "+completionName+".cmd")
	_ = fs.Parse(args)
	if m.version == "" || *epoch < 0 {
		return errors.New("package: -version and -epoch are required")
	}
	platforms, err := m.platformList()
	if err != nil {
		return err
	}
	// Zip (MS-DOS) timestamps cannot go before 1980.
	mtime := time.Unix(max(*epoch, 315532800), 0).UTC()
	lic, err := os.ReadFile(*license)
	if err != nil {
		return err
	}
	comp, err := readCompletion(*completion)
	if err != nil {
		return err
	}

	sums := map[string]string{}
	for _, p := range platforms {
		goos, _, _ := strings.Cut(p, "/")
		bin, err := os.ReadFile(filepath.Join(m.dist, "bin", strings.ReplaceAll(p, "/", "_"), exeName(goos)))
		if err != nil {
			return err
		}
		entries := archiveEntries(goos, bin, lic, comp)
		var buf bytes.Buffer
		if goos == "windows" {
			err = writeZip(&buf, entries, mtime)
		} else {
			err = writeTarGz(&buf, entries, mtime)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		name := archiveName(m.version, p)
		if err := os.WriteFile(filepath.Join(m.dist, name), buf.Bytes(), 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(buf.Bytes())
		sums[name] = hex.EncodeToString(sum[:])
	}

	names := make([]string, 0, len(sums))
	for n := range sums {
		names = append(names, n)
	}
	sort.Strings(names)
	var cs strings.Builder
	for _, n := range names {
		fmt.Fprintf(&cs, "%s  %s\n", sums[n], n) // sha256sum -c format
	}
	if err := os.WriteFile(filepath.Join(m.dist, "checksums.txt"), []byte(cs.String()), 0o644); err != nil {
		return err
	}
	return renderManifest(&m, platforms, filepath.Join(m.dist, "rotate-certs.yaml"))
}

func runManifest(args []string) error {
	fs := flag.NewFlagSet("manifest", flag.ExitOnError)
	var m manifestFlags
	m.register(fs)
	out := fs.String("out", "", "where to write the manifest; its base name must be rotate-certs.yaml for krew")
	_ = fs.Parse(args)
	if m.version == "" || *out == "" {
		return errors.New("manifest: -version and -out are required")
	}
	platforms, err := m.platformList()
	if err != nil {
		return err
	}
	return renderManifest(&m, platforms, *out)
}

// archiveName is the release asset name of one platform; the template's URLs
// must end in exactly this.
func archiveName(version, platform string) string {
	goos, arch, _ := strings.Cut(platform, "/")
	ext := ".tar.gz"
	if goos == "windows" {
		ext = ".zip"
	}
	return fmt.Sprintf("%s_%s_%s_%s%s", binName, version, goos, arch, ext)
}

type entry struct {
	name string
	mode int64
	data []byte
}

func exeName(goos string) string {
	if goos == "windows" {
		return binName + ".exe"
	}
	return binName
}

// readCompletion reads the completion scripts, by their names in archives.
func readCompletion(dir string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, name := range []string{completionName, completionName + ".cmd"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		out[name] = data
	}
	return out, nil
}

// archiveEntries are the files of one platform's archive: the binary,
// LICENSE and the completion script (a shell script, or on windows a .cmd,
// the kind of file windows runs without an .exe).
func archiveEntries(goos string, bin, license []byte, completion map[string][]byte) []entry {
	comp := entry{name: completionName, mode: 0o755, data: completion[completionName]}
	if goos == "windows" {
		comp = entry{name: completionName + ".cmd", mode: 0o755, data: completion[completionName+".cmd"]}
	}
	return []entry{
		{name: "LICENSE", mode: 0o644, data: license},
		{name: exeName(goos), mode: 0o755, data: bin},
		comp,
	}
}

func writeTarGz(w io.Writer, entries []entry, mtime time.Time) error {
	gz, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	// gzip.Header is left zero: no file name, MTIME 0.
	tw := tar.NewWriter(gz)
	for _, e := range sortedEntries(entries) {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     e.name,
			Mode:     e.mode,
			Size:     int64(len(e.data)),
			ModTime:  mtime,
			Uname:    "root",
			Gname:    "root",
			Format:   tar.FormatUSTAR,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

func writeZip(w io.Writer, entries []entry, mtime time.Time) error {
	zw := zip.NewWriter(w)
	for _, e := range sortedEntries(entries) {
		hdr := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: mtime}
		hdr.SetMode(os.FileMode(e.mode))
		f, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		if _, err := f.Write(e.data); err != nil {
			return err
		}
	}
	return zw.Close()
}

func sortedEntries(entries []entry) []entry {
	s := append([]entry(nil), entries...)
	sort.Slice(s, func(i, j int) bool { return s[i].name < s[j].name })
	return s
}

var sha256Line = regexp.MustCompile(`(?m)^\s*sha256: ([a-f0-9]{64})$`)

// renderManifest renders the template for the given platforms (blocks of
// other platforms are dropped, for host-only development builds).
func renderManifest(m *manifestFlags, platforms []string, out string) error {
	if path.Base(filepath.ToSlash(out)) != "rotate-certs.yaml" {
		return fmt.Errorf("manifest file must be named rotate-certs.yaml (krew takes the plugin name from it), not %q", out)
	}
	raw, err := os.ReadFile(m.template)
	if err != nil {
		return err
	}
	text, err := keepPlatforms(string(raw), platforms)
	if err != nil {
		return fmt.Errorf("%s: %w", m.template, err)
	}
	funcs := template.FuncMap{
		// Same signature and output shape as krew-release-bot's.
		"addURIAndSha": func(urlTemplate, tag string) (string, error) {
			var u strings.Builder
			t, err := template.New("url").Option("missingkey=error").Parse(urlTemplate)
			if err != nil {
				return "", err
			}
			if err := t.Execute(&u, struct{ TagName, Version string }{tag, strings.TrimPrefix(tag, "v")}); err != nil {
				return "", err
			}
			uri := u.String()
			name := path.Base(uri)
			data, err := os.ReadFile(filepath.Join(m.dist, name))
			if err != nil {
				return "", fmt.Errorf("archive for %s: %w", uri, err)
			}
			if m.uriBase != "" {
				uri = strings.TrimSuffix(m.uriBase, "/") + "/" + name
			}
			sum := sha256.Sum256(data)
			return fmt.Sprintf("uri: %s\n    sha256: %s", uri, hex.EncodeToString(sum[:])), nil
		},
	}
	t, err := template.New(filepath.Base(m.template)).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	// Only TagName: krew-release-bot offers nothing else that is stable.
	if err := t.Execute(&buf, struct{ TagName string }{m.version}); err != nil {
		return err
	}
	if strings.Contains(buf.String(), "{{") {
		return errors.New("rendered manifest still contains template actions")
	}
	if n := len(sha256Line.FindAllString(buf.String(), -1)); n != len(platforms) {
		return fmt.Errorf("rendered manifest has %d valid sha256 lines, want %d", n, len(platforms))
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// keepPlatforms removes from the template's spec.platforms list every item
// whose os/arch is not wanted. It understands the layout of
// krew/rotate-certs.yaml: items start with "  - selector:" right under
// "  platforms:", and each names "os: X" and "arch: Y".
func keepPlatforms(text string, want []string) (string, error) {
	lines := strings.SplitAfter(text, "\n")
	var out, item []string
	inList, found := false, map[string]bool{}
	flush := func() error {
		if item == nil {
			return nil
		}
		var goos, arch string
		for _, l := range item {
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == "os:" {
				goos = f[1]
			}
			if len(f) == 2 && f[0] == "arch:" {
				arch = f[1]
			}
		}
		if goos == "" || arch == "" {
			return fmt.Errorf("platform item without os/arch: %q", strings.Join(item, ""))
		}
		p := goos + "/" + arch
		found[p] = true
		if contains(want, p) {
			out = append(out, item...)
		}
		item = nil
		return nil
	}
	for _, l := range lines {
		switch {
		case strings.TrimRight(l, "\r\n") == "  platforms:":
			inList = true
			out = append(out, l)
		case inList && strings.HasPrefix(l, "  - "):
			if err := flush(); err != nil {
				return "", err
			}
			item = []string{l}
		case inList && (strings.HasPrefix(l, "    ") || strings.TrimSpace(l) == ""):
			item = append(item, l)
		default:
			if err := flush(); err != nil {
				return "", err
			}
			inList = false
			out = append(out, l)
		}
	}
	if err := flush(); err != nil {
		return "", err
	}
	for _, p := range want {
		if !found[p] {
			return "", fmt.Errorf("no spec.platforms item for %s", p)
		}
	}
	return strings.Join(out, ""), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runServe serves a directory over HTTP on a loopback address and writes the
// chosen port to -port-file once listening. It logs every request, so tests
// can show where downloads came from. It stops on SIGTERM/SIGINT.
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", ".", "directory to serve")
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback only)")
	portFile := fs.String("port-file", "", "file to write the port to")
	_ = fs.Parse(args)
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to listen on non-loopback address %q", *addr)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portFile != "" {
		tmp := *portFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%d\n", port)), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, *portFile); err != nil {
			return err
		}
	}
	log.Printf("serving %s on http://%s", *dir, ln.Addr())
	files := http.FileServer(http.Dir(*dir))
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
			files.ServeHTTP(w, r)
		}),
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-stop
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

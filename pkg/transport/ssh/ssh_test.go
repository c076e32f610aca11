package ssh

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/transport"
)

// fixture is a client key, a server that accepts it, and Options that
// reach the server as root with that key, checking its host key.
type fixture struct {
	srv  *testServer
	opts Options
}

func newFixture(t *testing.T, cfg serverConfig) *fixture {
	t.Helper()
	t.Setenv("SSH_AUTH_SOCK", "")
	priv, signer := newKey(t)
	cfg.authorized = append(cfg.authorized, signer.PublicKey())
	srv := newServer(t, cfg)
	return &fixture{srv: srv, opts: Options{
		User:       "root",
		KeyFile:    writeKeyFile(t, priv, ""),
		KnownHosts: writeKnownHosts(t, srv.knownHostsLine()),
		Timeout:    10 * time.Second,
	}}
}

// dial dials the fixture's server and closes the node when the test ends.
func (f *fixture) dial(t *testing.T) transport.Node {
	t.Helper()
	n, err := Dial(context.Background(), f.srv.addr, f.opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// run runs argv and fails the test on an error.
func run(t *testing.T, n transport.Node, argv ...string) string {
	t.Helper()
	out, err := n.Run(context.Background(), argv, nil)
	if err != nil {
		t.Fatalf("Run %q: %v", argv, err)
	}
	return string(out)
}

// wantErr fails unless err is an error whose text has all of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one with %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q\n  does not contain %q", err, p)
		}
	}
}

// TestHostKeys checks the host key against known_hosts for real: the
// connection proceeds (logs in) only when the key is known or the user
// opted out.
func TestHostKeys(t *testing.T) {
	t.Run("unknown key refused", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		for name, file := range map[string]string{
			"empty file":   writeKnownHosts(t, "# nothing"),
			"missing file": filepath.Join(t.TempDir(), "known_hosts"),
		} {
			f.opts.KnownHosts = file
			_, err := Dial(context.Background(), f.srv.addr, f.opts)
			t.Logf("%s: %v", name, err)
			wantErr(t, err, "host key of 127.0.0.1 is not known", ssh.FingerprintSHA256(f.srv.hostKey()),
				"ssh-keyscan -p "+f.srv.port+" 127.0.0.1 >> "+file, "--ssh-insecure-ignore-host-key")
		}
		if logins, _, _, _ := f.srv.snapshot(); logins != 0 {
			t.Errorf("the client logged in %d times to a host it does not know", logins)
		}
	})
	t.Run("known key accepted", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		if out := run(t, f.dial(t), "echo", "ok"); out != "ok\n" {
			t.Errorf("got %q", out)
		}
	})
	t.Run("hashed entry accepted", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		hashed := knownhosts.HashHostname(knownhosts.Normalize(f.srv.addr))
		f.opts.KnownHosts = writeKnownHosts(t, knownhosts.Line([]string{hashed}, f.srv.hostKey()))
		run(t, f.dial(t), "true")
	})
	t.Run("entry for another port does not count", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		f.opts.KnownHosts = writeKnownHosts(t, knownhosts.Line([]string{"127.0.0.1"}, f.srv.hostKey()))
		_, err := Dial(context.Background(), f.srv.addr, f.opts)
		wantErr(t, err, "is not known")
	})
	t.Run("changed key refused", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		other := newSigner(t).PublicKey()
		f.opts.KnownHosts = writeKnownHosts(t, "# header", knownhosts.Line([]string{f.srv.addr}, other))
		_, err := Dial(context.Background(), f.srv.addr, f.opts)
		t.Log(err)
		wantErr(t, err, "host key of 127.0.0.1 has CHANGED", "man-in-the-middle",
			ssh.FingerprintSHA256(f.srv.hostKey()), f.opts.KnownHosts+":2", ssh.FingerprintSHA256(other),
			"ssh-keygen -R '[127.0.0.1]:"+f.srv.port+"'")
		if logins, _, _, _ := f.srv.snapshot(); logins != 0 {
			t.Errorf("the client logged in %d times to a host whose key changed", logins)
		}
	})
	t.Run("known by its other key type accepted", func(t *testing.T) {
		// The host has an ECDSA and an Ed25519 key; known_hosts has the
		// Ed25519 one, which x/crypto prefers less: the client must ask for
		// that one, not take the ECDSA key and report a change.
		ed := newSigner(t)
		f := newFixture(t, serverConfig{hostKeys: []ssh.Signer{newECDSASigner(t), ed}})
		f.opts.KnownHosts = writeKnownHosts(t, knownhosts.Line([]string{f.srv.addr}, ed.PublicKey()))
		run(t, f.dial(t), "true")
	})
	t.Run("known key type no longer offered refused", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		f.opts.KnownHosts = writeKnownHosts(t, knownhosts.Line([]string{f.srv.addr}, newECDSASigner(t).PublicKey()))
		_, err := Dial(context.Background(), f.srv.addr, f.opts)
		t.Log(err)
		wantErr(t, err, "has CHANGED", "no longer offers a key of the type known_hosts has", "man-in-the-middle", f.opts.KnownHosts+":1")
	})
	t.Run("insecure opt-out accepted", func(t *testing.T) {
		f := newFixture(t, serverConfig{})
		f.opts.KnownHosts = writeKnownHosts(t, knownhosts.Line([]string{f.srv.addr}, newSigner(t).PublicKey()))
		f.opts.InsecureIgnoreHostKey = true
		run(t, f.dial(t), "true")
	})
}

// TestKeyFileAuth logs in with a key file, and refuses an unauthorized or
// encrypted one with advice.
func TestKeyFileAuth(t *testing.T) {
	f := newFixture(t, serverConfig{})
	if n := f.dial(t); n.Name() != "127.0.0.1" {
		t.Errorf("Name() = %q, want the host without the port", n.Name())
	}

	stranger, _ := newKey(t)
	f.opts.KeyFile = writeKeyFile(t, stranger, "")
	_, err := Dial(context.Background(), "root@"+f.srv.addr, f.opts)
	wantErr(t, err, `SSH login to `+f.srv.addr+` as "root" failed`, "--ssh-key", "ssh-add -l")

	f.opts.KeyFile = writeKeyFile(t, stranger, "secret")
	_, err = Dial(context.Background(), f.srv.addr, f.opts)
	wantErr(t, err, "is encrypted", "ssh-agent", "ssh-add "+f.opts.KeyFile)

	f.opts.KeyFile = ""
	_, err = Dial(context.Background(), f.srv.addr, f.opts)
	wantErr(t, err, "no SSH key", "--ssh-key", "ssh-agent")
}

// TestAgentAuth logs in with the keys of ssh-agent (a keyring served on a
// unix socket), alone and for an encrypted key file the agent holds.
func TestAgentAuth(t *testing.T) {
	f := newFixture(t, serverConfig{})
	priv, signer := newKey(t)
	f.srv.change(func(c *serverConfig) { c.authorized = []ssh.PublicKey{signer.PublicKey()} }) // only the agent's key
	other, _ := newKey(t)
	serveAgent(t, other, priv)

	f.opts.KeyFile = ""
	f.opts.UseAgent = true
	run(t, f.dial(t), "true")

	f.opts.KeyFile = writeKeyFile(t, priv, "secret")
	run(t, f.dial(t), "true")

	f.opts.UseAgent = false
	_, err := Dial(context.Background(), f.srv.addr, f.opts)
	wantErr(t, err, "is encrypted", "ssh-agent")
}

// TestBastion reaches the target through a bastion (direct-tcpip), with
// both host keys checked, and closes both connections.
func TestBastion(t *testing.T) {
	f := newFixture(t, serverConfig{})
	bastion := newServer(t, serverConfig{forward: true, authorized: f.srv.config().authorized})
	f.opts.KnownHosts = writeKnownHosts(t, f.srv.knownHostsLine(), bastion.knownHostsLine())
	f.opts.Bastion = "jump@" + bastion.addr

	n, err := Dial(context.Background(), f.srv.addr, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if out := run(t, n, "echo", "through"); out != "through\n" {
		t.Errorf("got %q", out)
	}
	if _, _, dialed, _ := bastion.snapshot(); len(dialed) != 1 || dialed[0] != f.srv.addr {
		t.Errorf("the bastion forwarded to %q, want [%s]", dialed, f.srv.addr)
	}
	if err := n.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitFor(t, "the bastion's connection to close", func() bool {
		bastion.mu.Lock()
		defer bastion.mu.Unlock()
		return bastion.closedConns == 1
	})

	t.Run("target key unknown", func(t *testing.T) {
		f.opts.KnownHosts = writeKnownHosts(t, bastion.knownHostsLine())
		_, err := Dial(context.Background(), f.srv.addr, f.opts)
		wantErr(t, err, "host key of 127.0.0.1 is not known", ssh.FingerprintSHA256(f.srv.hostKey()), "ssh -J "+f.opts.Bastion)
	})
	t.Run("bastion key unknown", func(t *testing.T) {
		f.opts.KnownHosts = writeKnownHosts(t, f.srv.knownHostsLine())
		_, err := Dial(context.Background(), f.srv.addr, f.opts)
		wantErr(t, err, "bastion:", "is not known", ssh.FingerprintSHA256(bastion.hostKey()))
	})
	t.Run("target unreachable", func(t *testing.T) {
		f.opts.KnownHosts = writeKnownHosts(t, f.srv.knownHostsLine(), bastion.knownHostsLine())
		_, err := Dial(context.Background(), "10.255.255.1", f.opts)
		wantErr(t, err, "bastion 127.0.0.1 could not connect to 10.255.255.1:22")
	})
}

// TestRunQuoting passes arguments a shell would mangle unquoted and gets
// them back intact.
func TestRunQuoting(t *testing.T) {
	args := []string{
		"plain", "two words", "", " ", "it's", `"double"`, `$HOME`, "${x:-y}", "$(id)", "`id`",
		"a;b", "a && b", "a|b", "line1\nline2", "\ttab", `back\slash`, "*", "~", "-n", "--",
		"#hash", "x=y", "'", "''", `'\''`, "!bang", "é ü 日本", "{a,b}", "<in>out", "&",
	}
	n := newFixture(t, serverConfig{}).dial(t)
	out := run(t, n, append([]string{"printf", `%s\n`}, args...)...)
	if want := strings.Join(args, "\n") + "\n"; out != want {
		t.Errorf("printf printed\n%q\nwant\n%q", out, want)
	}
	for _, a := range []string{"plain", "/tmp/x.y", "a-b_c", "user@host:22"} {
		if quote(a) != a {
			t.Errorf("quote(%q) = %q, want it unquoted", a, quote(a))
		}
	}
}

// TestRunStdin streams a few MB to the command, which sees EOF, and gets as
// much back on stdout.
func TestRunStdin(t *testing.T) {
	n := newFixture(t, serverConfig{}).dial(t)
	data := make([]byte, 3<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)

	out, err := n.Run(context.Background(), []string{"sha256sum"}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := strings.Cut(string(out), " "); got != hex.EncodeToString(sum[:]) {
		t.Errorf("the remote sha256 is %s, want %x", got, sum)
	}
	out, err = n.Run(context.Background(), []string{"cat"}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data) {
		t.Errorf("cat returned %d bytes that differ from the %d sent", len(out), len(data))
	}
	if out := run(t, n, "wc", "-c"); strings.TrimSpace(out) != "0" {
		t.Errorf("without stdin the command read %q bytes, want 0", out)
	}
}

// TestRunExitError turns a non-zero exit into an *ExitError that carries
// the status and the end of stderr.
func TestRunExitError(t *testing.T) {
	n := newFixture(t, serverConfig{}).dial(t)
	_, err := n.Run(context.Background(), []string{"sh", "-c", "echo out; echo oops >&2; exit 3"}, nil)
	var e *ExitError
	if !errors.As(err, &e) || e.Status != 3 || e.Stderr != "oops\n" || e.Host != "127.0.0.1" {
		t.Fatalf("got %#v (%v), want an *ExitError with status 3 and stderr oops", err, err)
	}
	wantErr(t, err, "exit status 3", "oops", "127.0.0.1")

	_, err = n.Run(context.Background(), []string{"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo THE END >&2; exit 1"}, nil)
	if !errors.As(err, &e) || len(e.Stderr) != stderrTail || !strings.HasSuffix(e.Stderr, "THE END\n") {
		t.Errorf("got %d bytes of stderr ending %q, want the last %d", len(e.Stderr), e.Stderr[max(0, len(e.Stderr)-10):], stderrTail)
	}
}

// TestSudo wraps commands in sudo -n for a user other than root, and turns
// sudo asking for a password into advice.
func TestSudo(t *testing.T) {
	f := newFixture(t, serverConfig{sudo: "ok"})
	if out := run(t, f.dial(t), "echo", "as root"); out != "as root\n" {
		t.Errorf("got %q", out)
	}
	f.opts.User = "deploy"
	if out := run(t, f.dial(t), "echo", "as root"); out != "as root\n" {
		t.Errorf("got %q", out)
	}
	n, err := Dial(context.Background(), "root@"+f.srv.addr, f.opts) // the target's user wins
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close() }()
	run(t, n, "true")
	_, commands, _, _ := f.srv.snapshot()
	want := []string{"root: echo 'as root'", "deploy: sudo -n -- echo 'as root'", "root: true"}
	if fmt.Sprint(commands) != fmt.Sprint(want) {
		t.Errorf("the server ran %q, want %q", commands, want)
	}

	f.srv.change(func(c *serverConfig) { c.sudo = "password" })
	_, err = f.dial(t).Run(context.Background(), []string{"true"}, strings.NewReader("input"))
	t.Log(err)
	wantErr(t, err, `user "deploy" needs passwordless sudo`, "NOPASSWD", "root@127.0.0.1")
}

// TestRunCancel ends the session, and the command, when ctx ends; the
// connection still serves other commands.
func TestRunCancel(t *testing.T) {
	f := newFixture(t, serverConfig{})
	n := f.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := n.Run(ctx, []string{"sleep", "60"}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run returned after %s", d)
	}
	waitFor(t, "the remote command to end", func() bool {
		_, _, _, finished := f.srv.snapshot()
		return finished == 1
	})
	if out := run(t, n, "echo", "still here"); out != "still here\n" {
		t.Errorf("got %q", out)
	}
}

// TestRunConcurrent runs many commands at once over one connection, no
// more than maxSessions at a time.
func TestRunConcurrent(t *testing.T) {
	f := newFixture(t, serverConfig{})
	n := f.dial(t)
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			out, err := n.Run(context.Background(), []string{"sh", "-c", `sleep 0.05; echo "$1"`, "sh", fmt.Sprint(i)}, nil)
			if err != nil || string(out) != fmt.Sprintf("%d\n", i) {
				t.Errorf("run %d: %q, %v", i, out, err)
			}
		})
	}
	wg.Wait()
	f.srv.mu.Lock()
	defer f.srv.mu.Unlock()
	if f.srv.logins != 1 || f.srv.maxRunning > maxSessions {
		t.Errorf("%d logins, %d sessions at once; want 1 and at most %d", f.srv.logins, f.srv.maxRunning, maxSessions)
	}
}

// TestInstall copies a binary with transport.Install over SSH: it lands
// with mode 0700 and its sha256 checked; a corrupted upload fails and
// leaves no directory behind.
func TestInstall(t *testing.T) {
	transport.InstallDir = t.TempDir()
	payload := append([]byte("#!/bin/sh\necho agent here\nexit 0\n"), make([]byte, 1<<20)...)
	ctx := context.Background()

	f := newFixture(t, serverConfig{})
	n := f.dial(t)
	in, err := transport.Install(ctx, n, payload)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{in.Dir: os.ModeDir | 0o700, in.Path: 0o700} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != mode {
			t.Errorf("%s: %v, %v; want mode %v", path, fi.Mode(), err, mode)
		}
	}
	if got, _ := os.ReadFile(in.Path); !bytes.Equal(got, payload) {
		t.Error("the installed binary differs from the payload")
	}
	if out := run(t, n, in.Path); out != "agent here\n" {
		t.Errorf("the installed binary printed %q", out)
	}
	if err := in.Remove(ctx, n); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(in.Dir); !os.IsNotExist(err) {
		t.Errorf("%s is still there after Remove: %v", in.Dir, err)
	}

	bad := newFixture(t, serverConfig{corrupt: true})
	_, err = transport.Install(ctx, bad.dial(t), payload)
	wantErr(t, err, "sha256")
	_, commands, _, _ := bad.srv.snapshot()
	dir := ""
	for _, c := range commands {
		if d, ok := strings.CutPrefix(c, "root: chmod 0700 "); ok {
			dir = d
		}
	}
	if dir == "" {
		t.Fatalf("no chmod of the directory among %q", commands)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s is still there after the failed install: %v", dir, err)
	}
}

// TestDialErrors: bad targets, nothing listening, and a server that never
// answers fail with errors that say so.
func TestDialErrors(t *testing.T) {
	f := newFixture(t, serverConfig{})
	_, err := Dial(context.Background(), "@host", f.opts)
	wantErr(t, err, "empty user")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	defer func() { _ = l.Close() }()
	silent := make(chan net.Conn, 1)
	go func() { // accepts one connection and says nothing
		if c, err := l.Accept(); err == nil {
			silent <- c
		}
	}()
	f.opts.Timeout = 300 * time.Millisecond
	_, err = Dial(context.Background(), addr, f.opts)
	wantErr(t, err, "SSH handshake with "+addr, "timed out after 300ms")
	_ = (<-silent).Close()

	_ = l.Close()
	_, err = Dial(context.Background(), addr, f.opts)
	wantErr(t, err, "connecting to "+addr)
}

// waitFor waits up to 10s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

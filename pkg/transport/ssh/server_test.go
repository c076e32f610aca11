package ssh

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// serverConfig says how a testServer behaves.
type serverConfig struct {
	authorized []ssh.PublicKey // client keys it accepts
	hostKeys   []ssh.Signer    // default: one fresh Ed25519 key
	sudo       string          // "sudo -n -- cmd": "ok" runs cmd, "password" answers like sudo wanting one
	corrupt    bool            // flips the first byte of each command's stdin
	forward    bool            // opens direct-tcpip channels (a bastion), to 127.0.0.1 only
}

// testServer is an in-process SSH server on a 127.0.0.1 ephemeral port. It
// runs "exec" requests for real with /bin/sh -c in a temp dir.
type testServer struct {
	cfg  serverConfig
	addr string // 127.0.0.1:port
	port string
	dir  string

	mu          sync.Mutex
	logins      int
	commands    []string // "user: command" as received
	dialed      []string // direct-tcpip destinations
	finished    int      // commands that ended
	running     int      // commands running now
	maxRunning  int
	conns       []net.Conn
	closedConns int
}

func newServer(t *testing.T, cfg serverConfig) *testServer {
	t.Helper()
	if len(cfg.hostKeys) == 0 {
		cfg.hostKeys = []ssh.Signer{newSigner(t)}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{cfg: cfg, addr: l.Addr().String(), dir: t.TempDir()}
	_, s.port, _ = net.SplitHostPort(s.addr)
	conf := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			for _, k := range s.config().authorized {
				if string(k.Marshal()) == string(key.Marshal()) {
					return &ssh.Permissions{}, nil
				}
			}
			return nil, errors.New("key not authorized")
		},
	}
	for _, k := range cfg.hostKeys {
		conf.AddHostKey(k)
	}
	t.Cleanup(func() {
		_ = l.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			_ = c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go s.serve(c, conf)
		}
	}()
	return s
}

// config is the server's behaviour now.
func (s *testServer) config() serverConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// change changes the server's behaviour for the connections and commands
// to come.
func (s *testServer) change(f func(*serverConfig)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.cfg)
}

// hostKey is the server's (first) public host key.
func (s *testServer) hostKey() ssh.PublicKey { return s.cfg.hostKeys[0].PublicKey() }

// knownHostsLine is the known_hosts line for the server's first key.
func (s *testServer) knownHostsLine() string {
	return knownhosts.Line([]string{s.addr}, s.hostKey())
}

func (s *testServer) serve(c net.Conn, conf *ssh.ServerConfig) {
	defer func() {
		s.mu.Lock()
		s.closedConns++
		s.mu.Unlock()
	}()
	sc, chans, reqs, err := ssh.NewServerConn(c, conf)
	if err != nil {
		return
	}
	defer func() { _ = sc.Close() }()
	s.mu.Lock()
	s.logins++
	s.mu.Unlock()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go s.session(sc.User(), ch, reqs)
		case "direct-tcpip":
			if s.config().forward {
				go s.forward(nc)
			} else {
				_ = nc.Reject(ssh.Prohibited, "no forwarding here")
			}
		default:
			_ = nc.Reject(ssh.UnknownChannelType, nc.ChannelType())
		}
	}
}

// session serves one session: an "exec" runs; a "signal", or the channel
// closing, kills what runs.
func (s *testServer) session(user string, ch ssh.Channel, reqs <-chan *ssh.Request) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			_ = req.Reply(true, nil)
			s.mu.Lock()
			s.commands = append(s.commands, user+": "+p.Command)
			s.mu.Unlock()
			go s.exec(ctx, ch, p.Command)
		case "signal":
			cancel()
		default:
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
}

// exec runs command as sshd would (through a shell), and sends its exit
// status.
func (s *testServer) exec(ctx context.Context, ch ssh.Channel, command string) {
	defer func() { _ = ch.Close() }()
	s.mu.Lock()
	s.running++
	s.maxRunning = max(s.maxRunning, s.running)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running--
		s.finished++
		s.mu.Unlock()
	}()
	exit := func(status int) {
		_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
	}
	cfg := s.config()
	if rest, ok := strings.CutPrefix(command, "sudo -n -- "); ok {
		switch cfg.sudo {
		case "ok":
			command = rest
		case "password":
			_, _ = io.Copy(io.Discard, ch)
			_, _ = fmt.Fprintln(ch.Stderr(), "sudo: a password is required")
			exit(1)
			return
		}
	}
	var stdin io.Reader = ch
	if cfg.corrupt {
		stdin = &flipFirst{r: ch}
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Dir = s.dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, ch, ch.Stderr()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	status := 0
	if err := cmd.Run(); err != nil {
		status = 255
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			status = ee.ExitCode()
		}
	}
	exit(status)
}

// forward serves a direct-tcpip channel: a TCP connection to 127.0.0.1.
func (s *testServer) forward(nc ssh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	dest := net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port)))
	s.mu.Lock()
	s.dialed = append(s.dialed, dest)
	s.mu.Unlock()
	if p.Host != "127.0.0.1" {
		_ = nc.Reject(ssh.Prohibited, "this bastion forwards to 127.0.0.1 only")
		return
	}
	conn, err := net.Dial("tcp", dest)
	if err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		_ = conn.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	go func() {
		_, _ = io.Copy(ch, conn)
		_ = ch.Close()
	}()
	_, _ = io.Copy(conn, ch)
	_ = conn.Close()
}

// snapshot returns copies of what the server recorded.
func (s *testServer) snapshot() (logins int, commands, dialed []string, finished int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins, append([]string(nil), s.commands...), append([]string(nil), s.dialed...), s.finished
}

// flipFirst flips the bits of the first byte read through it.
type flipFirst struct {
	r    io.Reader
	done bool
}

func (f *flipFirst) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && !f.done {
		p[0] ^= 0xff
		f.done = true
	}
	return n, err
}

// newSigner is a fresh Ed25519 key.
func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, s := newKey(t)
	return s
}

// newKey is a fresh Ed25519 key and its signer.
func newKey(t *testing.T) (ed25519.PrivateKey, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, s
}

// newECDSASigner is a fresh ECDSA P-256 key.
func newECDSASigner(t *testing.T) ssh.Signer {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeKeyFile writes priv as an OpenSSH private key file, encrypted when
// passphrase is not empty.
func writeKeyFile(t *testing.T, priv ed25519.PrivateKey, passphrase string) string {
	t.Helper()
	var block *pem.Block
	var err error
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// writeKnownHosts writes a known_hosts file of lines.
func writeKnownHosts(t *testing.T, lines ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// serveAgent serves an ssh-agent keyring holding keys on a unix socket in
// a temp dir, and points SSH_AUTH_SOCK at it.
func serveAgent(t *testing.T, keys ...ed25519.PrivateKey) {
	t.Helper()
	ring := agent.NewKeyring()
	for _, k := range keys {
		if err := ring.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "agent") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.Close()
		_ = os.RemoveAll(dir)
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_ = agent.ServeAgent(ring, c)
			}()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)
}

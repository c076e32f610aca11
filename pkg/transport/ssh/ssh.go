// Package ssh reaches nodes over SSH (golang.org/x/crypto/ssh): for
// clusters whose API server is down. Host keys are checked against
// known_hosts unless the user opts out; commands run as root, through
// passwordless sudo (sudo -n) for a user other than root. A bastion
// (ProxyJump) may stand between this machine and the nodes.
package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/user"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/transport"
)

// Options say how to reach nodes over SSH.
type Options struct {
	// User logs in; default the current OS user. "user@host" in a target
	// (or in Bastion) overrides it for that host.
	User string
	// KeyFile is a private key file (--ssh-key). An encrypted key is used
	// through ssh-agent, which must hold it: there is no passphrase prompt.
	KeyFile string
	// UseAgent uses the keys of ssh-agent (SSH_AUTH_SOCK) when that is set.
	UseAgent bool
	// KnownHosts is the known_hosts file host keys are checked against;
	// default ~/.ssh/known_hosts. Hashed and [host]:port entries work.
	KnownHosts string
	// InsecureIgnoreHostKey skips the host key check
	// (--ssh-insecure-ignore-host-key).
	InsecureIgnoreHostKey bool
	// Bastion is a jump host, [user@]host[:port] (--ssh-bastion; OpenSSH's
	// ProxyJump): the nodes are dialed through it. Its key is checked too.
	Bastion string
	// Timeout bounds dialing and the handshake with each host; default 30s.
	Timeout time.Duration
}

// DefaultTimeout bounds dialing and the handshake when Options.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// maxSessions bounds the commands one Node runs at once: OpenSSH refuses
// more than MaxSessions (default 10) sessions on a connection.
const maxSessions = 8

// stderrTail is how much of the end of a command's stderr errors carry.
const stderrTail = 4 << 10

// Dial connects to target, [user@]host[:port] (port 22 by default), and
// returns the Node that runs commands there. Close it when done.
func Dial(ctx context.Context, target string, o Options) (transport.Node, error) {
	t, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	keys, err := loadHostKeys(o)
	if err != nil {
		return nil, err
	}
	creds, err := loadCredentials(o)
	if err != nil {
		return nil, err
	}
	defer creds.close() // the agent signs during the handshakes only

	n := &node{target: t, sessions: make(chan struct{}, maxSessions)}
	var conn net.Conn
	via := ""
	if o.Bastion != "" {
		b, err := parseTarget(o.Bastion)
		if err != nil {
			return nil, fmt.Errorf("--ssh-bastion: %w", err)
		}
		raw, err := dialTCP(ctx, b, o.Timeout)
		if err != nil {
			return nil, err
		}
		if n.bastion, err = handshake(ctx, raw, b, userFor(b, o), "", creds, keys, o.Timeout); err != nil {
			return nil, fmt.Errorf("bastion: %w", err)
		}
		via = o.Bastion
		dctx, cancel := context.WithTimeout(ctx, o.Timeout)
		conn, err = n.bastion.DialContext(dctx, "tcp", t.addr())
		cancel()
		if err != nil {
			_ = n.bastion.Close()
			return nil, fmt.Errorf("bastion %s could not connect to %s: %w; check the host and port, and that the bastion allows TCP forwarding", b.host, t.addr(), err)
		}
	} else if conn, err = dialTCP(ctx, t, o.Timeout); err != nil {
		return nil, err
	}
	n.user = userFor(t, o)
	if n.client, err = handshake(ctx, conn, t, n.user, via, creds, keys, o.Timeout); err != nil {
		if n.bastion != nil {
			_ = n.bastion.Close()
		}
		return nil, err
	}
	return n, nil
}

// userFor is the user to log in to t as.
func userFor(t target, o Options) string {
	switch {
	case t.user != "":
		return t.user
	case o.User != "":
		return o.User
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}

// dialTCP opens the TCP connection to t.
func dialTCP(ctx context.Context, t target, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", t.addr())
	if err != nil {
		return nil, fmt.Errorf("connecting to %s over SSH: %w", t.addr(), err)
	}
	return conn, nil
}

// handshake runs the SSH handshake over conn: checks t's host key and logs
// in. It closes conn when it fails, when ctx ends, or after timeout.
func handshake(ctx context.Context, conn net.Conn, t target, login, via string, creds *credentials, keys *hostKeys, timeout time.Duration) (*ssh.Client, error) {
	check := keys.forHost(t, via)
	cfg := &ssh.ClientConfig{
		User:              login,
		Auth:              creds.auth(),
		HostKeyCallback:   check.callback,
		HostKeyAlgorithms: check.algorithms,
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("timed out after %s", timeout))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, t.addr(), cfg)
	if !stop() { // ctx ended and closed conn
		if err == nil {
			_ = c.Close()
		}
		return nil, fmt.Errorf("SSH handshake with %s: %w", t.addr(), context.Cause(ctx))
	}
	if err != nil {
		_ = conn.Close()
		err = keys.handshakeError(check, t, err)
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("SSH login to %s as %q failed: %w; check the user (user@host), --ssh-key, or the keys in ssh-agent (ssh-add -l)", t.addr(), login, err)
		}
		return nil, fmt.Errorf("SSH to %s: %w", t.addr(), err)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// node is a host reached over SSH: one connection, a session per Run.
type node struct {
	target   target
	user     string
	client   *ssh.Client
	bastion  *ssh.Client // nil without a bastion
	sessions chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// Name is the host as the user named it, without user or port.
func (n *node) Name() string { return n.target.host }

// Run runs argv on the host as root: directly when logged in as root, else
// through sudo -n (which fails at once rather than ask for a password).
// The command line is argv quoted for the POSIX shell that sshd runs it
// with. stdin (nil: none) is sent and then closed. A non-zero exit is an
// *ExitError; ending ctx ends the session (the command gets SIGTERM).
// Run may be called from several goroutines at once.
func (n *node) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("ssh: Run needs a command")
	}
	command := quoteArgv(argv)
	sudo := n.user != "root"
	if sudo {
		command = "sudo -n -- " + command
	}
	select {
	case n.sessions <- struct{}{}:
		defer func() { <-n.sessions }()
	case <-ctx.Done():
		return nil, fmt.Errorf("running %s on %s: %w", short(argv), n.Name(), ctx.Err())
	}
	s, err := n.client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("opening an SSH session to %s (is the connection lost? run again): %w", n.Name(), err)
	}
	defer func() { _ = s.Close() }()
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: stderrTail}
	s.Stdin, s.Stdout, s.Stderr = stdin, &stdout, stderr
	if err := s.Start(command); err != nil {
		return nil, fmt.Errorf("running %s on %s: %w", short(argv), n.Name(), err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGTERM)
		_ = s.Close()
		return nil, fmt.Errorf("running %s on %s: %w", short(argv), n.Name(), ctx.Err())
	}
	if err == nil {
		return stdout.Bytes(), nil
	}
	var exit *ssh.ExitError
	if !errors.As(err, &exit) {
		return nil, fmt.Errorf("running %s on %s: %w", short(argv), n.Name(), err)
	}
	e := &ExitError{Host: n.Name(), Command: short(argv), Status: exit.ExitStatus(), Signal: exit.Signal(), Stderr: stderr.String()}
	if sudo {
		if err := n.sudoError(e); err != nil {
			return nil, err
		}
	}
	return nil, e
}

// sudoError explains a failure of sudo itself, or returns nil.
func (n *node) sudoError(e *ExitError) error {
	switch {
	case e.Status == 1 && (strings.Contains(e.Stderr, "sudo: a password is required") ||
		strings.Contains(e.Stderr, "sudo: a terminal is required")):
		return fmt.Errorf("%s: user %q needs passwordless sudo there (sudo -n asked for a password): "+
			"allow it (a NOPASSWD rule in /etc/sudoers.d) or log in as root (root@%s)", n.Name(), n.user, n.Name())
	case strings.Contains(e.Stderr, "is not in the sudoers file") || strings.Contains(e.Stderr, "is not allowed to run sudo"):
		return fmt.Errorf("%s: user %q may not use sudo there: allow it passwordless sudo or log in as root (root@%s)", n.Name(), n.user, n.Name())
	case e.Status == 127 && strings.Contains(e.Stderr, "sudo") && strings.Contains(e.Stderr, "not found"):
		return fmt.Errorf("%s: sudo is not installed there: log in as root (root@%s)", n.Name(), n.Name())
	}
	return nil
}

// Close closes the connection (and the bastion's).
func (n *node) Close() error {
	n.closeOnce.Do(func() {
		n.closeErr = n.client.Close()
		if n.bastion != nil {
			if err := n.bastion.Close(); n.closeErr == nil {
				n.closeErr = err
			}
		}
	})
	return n.closeErr
}

// ExitError is a command that ran on a host and did not succeed.
type ExitError struct {
	Host    string
	Command string // the command, shortened for messages
	Status  int    // its exit status (128+n when signal n ended it)
	Signal  string // the signal that ended it ("TERM"), if one did
	Stderr  string // the end of its stderr
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.Status)
	if e.Signal != "" {
		how = "killed by signal " + e.Signal
	}
	msg := fmt.Sprintf("%s on %s: %s", e.Command, e.Host, how)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

// quoteArgv joins argv into one POSIX shell command line that gives back
// exactly argv: each word plain if it is made of safe characters only,
// else in single quotes, where a single quote is written as: end the
// quoting, a backslash-escaped quote, quote again.
func quoteArgv(argv []string) string {
	words := make([]string, len(argv))
	for i, a := range argv {
		words[i] = quote(a)
	}
	return strings.Join(words, " ")
}

// quote quotes one word for a POSIX shell.
func quote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+:,./_-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// short is argv quoted, cut to a length fit for a message.
func short(argv []string) string {
	s := quoteArgv(argv)
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

package ssh

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys checks the keys hosts present against a known_hosts file, or
// not at all when the user opted out.
type hostKeys struct {
	file     string              // the known_hosts file, for messages
	db       ssh.HostKeyCallback // nil when insecure
	insecure bool
}

// loadHostKeys reads the known_hosts file (default ~/.ssh/known_hosts).
// A file that does not exist holds no keys: every host is then unknown,
// and the error for an unknown host says how to add it.
func loadHostKeys(o Options) (*hostKeys, error) {
	if o.InsecureIgnoreHostKey {
		return &hostKeys{insecure: true}, nil
	}
	file := o.KnownHosts
	if file == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("finding ~/.ssh/known_hosts: %w; name a known_hosts file", err)
		}
		file = filepath.Join(home, ".ssh", "known_hosts")
	}
	var files []string
	if _, err := os.Stat(file); err == nil {
		files = append(files, file)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading known_hosts: %w", err)
	}
	db, err := knownhosts.New(files...)
	if err != nil {
		return nil, fmt.Errorf("reading known_hosts %s: %w; fix or remove the line it names", file, err)
	}
	return &hostKeys{file: file, db: db}, nil
}

// hostCheck is the host key check for one host: the callback for
// ssh.ClientConfig, the host key algorithms to ask for, and the error the
// callback refused the key with (kept because the ssh package flattens it).
type hostCheck struct {
	callback   ssh.HostKeyCallback
	algorithms []string
	err        error
}

// forHost prepares the check of t's key; via is the bastion t is reached
// through ("" for none), for the advice on adding an unknown key.
func (h *hostKeys) forHost(t target, via string) *hostCheck {
	c := &hostCheck{}
	if h.insecure {
		c.callback = ssh.InsecureIgnoreHostKey()
		return c
	}
	c.algorithms = h.knownAlgorithms(t)
	c.callback = func(_ string, remote net.Addr, key ssh.PublicKey) error {
		err := h.db(t.addr(), remote, key)
		var keyErr *knownhosts.KeyError
		var revoked *knownhosts.RevokedError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &keyErr) && len(keyErr.Want) == 0:
			c.err = h.unknownError(t, via, key)
		case errors.As(err, &keyErr):
			c.err = h.changedError(t, key, keyErr.Want)
		case errors.As(err, &revoked):
			c.err = fmt.Errorf("the host key of %s (%s) is revoked in %s:%d: refusing to connect",
				t.host, ssh.FingerprintSHA256(key), revoked.Revoked.Filename, revoked.Revoked.Line)
		default:
			c.err = fmt.Errorf("checking the host key of %s: %w", t.host, err)
		}
		return c.err
	}
	return c
}

// handshakeError turns a failed handshake into the error to report: the
// host key refusal when there was one, or a changed key when the host no
// longer offers any key of the types known_hosts holds for it.
func (h *hostKeys) handshakeError(c *hostCheck, t target, err error) error {
	if c.err != nil {
		return c.err
	}
	var neg *ssh.AlgorithmNegotiationError
	if errors.As(err, &neg) && neg.What == "host key" && !h.insecure {
		var keyErr *knownhosts.KeyError
		if errors.As(h.db(t.addr(), dummyAddr, probeKey()), &keyErr) {
			return h.changedError(t, nil, keyErr.Want)
		}
	}
	return err
}

// knownAlgorithms are the host key algorithms of the keys known_hosts holds
// for t, so that the host is asked for a key that can be checked (as
// OpenSSH does): a host known by its ECDSA key that also has an Ed25519 key
// is not reported as changed. Nil (the defaults) for an unknown host.
func (h *hostKeys) knownAlgorithms(t target) []string {
	var keyErr *knownhosts.KeyError
	if !errors.As(h.db(t.addr(), dummyAddr, probeKey()), &keyErr) {
		return nil
	}
	var algs []string
	seen := map[string]bool{}
	for _, k := range keyErr.Want {
		kinds := []string{k.Key.Type()}
		if k.Key.Type() == ssh.KeyAlgoRSA {
			kinds = []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
		}
		for _, a := range kinds {
			if !seen[a] {
				seen[a] = true
				algs = append(algs, a)
			}
		}
	}
	return algs
}

// unknownError says the host is not in known_hosts and how to add it.
func (h *hostKeys) unknownError(t target, via string, key ssh.PublicKey) error {
	add := fmt.Sprintf("ssh-keyscan -p %s %s >> %s", t.port, t.host, h.file)
	if via != "" {
		add = fmt.Sprintf("ssh -J %s -p %s %s true (answer yes)", via, t.port, t.host)
	}
	return fmt.Errorf("the host key of %s is not known (%s): it presents %s key %s. "+
		"Check that fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then add it: %s; "+
		"or skip the check with --ssh-insecure-ignore-host-key",
		t.host, h.file, key.Type(), ssh.FingerprintSHA256(key), add)
}

// changedError says the host presents another key than known_hosts holds
// for it. key is nil when the host offered no key of a known type.
func (h *hostKeys) changedError(t target, key ssh.PublicKey, want []knownhosts.KnownKey) error {
	var lines []string
	for _, k := range want {
		lines = append(lines, fmt.Sprintf("%s:%d (%s %s)", k.Filename, k.Line, k.Key.Type(), ssh.FingerprintSHA256(k.Key)))
	}
	presents := "it no longer offers a key of the type known_hosts has for it"
	if key != nil {
		presents = fmt.Sprintf("it presents %s key %s, but known_hosts has", key.Type(), ssh.FingerprintSHA256(key))
	}
	return fmt.Errorf("WARNING: the host key of %s has CHANGED: %s %s. "+
		"Someone may be intercepting the connection (a man-in-the-middle attack), or the host was reinstalled. "+
		"Refusing to connect. If the host's new key is right (check it on the host), remove the old one with "+
		"ssh-keygen -R '%s' -f %s and add the new one",
		t.host, presents, strings.Join(lines, ", "), knownhosts.Normalize(t.addr()), h.file)
}

// dummyAddr stands for the remote address when looking keys up by name.
var dummyAddr = &net.TCPAddr{IP: net.IPv4zero}

// probeKey is a fresh key no known_hosts holds: checking it makes
// knownhosts list the keys it does hold for a host.
func probeKey() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
}

package ssh

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// credentials are the keys to log in with: the key file's first, then
// ssh-agent's. agent is the connection to ssh-agent, which signs during
// the handshakes; close it once connected.
type credentials struct {
	signers []ssh.Signer
	agent   net.Conn
}

// loadCredentials reads the key file and asks ssh-agent for its keys.
func loadCredentials(o Options) (*credentials, error) {
	c := &credentials{}
	var agentKeys []ssh.Signer
	if sock := os.Getenv("SSH_AUTH_SOCK"); o.UseAgent && sock != "" {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("connecting to ssh-agent (SSH_AUTH_SOCK=%s): %w; start ssh-agent or unset SSH_AUTH_SOCK", sock, err)
		}
		c.agent = conn
		if agentKeys, err = agent.NewClient(conn).Signers(); err != nil {
			c.close()
			return nil, fmt.Errorf("listing ssh-agent's keys (SSH_AUTH_SOCK=%s): %w", sock, err)
		}
	}
	if o.KeyFile != "" {
		s, err := keyFileSigner(o.KeyFile, agentKeys)
		if err != nil {
			c.close()
			return nil, err
		}
		c.signers = append(c.signers, s)
	}
	for _, s := range agentKeys {
		if !c.has(s.PublicKey()) {
			c.signers = append(c.signers, s)
		}
	}
	if len(c.signers) == 0 {
		c.close()
		return nil, errors.New("no SSH key to log in with: pass --ssh-key FILE, or add your key to ssh-agent (ssh-add) and set SSH_AUTH_SOCK")
	}
	return c, nil
}

// keyFileSigner reads a private key file. An encrypted key is used through
// ssh-agent when the agent holds it; there is no passphrase prompt.
func keyFileSigner(file string, agentKeys []ssh.Signer) (ssh.Signer, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the SSH key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	var encrypted *ssh.PassphraseMissingError
	switch {
	case err == nil:
		return s, nil
	case !errors.As(err, &encrypted):
		return nil, fmt.Errorf("SSH key %s: %w", file, err)
	}
	pub := encrypted.PublicKey
	if pub == nil { // an older format that encrypts the public key too
		if b, err := os.ReadFile(file + ".pub"); err == nil {
			pub, _, _, _, _ = ssh.ParseAuthorizedKey(b)
		}
	}
	for _, a := range agentKeys {
		if pub != nil && bytes.Equal(a.PublicKey().Marshal(), pub.Marshal()) {
			return a, nil
		}
	}
	return nil, fmt.Errorf("SSH key %s is encrypted with a passphrase, and ssh-agent does not hold it: "+
		"add it to ssh-agent (eval \"$(ssh-agent)\"; ssh-add %s) and run again with SSH_AUTH_SOCK set", file, file)
}

// has reports whether key is among the signers already.
func (c *credentials) has(key ssh.PublicKey) bool {
	for _, s := range c.signers {
		if bytes.Equal(s.PublicKey().Marshal(), key.Marshal()) {
			return true
		}
	}
	return false
}

// auth is the login method for ssh.ClientConfig.
func (c *credentials) auth() []ssh.AuthMethod {
	return []ssh.AuthMethod{ssh.PublicKeys(c.signers...)}
}

// close closes the connection to ssh-agent, if any.
func (c *credentials) close() {
	if c.agent != nil {
		_ = c.agent.Close()
	}
}

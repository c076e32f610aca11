package pki

import (
	"bytes"
	"crypto/hpke"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"

	certutil "k8s.io/client-go/util/cert"
)

// The CA-key hand-over (issue 12, phase prepare): one control plane makes
// the new CAs, and every other control plane needs their keys. The keys
// travel end to end encrypted from the sending agent to the receiving one;
// the plugin in between relays bytes it cannot read, and no key is ever in
// an API object, a log or the user's terminal.
//
//  1. The receiving agent calls NewHandoverReceiver: an ephemeral key pair.
//     It publishes PublicKey and keeps the private key on its own node
//     only: in memory, or (each agent action runs in a process of its own)
//     in HandoverKeyFile, 0600 in a 0700 folder, until the hand-over is
//     opened (PrivateKeyBytes, LoadHandoverReceiver).
//  2. The sending agent calls SealHandover with that public key, the CAs
//     (their certificates and keys) and the HandoverBinding: the run id,
//     itself and the receiver.
//  3. The receiving agent, with the key pair it made, calls Open with the
//     binding it expects. Open refuses a tampered
//     message, one sealed to another key, or for another run, sender or
//     receiver, and checks each key against its certificate before the
//     caller writes anything. A receiver opens one hand-over; after that
//     its private key is dropped.
//
// The suite is HPKE (RFC 9180, Go's crypto/hpke) in base mode with the KEM
// MLKEM768-X25519 (X-Wing), HKDF-SHA256 and AES-256-GCM. The KEM is
// hybrid: a recorded exchange stays secret unless both ML-KEM-768 and
// X25519 are broken. CA keys live ten years, so "record now, decrypt once
// quantum computers exist" is a real concern for them, and X-Wing is the
// hybrid draft-ietf-hpke-pq recommends, at the cost of 1.2 KB of public key
// and 1.1 KB of encapsulated key per hand-over. The binding goes into HPKE's
// info, so a message opens only under the binding it was sealed with.
//
// Base mode does not authenticate the sender: whoever relays the receiver's
// public key could substitute its own. The plugin, which relays, is trusted
// to orchestrate (it can run pods anyway); what this protects against is
// the keys being readable on the way. The receiver should also compare the
// certificates it got with the new CAs the prepare phase published.

// ErrHandoverRefused is wrapped by every refusal of a hand-over.
var ErrHandoverRefused = errors.New("CA key hand-over refused")

const (
	handoverVersion = 1
	// handoverInfoLabel starts the HPKE info: the purpose and version.
	handoverInfoLabel = "kubectl-rotate-certs CA key hand-over v1"
	// X-Wing sizes (draft-connolly-cfrg-xwing-kem).
	handoverPublicKeySize = 1216
	handoverEncSize       = 1120
	handoverTagSize       = 16
	// MaxHandoverPayload bounds the plaintext: three CAs with RSA-4096 keys
	// take about 20 KiB.
	MaxHandoverPayload = 64 << 10
	// MaxHandoverMessage bounds what Open reads: a version byte, the
	// encapsulated key, the largest payload and the AEAD tag.
	MaxHandoverMessage = 1 + handoverEncSize + MaxHandoverPayload + handoverTagSize
	maxBindingField    = 512
)

var (
	handoverKEM  = hpke.MLKEM768X25519()
	handoverKDF  = hpke.HKDFSHA256()
	handoverAEAD = hpke.AES256GCM()
)

// HandoverBinding is what a hand-over is for; it must be the same at
// sealing and at opening.
type HandoverBinding struct {
	RunID    string // the rotation run
	Sender   string // node that seals
	Receiver string // node that opens
}

// info encodes the binding unambiguously: the label, then each field with
// its length.
func (b HandoverBinding) info() ([]byte, error) {
	if b.Sender == b.Receiver {
		return nil, fmt.Errorf("%w: sender and receiver are both %q", ErrHandoverRefused, b.Sender)
	}
	out := []byte(handoverInfoLabel)
	for _, f := range []struct{ name, value string }{{"run id", b.RunID}, {"sender", b.Sender}, {"receiver", b.Receiver}} {
		if f.value == "" || len(f.value) > maxBindingField {
			return nil, fmt.Errorf("%w: the %s must have 1 to %d bytes, it has %d", ErrHandoverRefused, f.name, maxBindingField, len(f.value))
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(f.value)))
		out = append(out, f.value...)
	}
	return out, nil
}

// String names the binding, for errors.
func (b HandoverBinding) String() string {
	return fmt.Sprintf("run %q from %q to %q", b.RunID, b.Sender, b.Receiver)
}

// HandoverPayload is what a hand-over carries, versioned.
type HandoverPayload struct {
	Version int          `json:"version"`
	CAs     []HandoverCA `json:"cas"`
}

// HandoverCA is one CA: its kubeadm name (ca, etcd-ca, front-proxy-ca),
// certificate and private key, PEM encoded.
type HandoverCA struct {
	Name string `json:"name"`
	Cert []byte `json:"cert"`
	Key  []byte `json:"key"`
}

// NewHandoverPayload is the payload that carries the given CAs.
func NewHandoverPayload(cas ...*Authority) (*HandoverPayload, error) {
	p := &HandoverPayload{Version: handoverVersion}
	for _, a := range cas {
		if a == nil || a.Cert == nil || a.Key == nil {
			return nil, fmt.Errorf("%w: a CA without its certificate or key", ErrHandoverRefused)
		}
		keyPEM, err := EncodeKeyPEM(a.Key)
		if err != nil {
			return nil, fmt.Errorf("CA %s: %w", a.CA.Name, err)
		}
		p.CAs = append(p.CAs, HandoverCA{Name: a.CA.Name, Cert: EncodeCertPEM(a.Cert), Key: keyPEM})
	}
	if _, err := p.Authorities(); err != nil {
		return nil, err
	}
	return p, nil
}

// Authorities checks the payload and returns its CAs: a known version, one
// to three CAs of kubeadm's names, each named once, each a single CA
// certificate with the private key that belongs to it.
func (p *HandoverPayload) Authorities() ([]*Authority, error) {
	refuse := func(format string, args ...any) ([]*Authority, error) {
		return nil, fmt.Errorf("%w: %s", ErrHandoverRefused, fmt.Sprintf(format, args...))
	}
	if p.Version != handoverVersion {
		return refuse("payload version %d, want %d", p.Version, handoverVersion)
	}
	if len(p.CAs) == 0 || len(p.CAs) > len(CAs) {
		return refuse("%d CAs, want 1 to %d", len(p.CAs), len(CAs))
	}
	var out []*Authority
	for _, h := range p.CAs {
		ca, ok := caByName(h.Name)
		if !ok {
			return refuse("unknown CA %q", h.Name)
		}
		for _, a := range out {
			if a.CA.Name == h.Name {
				return refuse("CA %s twice", h.Name)
			}
		}
		cert, err := singleCertificatePEM(h.Cert)
		if err != nil {
			return refuse("CA %s: %v", h.Name, err)
		}
		if !cert.IsCA {
			return refuse("CA %s: the certificate is not a CA", h.Name)
		}
		key, err := ParsePrivateKeyPEM(h.Key)
		if err != nil {
			return refuse("CA %s: private key: %v", h.Name, err)
		}
		if !publicKeysEqual(cert.PublicKey, key.Public()) {
			return refuse("CA %s: the private key does not belong to the certificate", h.Name)
		}
		out = append(out, &Authority{CA: ca, Cert: cert, Key: key})
	}
	return out, nil
}

func caByName(name string) (CA, bool) {
	for _, ca := range CAs {
		if ca.Name == name {
			return ca, true
		}
	}
	return CA{}, false
}

// singleCertificatePEM parses exactly one PEM certificate and nothing else.
func singleCertificatePEM(data []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != certutil.CertificateBlockType || len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("not exactly one PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// decodeHandoverPayload decodes and checks an opened payload: strict JSON
// (no unknown field, nothing after it).
func decodeHandoverPayload(data []byte) (*HandoverPayload, error) {
	if len(data) > MaxHandoverPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes, more than %d", ErrHandoverRefused, len(data), MaxHandoverPayload)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p HandoverPayload
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrHandoverRefused, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: payload: data after the payload", ErrHandoverRefused)
	}
	if _, err := p.Authorities(); err != nil {
		return nil, err
	}
	return &p, nil
}

// SealHandover encrypts a payload to a receiver's public key for a binding.
// The result is what the plugin relays: a version byte, HPKE's encapsulated
// key and the ciphertext.
func SealHandover(receiverPublicKey []byte, b HandoverBinding, p *HandoverPayload) ([]byte, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: no payload", ErrHandoverRefused)
	}
	if _, err := p.Authorities(); err != nil {
		return nil, err
	}
	plain, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return sealHandoverBytes(receiverPublicKey, b, plain)
}

// sealHandoverBytes seals any plaintext (tests seal payloads that
// SealHandover refuses, to see the receiver refuse them too).
func sealHandoverBytes(receiverPublicKey []byte, b HandoverBinding, plain []byte) ([]byte, error) {
	if len(plain) > MaxHandoverPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes, more than %d", ErrHandoverRefused, len(plain), MaxHandoverPayload)
	}
	if len(receiverPublicKey) != 1+handoverPublicKeySize || receiverPublicKey[0] != handoverVersion {
		return nil, fmt.Errorf("%w: not a version %d hand-over public key", ErrHandoverRefused, handoverVersion)
	}
	pub, err := handoverKEM.NewPublicKey(receiverPublicKey[1:])
	if err != nil {
		return nil, fmt.Errorf("%w: receiver public key: %v", ErrHandoverRefused, err)
	}
	info, err := b.info()
	if err != nil {
		return nil, err
	}
	sealed, err := hpke.Seal(pub, handoverKDF, handoverAEAD, info, plain)
	if err != nil {
		return nil, fmt.Errorf("sealing the CA keys: %w", err)
	}
	return append([]byte{handoverVersion}, sealed...), nil
}

// HandoverReceiver is the receiving end of one hand-over. Its private key
// has no exported field, is refused by the marshallers and never printed
// (only its public key's fingerprint is); PrivateKeyBytes hands it out
// explicitly, for the receiving node's own disk.
type HandoverReceiver struct {
	key hpke.PrivateKey // nil once a hand-over was opened
	pub []byte
}

// NewHandoverReceiver makes an ephemeral key pair.
func NewHandoverReceiver() (*HandoverReceiver, error) {
	key, err := handoverKEM.GenerateKey()
	if err != nil {
		return nil, err
	}
	return newHandoverReceiver(key), nil
}

func newHandoverReceiver(key hpke.PrivateKey) *HandoverReceiver {
	return &HandoverReceiver{key: key, pub: append([]byte{handoverVersion}, key.PublicKey().Bytes()...)}
}

// PrivateKeyBytes is the private key as HPKE serialises it, for the
// receiving node to keep until it opens the hand-over (HandoverKeyFile);
// it must never leave that node.
func (r *HandoverReceiver) PrivateKeyBytes() ([]byte, error) {
	if r.key == nil {
		return nil, fmt.Errorf("%w: this receiver has no private key any more", ErrHandoverRefused)
	}
	return r.key.Bytes()
}

// LoadHandoverReceiver is the receiver whose private key PrivateKeyBytes
// returned.
func LoadHandoverReceiver(priv []byte) (*HandoverReceiver, error) {
	key, err := handoverKEM.NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: the stored receiver key is not a hand-over key: %v", ErrHandoverRefused, err)
	}
	return newHandoverReceiver(key), nil
}

// PublicKey is what the receiver publishes: a version byte and the KEM
// public key.
func (r *HandoverReceiver) PublicKey() []byte { return bytes.Clone(r.pub) }

// Open decrypts and checks a hand-over sealed to this receiver for the
// binding b. After a successful Open the private key is dropped: a second
// Open fails.
func (r *HandoverReceiver) Open(b HandoverBinding, sealed []byte) (*HandoverPayload, error) {
	if r.key == nil {
		return nil, fmt.Errorf("%w: this receiver has no private key (it already opened its hand-over, or NewHandoverReceiver did not make it); start a new one", ErrHandoverRefused)
	}
	if len(sealed) > MaxHandoverMessage {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d a hand-over may have", ErrHandoverRefused, len(sealed), MaxHandoverMessage)
	}
	if len(sealed) < 1+handoverEncSize+handoverTagSize {
		return nil, fmt.Errorf("%w: %d bytes, too short for a hand-over (truncated?)", ErrHandoverRefused, len(sealed))
	}
	if sealed[0] != handoverVersion {
		return nil, fmt.Errorf("%w: hand-over version %d, want %d", ErrHandoverRefused, sealed[0], handoverVersion)
	}
	info, err := b.info()
	if err != nil {
		return nil, err
	}
	plain, err := hpke.Open(r.key, handoverKDF, handoverAEAD, info, sealed[1:])
	if err != nil {
		return nil, fmt.Errorf("%w: it does not open with this receiver's key for %s: altered on the way, sealed to another receiver's key, or for another run, sender or receiver", ErrHandoverRefused, b)
	}
	defer clear(plain) // the payload holds its own copies of the keys
	p, err := decodeHandoverPayload(plain)
	if err != nil {
		return nil, err
	}
	r.key = nil
	return p, nil
}

func (r *HandoverReceiver) String() string {
	if len(r.pub) < 9 {
		return "HandoverReceiver(no key)"
	}
	return fmt.Sprintf("HandoverReceiver(public key %x...)", r.pub[1:9])
}

// GoString keeps %#v from printing the private key's internals.
func (r *HandoverReceiver) GoString() string { return r.String() }

// MarshalJSON refuses: the private key is never serialised by accident.
func (r *HandoverReceiver) MarshalJSON() ([]byte, error) {
	return nil, errors.New("a hand-over receiver is not serialised: its private key stays on its node")
}

// MarshalText refuses, as MarshalJSON does.
func (r *HandoverReceiver) MarshalText() ([]byte, error) { return r.MarshalJSON() }

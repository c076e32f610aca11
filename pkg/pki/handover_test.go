package pki_test

import (
	"bytes"
	"encoding/base64"
	"encoding/gob"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

var binding = pki.HandoverBinding{RunID: "run-1", Sender: "cp-1", Receiver: "cp-2"}

// newCAs makes the successors of a control plane's three CAs.
func newCAs(t testing.TB, alg pkitest.Algorithm) []*pki.Authority {
	t.Helper()
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", alg)
	var out []*pki.Authority
	for _, ca := range pki.CAs {
		old, err := pki.LoadAuthority(root, ca)
		if err != nil {
			t.Fatal(err)
		}
		nu, _, err := pki.NewCALike(old, "", tenYears, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, nu)
	}
	return out
}

func refused(t *testing.T, what string, err error, want string) {
	t.Helper()
	if !errors.Is(err, pki.ErrHandoverRefused) || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v, want a refusal with %q", what, err, want)
	}
}

func TestHandoverRoundTrip(t *testing.T) {
	for _, alg := range []pkitest.Algorithm{pkitest.RSA, pkitest.ECDSA} {
		t.Run(string(alg), func(t *testing.T) {
			cas := newCAs(t, alg)
			p, err := pki.NewHandoverPayload(cas...)
			must(t, err)
			r, err := pki.NewHandoverReceiver()
			must(t, err)
			pub := r.PublicKey()
			if len(pub) != 1+1216 || pub[0] != 1 {
				t.Fatalf("public key of %d bytes, version %d", len(pub), pub[0])
			}
			sealed, err := pki.SealHandover(pub, binding, p)
			must(t, err)
			plain, err := json.Marshal(p)
			must(t, err)
			if len(sealed) != 1+1120+len(plain)+16 || len(sealed) > pki.MaxHandoverMessage {
				t.Errorf("sealed %d bytes for a payload of %d", len(sealed), len(plain))
			}
			for _, ca := range p.CAs {
				if bytes.Contains(sealed, ca.Key) || bytes.Contains(sealed, []byte(base64.StdEncoding.EncodeToString(ca.Key)[:40])) {
					t.Fatalf("the key of %s is readable in the sealed bytes", ca.Name)
				}
			}
			got, err := r.Open(binding, sealed)
			must(t, err)
			as, err := got.Authorities()
			must(t, err)
			if len(as) != len(cas) {
				t.Fatalf("%d CAs, want %d", len(as), len(cas))
			}
			for i, a := range as {
				if a.CA != cas[i].CA || !a.Cert.Equal(cas[i].Cert) || !pki.SamePublicKey(a.Key.Public(), cas[i].Key.Public()) {
					t.Errorf("CA %d: got %s, want %s", i, a.CA.Name, cas[i].CA.Name)
				}
				if !bytes.Equal(got.CAs[i].Key, p.CAs[i].Key) || !bytes.Equal(got.CAs[i].Cert, p.CAs[i].Cert) {
					t.Errorf("CA %s: PEM changed on the way", a.CA.Name)
				}
			}
			// One hand-over per receiver: its key is gone.
			_, err = r.Open(binding, sealed)
			refused(t, "second open", err, "already opened")
			_, err = (&pki.HandoverReceiver{}).Open(binding, sealed)
			refused(t, "a receiver NewHandoverReceiver did not make", err, "no private key")
		})
	}
}

// sealedPair is a receiver and a hand-over sealed to it.
func sealedPair(t *testing.T, cas []*pki.Authority) (*pki.HandoverReceiver, []byte) {
	t.Helper()
	p, err := pki.NewHandoverPayload(cas...)
	must(t, err)
	r, err := pki.NewHandoverReceiver()
	must(t, err)
	sealed, err := pki.SealHandover(r.PublicKey(), binding, p)
	must(t, err)
	return r, sealed
}

func TestHandoverRefusesEveryFlippedBit(t *testing.T) {
	cas := newCAs(t, pkitest.ECDSA)
	r, sealed := sealedPair(t, cas)
	tampered := bytes.Clone(sealed)
	for i := range tampered {
		// One bit of every byte in -short (a different bit each time), all
		// of them otherwise.
		bits := []int{i % 8}
		if !testing.Short() {
			bits = []int{0, 1, 2, 3, 4, 5, 6, 7}
		}
		for _, bit := range bits {
			tampered[i] ^= 1 << bit
			if p, err := r.Open(binding, tampered); !errors.Is(err, pki.ErrHandoverRefused) {
				t.Fatalf("byte %d bit %d flipped: opened (%v, %v)", i, bit, p != nil, err)
			}
			tampered[i] ^= 1 << bit
		}
	}
	// Failed attempts do not use the receiver up.
	if _, err := r.Open(binding, sealed); err != nil {
		t.Fatalf("the intact hand-over after the tampered ones: %v", err)
	}
}

func TestHandoverRefusesAnotherReceiverOrBinding(t *testing.T) {
	cas := newCAs(t, pkitest.ECDSA)
	r, sealed := sealedPair(t, cas)
	other, err := pki.NewHandoverReceiver()
	must(t, err)
	_, err = other.Open(binding, sealed)
	refused(t, "another receiver's key", err, `does not open with this receiver's key for run "run-1" from "cp-1" to "cp-2"`)
	for name, b := range map[string]pki.HandoverBinding{
		"wrong run id":    {RunID: "run-2", Sender: "cp-1", Receiver: "cp-2"},
		"wrong receiver":  {RunID: "run-1", Sender: "cp-1", Receiver: "cp-3"},
		"wrong sender":    {RunID: "run-1", Sender: "cp-3", Receiver: "cp-2"},
		"shifted fields":  {RunID: "run-1c", Sender: "p-1", Receiver: "cp-2"},
		"swapped parties": {RunID: "run-1", Sender: "cp-2", Receiver: "cp-1"},
	} {
		_, err := r.Open(b, sealed)
		refused(t, name, err, "does not open")
	}
	for name, b := range map[string]pki.HandoverBinding{
		"empty run id":    {Sender: "cp-1", Receiver: "cp-2"},
		"no receiver":     {RunID: "run-1", Sender: "cp-1"},
		"to itself":       {RunID: "run-1", Sender: "cp-1", Receiver: "cp-1"},
		"huge node name":  {RunID: "run-1", Sender: strings.Repeat("n", 600), Receiver: "cp-2"},
		"huge run id too": {RunID: strings.Repeat("r", 600), Sender: "cp-1", Receiver: "cp-2"},
	} {
		_, err := r.Open(b, sealed)
		refused(t, name+" (open)", err, "")
		p, err := pki.NewHandoverPayload(cas...)
		must(t, err)
		_, err = pki.SealHandover(r.PublicKey(), b, p)
		refused(t, name+" (seal)", err, "")
	}
	if _, err := r.Open(binding, sealed); err != nil {
		t.Fatalf("the right binding after the wrong ones: %v", err)
	}
}

func TestHandoverRefusesTruncatedOversizedOrOtherVersions(t *testing.T) {
	cas := newCAs(t, pkitest.ECDSA)
	r, sealed := sealedPair(t, cas)
	for _, n := range []int{0, 1, 1 + 1120, 1 + 1120 + 16, len(sealed) / 2, len(sealed) - 1} {
		_, err := r.Open(binding, sealed[:n])
		refused(t, fmt.Sprintf("truncated to %d bytes", n), err, "")
	}
	_, err := r.Open(binding, append(bytes.Clone(sealed), 0))
	refused(t, "a byte appended", err, "does not open")
	_, err = r.Open(binding, make([]byte, pki.MaxHandoverMessage+1))
	refused(t, "oversized", err, "more than")
	v2 := bytes.Clone(sealed)
	v2[0] = 2
	_, err = r.Open(binding, v2)
	refused(t, "version 2", err, "version 2")
	_, err = pki.SealHandover(r.PublicKey(), binding, nil)
	refused(t, "sealing no payload", err, "no payload")
	_, err = pki.SealHandoverBytes(r.PublicKey(), binding, make([]byte, pki.MaxHandoverPayload+1))
	refused(t, "sealing an oversized payload", err, "more than")
	for name, pub := range map[string][]byte{"empty": nil, "short": r.PublicKey()[:100], "version 2": append([]byte{2}, r.PublicKey()[1:]...)} {
		p, err := pki.NewHandoverPayload(cas...)
		must(t, err)
		_, err = pki.SealHandover(pub, binding, p)
		refused(t, "public key "+name, err, "public key")
	}
	if _, err := r.Open(binding, sealed); err != nil {
		t.Fatalf("the intact hand-over: %v", err)
	}
}

// TestHandoverRefusesBadPayloads seals payloads that SealHandover would
// refuse and checks that the receiver refuses them too, before anything is
// written.
func TestHandoverRefusesBadPayloads(t *testing.T) {
	cas := newCAs(t, pkitest.ECDSA)
	good, err := pki.NewHandoverPayload(cas...)
	must(t, err)
	edit := func(f func(p *pki.HandoverPayload)) []byte {
		var p pki.HandoverPayload
		b, _ := json.Marshal(good)
		must(t, json.Unmarshal(b, &p))
		f(&p)
		b, err := json.Marshal(&p)
		must(t, err)
		return b
	}
	leaf := pkitest.ControlPlane(t, t.TempDir(), "cp-9", pkitest.ECDSA)
	leafCert := mustRead(t, leaf.Root, pki.Inventory[indexOf(t, "apiserver")])
	for name, c := range map[string]struct {
		plain []byte
		want  string
	}{
		"key of another CA":  {edit(func(p *pki.HandoverPayload) { p.CAs[0].Key = p.CAs[1].Key }), "does not belong"},
		"swapped certs":      {edit(func(p *pki.HandoverPayload) { p.CAs[0].Cert, p.CAs[2].Cert = p.CAs[2].Cert, p.CAs[0].Cert }), "does not belong"},
		"a leaf":             {edit(func(p *pki.HandoverPayload) { p.CAs[0].Cert = pki.EncodeCertPEM(leafCert) }), "not a CA"},
		"two certificates":   {edit(func(p *pki.HandoverPayload) { p.CAs[0].Cert = append(p.CAs[0].Cert, p.CAs[1].Cert...) }), "exactly one"},
		"no key":             {edit(func(p *pki.HandoverPayload) { p.CAs[1].Key = nil }), "private key"},
		"unknown CA":         {edit(func(p *pki.HandoverPayload) { p.CAs[2].Name = "sa" }), "unknown CA"},
		"a CA twice":         {edit(func(p *pki.HandoverPayload) { p.CAs[2] = p.CAs[0] }), "twice"},
		"no CA":              {edit(func(p *pki.HandoverPayload) { p.CAs = nil }), "0 CAs"},
		"four CAs":           {edit(func(p *pki.HandoverPayload) { p.CAs = append(p.CAs, p.CAs[0]) }), "4 CAs"},
		"version 2":          {edit(func(p *pki.HandoverPayload) { p.Version = 2 }), "version 2"},
		"unknown field":      {[]byte(`{"version":1,"cas":[],"extra":1}`), "unknown field"},
		"data after it":      {append(edit(func(*pki.HandoverPayload) {}), []byte(` {}`)...), "after the payload"},
		"not JSON":           {[]byte("ca: x"), "payload"},
		"JSON of wrong type": {[]byte(`{"version":"1"}`), "payload"},
	} {
		r, err := pki.NewHandoverReceiver()
		must(t, err)
		sealed, err := pki.SealHandoverBytes(r.PublicKey(), binding, c.plain)
		must(t, err)
		p, err := r.Open(binding, sealed)
		refused(t, name, err, c.want)
		if p != nil {
			t.Errorf("%s: a payload came back", name)
		}
		var hp pki.HandoverPayload
		if json.Unmarshal(c.plain, &hp) == nil {
			_, err = pki.SealHandover(r.PublicKey(), binding, &hp)
			if err == nil {
				t.Errorf("%s: SealHandover sealed it", name)
			}
		}
	}
	// A key that does not match is refused when the payload is made, too.
	mixed := *cas[0]
	mixed.Key = cas[1].Key
	if _, err := pki.NewHandoverPayload(&mixed); !errors.Is(err, pki.ErrHandoverRefused) {
		t.Errorf("payload with a key of another CA: %v", err)
	}
	if _, err := pki.NewHandoverPayload(cas[0], nil); !errors.Is(err, pki.ErrHandoverRefused) {
		t.Errorf("payload with a nil CA: %v", err)
	}
}

func TestHandoverReceiverIsNeverSerialised(t *testing.T) {
	r, err := pki.NewHandoverReceiver()
	must(t, err)
	priv := pki.HandoverPrivateKeyBytes(r)
	if len(priv) < 32 {
		t.Fatalf("private key of %d bytes", len(priv))
	}
	secrets := [][]byte{priv, []byte(hex.EncodeToString(priv)), []byte(base64.StdEncoding.EncodeToString(priv)), []byte(fmt.Sprintf("%d", priv[:8]))}
	var out [][]byte
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
		out = append(out, []byte(fmt.Sprintf(f, r)), []byte(fmt.Sprintf(f, *r)))
	}
	out = append(out, []byte(fmt.Sprintf("%#v", struct{ R *pki.HandoverReceiver }{r})))
	if b, err := json.Marshal(r); err == nil {
		t.Errorf("JSON: %s", b)
	}
	if b, err := r.MarshalText(); err == nil {
		t.Errorf("text: %s", b)
	}
	if r.GoString() != r.String() || (&pki.HandoverReceiver{}).String() != "HandoverReceiver(no key)" {
		t.Errorf("GoString %q, String %q", r.GoString(), r.String())
	}
	if b, err := yaml.Marshal(struct{ R *pki.HandoverReceiver }{r}); err == nil {
		t.Errorf("YAML: %s", b)
	}
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(r); err == nil {
		out = append(out, buf.Bytes())
	}
	out = append(out, r.PublicKey())
	for _, o := range out {
		for _, s := range secrets {
			if bytes.Contains(o, s) {
				t.Fatalf("the private key shows in %q", o)
			}
		}
	}
	if !strings.Contains(r.String(), hex.EncodeToString(r.PublicKey()[1:9])) {
		t.Errorf("String() %q does not name the public key", r)
	}
}

// TestHandoverFuzzCorpusOpens keeps the committed corpus useful: its
// hand-overs must open with the fuzz receiver's key, or the fuzzer would
// only ever mutate refusals.
func TestHandoverFuzzCorpusOpens(t *testing.T) {
	for _, name := range []string{"0-three-cas", "1-one-ca"} {
		b, err := os.ReadFile(filepath.Join("testdata/fuzz/FuzzOpenHandover", name))
		must(t, err)
		quoted, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "go test fuzz v1\n[]byte(")
		if !ok || !strings.HasSuffix(quoted, ")") {
			t.Fatalf("%s: not a fuzz corpus file", name)
		}
		sealed, err := strconv.Unquote(strings.TrimSuffix(quoted, ")"))
		must(t, err)
		r, err := pki.NewHandoverReceiverFromSeed(fuzzReceiverSeed)
		must(t, err)
		if _, err := r.Open(binding, []byte(sealed)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

package pki

// What the tests of package pki_test need of the hand-over's internals.

// NewHandoverReceiverFromSeed derives the receiver's key pair from a seed,
// so that a fuzz corpus sealed to it stays valid.
func NewHandoverReceiverFromSeed(seed []byte) (*HandoverReceiver, error) {
	key, err := handoverKEM.DeriveKeyPair(seed)
	if err != nil {
		return nil, err
	}
	return newHandoverReceiver(key), nil
}

// SealHandoverBytes seals any plaintext, unchecked.
var SealHandoverBytes = sealHandoverBytes

// DecodeHandoverPayload is the receiver's payload decoder.
var DecodeHandoverPayload = decodeHandoverPayload

// HandoverPrivateKeyBytes is the receiver's private key, to prove it is not
// in anything the receiver prints or marshals.
func HandoverPrivateKeyBytes(r *HandoverReceiver) []byte {
	b, err := r.key.Bytes()
	if err != nil {
		panic(err)
	}
	return b
}

package broker

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// signer issues tokens with one key. The header is fixed and written in
// upstream's key order (alg, typ, kid), which jwt.Token's map header cannot
// guarantee, so only the signing primitive comes from golang-jwt.
type signer struct {
	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	kid    string
	header string // base64url of the JSON header
}

func newSigner(key ed25519.PrivateKey) *signer {
	pub := key.Public().(ed25519.PublicKey)
	kid := Thumbprint(pub)
	h := `{"alg":"EdDSA","typ":"JWT","kid":"` + kid + `"}`
	return &signer{key: key, pub: pub, kid: kid, header: base64.RawURLEncoding.EncodeToString([]byte(h))}
}

// sign serializes c and returns the compact JWS.
func (s *signer) sign(c *Claims) (string, error) {
	payload, err := json.Marshal(c) // escapes HTML as upstream's encoder does
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	signing := s.header + "." + base64.RawURLEncoding.EncodeToString(payload)
	sig, err := jwt.SigningMethodEdDSA.Sign(signing, s.key)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

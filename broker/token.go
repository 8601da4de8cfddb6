package broker

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DelegRecord is one hop of a delegation chain, signed by the broker.
type DelegRecord struct {
	Agent       string   `json:"agent"`
	Scope       []string `json:"scope"`
	DelegatedAt string   `json:"delegated_at"`
	Signature   string   `json:"signature"`
}

// Claims are the AgentWrit JWT claims, in upstream's serialization order.
// Claims returned by Verify are shared with the verification cache and must
// not be modified.
type Claims struct {
	Iss             string        `json:"iss"`
	Sub             string        `json:"sub"`
	Aud             []string      `json:"aud,omitempty"`
	Exp             int64         `json:"exp"`
	Nbf             int64         `json:"nbf,omitempty"`
	Iat             int64         `json:"iat"`
	Jti             string        `json:"jti"`
	Sid             string        `json:"sid,omitempty"`
	Scope           []string      `json:"scope"`
	TaskID          string        `json:"task_id,omitempty"`
	OrchID          string        `json:"orch_id,omitempty"`
	DelegationChain []DelegRecord `json:"delegation_chain,omitempty"`
	ChainHash       string        `json:"chain_hash,omitempty"`
}

// DelegationDepth is the number of delegation hops behind the token.
func (c *Claims) DelegationDepth() int { return len(c.DelegationChain) }

// The jwt.Claims interface. Time and audience checks are done by verify
// itself (no leeway, upstream's exact order), so these only expose values.
var _ jwt.Claims = (*Claims)(nil)

func numericDate(v int64) (*jwt.NumericDate, error) {
	if v == 0 {
		return nil, nil
	}
	return jwt.NewNumericDate(time.Unix(v, 0)), nil
}

// GetExpirationTime implements jwt.Claims.
func (c *Claims) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.Exp) }

// GetIssuedAt implements jwt.Claims.
func (c *Claims) GetIssuedAt() (*jwt.NumericDate, error) { return numericDate(c.Iat) }

// GetNotBefore implements jwt.Claims.
func (c *Claims) GetNotBefore() (*jwt.NumericDate, error) { return numericDate(c.Nbf) }

// GetIssuer implements jwt.Claims.
func (c *Claims) GetIssuer() (string, error) { return c.Iss, nil }

// GetSubject implements jwt.Claims.
func (c *Claims) GetSubject() (string, error) { return c.Sub, nil }

// GetAudience implements jwt.Claims.
func (c *Claims) GetAudience() (jwt.ClaimStrings, error) { return c.Aud, nil }

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

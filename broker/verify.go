package broker

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenLength bounds what verify will look at. Broker tokens are well
// under 4 KiB even with a five-hop delegation chain; anything longer is
// rejected before any decoding.
const MaxTokenLength = 16 << 10

// verifier checks tokens against one public key and issuer.
type verifier struct {
	pub    ed25519.PublicKey
	kid    string
	issuer string
	parser *jwt.Parser
	now    func() time.Time
}

func newVerifier(pub ed25519.PublicKey, issuer string, now func() time.Time) *verifier {
	return &verifier{
		pub:    pub,
		kid:    Thumbprint(pub),
		issuer: issuer,
		now:    now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
			jwt.WithStrictDecoding(), // no padding, no non-zero unused bits
			jwt.WithoutClaimsValidation(),
		),
	}
}

// precheck rejects what is obviously not one of our tokens before any
// decoding: the wrong length, not exactly two dots, or a byte outside the
// base64url alphabet. It costs one pass over at most MaxTokenLength bytes.
func precheck(tok string) error {
	if len(tok) == 0 || len(tok) > MaxTokenLength {
		return ErrMalformedToken
	}
	dots := 0
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case c == '.':
			dots++
			if dots > 2 {
				return ErrMalformedToken
			}
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return ErrMalformedToken
		}
	}
	if dots != 2 {
		return ErrMalformedToken
	}
	return nil
}

// verify checks signature, header and time claims of tok, upstream's §4.5
// steps 1–6, with the hardening of this product: duplicate or case-variant
// keys, a "crit" header and a foreign kid are refused. Revocation is the
// caller's business.
func (v *verifier) verify(tok string) (*Claims, error) {
	if err := precheck(tok); err != nil {
		return nil, err
	}
	c := new(Claims)
	_, err := v.parser.ParseWithClaims(tok, c, v.keyFor)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	default:
		return nil, fmt.Errorf("%w: %v", ErrMalformedToken, err)
	}
	// golang-jwt decodes into a struct, where a later duplicate silently wins
	// and "Scope" fills "scope": refuse any ambiguity in the signed payload.
	payload, _ := v.parser.DecodeSegment(tok[strings.IndexByte(tok, '.')+1 : strings.LastIndexByte(tok, '.')])
	if err := uniqueKeys(payload); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformedToken, err)
	}
	return c, v.checkClaims(c)
}

// checkClaims applies upstream's structural and time checks, with no leeway:
// a token is valid in the second where now == exp.
func (v *verifier) checkClaims(c *Claims) error {
	now := v.now().Unix()
	switch {
	case c.Sub == "", c.Jti == "", c.Exp <= 0:
		return fmt.Errorf("%w: missing sub, jti or exp", ErrMalformedToken)
	case now > c.Exp:
		return ErrExpired
	case c.Nbf != 0 && now < c.Nbf:
		return ErrNotYetValid
	case v.issuer != "" && c.Iss != v.issuer:
		return ErrIssuerMismatch
	}
	return nil
}

// keyFor is the jwt.Keyfunc: it accepts only our exact header shape.
func (v *verifier) keyFor(t *jwt.Token) (any, error) {
	if alg, _ := t.Header["alg"].(string); alg != "EdDSA" {
		return nil, errors.New("alg must be EdDSA")
	}
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New("crit header not supported")
	}
	if kid, present := t.Header["kid"]; present {
		s, ok := kid.(string)
		if !ok || (s != "" && s != v.kid) {
			return nil, errors.New("unknown kid")
		}
	}
	hdr, err := v.parser.DecodeSegment(t.Raw[:strings.IndexByte(t.Raw, '.')])
	if err != nil {
		return nil, err
	}
	if err := uniqueKeys(hdr); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	return v.pub, nil
}

// uniqueKeys checks that b is one JSON object whose member names are
// distinct even when compared case-insensitively (encoding/json matches
// struct fields case-insensitively, so "Scope" would otherwise overwrite
// "scope").
func uniqueKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	seen := make(map[string]struct{}, 16)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k := strings.ToLower(t.(string))
		if _, dup := seen[k]; dup {
			return fmt.Errorf("duplicate key %q", t)
		}
		seen[k] = struct{}{}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// Verify checks tok completely: signature, header, time, issuer and
// revocation. A token seen before is not re-verified cryptographically (its
// claims are cached until exp), but revocation is always checked against the
// live index, so a revoke is effective on the very next call. The returned
// Claims are shared and must not be modified.
func (b *Broker) Verify(ctx context.Context, tok string) (*Claims, error) {
	c, err := b.verifyCached(tok)
	if err != nil {
		return nil, err
	}
	if b.store.revocations.revoked(c) {
		return nil, ErrRevoked
	}
	return c, nil
}

func (b *Broker) verifyCached(tok string) (*Claims, error) {
	now := b.now().Unix()
	if c := b.cache.get(tok, now); c != nil {
		return c, nil
	}
	c, err := b.verifier.verify(tok)
	if err != nil {
		return nil, err
	}
	b.cache.put(tok, c, now)
	return c, nil
}

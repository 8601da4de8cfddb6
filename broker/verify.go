package broker

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
	"unique"

	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenLength bounds what verify will look at. Broker tokens are well
// under 4 KiB even with a five-hop delegation chain; anything longer is
// rejected before any decoding.
const MaxTokenLength = 16 << 10

// maxJSONDepth bounds the nesting uniqueKeys will walk. Broker claims nest
// three deep (claims → delegation_chain → record).
const maxJSONDepth = 32

// b64 is the only encoding a token segment may use: base64url, no padding,
// and zero unused bits in the last character (so one byte string has exactly
// one token spelling).
var b64 = base64.RawURLEncoding.Strict()

// verifier checks tokens against one public key and issuer.
type verifier struct {
	pub    ed25519.PublicKey
	kid    string
	issuer string
	now    func() time.Time
}

func newVerifier(pub ed25519.PublicKey, issuer string, now func() time.Time) *verifier {
	return &verifier{pub: pub, kid: Thumbprint(pub), issuer: issuer, now: now}
}

// precheck rejects what is obviously not one of our tokens before any
// decoding: the wrong length, not exactly two dots, or a byte outside the
// base64url alphabet. It costs one pass over at most MaxTokenLength bytes
// and does not allocate.
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

// verifyJWS is the JWS signature layer: an EdDSA (Ed25519) signature, given
// as its strict base64url segment, over the ASCII signing input
// "header.payload". It knows nothing about JWT claims, so it also checks
// non-JWT JWS such as RFC 8037's A.4 example.
func verifyJWS(pub ed25519.PublicKey, signingInput, sigSegment string) error {
	sig, err := decodeSignature(sigSegment)
	if err != nil {
		return err
	}
	if err := jwt.SigningMethodEdDSA.Verify(signingInput, sig, pub); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return nil
}

// decodeSignature decodes a signature segment, which must hold exactly one
// Ed25519 signature.
func decodeSignature(seg string) ([]byte, error) {
	sig, err := b64.DecodeString(seg)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrMalformedToken, err)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature is %d bytes", ErrMalformedToken, len(sig))
	}
	return sig, nil
}

// verify checks signature, header and time claims of tok, upstream's §4.5
// steps 1–6, with the hardening of this product: duplicate or case-variant
// keys, a "crit" header and a foreign kid are refused, and the payload is not
// JSON-decoded until its signature has been verified. Revocation is the
// caller's business.
func (v *verifier) verify(tok string) (*Claims, error) {
	if err := precheck(tok); err != nil {
		return nil, err
	}
	i, j := strings.IndexByte(tok, '.'), strings.LastIndexByte(tok, '.')
	hdr, err := b64.DecodeString(tok[:i])
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedToken, err)
	}
	if err := v.checkHeader(hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedToken, err)
	}
	if err := verifyJWS(v.pub, tok[:j], tok[j+1:]); err != nil {
		return nil, err
	}
	payload, err := b64.DecodeString(tok[i+1 : j])
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformedToken, err)
	}
	// encoding/json decodes into a struct, where a later duplicate silently
	// wins and "Scope" (or "ſcope") fills "scope": refuse any ambiguity.
	c := new(Claims)
	if err := DecodeStrict(payload, c); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformedToken, err)
	}
	if err := v.checkClaims(c); err != nil {
		return nil, err
	}
	c.intern()
	return c, nil
}

// intern shares the strings that many tokens hold alike (issuer, audience,
// scopes, task and orchestration IDs), so a cached token costs memory only
// for what is its own.
func (c *Claims) intern() {
	in := func(s *string) { *s = unique.Make(*s).Value() }
	in(&c.Iss)
	in(&c.TaskID)
	in(&c.OrchID)
	for i := range c.Aud {
		in(&c.Aud[i])
	}
	for i := range c.Scope {
		in(&c.Scope[i])
	}
}

// checkHeader accepts only our header shape: alg exactly "EdDSA", no
// "crit", and a kid that is absent, empty or ours (upstream §4.5 step 2).
// typ is not checked, as upstream.
func (v *verifier) checkHeader(hdr []byte) error {
	if err := uniqueKeys(hdr); err != nil {
		return err
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &h); err != nil {
		return err
	}
	var alg string
	if raw, ok := h["alg"]; !ok || json.Unmarshal(raw, &alg) != nil || alg != jwt.SigningMethodEdDSA.Alg() {
		return errors.New("alg must be EdDSA")
	}
	if _, ok := h["crit"]; ok {
		return errors.New("crit header not supported")
	}
	if raw, ok := h["kid"]; ok {
		var kid string
		if json.Unmarshal(raw, &kid) != nil || (kid != "" && kid != v.kid) {
			return errors.New("unknown kid")
		}
	}
	return nil
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

// DecodeStrict unmarshals b, which must be exactly one JSON object, into v,
// refusing what encoding/json would silently resolve: a member name given
// twice, or two names that differ only in case (encoding/json matches names
// to fields case-insensitively, so {"valid":false,"Valid":true} would be
// read as true). Tokens and broker answers are read through it.
func DecodeStrict(b []byte, v any) error {
	if err := uniqueKeys(b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// uniqueKeys checks that b is exactly one JSON object in which no object, at
// any depth, has two member names that encoding/json would match to the same
// struct field (it folds case with Unicode simple folding, so "Scope" and
// "ſcope" both fill "scope").
func uniqueKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	if err := objectKeys(dec, 1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// objectKeys walks the members of an object whose '{' has been read.
func objectKeys(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("nested too deep")
	}
	seen := make(map[string]struct{}, 16)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		name, ok := t.(string)
		if !ok {
			return errors.New("object key is not a string")
		}
		k := foldName(name)
		if _, dup := seen[k]; dup {
			return fmt.Errorf("duplicate key %q", name)
		}
		seen[k] = struct{}{}
		if err := skipValue(dec, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

func skipValue(dec *json.Decoder, depth int) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	switch t {
	case json.Delim('{'):
		return objectKeys(dec, depth+1)
	case json.Delim('['):
		if depth+1 > maxJSONDepth {
			return errors.New("nested too deep")
		}
		for dec.More() {
			if err := skipValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	}
	return nil
}

// foldName maps a member name to the representative of its case-folding
// class, exactly as encoding/json does when it matches names to fields:
// ASCII letters to upper case, any other rune to the smallest rune of its
// unicode.SimpleFold orbit.
func foldName(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s)
	}
	var sb strings.Builder
	for _, r := range s {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			sb.WriteRune(r)
			continue
		}
		for {
			r2 := unicode.SimpleFold(r)
			if r2 <= r {
				r = r2
				break
			}
			r = r2
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// Verify checks tok completely: signature, header, time, issuer and
// revocation. A token seen before is not re-verified cryptographically (its
// claims are cached until exp), but revocation is always checked against the
// live index, so a revoke is effective on the very next call. The returned
// Claims are shared and must not be modified. A cached verification does not
// allocate.
func (b *Broker) Verify(ctx context.Context, tok string) (*Claims, error) {
	e, err := b.verifyCached(tok)
	if err != nil {
		return nil, err
	}
	if b.store.revocations.revoked(e.claims) {
		return nil, ErrRevoked
	}
	return e.claims, nil
}

// ValidResponse is Verify plus the exact body /v1/token/validate answers for
// a valid token, `{"valid":true,"claims":{…}}` and a newline, byte-identical
// to json.NewEncoder(w).Encode(struct{Valid bool; Claims *Claims}). The body
// is encoded once per cached token and then shared: callers must not modify
// it. On error the body is nil.
func (b *Broker) ValidResponse(ctx context.Context, tok string) (*Claims, []byte, error) {
	e, err := b.verifyCached(tok)
	if err != nil {
		return nil, nil, err
	}
	if b.store.revocations.revoked(e.claims) {
		return nil, nil, ErrRevoked
	}
	body, err := e.validBody()
	if err != nil {
		return nil, nil, err
	}
	return e.claims, body, nil
}

func (b *Broker) verifyCached(tok string) (*cacheEntry, error) {
	if len(tok) > stackKeyMax {
		// Long input is refused by the cheap checks before it is copied
		// to be hashed.
		if err := precheck(tok); err != nil {
			return nil, err
		}
	}
	now := b.now().Unix()
	k := keyOf(tok)
	if e := b.cache.get(k, now); e != nil {
		return e, nil
	}
	c, err := b.verifier.verify(tok)
	if err != nil {
		return nil, err
	}
	return b.cache.put(k, c, now), nil
}

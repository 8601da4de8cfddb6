package broker

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unique"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// MaxTokenLength bounds what verify will look at. Broker tokens are well
// under 4 KiB even with a five-hop delegation chain; anything longer is
// rejected before any decoding.
const MaxTokenLength = 16 << 10

// b64 is the only encoding a token segment may use: base64url, no padding,
// and zero unused bits in the last character (so one byte string has exactly
// one token spelling).
var b64 = base64.RawURLEncoding.Strict()

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

// KeySet is the set of public keys a Verifier accepts signatures from.
type KeySet interface {
	// Key returns the verification key with this kid, if the set holds it.
	Key(kid string) (ed25519.PublicKey, bool)
	// Keys returns every verification key, for tokens that carry no kid.
	Keys() []ed25519.PublicKey
}

// VerifierOptions configure a Verifier.
type VerifierOptions struct {
	// Keys are the accepted signing keys. Required.
	Keys KeySet
	// Issuer, when set, is required in iss.
	Issuer string
	// CacheSize bounds the cache of verified claims (0: the default,
	// negative: no cache).
	CacheSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Verifier checks a token's signature, header and time claims, and caches
// what it verified so a token seen again costs a hash and a map lookup. It
// does not know about revocation: callers check a RevocationIndex. The
// embedded broker and remote gateways in local mode verify with it alike.
type Verifier struct {
	keys   KeySet
	issuer string
	now    func() time.Time
	cache  *claimsCache
}

// NewVerifier returns a Verifier.
func NewVerifier(o VerifierOptions) *Verifier {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultVerifyCacheSize
	}
	return &Verifier{keys: o.Keys, issuer: o.Issuer, now: o.Now, cache: newClaimsCache(o.CacheSize)}
}

// Verify checks tok's signature, header, expiry, not-before and issuer. A
// token seen before is not re-verified (its claims are cached until exp);
// a cached verification does not allocate. The returned Claims are shared
// and must not be modified.
func (v *Verifier) Verify(tok string) (*Claims, error) {
	e, err := v.entry(tok)
	if err != nil {
		return nil, err
	}
	return e.claims, nil
}

func (v *Verifier) entry(tok string) (*cacheEntry, error) {
	if len(tok) > stackKeyMax {
		// Long input is refused by the cheap checks before it is copied
		// to be hashed.
		if err := precheck(tok); err != nil {
			return nil, err
		}
	}
	now := v.now().Unix()
	k := keyOf(tok)
	if e := v.cache.get(k, now); e != nil {
		return e, nil
	}
	c, err := v.verify(tok)
	if err != nil {
		return nil, err
	}
	return v.cache.put(k, c, now), nil
}

// verify checks tok without the cache, upstream's verification steps 1–6
// with the hardening of this product: duplicate or case-variant keys, a
// "crit" header, an unknown kid and a scope outside the grammar are
// refused, and the payload is not JSON-decoded until its signature has
// been verified.
func (v *Verifier) verify(tok string) (*Claims, error) {
	if err := precheck(tok); err != nil {
		return nil, err
	}
	i, j := strings.IndexByte(tok, '.'), strings.LastIndexByte(tok, '.')
	hdr, err := b64.DecodeString(tok[:i])
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedToken, err)
	}
	keys, err := v.headerKeys(hdr)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedToken, err)
	}
	if err := verifyJWS(keys, tok[:j], tok[j+1:]); err != nil {
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

// verifyJWS is the JWS signature layer: an EdDSA (Ed25519) signature by
// one of keys, given as its strict base64url segment, over the ASCII
// signing input "header.payload". It knows nothing about JWT claims, so it
// also checks non-JWT JWS such as RFC 8037's A.4 example.
func verifyJWS(keys []ed25519.PublicKey, input, sigSegment string) error {
	sig, err := decodeSignature(sigSegment)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if jwt.SigningMethodEdDSA.Verify(input, sig, k) == nil {
			return nil
		}
	}
	return ErrBadSignature
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

// headerKeys accepts only our header shape (alg exactly "EdDSA", no
// "crit"; typ is not checked, as upstream) and returns the keys that may
// have signed: the one its kid names, or every key when it has no kid
// (upstream accepts a missing kid). An unknown kid is refused.
func (v *Verifier) headerKeys(hdr []byte) ([]ed25519.PublicKey, error) {
	var h map[string]json.RawMessage
	if err := DecodeStrict(hdr, &h); err != nil {
		return nil, err
	}
	var alg string
	if raw, ok := h["alg"]; !ok || json.Unmarshal(raw, &alg) != nil || alg != jwt.SigningMethodEdDSA.Alg() {
		return nil, errors.New("alg must be EdDSA")
	}
	if _, ok := h["crit"]; ok {
		return nil, errors.New("crit header not supported")
	}
	raw, ok := h["kid"]
	if !ok {
		return v.keys.Keys(), nil
	}
	var kid string
	if json.Unmarshal(raw, &kid) != nil {
		return nil, errors.New("kid is not a string")
	}
	if kid == "" {
		return v.keys.Keys(), nil
	}
	k, ok := v.keys.Key(kid)
	if !ok {
		return nil, errors.New("unknown kid")
	}
	return []ed25519.PublicKey{k}, nil
}

// checkClaims applies upstream's structural and time checks, with no leeway
// (a token is valid in the second where now == exp), and refuses a scope
// outside the grammar: such a token was not issued by a broker that checks
// scopes, and its scopes would read differently in the space-separated
// identity header.
func (v *Verifier) checkClaims(c *Claims) error {
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
	for _, s := range c.Scope {
		if !scopemap.Valid(s) {
			return fmt.Errorf("%w: scope %q is outside the scope grammar", ErrMalformedToken, s)
		}
	}
	return nil
}

// Verify checks tok completely: signature, header, time, issuer and
// revocation. Revocation is always checked against the live index, so a
// revoke is effective on the very next call. With a shared database it
// fails with ErrUnavailable once the index has not been brought up to date
// for longer than the store's staleness bound, rather than risk allowing a
// token whose revocation it missed. The returned Claims are shared and must
// not be modified. A cached verification does not allocate.
//
// For a token that verifies but is revoked, the claims are returned along
// with ErrRevoked, so that a refusal can be audited and logged under the
// agent it names; the token must not be honoured.
func (b *Broker) Verify(ctx context.Context, tok string) (*Claims, error) {
	e, err := b.check(tok)
	if e == nil {
		return nil, err
	}
	return e.claims, err
}

// ValidResponse is Verify plus the exact body /v1/token/validate answers for
// a valid token, `{"valid":true,"claims":{…}}` and a newline, byte-identical
// to json.NewEncoder(w).Encode(ValidateResponse{Valid: true, Claims: c}).
// The body is encoded once per cached token and then shared: callers must
// not modify it. On error the body is nil.
func (b *Broker) ValidResponse(ctx context.Context, tok string) (*Claims, []byte, error) {
	e, err := b.check(tok)
	if err != nil {
		return nil, nil, err
	}
	body, err := e.validBody()
	if err != nil {
		return nil, nil, err
	}
	return e.claims, body, nil
}

func (b *Broker) check(tok string) (*cacheEntry, error) {
	e, err := b.verifier.entry(tok)
	if err != nil {
		return nil, err
	}
	if err := b.store.fresh(); err != nil {
		return nil, err
	}
	if b.store.revocations.Revoked(e.claims) {
		return e, ErrRevoked
	}
	return e, nil
}

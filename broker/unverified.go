package broker

import (
	"fmt"
	"strings"
)

// Unverified is a token taken apart without checking its signature,
// expiry, issuer or revocation. It is for display (`caddy agentwrit token
// inspect`) and for refusing garbage before a network call; never for a
// decision to allow.
type Unverified struct {
	// Alg and Kid are the header's algorithm and key ID ("" if absent).
	Alg, Kid string
	// Claims are the payload's claims.
	Claims *Claims
	// Header and Payload are the decoded JSON of the first two segments.
	Header, Payload []byte
}

// ParseUnverified splits and decodes tok with the same rules as Verify's
// first steps: at most MaxTokenLength bytes of base64url in three
// segments, strict base64, a 64-byte signature, and header and payload
// JSON objects without duplicate or case-variant keys. Errors wrap
// ErrMalformedToken.
func ParseUnverified(tok string) (*Unverified, error) {
	if err := precheck(tok); err != nil {
		return nil, err
	}
	i, j := strings.IndexByte(tok, '.'), strings.LastIndexByte(tok, '.')
	if _, err := decodeSignature(tok[j+1:]); err != nil {
		return nil, err
	}
	u := &Unverified{Claims: new(Claims)}
	var err error
	if u.Header, err = b64.DecodeString(tok[:i]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedToken, err)
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := DecodeStrict(u.Header, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedToken, err)
	}
	u.Alg, u.Kid = h.Alg, h.Kid
	if u.Payload, err = b64.DecodeString(tok[i+1 : j]); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformedToken, err)
	}
	if err := DecodeStrict(u.Payload, u.Claims); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformedToken, err)
	}
	return u, nil
}

package remote

import (
	"fmt"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

var (
	errTooLong = fmt.Errorf("%w: longer than %d bytes", broker.ErrMalformedToken, broker.MaxTokenLength)
	errAlg     = fmt.Errorf("%w: alg is not EdDSA", broker.ErrMalformedToken)
	errNoExp   = fmt.Errorf("%w: no exp", broker.ErrMalformedToken)
)

// precheck refuses, without a network call, what the broker would refuse
// anyway: what broker.ParseUnverified cannot take apart (too long, not
// three strict base64url segments, a signature that is not 64 bytes,
// header or payload not a JSON object with unique keys), an alg other
// than EdDSA, no exp or an exp that has passed. It returns the token's
// unverified claims, against which the broker's answer is checked.
func precheck(tok string, now time.Time) (*broker.Claims, error) {
	u, err := broker.ParseUnverified(tok)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Alg != "EdDSA":
		return nil, errAlg
	case u.Claims.Exp == 0:
		return nil, errNoExp
	case now.Unix() >= u.Claims.Exp:
		return nil, broker.ErrExpired
	}
	return u.Claims, nil
}

package remote

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// errBrokerSaysNo is a well-formed "valid":false: the one answer that is
// cached negatively.
var errBrokerSaysNo = fmt.Errorf("%w: rejected by the broker", broker.ErrInvalidToken)

// answer is the strict shape of a /v1/token/validate answer. Valid is a
// pointer so that an answer without it is malformed, not a "no".
type answer struct {
	Valid  *bool          `json:"valid"`
	Claims *broker.Claims `json:"claims"`
	Error  string         `json:"error"`
}

// parseAnswer accepts only a single JSON object, without duplicate or
// case-variant keys, with a boolean "valid": false is a definitive no;
// true needs a claims object whose sub, jti and exp are present, match
// sent (the token's own unverified claims) and whose exp has not passed.
// Anything else is a malformed answer, never a "no" and never a "yes".
func parseAnswer(raw []byte, sent *broker.Claims, now time.Time) (*broker.Claims, error) {
	var a answer
	if err := broker.DecodeStrict(raw, &a); err != nil {
		return nil, fmt.Errorf("malformed broker answer: %w", err)
	}
	if a.Valid == nil {
		return nil, errors.New("malformed broker answer: no boolean valid")
	}
	if !*a.Valid {
		return nil, errBrokerSaysNo
	}
	c := a.Claims
	if c == nil {
		return nil, errors.New("malformed broker answer: valid without a claims object")
	}
	switch {
	case c.Sub == "" || c.Jti == "" || c.Exp == 0:
		return nil, errors.New("malformed broker answer: claims lack sub, jti or exp")
	case c.Sub != sent.Sub || c.Jti != sent.Jti || c.Exp != sent.Exp:
		return nil, errors.New("malformed broker answer: claims do not belong to the token sent")
	case now.Unix() >= c.Exp:
		return nil, broker.ErrExpired
	}
	return c, nil
}

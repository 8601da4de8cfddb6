package broker

import (
	"errors"
	"fmt"
)

// ErrInvalidToken is the root of every token-verification failure. Callers
// that only need "valid or not" test errors.Is(err, ErrInvalidToken); the
// more specific errors below wrap it so callers can also branch on why.
var ErrInvalidToken = errors.New("invalid token")

// Specific verification failures. Each wraps ErrInvalidToken.
var (
	ErrMalformedToken = fmt.Errorf("%w: malformed", ErrInvalidToken)
	ErrBadSignature   = fmt.Errorf("%w: signature verification failed", ErrInvalidToken)
	ErrExpired        = fmt.Errorf("%w: token expired", ErrInvalidToken)
	ErrNotYetValid    = fmt.Errorf("%w: token not yet valid", ErrInvalidToken)
	ErrIssuerMismatch = fmt.Errorf("%w: issuer mismatch", ErrInvalidToken)
	ErrRevoked        = fmt.Errorf("%w: token revoked", ErrInvalidToken)
)

// ErrAudienceMismatch is returned by Authenticate when a broker with a
// configured audience sees a token whose aud lacks it. It does not wrap
// ErrInvalidToken: upstream checks audience only on Bearer routes, never on
// /v1/token/validate.
var ErrAudienceMismatch = errors.New("token audience mismatch")

// Errors of the broker's stateful operations, for callers that branch.
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("conflict")
	ErrConsumed  = errors.New("already consumed")
	ErrBadConfig = errors.New("invalid broker configuration")
	// ErrUnavailable means the broker cannot decide or store anything
	// right now: its database cannot be reached, or (a fleet replica) its
	// revocation index is stale. Callers fail closed with 503 and
	// Retry-After; nothing was acknowledged, so retrying is safe.
	ErrUnavailable = errors.New("broker unavailable")
)

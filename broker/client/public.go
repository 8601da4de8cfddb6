package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Health calls GET /v1/health.
func (c *Client) Health(ctx context.Context) (*broker.Health, error) {
	var out broker.Health
	err := c.do(ctx, call{op: "health", method: http.MethodGet, path: "/v1/health", status: http.StatusOK}, &out)
	return ok(&out, err)
}

// Challenge calls GET /v1/challenge for a registration nonce.
func (c *Client) Challenge(ctx context.Context) (*broker.Challenge, error) {
	var out broker.Challenge
	err := c.do(ctx, call{op: "challenge", method: http.MethodGet, path: "/v1/challenge", status: http.StatusOK}, &out)
	return ok(&out, err)
}

// JWKS fetches the broker's signing keys from GET /.well-known/jwks.json
// (a departure of this repository's broker; upstream has no such route).
func (c *Client) JWKS(ctx context.Context) (*broker.JWKSet, error) {
	var out broker.JWKSet
	err := c.do(ctx, call{op: "jwks", method: http.MethodGet, path: "/.well-known/jwks.json", status: http.StatusOK}, &out)
	return ok(&out, err)
}

// validateAnswer is a /v1/token/validate answer with "valid" as a pointer,
// so that a missing or null "valid" is told apart from false.
type validateAnswer struct {
	Valid  *bool          `json:"valid"`
	Claims *broker.Claims `json:"claims"`
	Error  string         `json:"error"`
}

// Validate asks the broker whether token is valid (POST /v1/token/validate).
// An invalid token is not an error: the answer has Valid false.
//
// The answer is read strictly, because a gateway may let requests through
// on it: it must be HTTP 200 with exactly one JSON object, no member name
// twice or in two spellings, a boolean "valid", and when valid a claims
// object with sub, jti and exp. Anything else is an error wrapping
// ErrMalformedAnswer (or an *Error for another status), never Valid false
// and never Valid true. Claims are dropped from a "valid":false answer.
func (c *Client) Validate(ctx context.Context, token string) (*broker.ValidateResponse, error) {
	raw, err := c.roundTrip(ctx, call{
		op: "validate", method: http.MethodPost, path: "/v1/token/validate",
		body: broker.ValidateRequest{Token: token}, status: http.StatusOK,
	})
	if err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	res, err := parseValidateAnswer(raw)
	if err != nil {
		return nil, fmt.Errorf("validate: %w: %v", ErrMalformedAnswer, err)
	}
	return res, nil
}

func parseValidateAnswer(raw []byte) (*broker.ValidateResponse, error) {
	var a validateAnswer
	if err := broker.DecodeStrict(raw, &a); err != nil {
		return nil, err
	}
	switch {
	case a.Valid == nil:
		return nil, errors.New(`no boolean "valid"`)
	case !*a.Valid:
		return &broker.ValidateResponse{Valid: false, Error: a.Error}, nil
	case a.Claims == nil:
		return nil, errors.New("valid without a claims object")
	case a.Claims.Sub == "" || a.Claims.Jti == "" || a.Claims.Exp == 0:
		return nil, errors.New("claims lack sub, jti or exp")
	}
	return &broker.ValidateResponse{Valid: true, Claims: a.Claims}, nil
}

// ok returns out, or nil and err when err is set.
func ok[T any](out *T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return out, nil
}

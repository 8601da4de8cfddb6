package client

import (
	"context"
	"net/http"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Renew exchanges the client's token for a fresh one with the same claims
// and lifetime (POST /v1/token/renew). The presented token is revoked
// first, so continue with c.WithToken(res.AccessToken).
func (c *Client) Renew(ctx context.Context) (*broker.TokenResponse, error) {
	var out broker.TokenResponse
	err := c.do(ctx, call{op: "renew", method: http.MethodPost, path: "/v1/token/renew", bearer: true, status: http.StatusOK}, &out)
	return ok(&out, err)
}

// Release hands the client's token back (POST /v1/token/release): from
// the moment it returns, the broker refuses the token.
func (c *Client) Release(ctx context.Context) error {
	return c.do(ctx, call{op: "release", method: http.MethodPost, path: "/v1/token/release", bearer: true, status: http.StatusNoContent}, nil)
}

// Delegate asks for a token for another registered agent with a subset of
// the client's scope (POST /v1/delegate). Only agent tokens may delegate;
// the new token never outlives the client's.
func (c *Client) Delegate(ctx context.Context, req broker.DelegateRequest) (*broker.DelegateResponse, error) {
	var out broker.DelegateResponse
	err := c.do(ctx, call{op: "delegate", method: http.MethodPost, path: "/v1/delegate", body: req, bearer: true, status: http.StatusOK}, &out)
	return ok(&out, err)
}

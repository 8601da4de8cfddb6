package client

import (
	"context"
	"net/http"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// AdminAuth exchanges the admin secret for an admin token (POST
// /v1/admin/auth). The broker rate-limits this route per client address.
func (c *Client) AdminAuth(ctx context.Context, secret string) (*broker.AuthResponse, error) {
	var out broker.AuthResponse
	err := c.do(ctx, call{
		op: "admin auth", method: http.MethodPost, path: "/v1/admin/auth",
		body: broker.AdminAuthRequest{Secret: secret}, status: http.StatusOK,
	}, &out)
	return ok(&out, err)
}

// LoginAdmin is AdminAuth returning a client that acts with the admin
// token (scopes admin:launch-tokens:*, admin:revoke:*, admin:audit:*).
func (c *Client) LoginAdmin(ctx context.Context, secret string) (*Client, error) {
	res, err := c.AdminAuth(ctx, secret)
	if err != nil {
		return nil, err
	}
	return c.WithToken(res.AccessToken), nil
}

// CreateLaunchToken makes a launch token with an admin token (POST
// /v1/admin/launch-tokens). Zero fields of req take the broker's defaults.
func (c *Client) CreateLaunchToken(ctx context.Context, req broker.LaunchTokenRequest) (*broker.LaunchTokenResponse, error) {
	return c.launchToken(ctx, "create launch token", "/v1/admin/launch-tokens", req)
}

// CreateAppLaunchToken makes a launch token with an app token (POST
// /v1/app/launch-tokens); its allowed scope must lie within the app's.
func (c *Client) CreateAppLaunchToken(ctx context.Context, req broker.LaunchTokenRequest) (*broker.LaunchTokenResponse, error) {
	return c.launchToken(ctx, "create app launch token", "/v1/app/launch-tokens", req)
}

func (c *Client) launchToken(ctx context.Context, op, path string, req broker.LaunchTokenRequest) (*broker.LaunchTokenResponse, error) {
	var out broker.LaunchTokenResponse
	err := c.do(ctx, call{op: op, method: http.MethodPost, path: path, body: req, bearer: true, status: http.StatusCreated}, &out)
	return ok(&out, err)
}

// Revoke revokes at level (broker.LevelToken, LevelAgent, LevelTask or
// LevelChain) the target it names: a jti, a subject, a task ID or a root
// delegator (POST /v1/revoke, scope admin:revoke:*).
func (c *Client) Revoke(ctx context.Context, level, target string) (*broker.RevokeResponse, error) {
	var out broker.RevokeResponse
	err := c.do(ctx, call{
		op: "revoke", method: http.MethodPost, path: "/v1/revoke",
		body: broker.RevokeRequest{Level: level, Target: target}, bearer: true, status: http.StatusOK,
	}, &out)
	return ok(&out, err)
}

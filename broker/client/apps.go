package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// AppAuth exchanges an app's client credentials for an app token (POST
// /v1/app/auth). The broker rate-limits this route per client ID.
func (c *Client) AppAuth(ctx context.Context, clientID, clientSecret string) (*broker.AppAuthResponse, error) {
	var out broker.AppAuthResponse
	err := c.do(ctx, call{
		op: "app auth", method: http.MethodPost, path: "/v1/app/auth",
		body: broker.AppAuthRequest{ClientID: clientID, ClientSecret: clientSecret}, status: http.StatusOK,
	}, &out)
	return ok(&out, err)
}

// LoginApp is AppAuth returning a client that acts with the app token.
func (c *Client) LoginApp(ctx context.Context, clientID, clientSecret string) (*Client, error) {
	res, err := c.AppAuth(ctx, clientID, clientSecret)
	if err != nil {
		return nil, err
	}
	return c.WithToken(res.AccessToken), nil
}

// CreateApp registers an app (POST /v1/admin/apps, admin token). The
// answer is the only time the app's client secret is shown.
func (c *Client) CreateApp(ctx context.Context, req broker.AppRequest) (*broker.AppCredentials, error) {
	var out broker.AppCredentials
	err := c.do(ctx, call{op: "create app", method: http.MethodPost, path: "/v1/admin/apps", body: req, bearer: true, status: http.StatusCreated}, &out)
	return ok(&out, err)
}

// ListApps lists every app, newest first (GET /v1/admin/apps, admin token).
func (c *Client) ListApps(ctx context.Context) (*broker.AppList, error) {
	var out broker.AppList
	err := c.do(ctx, call{
		op: "list apps", method: http.MethodGet, path: "/v1/admin/apps", bearer: true,
		status: http.StatusOK, limit: MaxListResponseBytes,
	}, &out)
	return ok(&out, err)
}

// GetApp reads one app (GET /v1/admin/apps/{id}, admin token).
func (c *Client) GetApp(ctx context.Context, appID string) (*broker.App, error) {
	var out broker.App
	err := c.appCall(ctx, "get app", http.MethodGet, appID, nil, &out)
	return ok(&out, err)
}

// UpdateApp changes an app's scopes, token TTL or both (PUT
// /v1/admin/apps/{id}, admin token); req.Name is ignored. It returns the
// app as updated.
func (c *Client) UpdateApp(ctx context.Context, appID string, req broker.AppRequest) (*broker.App, error) {
	var out broker.App
	err := c.appCall(ctx, "update app", http.MethodPut, appID, req, &out)
	return ok(&out, err)
}

// DeleteApp deregisters an app (DELETE /v1/admin/apps/{id}, admin token):
// its own tokens and unused launch tokens are revoked; agents it launched
// keep theirs until they expire.
func (c *Client) DeleteApp(ctx context.Context, appID string) (*broker.AppDeregistration, error) {
	var out broker.AppDeregistration
	err := c.appCall(ctx, "delete app", http.MethodDelete, appID, nil, &out)
	return ok(&out, err)
}

// errNoAppID is returned for an empty app ID, which would name another route.
var errNoAppID = errors.New("empty app ID")

func (c *Client) appCall(ctx context.Context, op, method, appID string, body any, out any) error {
	if appID == "" {
		return fmt.Errorf("%s: %w", op, errNoAppID)
	}
	return c.do(ctx, call{
		op: op, method: method, path: "/v1/admin/apps/" + url.PathEscape(appID),
		body: body, bearer: true, status: http.StatusOK,
	}, out)
}

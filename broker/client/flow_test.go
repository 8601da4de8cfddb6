package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestPublicRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	h, err := e.c.Health(ctx)
	require.NoError(t, err)
	assert.Equal(t, "ok", h.Status)
	assert.Equal(t, broker.Version, h.Version)
	assert.True(t, h.DBConnected)

	ch, err := e.c.Challenge(ctx)
	require.NoError(t, err)
	assert.Regexp(t, hex64, ch.Nonce)
	assert.Equal(t, 30, ch.ExpiresIn)

	ks, err := e.c.JWKS(ctx)
	require.NoError(t, err)
	require.Len(t, ks.Keys, 1)
	assert.Equal(t, e.tb.Broker.KeyID(), ks.Keys[0].Kid)
	assert.Equal(t, "EdDSA", ks.Keys[0].Alg)
}

func TestAdminAuth(t *testing.T) {
	tb := newBroker(t)
	c := newClient(t, tb.URL)
	ctx := context.Background()

	res, err := c.AdminAuth(ctx, testSecret)
	require.NoError(t, err)
	assert.Equal(t, "Bearer", res.TokenType)
	assert.EqualValues(t, 300, res.ExpiresIn)

	admin, err := c.LoginAdmin(ctx, testSecret)
	require.NoError(t, err)
	assert.NotEmpty(t, admin.Token())
	assert.Empty(t, c.Token(), "LoginAdmin must not change its receiver")
	v, err := c.Validate(ctx, admin.Token())
	require.NoError(t, err)
	assert.Equal(t, "admin", v.Claims.Sub)

	_, err = c.LoginAdmin(ctx, "wrong-secret-hunter2")
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusUnauthorized, ae.Status)
	assert.Equal(t, broker.ErrTypeUnauthorized, ae.ErrorCode)
	assert.Equal(t, "invalid credentials", ae.Detail)
	assert.NotContains(t, err.Error(), "hunter2")
	assert.True(t, strings.HasPrefix(err.Error(), "admin auth: POST /v1/admin/auth: 401 invalid credentials (error_code unauthorized) [request_id "), err.Error())
}

func TestAdminAuthRateLimit(t *testing.T) {
	// The broker's own client-IP key, not brokertest's one per request.
	b := brokertest.New(t, brokertest.Options{Config: func(c *broker.Config) { c.ClientIP = nil }})
	c := newClient(t, b.URL)
	var err error
	for i := 0; i < 20 && !client.IsStatus(err, http.StatusTooManyRequests); i++ {
		_, err = c.AdminAuth(context.Background(), "wrong")
	}
	require.True(t, client.IsErrorCode(err, broker.ErrTypeRateLimited), "%v", err)
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, time.Second, ae.RetryAfter)
}

func TestLaunchTokens(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	lt, err := e.admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "a", AllowedScope: []string{"read:data:*"}})
	require.NoError(t, err)
	assert.Regexp(t, hex64, lt.LaunchToken)
	assert.Equal(t, []string{"read:data:*"}, lt.Policy.AllowedScope)
	assert.EqualValues(t, 300, lt.Policy.MaxTTL)
	_, err = time.Parse(time.RFC3339, lt.ExpiresAt)
	assert.NoError(t, err)

	_, err = e.admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "a"})
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeInvalidRequest), "%v", err)
	_, err = e.c.CreateLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "a", AllowedScope: []string{"read:data:*"}})
	assert.True(t, client.IsStatus(err, http.StatusUnauthorized), "no token: %v", err)
	// The admin route takes admin tokens; the app route only app tokens.
	_, err = e.admin.CreateAppLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "a", AllowedScope: []string{"read:data:*"}})
	assert.True(t, client.IsStatus(err, http.StatusForbidden), "%v", err)
}

func TestRegister(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.register(t, "read:data:*")
	assert.True(t, strings.HasPrefix(a.ID, "spiffe://agentwrit.local/agent/default/default/"), a.ID)
	assert.Equal(t, 300*time.Second, a.ExpiresIn)
	assert.Len(t, a.Key, ed25519.PrivateKeySize)
	assert.Equal(t, a.Token, a.Client().Token())
	assert.Nil(t, (&client.Agent{Token: "x"}).Client(), "an Agent not from Register has no client")

	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	b, err := e.c.Register(ctx, e.launch(t, "read:data:*"), []string{"read:data:reports"},
		client.WithOrchID("orch-1"), client.WithTaskID("task.7"), client.WithKey(key))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(b.ID, "spiffe://agentwrit.local/agent/orch-1/task.7/"), b.ID)
	assert.Equal(t, key, b.Key)
	v, err := e.c.Validate(ctx, b.Token)
	require.NoError(t, err)
	assert.Equal(t, []string{"read:data:reports"}, v.Claims.Scope)
	assert.Equal(t, "task.7", v.Claims.TaskID)

	// A single-use launch token registers once.
	lt, err := e.admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "once", AllowedScope: []string{"read:data:*"}})
	require.NoError(t, err)
	_, err = e.c.Register(ctx, lt.LaunchToken, []string{"read:data:*"})
	require.NoError(t, err)
	_, err = e.c.Register(ctx, lt.LaunchToken, []string{"read:data:*"})
	require.True(t, client.IsStatus(err, http.StatusUnauthorized), "%v", err)
	assert.NotContains(t, err.Error(), lt.LaunchToken)

	_, err = e.c.Register(ctx, e.launch(t, "read:data:*"), []string{"write:data:*"})
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeScopeViolation), "%v", err)
	_, err = e.c.Register(ctx, "x", []string{"read:data:*"}, client.WithKey(key[:10]))
	assert.ErrorContains(t, err, "register: WithKey: Ed25519 private key is 10 bytes")
	_, err = e.c.Register(ctx, e.launch(t, "read:data:*"), []string{"read:data:*"}, client.WithTaskID("a/b"))
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeInvalidRequest), "%v", err)
}

func TestRegisterRaw(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	_, other, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	lt := e.launch(t, "read:data:*")
	req := func(nonce string, signer ed25519.PrivateKey) broker.RegisterRequest {
		sig, err := client.SignNonce(signer, nonce)
		require.NoError(t, err)
		return broker.RegisterRequest{
			LaunchToken: lt, Nonce: nonce, PublicKey: client.PublicKey(key), Signature: sig,
			OrchID: "o", TaskID: "t", RequestedScope: []string{"read:data:*"},
		}
	}

	_, err = e.c.RegisterRaw(ctx, req(strings.Repeat("ab", 32), key))
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "register: POST /v1/register: 401 nonce: nonce not found or expired (error_code unauthorized) [request_id "+ae.RequestID+"]", err.Error())
	assert.Equal(t, "/v1/register", ae.Instance)
	assert.Equal(t, "urn:agentwrit:error:unauthorized", ae.Type)
	assert.Equal(t, "Unauthorized", ae.Title)

	ch, err := e.c.Challenge(ctx)
	require.NoError(t, err)
	_, err = e.c.RegisterRaw(ctx, req(ch.Nonce, other))
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "nonce signature verification failed", ae.Detail)

	ch, err = e.c.Challenge(ctx)
	require.NoError(t, err)
	res, err := e.c.RegisterRaw(ctx, req(ch.Nonce, key))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(res.AgentID, "spiffe://agentwrit.local/agent/o/t/"))
}

func TestSignNonce(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	_, err = client.SignNonce(key, "not hex")
	assert.ErrorContains(t, err, "nonce is not hex")
	_, err = client.SignNonce(key[:31], "00")
	assert.ErrorContains(t, err, "31 bytes")
	assert.Empty(t, client.PublicKey(nil))
}

func TestTokenLife(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.register(t, "read:data:*", "write:data:*")
	b := e.register(t, "read:data:*")
	valid := func(tok string) bool {
		t.Helper()
		v, err := e.c.Validate(ctx, tok)
		require.NoError(t, err)
		return v.Valid
	}

	d, err := a.Client().Delegate(ctx, broker.DelegateRequest{DelegateTo: b.ID, Scope: []string{"read:data:x"}, TTL: 30})
	require.NoError(t, err)
	require.Len(t, d.DelegationChain, 1)
	assert.Equal(t, a.ID, d.DelegationChain[0].Agent)
	assert.EqualValues(t, 30, d.ExpiresIn)
	v, err := e.c.Validate(ctx, d.AccessToken)
	require.NoError(t, err)
	assert.Equal(t, b.ID, v.Claims.Sub)
	_, err = a.Client().Delegate(ctx, broker.DelegateRequest{DelegateTo: b.ID, Scope: []string{"admin:revoke:*"}})
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeScopeViolation), "%v", err)

	r, err := a.Client().Renew(ctx)
	require.NoError(t, err)
	assert.False(t, valid(a.Token), "renewal revokes the presented token")
	assert.True(t, valid(r.AccessToken))
	_, err = a.Client().Renew(ctx)
	assert.True(t, client.IsStatus(err, http.StatusUnauthorized), "%v", err)

	renewed := a.Client().WithToken(r.AccessToken)
	require.NoError(t, renewed.Release(ctx))
	assert.False(t, valid(r.AccessToken))
	err = renewed.Release(ctx)
	assert.True(t, client.IsStatus(err, http.StatusUnauthorized), "%v", err)
	assert.True(t, strings.HasPrefix(err.Error(), "release: POST /v1/token/release: 401 token verification failed"), err.Error())
	assert.NotContains(t, err.Error(), r.AccessToken)

	rv, err := e.admin.Revoke(ctx, broker.LevelAgent, b.ID)
	require.NoError(t, err)
	assert.Equal(t, broker.RevokeResponse{Revoked: true, Level: broker.LevelAgent, Target: b.ID, Count: 1}, *rv)
	assert.False(t, valid(b.Token))
	_, err = e.admin.Revoke(ctx, "galaxy", "x")
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeInvalidRequest), "%v", err)
	_, err = b.Client().Revoke(ctx, broker.LevelToken, "x")
	assert.True(t, client.IsStatus(err, http.StatusUnauthorized), "revoked token: %v", err)
	_, err = e.register(t, "read:data:*").Client().Revoke(ctx, broker.LevelToken, "x")
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeInsufficientScope), "%v", err)
}

// TestApps runs alongside the others: app secrets are bcrypted at cost 12,
// so LoginApp is left to TestLoginApp.
func TestApps(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	ttl := int64(600)
	creds, err := e.admin.CreateApp(ctx, broker.AppRequest{Name: "report-app", Scopes: []string{"read:data:*"}, TokenTTL: &ttl})
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(creds.AppID, "app-report-app-"), creds.AppID)
	assert.NotEmpty(t, creds.ClientSecret)
	assert.EqualValues(t, 600, creds.TokenTTL)

	list, err := e.admin.ListApps(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, list.Total)
	assert.Equal(t, creds.AppID, list.Apps[0].AppID)

	app, err := e.admin.GetApp(ctx, creds.AppID)
	require.NoError(t, err)
	assert.Equal(t, "report-app", app.Name)
	assert.Equal(t, "active", app.Status)

	app, err = e.admin.UpdateApp(ctx, creds.AppID, broker.AppRequest{Scopes: []string{"read:data:*", "write:data:*"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"read:data:*", "write:data:*"}, app.Scopes)

	res, err := e.c.AppAuth(ctx, creds.ClientID, creds.ClientSecret)
	require.NoError(t, err)
	assert.EqualValues(t, 600, res.ExpiresIn)
	assert.Contains(t, res.Scopes, "app:launch-tokens:*")
	appc := e.c.WithToken(res.AccessToken)
	lt, err := appc.CreateAppLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "w", AllowedScope: []string{"write:data:*"}})
	require.NoError(t, err)
	_, err = e.c.Register(ctx, lt.LaunchToken, []string{"write:data:x"})
	require.NoError(t, err)
	_, err = appc.CreateAppLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "w", AllowedScope: []string{"admin:data:*"}})
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeForbidden), "beyond the ceiling: %v", err)

	del, err := e.admin.DeleteApp(ctx, creds.AppID)
	require.NoError(t, err)
	assert.Equal(t, "inactive", del.Status)
	assert.Equal(t, creds.AppID, del.AppID)
	_, err = appc.CreateAppLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "w", AllowedScope: []string{"read:data:*"}})
	assert.True(t, client.IsStatus(err, http.StatusUnauthorized), "deregistration revokes app tokens: %v", err)

	// IDs are path-escaped: a slash stays inside the one {id} segment.
	var ae *client.Error
	_, err = e.admin.GetApp(ctx, "no/such")
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "app not found", ae.Detail)
	assert.Equal(t, "/v1/admin/apps/no%2Fsuch", ae.Path)
	for _, f := range []func() error{
		func() error { _, err := e.admin.GetApp(ctx, ""); return err },
		func() error { _, err := e.admin.UpdateApp(ctx, "", broker.AppRequest{}); return err },
		func() error { _, err := e.admin.DeleteApp(ctx, ""); return err },
	} {
		err := f()
		assert.ErrorContains(t, err, "empty app ID")
		assert.False(t, errors.As(err, &ae))
	}
}

func TestConcurrentUse(t *testing.T) {
	e := newEnv(t)
	lt := e.launch(t, "read:data:*")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			a, err := e.c.Register(context.Background(), lt, []string{"read:data:*"})
			if err == nil {
				_, err = a.Client().Renew(context.Background())
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		assert.NoError(t, err)
	}
}

func TestLoginApp(t *testing.T) {
	c := fake(t, func(w http.ResponseWriter, r *http.Request) {
		var req broker.AppAuthRequest
		if json.NewDecoder(r.Body).Decode(&req) != nil || req.ClientSecret != "right" {
			answer(w, 401, "application/problem+json", `{"detail":"Authentication failed","error_code":"unauthorized"}`)
			return
		}
		answer(w, 200, "application/json", `{"access_token":"app-token","expires_in":1800,"token_type":"Bearer","scopes":[]}`)
	})
	appc, err := c.LoginApp(context.Background(), "cid", "right")
	require.NoError(t, err)
	assert.Equal(t, "app-token", appc.Token())
	_, err = c.LoginApp(context.Background(), "cid", "wrong-secret-hunter2")
	assert.True(t, client.IsStatus(err, http.StatusUnauthorized), "%v", err)
	assert.Equal(t, "app auth: POST /v1/app/auth: 401 Authentication failed (error_code unauthorized)", err.Error())
}

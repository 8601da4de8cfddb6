package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
)

// brokerClient speaks the AgentWrit API to one broker.
type brokerClient struct {
	url    string
	secret string
	http   *http.Client
	launch string // multi-use launch token of the last register call
	scope  []string
}

func (c *brokerClient) do(ctx context.Context, method, path, bearer string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, body)
	if err != nil {
		return err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

func (c *brokerClient) admin(ctx context.Context) (string, error) {
	var r struct {
		AccessToken string `json:"access_token"`
	}
	err := c.do(ctx, "POST", "/v1/admin/auth", "", map[string]string{"secret": c.secret}, &r)
	return r.AccessToken, err
}

// agent is a registered agent's identity and token.
type agent struct {
	ID    string
	Token string
	JTI   string
}

// register makes n agents with the given scope through one multi-use
// launch token, with a few registrations in flight at a time.
func (c *brokerClient) register(ctx context.Context, n int, scope []string) ([]agent, error) {
	admin, err := c.admin(ctx)
	if err != nil {
		return nil, err
	}
	var lt struct {
		LaunchToken string `json:"launch_token"`
	}
	err = c.do(ctx, "POST", "/v1/admin/launch-tokens", admin, map[string]any{
		"agent_name": "bench", "allowed_scope": scope, "max_ttl": 7200, "ttl": 3600, "single_use": false,
	}, &lt)
	if err != nil {
		return nil, err
	}
	c.launch, c.scope = lt.LaunchToken, scope
	agents := make([]agent, n)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	var mu sync.Mutex
	done := 0
	for i := range agents {
		g.Go(func() error {
			a, err := c.registerOne(ctx, lt.LaunchToken, scope)
			if err != nil {
				return err
			}
			agents[i] = a
			mu.Lock()
			done++
			if done%10000 == 0 {
				logf("registered %d/%d agents at %s", done, n, c.url)
			}
			mu.Unlock()
			return nil
		})
	}
	return agents, g.Wait()
}

func (c *brokerClient) registerOne(ctx context.Context, launch string, scope []string) (agent, error) {
	var ch struct {
		Nonce string `json:"nonce"`
	}
	if err := c.do(ctx, "GET", "/v1/challenge", "", nil, &ch); err != nil {
		return agent{}, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return agent{}, err
	}
	nb, err := hex.DecodeString(ch.Nonce)
	if err != nil {
		return agent{}, err
	}
	var reg struct {
		AgentID     string `json:"agent_id"`
		AccessToken string `json:"access_token"`
	}
	err = c.do(ctx, "POST", "/v1/register", "", map[string]any{
		"launch_token": launch, "nonce": ch.Nonce,
		"public_key": base64.StdEncoding.EncodeToString(pub),
		"signature":  base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)),
		"orch_id":    "bench", "task_id": "load", "requested_scope": scope,
	}, &reg)
	if err != nil {
		return agent{}, err
	}
	return agent{ID: reg.AgentID, Token: reg.AccessToken, JTI: jtiOf(reg.AccessToken)}, nil
}

// registerOneNew registers one more agent with the launch token and scope
// of the last register call.
func (c *brokerClient) registerOneNew(ctx context.Context) (agent, error) {
	return c.registerOne(ctx, c.launch, c.scope)
}

// jtiOf reads the jti claim of a token without verifying it.
func jtiOf(tok string) string { return claimsOf(tok).Jti }

// tokenClaims is what the harness reads back out of a token it was issued.
type tokenClaims struct {
	Sub    string   `json:"sub"`
	Jti    string   `json:"jti"`
	TaskID string   `json:"task_id"`
	OrchID string   `json:"orch_id"`
	Scope  []string `json:"scope"`
}

// claimsOf decodes the payload of tok without verifying it.
func claimsOf(tok string) tokenClaims {
	var c tokenClaims
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return c
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return c
	}
	_ = json.Unmarshal(b, &c)
	return c
}

// release hands a token back: from the moment this returns, the broker
// must refuse it.
func (c *brokerClient) release(ctx context.Context, tok string) error {
	return c.do(ctx, "POST", "/v1/token/release", tok, nil, nil)
}

// revoke revokes a token by jti with an admin token.
func (c *brokerClient) revoke(ctx context.Context, admin, jti string) error {
	return c.do(ctx, "POST", "/v1/revoke", admin, map[string]string{"level": "token", "target": jti}, nil)
}

package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// brokerClient is the harness's view of one broker: the Go client plus
// the admin secret and the launch token it registers agents with.
type brokerClient struct {
	*client.Client
	secret string
	launch string // multi-use launch token of the last register call
	scope  []string
}

// newBrokerClient's requests each come from another address, as agents'
// would, so the broker's per-IP limits do not cap what the harness
// registers.
func newBrokerClient(url, secret string) (*brokerClient, error) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: addressCycler()}}
	c, err := client.New(url, client.WithHTTPClient(hc))
	if err != nil {
		return nil, err
	}
	return &brokerClient{Client: c, secret: secret}, nil
}

func (c *brokerClient) admin(ctx context.Context) (*client.Client, error) {
	return c.LoginAdmin(ctx, c.secret)
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
	multi := false
	lt, err := admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{
		AgentName: "bench", AllowedScope: scope, MaxTTL: 7200, TTL: 3600, SingleUse: &multi,
	})
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
			a, err := c.registerOneNew(ctx)
			if err != nil {
				return err
			}
			agents[i] = a
			mu.Lock()
			done++
			if done%10000 == 0 {
				logf("registered %d/%d agents", done, n)
			}
			mu.Unlock()
			return nil
		})
	}
	return agents, g.Wait()
}

// registerOneNew registers one more agent with the launch token and scope
// of the last register call.
func (c *brokerClient) registerOneNew(ctx context.Context) (agent, error) {
	a, err := c.Register(ctx, c.launch, c.scope, client.WithOrchID("bench"), client.WithTaskID("load"))
	if err != nil {
		return agent{}, err
	}
	return agent{ID: a.ID, Token: a.Token, JTI: claimsOf(a.Token).Jti}, nil
}

// claimsOf decodes the claims of a token the harness was issued, without
// verifying them.
func claimsOf(tok string) *broker.Claims {
	u, err := broker.ParseUnverified(tok)
	if err != nil {
		panic(fmt.Sprintf("the broker issued a token that does not parse: %v", err))
	}
	return u.Claims
}

// release hands a token back: from the moment this returns, the broker
// must refuse it.
func (c *brokerClient) release(ctx context.Context, tok string) error {
	return c.WithToken(tok).Release(ctx)
}

// revoke revokes a token by jti as admin.
func (c *brokerClient) revoke(ctx context.Context, admin *client.Client, jti string) error {
	_, err := admin.Revoke(ctx, broker.LevelToken, jti)
	return err
}

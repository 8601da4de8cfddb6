package client_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

const testSecret = brokertest.AdminSecret

// newBroker starts a broker for one test.
func newBroker(t *testing.T) *brokertest.Server {
	t.Helper()
	return brokertest.New(t, brokertest.Options{})
}

// exampleBroker starts a broker for an example, which has no *testing.T.
func exampleBroker() (url, adminSecret string, stop func()) {
	s, err := brokertest.Start(brokertest.Options{})
	if err != nil {
		panic(err)
	}
	return s.URL, brokertest.AdminSecret, s.Close
}

// newClient makes a client for url or fails the test.
func newClient(t *testing.T, url string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(url, opts...)
	require.NoError(t, err)
	return c
}

// env is a broker with a client for it and an admin client.
type env struct {
	tb    *brokertest.Server
	c     *client.Client
	admin *client.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	tb := newBroker(t)
	c := newClient(t, tb.URL)
	admin, err := c.LoginAdmin(context.Background(), testSecret)
	require.NoError(t, err)
	return &env{tb: tb, c: c, admin: admin}
}

// launch makes a multi-use launch token allowing scope.
func (e *env) launch(t *testing.T, scope ...string) string {
	t.Helper()
	multi := false
	lt, err := e.admin.CreateLaunchToken(context.Background(), broker.LaunchTokenRequest{
		AgentName: "tester", AllowedScope: scope, SingleUse: &multi, TTL: 600,
	})
	require.NoError(t, err)
	return lt.LaunchToken
}

// register registers an agent with scope through a fresh launch token.
func (e *env) register(t *testing.T, scope ...string) *client.Agent {
	t.Helper()
	a, err := e.c.Register(context.Background(), e.launch(t, scope...), scope)
	require.NoError(t, err)
	return a
}

// fake serves h and returns a client for it.
func fake(t *testing.T, h http.HandlerFunc, opts ...client.Option) *client.Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return newClient(t, srv.URL, opts...)
}

// answer writes body with status and content type.
func answer(w http.ResponseWriter, status int, contentType, body string) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

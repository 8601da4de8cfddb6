package client_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

const testSecret = "client-test-admin-secret"

// testSecretHash is a low-cost bcrypt of testSecret, so brokers start fast.
var testSecretHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(testSecret), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
})

// testBroker is a real broker over a fresh database, served over HTTP.
type testBroker struct {
	URL    string
	Broker *broker.Broker
	Close  func()
}

// startBroker is the only place these tests and examples build a broker,
// so that a change to the broker's constructors is mended here alone. The
// database lives in dir.
func startBroker(dir string) (*testBroker, error) {
	store, err := broker.Open(context.Background(), filepath.Join(dir, "b.db"))
	if err != nil {
		return nil, err
	}
	b, err := broker.New(store, broker.Config{AdminSecret: testSecretHash()})
	if err != nil {
		store.Close()
		return nil, err
	}
	srv := httptest.NewServer(b)
	return &testBroker{URL: srv.URL, Broker: b, Close: func() { srv.Close(); store.Close() }}, nil
}

// newBroker starts a broker for one test.
func newBroker(t *testing.T) *testBroker {
	t.Helper()
	tb, err := startBroker(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(tb.Close)
	return tb
}

// exampleBroker starts a broker for an example, which has no *testing.T.
func exampleBroker() (url, adminSecret string, stop func()) {
	dir, err := os.MkdirTemp("", "client-example-")
	if err != nil {
		panic(err)
	}
	tb, err := startBroker(dir)
	if err != nil {
		panic(err)
	}
	return tb.URL, testSecret, func() { tb.Close(); os.RemoveAll(dir) }
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
	tb    *testBroker
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

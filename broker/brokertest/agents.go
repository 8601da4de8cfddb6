package brokertest

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// Client is a client of the server, with no token. A server that
// requires a client certificate (Options.TLS) is called in process,
// through its handler (Options.Wrap included), since the harness holds no
// client certificate: tests of mutual TLS still get agents and admin.
func (s *Server) Client(t testing.TB) *client.Client {
	t.Helper()
	opts := []client.Option{}
	switch {
	case s.TLS != nil && (s.TLS.ClientAuth == tls.RequireAnyClientCert || s.TLS.ClientAuth == tls.RequireAndVerifyClientCert):
		opts = append(opts, client.WithHTTPClient(&http.Client{Transport: inProcess{s.Config.Handler}}))
	case s.TLS != nil:
		opts = append(opts, client.WithHTTPClient(s.Server.Client()))
	}
	c, err := client.New(s.URL, opts...)
	if err != nil {
		t.Fatalf("brokertest: client: %v", err)
	}
	return c
}

// Admin is a client logged in as admin.
func (s *Server) Admin(t testing.TB) *client.Client {
	t.Helper()
	c, err := s.Client(t).LoginAdmin(context.Background(), AdminSecret)
	if err != nil {
		t.Fatalf("brokertest: admin login: %v", err)
	}
	return c
}

// AdminToken is a fresh admin token.
func (s *Server) AdminToken(t testing.TB) string {
	t.Helper()
	return s.Admin(t).Token()
}

// LaunchToken creates a launch token allowing scopes (defaults otherwise).
func (s *Server) LaunchToken(t testing.TB, scopes ...string) string {
	t.Helper()
	lt, err := s.Admin(t).CreateLaunchToken(context.Background(), broker.LaunchTokenRequest{AgentName: "brokertest", AllowedScope: scopes})
	if err != nil {
		t.Fatalf("brokertest: launch token: %v", err)
	}
	return lt.LaunchToken
}

// Agent registers an agent granted exactly scopes, through a launch
// token that allows exactly those.
func (s *Server) Agent(t testing.TB, scopes ...string) *client.Agent {
	t.Helper()
	a, err := s.Client(t).Register(context.Background(), s.LaunchToken(t, scopes...), scopes)
	if err != nil {
		t.Fatalf("brokertest: register: %v", err)
	}
	return a
}

// RevokeToken revokes one token by its jti, as admin.
func (s *Server) RevokeToken(t testing.TB, token string) {
	t.Helper()
	if _, err := s.Admin(t).Revoke(context.Background(), "token", JTI(t, token)); err != nil {
		t.Fatalf("brokertest: revoke: %v", err)
	}
}

// JTI reads a token's jti, without verifying it.
func JTI(t testing.TB, token string) string {
	t.Helper()
	u, err := broker.ParseUnverified(token)
	if err != nil {
		t.Fatalf("brokertest: jti: %v", err)
	}
	return u.Claims.Jti
}

// inProcess is a RoundTripper that serves each request with a handler,
// without a connection.
type inProcess struct{ h http.Handler }

func (p inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	if req.Body != nil {
		defer req.Body.Close()
	} else {
		r.Body = http.NoBody
	}
	r.RequestURI, r.RemoteAddr = req.URL.RequestURI(), "127.0.0.1:1"
	if r.Host == "" {
		r.Host = req.URL.Host
	}
	rec := httptest.NewRecorder()
	p.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

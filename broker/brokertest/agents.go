package brokertest

import (
	"context"
	"testing"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// Client is a client of the server, with no token.
func (s *Server) Client(t testing.TB) *client.Client {
	t.Helper()
	opts := []client.Option{}
	if s.TLS != nil {
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

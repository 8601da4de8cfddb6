// Package brokertest runs an in-process AgentWrit broker for tests: a
// fresh database, an HTTP server on a free loopback port, and the helpers
// tests of every package need (an admin client, a registered agent).
package brokertest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// AdminSecret is the admin secret of every test broker.
const AdminSecret = "brokertest-admin-secret"

// AdminSecretHash is a cheap (bcrypt MinCost) hash of AdminSecret, so
// tests do not pay cost 12 for every broker they start.
var AdminSecretHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(AdminSecret), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
})

// Open opens a Store on the database dsn names: a file path or a
// postgres:// URL.
func Open(dsn string) (*broker.Store, error) {
	db, err := storage.Open(context.Background(), dsn, storage.Options{})
	if err != nil {
		return nil, fmt.Errorf("brokertest: open %s: %w", storage.Redact(dsn), err)
	}
	s, err := broker.NewStore(context.Background(), db, broker.StoreOptions{})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("brokertest: store: %w", err)
	}
	return s, nil
}

// OpenStore is Open for a test; "" means a fresh SQLite file in t's temp
// dir. The store is closed when t ends.
func OpenStore(t testing.TB, dsn string) *broker.Store {
	t.Helper()
	if dsn == "" {
		dsn = filepath.Join(t.TempDir(), "broker.db")
	}
	s, err := Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Options configure Start.
type Options struct {
	// Database is the dsn of Open; "" means a fresh SQLite file in a
	// temporary folder removed by Close.
	Database string
	// Store, when set, is used instead of opening Database (and is not
	// closed by Close).
	Store *broker.Store
	// Config changes the broker's configuration (AdminSecret is preset).
	Config func(*broker.Config)
	// TLS serves over TLS with this configuration.
	TLS *tls.Config
	// Wrap wraps the broker's handler, e.g. to count or fault requests.
	Wrap func(http.Handler) http.Handler
}

// Server is a running test broker.
type Server struct {
	*httptest.Server
	Broker *broker.Broker
	Store  *broker.Store
	closed func()
}

// Start starts a broker on a free loopback port. Rate limits key on each
// request separately, so tests can log in as often as they like. Close
// stops it.
func Start(o Options) (*Server, error) {
	cleanup := func() {}
	store := o.Store
	if store == nil {
		dsn := o.Database
		if dsn == "" {
			dir, err := os.MkdirTemp("", "brokertest-")
			if err != nil {
				return nil, err
			}
			dsn = filepath.Join(dir, "broker.db")
			cleanup = func() { os.RemoveAll(dir) }
		}
		s, err := Open(dsn)
		if err != nil {
			cleanup()
			return nil, err
		}
		removeDir := cleanup
		store, cleanup = s, func() { s.Close(); removeDir() }
	}
	var seq atomic.Int64
	cfg := broker.Config{
		AdminSecret: AdminSecretHash(),
		ClientIP:    func(*http.Request) string { return "brokertest-" + strconv.FormatInt(seq.Add(1), 10) },
	}
	if o.Config != nil {
		o.Config(&cfg)
	}
	b, err := broker.New(store, cfg)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("brokertest: broker: %w", err)
	}
	var h http.Handler = b
	if o.Wrap != nil {
		h = o.Wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	if o.TLS != nil {
		srv.TLS = o.TLS
		srv.StartTLS()
	} else {
		srv.Start()
	}
	return &Server{Server: srv, Broker: b, Store: store, closed: sync.OnceFunc(func() { srv.Close(); cleanup() })}, nil
}

// Close stops the server and closes what Start opened.
func (s *Server) Close() { s.closed() }

// New is Start for a test: it fails t on error and closes when t ends.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

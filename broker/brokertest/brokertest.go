// Package brokertest runs an in-process AgentWrit broker for tests: a
// fresh database, an HTTP server on a free loopback port, and the helpers
// tests of every package need (an admin token, a registered agent).
package brokertest

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
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

// OpenStore opens a Store on the database dsn names (a file path, or a
// postgres:// URL); "" means a fresh SQLite file in t's temp dir. It is
// closed when t ends.
func OpenStore(t testing.TB, dsn string) *broker.Store {
	t.Helper()
	if dsn == "" {
		dsn = filepath.Join(t.TempDir(), "broker.db")
	}
	db, err := storage.Open(context.Background(), dsn, storage.Options{})
	if err != nil {
		t.Fatalf("brokertest: open %s: %v", storage.Redact(dsn), err)
	}
	s, err := broker.NewStore(context.Background(), db, broker.StoreOptions{})
	if err != nil {
		db.Close()
		t.Fatalf("brokertest: store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Options configure New.
type Options struct {
	// Database is the dsn of OpenStore ("" for a fresh SQLite file).
	Database string
	// Store, when set, is used instead of opening Database.
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
}

// New starts a broker on a free loopback port; it stops when t ends. Rate
// limits key on each request separately, so tests can log in as often as
// they like.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	store := o.Store
	if store == nil {
		store = OpenStore(t, o.Database)
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
		t.Fatalf("brokertest: broker: %v", err)
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
	t.Cleanup(srv.Close)
	return &Server{Server: srv, Broker: b, Store: store}
}

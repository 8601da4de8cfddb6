package remote

// Helpers for local mode's tests: this project's broker (brokertest) with
// a hand on its revocation feed.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// localTimeout bounds the gateway's calls in these tests: the app login
// is a bcrypt at cost 12, slow under the race detector.
const localTimeout = 10 * time.Second

// feedBroker is a real broker whose requests are counted by route, whose
// feed streams can be cut, muted (connected, but nothing arrives) or
// refused, and which can be taken down entirely (503 for everything).
type feedBroker struct {
	*brokertest.Server
	app *broker.AppCredentials

	validations, jwks, logins, feeds atomic.Int64
	lastEventID                      atomic.Value // string: the Last-Event-ID of the latest stream
	muted, refuseFeed, down          atomic.Bool
	dropped                          atomic.Int64 // revocation events swallowed while muted

	mu      sync.Mutex
	streams map[*context.CancelFunc]struct{}
}

// newFeedBroker starts a broker as o says and registers an app that may
// read its feed.
func newFeedBroker(t testing.TB, o brokertest.Options) *feedBroker {
	t.Helper()
	fb := &feedBroker{streams: map[*context.CancelFunc]struct{}{}}
	fb.lastEventID.Store("")
	o.Wrap = fb.wrap
	fb.Server = brokertest.New(t, o)
	fb.app = fb.newApp(t, int64(broker.DefaultAppTokenTTL/time.Second))
	return fb
}

// newApp registers an app whose ceiling holds scopes (by default
// broker.FeedScope), straight into the database: with a bcrypt hash of the
// cheapest cost, as brokertest does for the admin secret, because the
// broker's own (cost 12, for every login) is slow under the race detector.
func (fb *feedBroker) newApp(t testing.TB, ttl int64, scopes ...string) *broker.AppCredentials {
	t.Helper()
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	id, secret := hex.EncodeToString(rnd[:4]), hex.EncodeToString(rnd[4:])+"-secret"
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
	require.NoError(t, err)
	if len(scopes) == 0 {
		scopes = []string{broker.FeedScope}
	}
	now := broker.WholeSeconds(time.Now())
	app := &broker.App{AppID: "app-gw-" + id, Name: "gw-" + id, ClientID: "gw-" + id, Scopes: scopes,
		TokenTTL: ttl, Status: broker.AppActive, CreatedAt: now, UpdatedAt: now, SecretHash: string(hash), CreatedBy: "test"}
	require.NoError(t, fb.Store.Database().InsertApp(context.Background(), app))
	return &broker.AppCredentials{AppID: app.AppID, ClientID: app.ClientID, ClientSecret: secret, Scopes: app.Scopes, TokenTTL: ttl}
}

func (fb *feedBroker) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fb.down.Load() {
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case validatePath:
			fb.validations.Add(1)
		case "/.well-known/jwks.json":
			fb.jwks.Add(1)
		case "/v1/app/auth":
			fb.logins.Add(1)
		case "/v1/revocations":
			if fb.refuseFeed.Load() {
				http.Error(w, "feed refused for the test", http.StatusServiceUnavailable)
				return
			}
			fb.feeds.Add(1)
			fb.lastEventID.Store(r.Header.Get("Last-Event-ID"))
			ctx, cancel := context.WithCancel(r.Context())
			fb.mu.Lock()
			fb.streams[&cancel] = struct{}{}
			fb.mu.Unlock()
			defer func() {
				fb.mu.Lock()
				delete(fb.streams, &cancel)
				fb.mu.Unlock()
				cancel()
			}()
			w, r = &mutable{ResponseWriter: w, fb: fb}, r.WithContext(ctx)
		}
		h.ServeHTTP(w, r)
	})
}

// cut ends every open feed stream, as a broken connection would.
func (fb *feedBroker) cut() {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	for cancel := range fb.streams {
		(*cancel)()
	}
}

// open is the number of feed streams being served.
func (fb *feedBroker) open() int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return len(fb.streams)
}

// mutable is a feed stream's writer that swallows what the broker sends
// while the broker is muted.
type mutable struct {
	http.ResponseWriter
	fb *feedBroker
}

func (m *mutable) Write(p []byte) (int, error) {
	if m.fb.muted.Load() {
		m.fb.dropped.Add(int64(bytes.Count(p, []byte("event: revocation"))))
		return len(p), nil
	}
	return m.ResponseWriter.Write(p)
}

func (m *mutable) Flush() { m.ResponseWriter.(http.Flusher).Flush() }

// options are local-mode Options for this broker and its app.
func (fb *feedBroker) options(o Options) Options {
	o.URL, o.Mode, o.ClientID, o.ClientSecret = fb.URL, ModeLocal, fb.app.ClientID, fb.app.ClientSecret
	if o.Timeout == 0 {
		o.Timeout = localTimeout
	}
	return o
}

// validator is a local-mode Validator of this broker, closed when the
// test ends.
func (fb *feedBroker) validator(t testing.TB, o Options) (*Validator, *recorder) {
	t.Helper()
	return newTestValidator(t, fb.options(o))
}

// agent registers an agent granted scopes and returns its client.
func (fb *feedBroker) agent(t testing.TB, scopes ...string) *client.Agent {
	t.Helper()
	return fb.Agent(t, scopes...)
}

// revoke revokes at level the target, through the broker's API.
func (fb *feedBroker) revoke(t *testing.T, level, target string) {
	t.Helper()
	_, err := fb.Admin(t).Revoke(context.Background(), level, target)
	require.NoError(t, err)
}

// waitSynced waits for v's first heartbeat.
func waitSynced(t testing.TB, v *Validator) {
	t.Helper()
	eventually(t, 30*time.Second, func() bool { return v.local.ready() == nil }, "feed synchronized")
}

// requireRevoked: refused as revoked, with the token's claims for the log.
func requireRevoked(t *testing.T, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.ErrorIs(t, err, broker.ErrRevoked, msg...)
	require.NotNil(t, c, msg...)
}

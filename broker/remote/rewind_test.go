package remote

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// switchable is the broker a gateway talks to, at one address: the one
// in front, or nobody (503) while it is down.
type switchable struct {
	h    atomic.Pointer[http.Handler]
	down atomic.Bool
}

func (s *switchable) set(h http.Handler) { s.h.Store(&h) }

func (s *switchable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.down.Load() {
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
		return
	}
	(*s.h.Load()).ServeHTTP(w, r)
}

// insertFeedApp stores an app that may read the feed, with a cheap bcrypt
// hash for the race detector's sake, and returns its client ID and secret.
func insertFeedApp(t *testing.T, db broker.Database) (id, secret string) {
	t.Helper()
	secret = "restore-gateway-secret"
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
	require.NoError(t, err)
	now := broker.WholeSeconds(time.Now())
	app := &broker.App{AppID: "app-restore", Name: "restore", ClientID: "restore", Scopes: []string{broker.FeedScope},
		TokenTTL: 600, Status: broker.AppActive, CreatedAt: now, UpdatedAt: now, SecretHash: string(hash), CreatedBy: "test"}
	require.NoError(t, db.InsertApp(context.Background(), app))
	return app.ClientID, secret
}

// backupSQLite copies the database at path to dst while it is in use, as
// `sqlite3 broker.db ".backup dst"` would.
func backupSQLite(t *testing.T, path, dst string) {
	t.Helper()
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	defer raw.Close()
	_, err = raw.Exec(`VACUUM INTO ?`, dst)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dst, 0o600))
}

// TestLocalBrokerRestoredFromBackup: the broker is restored from a backup
// older than what the gateway has followed, and numbers new revocations
// again from the backup's newest one, below the gateway's sequence number.
// The gateway notices when it resumes, whether the broker's feed says so
// (its newest revocation is below the resume position) or its own check
// does (the broker has nothing, or another revocation, where the gateway's
// last one was), follows the feed again from the start, enforces the
// renumbered revocations and keeps those the restore lost (fail closed).
func TestLocalBrokerRestoredFromBackup(t *testing.T) {
	for _, c := range []struct {
		name  string
		after int // revocations made on the restored broker before the gateway reconnects
	}{
		{"feed says behind", 1},
		{"nothing at the gateway's last", 3},
		{"another revocation at the gateway's last", 6},
	} {
		t.Run(c.name, func(t *testing.T) { testRestoredFromBackup(t, c.after) })
	}
}

func testRestoredFromBackup(t *testing.T, after int) {
	ctx := context.Background()
	dir := t.TempDir()
	path, backup := filepath.Join(dir, "broker.db"), filepath.Join(dir, "backup.db")
	front := &switchable{}
	wrap := func(h http.Handler) http.Handler { front.set(h); return front }
	old := brokertest.New(t, brokertest.Options{Database: path, Wrap: wrap})
	id, secret := insertFeedApp(t, old.Store.Database())
	// revoke revokes through s's API and returns s's newest sequence number.
	revoke := func(s *brokertest.Server, level, target string) int64 {
		t.Helper()
		_, err := s.Admin(t).Revoke(ctx, level, target)
		require.NoError(t, err)
		head, err := s.Store.Database().RevocationHead(ctx)
		require.NoError(t, err)
		return head
	}
	const scope = "read:orders:42"
	early, lost, renumbered, kept := old.Agent(t, scope), old.Agent(t, scope), old.Agent(t, scope), old.Agent(t, scope)
	v, _ := newTestValidator(t, Options{URL: old.URL, Mode: ModeLocal, ClientID: id, ClientSecret: secret, Timeout: localTimeout})
	waitSynced(t, v)

	revoke(old, broker.LevelAgent, early.ID)
	backupSQLite(t, path, backup)
	revoke(old, broker.LevelAgent, lost.ID)
	var newest int64
	for i := range 3 {
		newest = revoke(old, broker.LevelToken, fmt.Sprintf("lost-%d", i))
	}
	eventuallyRefused(t, v, lost.Token, requireRevoked, "revoked before the restore")
	eventually(t, 10*time.Second, func() bool { return v.local.f.index.Seq() == newest }, "the gateway has every revocation")

	// The broker stops, and starts again on the backup.
	front.down.Store(true)
	old.Broker.Close()
	var restoredHandler http.Handler
	restored := brokertest.New(t, brokertest.Options{Database: backup, Wrap: func(h http.Handler) http.Handler {
		restoredHandler = h
		return h
	}})
	r := revoke(restored, broker.LevelAgent, renumbered.ID)
	require.Less(t, r, newest, "the restored broker numbers anew, below the gateway")
	for i := 1; i < after; i++ {
		r = revoke(restored, broker.LevelToken, fmt.Sprintf("after-the-restore-%d", i))
	}
	t.Logf("the gateway is at %d, the restored broker at %d", newest, r)
	front.set(restoredHandler)
	front.down.Store(false)

	eventuallyRefused(t, v, renumbered.Token, requireRevoked, "a revocation renumbered by the restore")
	for _, a := range []struct {
		name, token string
	}{{"the revocation in the backup", early.Token}, {"the revocation the restore lost", lost.Token}} {
		c, err := v.Validate(ctx, a.token)
		requireRevoked(t, c, err, a.name+" stays in force")
	}
	c, err := v.Validate(ctx, kept.Token)
	requireValid(t, kept.Token, c, err, "never revoked")

	// And it follows on in the restored broker's numbering.
	revoke(restored, broker.LevelAgent, kept.ID)
	eventuallyRefused(t, v, kept.Token, requireRevoked, "revoked after the gateway started over")
}

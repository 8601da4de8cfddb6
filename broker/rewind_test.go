package broker_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/sqlite"
)

// A database restored from an older backup numbers new revocations again
// from its own newest one, below what a running replica has applied. The
// replica must notice, read every revocation again (keeping those it
// holds: fail closed) and enforce the renumbered ones, which reading on
// from its own sequence number would skip.

// rewindDB is a database two replicas share, with a hand on its
// revocations that a restore from an older backup would have.
type rewindDB struct {
	mine, other broker.Database // the replica under test's handle, and another replica's
	// rewind deletes the revocations after seq and makes the next one
	// seq+1, as restoring a backup taken at seq would.
	rewind func(t *testing.T, seq int64)
}

// sharedSQLite is an SQLite database that says it is shared, so that the
// Store follows it as it follows PostgreSQL: the test's other handle
// writes to the file behind this one's back.
type sharedSQLite struct{ broker.Database }

func (s sharedSQLite) Info() broker.DatabaseInfo {
	i := s.Database.Info()
	i.Shared = true
	return i
}

func rewindSQLite(t *testing.T) rewindDB {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	open := func() broker.Database {
		db, err := sqlite.Open(ctx, path, sqlite.Options{})
		require.NoError(t, err)
		return db
	}
	mine, other := open(), open()
	t.Cleanup(func() { other.Close() })
	return rewindDB{mine: sharedSQLite{mine}, other: other, rewind: func(t *testing.T, seq int64) {
		raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
		require.NoError(t, err)
		defer raw.Close()
		_, err = raw.Exec(`DELETE FROM revocations WHERE id > ?`, seq)
		require.NoError(t, err)
		_, err = raw.Exec(`UPDATE sqlite_sequence SET seq = ? WHERE name = 'revocations'`, seq)
		require.NoError(t, err)
	}}
}

func rewindPostgres(t *testing.T) rewindDB {
	ctx := context.Background()
	dsn := brokertest.PostgresDSN(t)
	open := func() broker.Database {
		db, err := storage.Open(ctx, dsn, storage.Options{})
		require.NoError(t, err)
		return db
	}
	mine, other := open(), open()
	t.Cleanup(func() { other.Close() })
	return rewindDB{mine: mine, other: other, rewind: func(t *testing.T, seq int64) {
		conn, err := pgx.Connect(ctx, dsn)
		require.NoError(t, err)
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, `DELETE FROM revocations WHERE id > $1`, seq)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `UPDATE counters SET value = $1 WHERE name = 'revocation'`, seq)
		require.NoError(t, err)
	}}
}

// syncBuffer is a log destination safe for the Store's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStoreRevocationSequenceGoesBack(t *testing.T) {
	for _, c := range []struct {
		name string
		db   func(*testing.T) rewindDB
	}{{"sqlite", rewindSQLite}, {"postgres", rewindPostgres}} {
		t.Run(c.name, func(t *testing.T) { testRevocationSequenceGoesBack(t, c.db(t)) })
	}
}

func testRevocationSequenceGoesBack(t *testing.T, db rewindDB) {
	ctx := context.Background()
	var logs syncBuffer
	store, err := broker.NewStore(ctx, db.mine, broker.StoreOptions{
		CatchUpInterval: 50 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	srv := brokertest.New(t, brokertest.Options{Store: store})
	scopes := []string{"read:data:*"}
	early, lost, renumbered, kept := srv.Agent(t, scopes...), srv.Agent(t, scopes...), srv.Agent(t, scopes...), srv.Agent(t, scopes...)

	// Another replica revokes; this one follows.
	backup, err := db.other.Revoke(ctx, broker.LevelAgent, early.ID, time.Now())
	require.NoError(t, err)
	_, err = db.other.Revoke(ctx, broker.LevelAgent, lost.ID, time.Now())
	require.NoError(t, err)
	var newest broker.Revocation
	for i := range 5 {
		newest, err = db.other.Revoke(ctx, broker.LevelToken, fmt.Sprintf("padding-%d", i), time.Now())
		require.NoError(t, err)
	}
	awaitRefusal(t, srv, lost.Token, time.Now())

	// Restored from the backup taken after the first revocation: the
	// second and the padding are gone, and the next revocation is
	// numbered right after the first, below what this replica has seen.
	db.rewind(t, backup.Seq)
	r, err := db.other.Revoke(ctx, broker.LevelAgent, renumbered.ID, time.Now())
	require.NoError(t, err)
	require.Equal(t, backup.Seq+1, r.Seq, "the restored database numbers anew")
	require.Less(t, r.Seq, newest.Seq, "below the replica's sequence")

	awaitRefusal(t, srv, renumbered.Token, time.Now())
	for _, a := range []struct {
		name, token string
	}{{"the revocation in the backup", early.Token}, {"the revocation the restore lost", lost.Token}} {
		_, err := srv.Broker.Verify(ctx, a.token)
		require.ErrorIs(t, err, broker.ErrRevoked, "%s stays in force", a.name)
	}
	_, err = srv.Broker.Verify(ctx, kept.Token)
	require.NoError(t, err, "what was never revoked is allowed")
	require.Contains(t, logs.String(), "revocation sequence went back")

	// Followed on from the database's sequence, not the old one.
	next, err := db.other.Revoke(ctx, broker.LevelAgent, kept.ID, time.Now())
	require.NoError(t, err)
	require.Less(t, next.Seq, newest.Seq)
	awaitRefusal(t, srv, kept.Token, time.Now())
}

// TestStoreRevocationSequenceOvertaken: a restored database whose new
// revocations have overtaken the replica's sequence number before it
// looked (its head is above it again) is noticed too, because the
// revocation at that number is another one. The store here catches up
// only when told, through its own handle.
func TestStoreRevocationSequenceOvertaken(t *testing.T) {
	ctx := context.Background()
	db := rewindSQLite(t)
	store, err := broker.NewStore(ctx, db.mine, broker.StoreOptions{CatchUpInterval: time.Hour, MaxStaleness: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	srv := brokertest.New(t, brokertest.Options{Store: store})
	scopes := []string{"read:data:*"}
	lost, renumbered := srv.Agent(t, scopes...), srv.Agent(t, scopes...)
	triggers := 0
	catchUp := func() broker.Revocation {
		triggers++
		r, err := db.mine.Revoke(ctx, broker.LevelToken, fmt.Sprintf("trigger-%d", triggers), time.Now())
		require.NoError(t, err)
		return r
	}

	backup := catchUp()
	_, err = db.other.Revoke(ctx, broker.LevelAgent, lost.ID, time.Now())
	require.NoError(t, err)
	seen := catchUp()
	awaitRefusal(t, srv, lost.Token, time.Now())

	db.rewind(t, backup.Seq)
	r, err := db.other.Revoke(ctx, broker.LevelAgent, renumbered.ID, time.Now())
	require.NoError(t, err)
	require.Less(t, r.Seq, seen.Seq)
	for i := range 3 {
		r, err = db.other.Revoke(ctx, broker.LevelToken, fmt.Sprintf("after-the-restore-%d", i), time.Now())
		require.NoError(t, err)
	}
	require.Greater(t, r.Seq, seen.Seq, "the database's head is past the replica's sequence number again")
	catchUp()
	awaitRefusal(t, srv, renumbered.Token, time.Now())
	_, err = srv.Broker.Verify(ctx, lost.Token)
	require.ErrorIs(t, err, broker.ErrRevoked, "the revocation the restore lost stays in force")
}

// TestFeedStartsOverBehindTheDatabase: a feed client that resumes from a
// sequence number the database no longer reaches gets a reset event and
// every revocation again, and a stream that is open when the database
// goes back is started over the same way when the next revocation wakes
// it, because the revocation it sent last is no longer there.
func TestFeedStartsOverBehindTheDatabase(t *testing.T) {
	ctx := context.Background()
	db := rewindSQLite(t)
	store, err := broker.NewStore(ctx, db.mine, broker.StoreOptions{CatchUpInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	srv := brokertest.New(t, brokertest.Options{Store: store})
	reader := feedClient(t, srv)

	first, err := db.other.Revoke(ctx, broker.LevelToken, "first", time.Now())
	require.NoError(t, err)
	var newest broker.Revocation
	for i := range 3 {
		newest, err = db.other.Revoke(ctx, broker.LevelToken, fmt.Sprintf("lost-%d", i), time.Now())
		require.NoError(t, err)
	}
	db.rewind(t, first.Seq)
	second, err := db.other.Revoke(ctx, broker.LevelToken, "second", time.Now())
	require.NoError(t, err)
	require.Less(t, second.Seq, newest.Seq)

	// Resuming after the newest, which the database no longer reaches.
	evs, done, stop := openFeed(reader, newest.Seq)
	t.Cleanup(stop)
	reset := nextFeedEvent(t, evs, done)
	require.Equal(t, client.EventReset, reset.Type)
	require.Equal(t, newest.Seq, reset.After)
	require.Equal(t, second.Seq, reset.Head)
	for _, want := range []broker.Revocation{first, second} {
		ev := nextFeedEvent(t, evs, done)
		require.Equal(t, client.EventRevocation, ev.Type)
		require.Equal(t, want, ev.Revocation)
	}
	require.Equal(t, client.EventHeartbeat, nextFeedEvent(t, evs, done).Type)
	stop()

	// Open while the database goes back.
	evs, done, stop = openFeed(reader, second.Seq)
	t.Cleanup(stop)
	require.Equal(t, client.EventHeartbeat, nextFeedEvent(t, evs, done).Type)
	db.rewind(t, 0)
	fresh, err := db.other.Revoke(ctx, broker.LevelToken, "after-the-restore", time.Now())
	require.NoError(t, err)
	require.Equal(t, int64(1), fresh.Seq)
	for deadline := time.Now().Add(30 * time.Second); ; {
		ev := nextFeedEvent(t, evs, done)
		if ev.Type == client.EventHeartbeat {
			require.Less(t, time.Now(), deadline, "the open stream was not started over")
			continue
		}
		require.Equal(t, client.EventReset, ev.Type, "the stream starts over")
		require.Equal(t, second.Seq, ev.After)
		break
	}
	ev := nextFeedEvent(t, evs, done)
	require.Equal(t, client.EventRevocation, ev.Type)
	require.Equal(t, fresh, ev.Revocation)
}

// feedClient is a client of srv's feed: an app whose ceiling holds
// broker.FeedScope, logged in. The app is stored with a cheap bcrypt hash,
// as brokertest's admin secret is, for the race detector's sake.
func feedClient(t *testing.T, srv *brokertest.Server) *client.Client {
	t.Helper()
	ctx := context.Background()
	hash, err := bcrypt.GenerateFromPassword([]byte("feed-secret"), bcrypt.MinCost)
	require.NoError(t, err)
	now := broker.WholeSeconds(time.Now())
	app := &broker.App{AppID: "app-feed", Name: "feed", ClientID: "feed", Scopes: []string{broker.FeedScope},
		TokenTTL: 600, Status: broker.AppActive, CreatedAt: now, UpdatedAt: now, SecretHash: string(hash), CreatedBy: "test"}
	require.NoError(t, srv.Store.Database().InsertApp(ctx, app))
	res, err := srv.Client(t).AppAuth(ctx, "feed", "feed-secret")
	require.NoError(t, err)
	return srv.Client(t).WithToken(res.AccessToken)
}

// openFeed reads c's feed after seq until stop.
func openFeed(c *client.Client, after int64) (events <-chan client.FeedEvent, done <-chan error, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	evs, errc := make(chan client.FeedEvent, 100), make(chan error, 1)
	go func() {
		errc <- c.Revocations(ctx, after, func(ev client.FeedEvent) error { evs <- ev; return nil })
	}()
	return evs, errc, cancel
}

// nextFeedEvent is the stream's next event, bounded.
func nextFeedEvent(t *testing.T, evs <-chan client.FeedEvent, done <-chan error) client.FeedEvent {
	t.Helper()
	select {
	case ev := <-evs:
		return ev
	case err := <-done:
		t.Fatalf("the stream ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no feed event")
	}
	return client.FeedEvent{}
}

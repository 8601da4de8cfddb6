package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/postgres"
)

// holdRevocationLock takes the revocation counter's lock on another
// connection, as a client hung inside a revocation would, until release.
func holdRevocationLock(t *testing.T, dsn string) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := admin(t, dsn).Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT FROM counters WHERE name = 'revocation' FOR UPDATE`)
	require.NoError(t, err)
	return func() { require.NoError(t, tx.Rollback(ctx)) }
}

// waitForBackend polls pg_stat_activity of the test database until a
// backend matches cond, and returns its pid.
func waitForBackend(t *testing.T, conn *pgx.Conn, cond string) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pid int
		err := conn.QueryRow(context.Background(), `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND `+cond+` LIMIT 1`).Scan(&pid)
		if err == nil {
			return pid
		}
		require.ErrorIs(t, err, pgx.ErrNoRows)
		if time.Now().After(deadline) {
			t.Fatalf("no backend with %s", cond)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func terminate(t *testing.T, conn *pgx.Conn, pid int) {
	t.Helper()
	var ok bool
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT pg_terminate_backend($1)`, pid).Scan(&ok))
	require.True(t, ok)
}

// TestStatementTimeout: a statement stuck behind a lock is canceled by
// the server after StatementTimeout, as ErrUnavailable, and nothing is
// left behind.
func TestStatementTimeout(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	// 1 s, not less: the same bound applies to a transaction left idle,
	// and a loaded CI machine can pause a test client for 100 ms.
	db := open(t, dsn, postgres.Options{StatementTimeout: time.Second})
	ctx := context.Background()
	release := holdRevocationLock(t, dsn)
	_, err := db.Revoke(ctx, broker.LevelToken, "stuck", time.Now())
	require.ErrorIs(t, err, broker.ErrUnavailable)
	require.ErrorContains(t, err, "statement timeout")
	release()
	r, err := db.Revoke(ctx, broker.LevelToken, "stuck", time.Now())
	require.NoError(t, err)
	require.EqualValues(t, 1, r.Seq, "the timed-out revocation consumed no number")
}

// TestConnectionLost: a connection killed in the middle of a statement
// is ErrUnavailable; the pool replaces it.
func TestConnectionLost(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	db := open(t, dsn, postgres.Options{})
	ctx := context.Background()
	release := holdRevocationLock(t, dsn)
	done := make(chan error, 1)
	go func() {
		_, err := db.Revoke(ctx, broker.LevelToken, "lost", time.Now())
		done <- err
	}()
	terminate(t, admin(t, dsn), waitForBackend(t, admin(t, dsn), `wait_event_type = 'Lock'`))
	require.ErrorIs(t, <-done, broker.ErrUnavailable)
	release()
	_, err := db.Revoke(ctx, broker.LevelToken, "lost", time.Now())
	require.NoError(t, err)
}

// TestServerShutdown: every connection terminated by the server (as on a
// restart or failover) is ErrUnavailable for the statement that finds it
// dead, never a silent success or a different error.
func TestServerShutdown(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	db := open(t, dsn, postgres.Options{})
	ctx := context.Background()
	require.NoError(t, db.Ping(ctx))
	_, err := admin(t, dsn).Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	require.NoError(t, err)
	// The pool pings connections idle for a second before handing them
	// out; a fresh one may be found dead by the statement itself.
	for range 3 {
		if _, err := db.AuditHead(ctx); err != nil {
			require.ErrorIs(t, err, broker.ErrUnavailable)
		}
	}
	_, err = db.AuditHead(ctx)
	require.NoError(t, err, "the pool reconnects")
}

// TestClosed: after Close, every operation is ErrUnavailable.
func TestClosed(t *testing.T) {
	db := open(t, brokertest.PostgresDSN(t), postgres.Options{})
	require.NoError(t, db.Close())
	require.NoError(t, db.Close(), "Close is idempotent")
	ctx := context.Background()
	_, err := db.AuditHead(ctx)
	require.ErrorIs(t, err, broker.ErrUnavailable)
	require.ErrorIs(t, db.Ping(ctx), broker.ErrUnavailable)
	require.ErrorIs(t, db.AppendAudit(ctx, []broker.Event{{EventType: broker.EventAdminAuth}}, time.Now()), broker.ErrUnavailable)
	require.ErrorIs(t, db.Watch(ctx, func(broker.Change) {}), broker.ErrUnavailable)
}

// TestWatchReconnect: Watch returns ErrUnavailable when its connection is
// terminated, and the next Watch hears changes again.
func TestWatchReconnect(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	db := open(t, dsn, postgres.Options{})
	a := admin(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const listening = `application_name = 'caddy-agentwrit watch' AND query LIKE 'LISTEN%' AND state = 'idle'`

	done := make(chan error, 1)
	go func() { done <- db.Watch(ctx, func(broker.Change) {}) }()
	first := waitForBackend(t, a, listening)
	terminate(t, a, first)
	select {
	case err := <-done:
		require.ErrorIs(t, err, broker.ErrUnavailable)
	case <-time.After(time.Minute):
		t.Fatal("Watch did not return when its connection was terminated")
	}

	got := make(chan broker.Change, 16)
	go func() { done <- db.Watch(ctx, func(c broker.Change) { got <- c }) }()
	waitForBackend(t, a, fmt.Sprintf("%s AND pid <> %d", listening, first))
	r, err := db.Revoke(context.Background(), broker.LevelTask, "after-reconnect", time.Now())
	require.NoError(t, err)
	select {
	case c := <-got:
		require.Equal(t, broker.Change{Kind: broker.ChangeRevocation, Seq: r.Seq}, c)
	case <-time.After(time.Minute):
		t.Fatal("no notice after reconnecting")
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

// TestRevocationNumbers: numbers are gap-free, and revoking again
// consumes none.
func TestRevocationNumbers(t *testing.T) {
	db := open(t, brokertest.PostgresDSN(t), postgres.Options{})
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0).UTC()
	for i := range 3 {
		for range 2 {
			r, err := db.Revoke(ctx, broker.LevelTask, fmt.Sprint("t", i), now)
			require.NoError(t, err)
			require.EqualValues(t, i+1, r.Seq)
		}
	}
	rev, err := db.DeregisterApp(ctx, "app-none", now)
	require.ErrorIs(t, err, broker.ErrNotFound)
	require.Zero(t, rev.Seq)
	r, err := db.Revoke(ctx, broker.LevelTask, "t3", now)
	require.NoError(t, err)
	require.EqualValues(t, 4, r.Seq, "a failed deregistration consumed no number")
}

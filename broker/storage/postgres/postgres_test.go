package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/postgres"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/storagetest"
)

// testConns keeps the tests' pools small: the server is shared.
const testConns = 5

func open(t testing.TB, dsn string, o postgres.Options) *postgres.DB {
	t.Helper()
	if o.MaxConns == 0 {
		o.MaxConns = testConns
	}
	db, err := postgres.Open(context.Background(), dsn, o)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// TestContract runs the suite with a second *DB on the same database as
// the other replica.
func TestContract(t *testing.T) {
	brokertest.PostgresAdmin(t)
	storagetest.Run(t, storagetest.Harness{
		Fresh: func(t *testing.T) (broker.Database, func(*testing.T) broker.Database) {
			dsn := brokertest.PostgresDSN(t)
			return open(t, dsn, postgres.Options{}), func(t *testing.T) broker.Database {
				return open(t, dsn, postgres.Options{})
			}
		},
	})
}

// admin is a plain connection to the test database, for doing to it what
// the broker never does.
func admin(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestMigrationRace: ten replicas starting at once on a fresh database
// all open it, and each migration is applied exactly once.
func TestMigrationRace(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			db, err := postgres.Open(context.Background(), dsn, postgres.Options{MaxConns: 2})
			if assert.NoError(t, err) {
				db.Close()
			}
		}()
	}
	close(start)
	wg.Wait()
	rows, err := admin(t, dsn).Query(context.Background(), `SELECT version FROM schema_migrations ORDER BY version`)
	require.NoError(t, err)
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	want := []int{}
	for v := range postgres.SchemaVersion {
		want = append(want, v+1)
	}
	require.Equal(t, want, versions)
}

// TestSchemaVersions: a database from a newer build is refused, read-only
// or not; read-only refuses an unmigrated database rather than migrate it.
func TestSchemaVersions(t *testing.T) {
	ctx := context.Background()
	dsn := brokertest.PostgresDSN(t)
	_, err := postgres.Open(ctx, dsn, postgres.Options{ReadOnly: true})
	require.ErrorContains(t, err, "open the database once read-write")

	open(t, dsn, postgres.Options{}).Close()
	ro := open(t, dsn, postgres.Options{ReadOnly: true})
	_, err = ro.RevocationsSince(ctx, 0, 10)
	require.NoError(t, err, "a read-only handle reads")
	_, err = ro.Revoke(ctx, broker.LevelToken, "x", time.Now())
	require.Error(t, err, "and writes nothing")
	require.NotErrorIs(t, err, broker.ErrUnavailable, "a refused write is not an outage")

	_, err = admin(t, dsn).Exec(ctx, `INSERT INTO schema_migrations(version) VALUES ($1)`, postgres.SchemaVersion+1)
	require.NoError(t, err)
	for _, o := range []postgres.Options{{}, {ReadOnly: true}} {
		_, err = postgres.Open(ctx, dsn, o)
		require.ErrorContains(t, err, "newer than this build")
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

const password = "Sup3r-Secret_PW"

// TestPasswordNeverShown: neither a malformed URL nor a server that cannot
// be reached puts the password in the error, in any form or wrapped
// value. It needs no server.
func TestPasswordNeverShown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := closedPort(t)
	for _, c := range []struct {
		dsn  string
		want error
	}{
		{"postgres://agent:" + password + "@" + addr + "/db?sslmode=disable", broker.ErrUnavailable},
		{"postgresql://agent:" + password + "@" + addr + "/db", broker.ErrUnavailable},
		{"postgres://agent@" + addr + "/db?sslmode=disable&password=" + password, broker.ErrUnavailable},
		{"postgres://agent:" + password + "@127.0.0.1:notaport/db", broker.ErrBadConfig},
		{"postgres://agent:" + password + "%zz@127.0.0.1/db", broker.ErrBadConfig},
		{"postgres://agent:" + password + "@127.0.0.1/db?sslmode=sometimes", broker.ErrBadConfig},
		{"postgres://agent:" + password + "@127.0.0.1/db?connect_timeout=soon", broker.ErrBadConfig},
		{"postgres://agent@127.0.0.1/db?password=" + password + "&sslmode=sometimes", broker.ErrBadConfig},
		{"postgres://agent:" + password + "@[::1/db", broker.ErrBadConfig},
	} {
		_, err := postgres.Open(ctx, c.dsn, postgres.Options{})
		require.ErrorIs(t, err, c.want, c.dsn)
		for _, text := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
			require.NotContains(t, text, password, c.dsn)
			require.NotContains(t, text, "Secret", c.dsn)
		}
		var ce *pgconn.ConnectError
		require.False(t, errors.As(err, &ce), "no wrapped connection config (it holds the password): %s", c.dsn)
		var pe *pgconn.ParseConfigError
		require.False(t, errors.As(err, &pe), "no wrapped URL: %s", c.dsn)
	}
}

// TestInfo: Info shows the URL without its password. (The test server
// trusts local connections, so the password is accepted and ignored.)
func TestInfo(t *testing.T) {
	u, err := url.Parse(brokertest.PostgresDSN(t))
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), password)
	info := open(t, u.String(), postgres.Options{}).Info()
	require.Equal(t, "postgres", info.Kind)
	require.True(t, info.Shared)
	u.User = url.User(u.User.Username())
	require.Equal(t, u.String(), info.Location)
}

// TestUnreachable: a server that refuses connections is ErrUnavailable,
// at once (a connect timeout bounds a server that does not answer).
func TestUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := postgres.Open(ctx, "postgres://agent@"+closedPort(t)+"/db?sslmode=disable", postgres.Options{})
	require.ErrorIs(t, err, broker.ErrUnavailable)
	require.NoError(t, ctx.Err())
}

// TestStorageOpen: storage.Open routes both URL schemes here.
func TestStorageOpen(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	for _, u := range []string{dsn, strings.Replace(dsn, "postgres://", "postgresql://", 1)} {
		db, err := storage.Open(context.Background(), u, storage.Options{MaxConns: 2, StatementTimeout: time.Second})
		require.NoError(t, err)
		require.Equal(t, "postgres", db.Info().Kind)
		require.NoError(t, db.Ping(context.Background()))
		require.NoError(t, db.Close())
	}
}

// TestOpenRefused: a server that answers but refuses the role or the
// database is a configuration error, not an outage to retry.
func TestOpenRefused(t *testing.T) {
	u, err := url.Parse(brokertest.PostgresAdmin(t))
	require.NoError(t, err)
	u.Path = "/agentwrit_test_no_such_database"
	_, err = postgres.Open(context.Background(), u.String(), postgres.Options{})
	require.ErrorIs(t, err, broker.ErrBadConfig)
	require.ErrorContains(t, err, "does not exist")
	require.NotErrorIs(t, err, broker.ErrUnavailable)
}

// TestBatchIsOneTransaction checks what the locking relies on: the
// statements of one batch sent on the pool share one (implicit)
// transaction, so a lock the first takes is held until the last commits;
// in every query mode, including the one advised behind a pooler.
func TestBatchIsOneTransaction(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	open(t, dsn, postgres.Options{})
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		db := open(t, dsn+"&default_query_exec_mode="+mode, postgres.Options{})
		var first, second int64
		b := &pgx.Batch{}
		b.Queue(`SELECT txid_current()`).QueryRow(func(r pgx.Row) error { return r.Scan(&first) })
		b.Queue(`SELECT txid_current()`).QueryRow(func(r pgx.Row) error { return r.Scan(&second) })
		require.NoError(t, db.Pool().SendBatch(context.Background(), b).Close())
		require.Equal(t, first, second, mode)
	}
}

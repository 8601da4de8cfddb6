package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// PostgresEnv names the environment variable holding the URL of a
// PostgreSQL server for tests, as a role that may create databases, e.g.
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable.
const PostgresEnv = "AGENTWRIT_TEST_POSTGRES"

// PostgresDSN returns the URL of a new, empty database on the server
// PostgresEnv names, dropped (connections and all) when t ends, or skips t
// when the variable is unset. Each call makes another database, so tests
// may run in parallel; names start with "agentwrit_test_", so leftovers of
// a killed run are easy to find.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	admin := PostgresAdmin(t)
	u, err := url.Parse(admin)
	if err != nil || !storage.IsURL(admin) {
		t.Fatalf("brokertest: %s is not a postgres:// URL", PostgresEnv)
	}
	var b [8]byte
	rand.Read(b[:])
	name := "agentwrit_test_" + hex.EncodeToString(b[:]) // [a-z0-9_]: safe as an identifier
	adminExec(t, admin, "CREATE DATABASE "+name)
	t.Cleanup(func() { adminExec(t, admin, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	u.Path = "/" + name
	return u.String()
}

// PostgresAdmin returns the URL PostgresEnv holds, or skips t when it is
// unset: for tests that need the server itself (PostgresDSN is the usual
// way in).
func PostgresAdmin(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(PostgresEnv)
	if admin == "" {
		t.Skip("set " + PostgresEnv + "=postgres://… to run the PostgreSQL tests")
	}
	return admin
}

// adminExec runs one statement on the admin URL's database.
func adminExec(t testing.TB, admin, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("brokertest: connect to %s: %v", storage.Redact(admin), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("brokertest: %s on %s: %v", sql, storage.Redact(admin), err)
	}
}

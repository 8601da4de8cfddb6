package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/sqlite"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/storagetest"
)

func open(t *testing.T, path string) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

func TestContract(t *testing.T) {
	storagetest.Run(t, storagetest.Harness{
		Fresh: func(t *testing.T) (broker.Database, func(*testing.T) broker.Database) {
			return open(t, filepath.Join(t.TempDir(), "broker.db")), nil
		},
	})
}

// TestOwnerOnly: the file, its WAL and SHM and the folder the broker
// creates are owner-only whatever the umask; a readable file is refused
// with the chmod that fixes it.
func TestOwnerOnly(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	dir := filepath.Join(t.TempDir(), "new", "agentwrit")
	path := filepath.Join(dir, "broker.db")
	db := open(t, path)
	_, err := db.Revoke(context.Background(), broker.LevelToken, "x", time.Now())
	require.NoError(t, err)
	mode := func(p string) os.FileMode {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		return fi.Mode().Perm()
	}
	require.Equal(t, os.FileMode(0o700), mode(dir))
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		require.Equal(t, os.FileMode(0o600), mode(p), p)
	}
	require.NoError(t, db.Close())

	require.NoError(t, os.Chmod(path, 0o644))
	_, err = sqlite.Open(context.Background(), path, sqlite.Options{})
	require.ErrorIs(t, err, broker.ErrBadConfig)
	require.ErrorContains(t, err, "chmod 600 "+path)
	require.NoError(t, os.Chmod(path, 0o600))
	// A WAL left behind readable (a copy, a crash) is refused too.
	require.NoError(t, os.WriteFile(path+"-wal", nil, 0o644))
	_, err = sqlite.Open(context.Background(), path, sqlite.Options{})
	require.ErrorContains(t, err, "chmod 600 "+path+"-wal")
}

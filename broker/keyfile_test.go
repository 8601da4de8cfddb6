package broker

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeyFileOwnerOnly: a key file the broker creates is 0600 whatever the
// umask, and one that others can read is refused with the chmod that
// fixes it.
func TestKeyFileOwnerOnly(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	path := filepath.Join(t.TempDir(), "signing.pem")
	k, err := LoadKeyFile(path)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	again, err := LoadKeyFile(path)
	require.NoError(t, err)
	require.Equal(t, k, again, "the same key on the next load")

	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		require.NoError(t, os.Chmod(path, mode))
		_, err := LoadKeyFile(path)
		require.ErrorIs(t, err, ErrBadConfig, "%04o", mode)
		require.ErrorContains(t, err, "chmod 600 "+path)
	}
}

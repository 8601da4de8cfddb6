package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/stretchr/testify/require"
)

// TestCommandRoutesRunningConfig reads the config from a stand-in for
// Caddy's admin API when --config is not given.
func TestCommandRoutesRunningConfig(t *testing.T) {
	t.Parallel()
	body, err := os.ReadFile(filepath.Join("testdata", "commands", "Caddyfile"))
	require.NoError(t, err)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": "Caddyfile"})
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		asked []string
	)
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(cfg)
	}))
	defer admin.Close()
	addr := strings.TrimPrefix(admin.URL, "http://")

	r := runCmd(t, "", "routes", "--address", addr, "GET", "/orders/42", "--json")
	requireOK(t, r)
	mu.Lock()
	require.Equal(t, []string{"GET /config/"}, asked)
	mu.Unlock()
	require.Contains(t, r.Stderr, "using the running config from http://"+addr+"/config/")
	var xs []routeExplanation
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &xs))
	require.Equal(t, []string{"read:orders:42"}, xs[0].Required)

	// A URL works as the address too.
	requireOK(t, runCmd(t, "", "routes", "--address", admin.URL, "GET", "/orders/42"))

	// Nothing listening: say what was tried and how to point elsewhere.
	admin.Close()
	r = runCmd(t, "", "routes", "--address", addr, "GET", "/")
	require.ErrorContains(t, r.Err, "no --config given, and the running config at "+addr+" could not be read")
	require.ErrorContains(t, r.Err, "--address")
	require.ErrorContains(t, r.Err, "--config <file>")
}

func TestCommandRoutesMissingFile(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "Caddyfile")
	r := runCmd(t, "", "routes", "--config", missing, "GET", "/")
	require.ErrorContains(t, r.Err, missing+" does not exist")
	require.ErrorContains(t, r.Err, "point --config at your Caddyfile")
}

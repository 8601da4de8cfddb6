package caddymodule_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/caddymodule/console"
)

// adaptSite adapts a Caddyfile whose one site holds body.
func adaptSite(body string) (string, error) {
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n\tadmin off\n}\nhttp://127.0.0.1:9 {\n"+body+"\n}\n"), nil)
	return string(cfg), err
}

func TestConsoleCaddyfile(t *testing.T) {
	t.Run("no argument: the embedded broker", func(t *testing.T) {
		cfg, err := adaptSite("\tagentwrit_console")
		require.NoError(t, err)
		require.Contains(t, cfg, `{"handler":"agentwrit_console"}`)
	})
	t.Run("a remote broker URL", func(t *testing.T) {
		cfg, err := adaptSite("\tagentwrit_console https://broker.internal:8443")
		require.NoError(t, err)
		require.Contains(t, cfg, `{"handler":"agentwrit_console","remote":"https://broker.internal:8443"}`)
	})
	t.Run("ordered beside agentwrit_broker without an order option", func(t *testing.T) {
		cfg, err := adaptSite("\thandle /console/* {\n\t\tagentwrit_console\n\t}\n\tagentwrit_broker")
		require.NoError(t, err)
		require.Contains(t, cfg, "agentwrit_console")
	})
	for _, bad := range []struct{ body, want string }{
		{"\tagentwrit_console a b", "agentwrit_console takes at most one argument"},
		{"\tagentwrit_console ftp://x", "must be http:// or https://"},
		{"\tagentwrit_console http://", "with a host"},
		{"\tagentwrit_console http://x/?a=1", "no query"},
		{"\tagentwrit_console {\n\t\tfoo\n\t}", "takes no block"},
	} {
		_, err := adaptSite(bad.body)
		require.ErrorContains(t, err, bad.want, bad.body)
	}
}

// TestConsoleInCaddy serves the console from a real Caddy: the page with
// its headers, and sign-in and a listing through the embedded broker.
func TestConsoleInCaddy(t *testing.T) {
	e := newEnv(t, tempDB(t))
	consolePort := freePort(t)
	remotePort := freePort(t)
	remote := brokertest.New(t, brokertest.Options{})
	cfg := e.caddyfile(gatewayRules) + fmt.Sprintf("http://127.0.0.1:%d {\n\tagentwrit_console\n}\nhttp://127.0.0.1:%d {\n\tagentwrit_console %s\n}\n",
		consolePort, remotePort, remote.URL)
	require.NoError(t, e.load(cfg))

	for port, secret := range map[int]string{consolePort: adminSecret, remotePort: brokertest.AdminSecret} {
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		resp, _ := call(t, "GET", base+"/", "", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, console.ContentSecurityPolicy, resp.Header.Get("Content-Security-Policy"))
		require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html"))

		resp, _ = call(t, "GET", base+"/v1/admin/status", "", nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the broker's authorization applies")
		require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))

		resp, m := call(t, "POST", base+"/v1/admin/auth", "", map[string]string{"secret": secret})
		require.Equal(t, http.StatusOK, resp.StatusCode, m)
		tok, _ := m["access_token"].(string)
		resp, m = call(t, "GET", base+"/v1/admin/agents?limit=50", tok, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, m)
		_, err := json.Marshal(m["agents"])
		require.NoError(t, err)

		resp, _ = call(t, "GET", base+"/v1/challenge", "", nil)
		require.Equal(t, http.StatusNotFound, resp.StatusCode, "only the console's routes are forwarded")
	}
}

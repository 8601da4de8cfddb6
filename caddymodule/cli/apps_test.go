package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

func TestCommandAppShowByName(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	requireOK(t, tb.admin("app", "register", "--name", "orders-svc", "--scope", "read:orders:*"))
	r := tb.admin("app", "show", "orders-svc", "--json")
	requireOK(t, r)
	var app broker.App
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &app))
	require.Equal(t, "orders-svc", app.Name)

	r = tb.admin("app", "show", app.AppID)
	requireOK(t, r)
	require.Regexp(t, `(?m)^name:\s+orders-svc$`, r.Stdout)

	r = tb.admin("app", "show", "no-such-app")
	require.ErrorContains(t, r.Err, "404 app not found")
}

// TestFindAppAmbiguous uses a stand-in broker, since the embedded one
// refuses a second app of the same name; another compatible broker might
// not.
func TestFindAppAmbiguous(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/admin/apps" {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"type":"urn:agentwrit:error:not_found","title":"Not Found","status":404,"detail":"app not found","error_code":"not_found"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(broker.AppList{Apps: []*broker.App{
			{AppID: "app-a-1", Name: "dup", Status: "active"},
			{AppID: "app-b-2", Name: "dup", Status: "inactive"},
			{AppID: "app-c-3", Name: "solo", Status: "active"},
		}, Total: 3})
	}))
	defer srv.Close()
	c, err := client.New(srv.URL)
	require.NoError(t, err)
	c = c.WithToken("admin")

	_, err = findApp(t.Context(), c, "dup")
	require.ErrorContains(t, err, `2 apps are named "dup"`)
	require.ErrorContains(t, err, "app-a-1 (active), app-b-2 (inactive)")
	a, err := findApp(t.Context(), c, "solo")
	require.NoError(t, err)
	require.Equal(t, "app-c-3", a.AppID)
}

package caddymodule

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
)

// TestRemoteLocalCaddyfile: the options of verify local, in the shape the
// documentation shows, and errors that name the line.
func TestRemoteLocalCaddyfile(t *testing.T) {
	h, err := parse(`broker http://broker.internal:8080 {
		verify        local
		client_id     {env.AGENTWRIT_GATEWAY_CLIENT_ID}
		client_secret {env.AGENTWRIT_GATEWAY_CLIENT_SECRET}
		max_staleness 3s
		fallback      validate
		client_call_rate 20
	}`)
	require.NoError(t, err)
	require.Equal(t, &RemoteBroker{URL: "http://broker.internal:8080", Verify: VerifyLocal,
		ClientID: "{env.AGENTWRIT_GATEWAY_CLIENT_ID}", ClientSecret: "{env.AGENTWRIT_GATEWAY_CLIENT_SECRET}",
		MaxStaleness: caddy.Duration(3 * time.Second), Fallback: VerifyValidate, ClientCallRate: 20}, h.Broker)

	h, err = parse("broker http://b {\n verify validate\n client_call_rate off\n}")
	require.NoError(t, err)
	require.Equal(t, &RemoteBroker{URL: "http://b", Verify: VerifyValidate, ClientCallRate: -1}, h.Broker)

	creds := "\n client_id gw\n client_secret hunter2-secret"
	requireParseErrors(t, map[string]string{
		"broker http://b {\n verify remote\n}":                                              "broker verify must be validate or local, not \"remote\", at Testfile:3",
		"broker http://b {\n verify\n}":                                                     "broker verify takes exactly one argument, at Testfile:3",
		"broker http://b {\n verify local\n}":                                               "needs client_id and client_secret",
		"broker http://b {\n verify local\n client_id gw\n}":                                "needs client_id and client_secret",
		"broker http://b {\n client_id gw\n}":                                               "apply only to verify local",
		"broker http://b {\n verify validate" + creds + "\n}":                               "apply only to verify local",
		"broker http://b {\n fallback validate\n}":                                          "apply only to verify local",
		"broker http://b {\n verify local" + creds + "\n max_staleness 2s\n}":               "broker max_staleness must be longer than the feed's heartbeat interval, 2s, not 2s, at Testfile:6",
		"broker http://b {\n verify local" + creds + "\n max_staleness soon\n}":             "broker max_staleness: time: invalid duration \"soon\", at Testfile:6",
		"broker http://b {\n verify local" + creds + "\n fallback always\n}":                "broker fallback must be validate or off, not \"always\", at Testfile:6",
		"broker http://b {\n client_call_rate 0\n}":                                         "broker client_call_rate must be a positive integer or off, not \"0\", at Testfile:3",
		"broker http://b {\n client_call_rate lots\n}":                                      "client_call_rate must be a positive integer or off",
		"broker http://b {\n verify local\n client_id gw\n client_secret hunter2 secret\n}": "broker client_secret takes exactly one argument, at Testfile:5",
		"broker http://b {\n verify local\n verify local\n}":                                "given twice",
	})
}

// TestRemoteLocalSecrets: a secret given as a placeholder stays one in the
// adapted JSON, is expanded at provision, and appears in no error.
func TestRemoteLocalSecrets(t *testing.T) {
	const secret = "6e1f0b-the-app-secret"
	t.Setenv("AGENTWRIT_TEST_CLIENT_ID", "gw-4f2a")
	t.Setenv("AGENTWRIT_TEST_CLIENT_SECRET", secret)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`{
	admin off
}
http://127.0.0.1:9 {
	agentwrit {
		broker http://broker.internal:8080 {
			verify        local
			client_id     {env.AGENTWRIT_TEST_CLIENT_ID}
			client_secret {env.AGENTWRIT_TEST_CLIENT_SECRET}
		}
		require GET /orders/{id} read:orders:{id}
	}
}
`), nil)
	require.NoError(t, err)
	require.Contains(t, string(cfg), `"client_secret":"{env.AGENTWRIT_TEST_CLIENT_SECRET}"`)
	require.NotContains(t, string(cfg), secret)

	rb := &RemoteBroker{URL: "http://broker.internal:8080", Verify: VerifyLocal,
		ClientID: "{env.AGENTWRIT_TEST_CLIENT_ID}", ClientSecret: "{env.AGENTWRIT_TEST_CLIENT_SECRET}"}
	o, err := rb.options()
	require.NoError(t, err)
	require.Equal(t, remote.ModeLocal, o.Mode)
	require.Equal(t, "gw-4f2a", o.ClientID)
	require.Equal(t, secret, o.ClientSecret)
	raw, err := json.Marshal(rb)
	require.NoError(t, err)
	require.NotContains(t, string(raw), secret)

	for _, c := range []struct {
		rb   RemoteBroker
		want string
	}{
		{RemoteBroker{URL: "http://b", Verify: "remote"}, `verify must be "validate" or "local"`},
		{RemoteBroker{URL: "http://b", Verify: VerifyLocal}, "needs client_id and client_secret"},
		{RemoteBroker{URL: "http://b", Verify: VerifyLocal, ClientID: "gw", ClientSecret: "{env.AGENTWRIT_TEST_UNSET}"}, "client_secret is empty once its placeholders are expanded"},
		{RemoteBroker{URL: "http://b", Verify: VerifyLocal, ClientID: "{env.AGENTWRIT_TEST_UNSET}", ClientSecret: secret}, "client_id is empty"},
		{RemoteBroker{URL: "http://b", ClientSecret: secret}, "client_secret applies only to verify local"},
		{RemoteBroker{URL: "http://b", Fallback: VerifyValidate}, "fallback applies only to verify local"},
		{RemoteBroker{URL: "http://b", MaxStaleness: caddy.Duration(time.Minute)}, "max_staleness applies only to verify local"},
		{RemoteBroker{URL: "http://b", Verify: VerifyLocal, ClientID: "gw", ClientSecret: secret, MaxStaleness: caddy.Duration(time.Second)}, "max_staleness must be longer"},
		{RemoteBroker{URL: "http://b", Verify: VerifyLocal, ClientID: "gw", ClientSecret: secret, Fallback: "sometimes"}, "fallback must be"},
		{RemoteBroker{URL: "http://b", ClientCallRate: -2}, "client_call_rate must be positive or off"},
	} {
		_, err := c.rb.newValidator(newCollectors().remote, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
		require.ErrorContains(t, err, c.want, "%+v", c.rb)
		require.NotContains(t, err.Error(), secret)
	}
	o, err = (&RemoteBroker{URL: "http://b", Verify: VerifyLocal, ClientID: "gw", ClientSecret: secret,
		MaxStaleness: caddy.Duration(3 * time.Second), Fallback: VerifyValidate, ClientCallRate: -1}).options()
	require.NoError(t, err)
	require.Equal(t, remote.Options{URL: "http://b", CacheTTL: remote.DefaultCacheTTL, NegativeCacheTTL: remote.DefaultNegativeCacheTTL,
		Mode: remote.ModeLocal, ClientID: "gw", ClientSecret: secret, MaxStaleness: 3 * time.Second, Fallback: true, ClientCallRate: -1}, o)
	require.False(t, strings.Contains(rb.Verify, secret))
}

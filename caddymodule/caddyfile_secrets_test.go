package caddymodule

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
)

// TestCaddyfileErrorsHideSecrets: a mistake in an option that holds a
// credential (admin_secret, client_secret, the database URL's password, a
// URL with user info) is reported by the option's name and what is wrong,
// never with the credential or a piece of it: such errors end up in logs,
// terminals and CI output.
func TestCaddyfileErrorsHideSecrets(t *testing.T) {
	secrets := []string{"s3cret-one", "s3cret-two", "Pw-Secret", "Extra-Secret", "Next-Line-Secret"}
	requireHidden := func(t *testing.T, err error, name, in string) {
		t.Helper()
		require.Error(t, err, in)
		require.Contains(t, err.Error(), name, "the error names the option: %s", in)
		for _, s := range secrets {
			require.NotContains(t, err.Error(), s, in)
		}
	}

	for in, name := range map[string]string{
		"agentwrit {\n\tadmin_secret s3cret-one s3cret-two\n}":                          "admin_secret",
		"agentwrit {\n\tdatabase postgres://u:Pw-Secret@h/db Extra-Secret\n}":           "database",
		"agentwrit {\n\tdatabase postgres://u:Pw Secret@h/db\n}":                        "database",
		"agentwrit {\n\tadmin_secret s3cret-one\n\tNext-Line-Secret\n}":                 "agentwrit option",
		"agentwrit {\n\tdatabase x.db {\n\t\tpool_size 2\n\t\tNext-Line-Secret\n\t}\n}": "database option",
		"agentwrit {\n\tadmin_secret s3cret-one {\n\t\ts3cret-two\n\t}\n}":              "agentwrit option",
		"agentwrit s3cret-one {\n}":                                                     "agentwrit global option",
	} {
		var a App
		requireHidden(t, a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)), name, in)
	}

	for in, name := range map[string]string{
		"agentwrit {\n\tbroker https://b {\n\t\tverify local\n\t\tclient_id id\n\t\tclient_secret s3cret-one s3cret-two\n\t}\n}":            "client_secret",
		"agentwrit {\n\tbroker https://b {\n\t\tverify local\n\t\tclient_id id\n\t\tclient_secret s3cret-one\n\t\tNext-Line-Secret\n\t}\n}": "broker option",
		"agentwrit {\n\tbroker https://b Extra-Secret\n}":                        "broker",
		"agentwrit {\n\tbroker https://b {\n\t\ttimeout 1s Extra-Secret\n\t}\n}": "timeout",
	} {
		var h Handler
		requireHidden(t, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)), name, in)
	}

	// Through the adapter, with the secret expanded from the environment as
	// {$VAR} does before the Caddyfile is read: a space or a line break in
	// it splits it.
	for value, name := range map[string]string{
		"s3cret-one s3cret-two":        "admin_secret",
		"s3cret-one\nNext-Line-Secret": "agentwrit option",
	} {
		t.Setenv("AGENTWRIT_TEST_SECRET", value)
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n\tagentwrit {\n\t\tadmin_secret {$AGENTWRIT_TEST_SECRET}\n\t}\n}\n"), nil)
		requireHidden(t, err, name, value)
	}
	for _, u := range []string{"https://u:Pw-Secret@broker.example", "https://u:Pw-Secret/", "ftp://u:Pw-Secret@broker.example"} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":80 {\n\tagentwrit_console "+u+"\n}\n"), nil)
		requireHidden(t, err, "agentwrit_console", u)
	}

	// A remote broker URL is checked when the handler is set up.
	for _, u := range []string{"https://u:Pw-Secret@broker.example", "https://Pw-Secret@broker.example", "https://broker.example/?token=Pw-Secret", "https://broker.example:Pw-Secret/", "ftp://u:Pw-Secret@broker.example"} {
		o, err := (&RemoteBroker{URL: u}).options()
		require.NoError(t, err)
		_, err = remote.New(o)
		requireHidden(t, err, "broker url", u)
	}
}

// Package cli is the `caddy agentwrit` command: it operates an AgentWrit
// broker (the embedded one served by agentwrit_broker, or any
// AgentWrit-compatible broker) through its HTTP API, with the Go client of
// package broker/client, and explains the agentwrit route rules of a
// configuration. Importing it registers the command with Caddy.
package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// Environment variables the `caddy agentwrit` commands read when the
// matching flag is not given.
const (
	envBroker      = "AGENTWRIT_BROKER"
	envAdminSecret = "AGENTWRIT_ADMIN_SECRET"
	envAdminToken  = "AGENTWRIT_ADMIN_TOKEN"
	defaultBroker  = "http://127.0.0.1:8080"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "agentwrit",
		Usage: "<command> [flags]",
		Short: "Operates an AgentWrit broker and explains agentwrit route rules",
		Long: `
Talks to an AgentWrit broker (the embedded one served by the agentwrit_broker
directive, or any AgentWrit-compatible broker) over its HTTP API, and explains
the agentwrit route rules of a Caddyfile.

The broker URL comes from --broker or $AGENTWRIT_BROKER (default
http://127.0.0.1:8080). Commands that need admin rights use the admin token
in $AGENTWRIT_ADMIN_TOKEN (see login), or authenticate with the admin secret
from --admin-secret or $AGENTWRIT_ADMIN_SECRET; if neither is set and stdin is
a terminal, the secret is prompted for without echo. Prefer the environment
variable or the prompt: flags are visible to other local users. Secrets are
never printed or logged.

Errors from the broker are shown with their detail and error_code.
`,
		CobraFunc: setupAgentwritCommand,
	})
}

// setupAgentwritCommand adds the persistent flags and every subcommand to
// cmd, the `agentwrit` command. It is separate from init so tests can build
// the same tree under a root of their own.
func setupAgentwritCommand(cmd *cobra.Command) {
	cmd.SilenceUsage = true
	pf := cmd.PersistentFlags()
	pf.String("broker", defaultBroker, "Broker base URL ($"+envBroker+")")
	pf.String("admin-secret", "", "Admin secret ($"+envAdminSecret+"; prompted for on a terminal if unset)")
	pf.Duration("timeout", 30*time.Second, "Timeout of each request to the broker")
	cmd.AddCommand(
		hashSecretCommand(),
		launchTokenCommand(),
		appCommand(),
		revokeCommand(),
		auditCommand(),
		tokenCommand(),
		registerCommand(),
		routesCommand(),
		loginCommand(),
		statusCommand(),
		keysCommand(),
		agentsCommand(),
		usageCommand(),
	)
	silenceUsage(cmd)
}

// silenceUsage keeps cobra from printing the usage text after a runtime
// error (a broker answering 403 is not a usage mistake), as Caddy's root
// command does.
func silenceUsage(cmd *cobra.Command) {
	cmd.SilenceUsage = true
	for _, c := range cmd.Commands() {
		silenceUsage(c)
	}
}

// addJSONFlag gives cmd the --json output switch.
func addJSONFlag(cmd *cobra.Command) {
	cmd.Flags().Bool("json", false, "Print the result as JSON")
}

func jsonFlag(cmd *cobra.Command) bool {
	v, _ := cmd.Flags().GetBool("json")
	return v
}

// cliWriteJSON prints v indented, for --json output.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// stringOrEnv returns the flag's value if it was given, else the
// environment variable if it is non-empty, else the flag's default.
func stringOrEnv(cmd *cobra.Command, flag, env string) string {
	f := cmd.Flags().Lookup(flag)
	if f == nil {
		return os.Getenv(env)
	}
	if f.Changed {
		return f.Value.String()
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	return f.Value.String()
}

// newClient builds a client for the broker named by --broker or
// $AGENTWRIT_BROKER, with the --timeout of each request.
func newClient(cmd *cobra.Command) (*client.Client, error) {
	base := strings.TrimRight(stringOrEnv(cmd, "broker", envBroker), "/")
	timeout, _ := cmd.Flags().GetDuration("timeout")
	c, err := client.New(base, client.WithHTTPClient(&http.Client{Timeout: timeout}))
	if err != nil {
		return nil, fmt.Errorf("--broker: %w", err)
	}
	return c, nil
}

// adminClient returns a client already authenticated as admin: with the
// token in $AGENTWRIT_ADMIN_TOKEN (caddy agentwrit login) if set, else by
// logging in with the admin secret.
func adminClient(cmd *cobra.Command) (*client.Client, error) {
	c, err := newClient(cmd)
	if err != nil {
		return nil, err
	}
	if tok := os.Getenv(envAdminToken); tok != "" {
		return c.WithToken(tok), nil
	}
	secret, err := adminSecret(cmd)
	if err != nil {
		return nil, err
	}
	return c.LoginAdmin(cmd.Context(), secret)
}

// adminSecret returns the admin secret from --admin-secret or
// $AGENTWRIT_ADMIN_SECRET, or prompts for it when stdin is a terminal.
func adminSecret(cmd *cobra.Command) (string, error) {
	if s := stringOrEnv(cmd, "admin-secret", envAdminSecret); s != "" {
		return s, nil
	}
	if f, ok := cmd.InOrStdin().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		s, err := readPassword(cmd, f, "Admin secret: ")
		if err != nil {
			return "", fmt.Errorf("read admin secret: %w", err)
		}
		if len(s) > 0 {
			return string(s), nil
		}
	}
	return "", fmt.Errorf("admin secret required: set $%s, or use --admin-secret", envAdminSecret)
}

// readPassword reads one line from the terminal f without echo. As in
// `caddy hash-password`, the terminal state is restored on Ctrl-C.
func readPassword(cmd *cobra.Command, f *os.File, prompt string) ([]byte, error) {
	fd := int(f.Fd())
	state, err := term.GetState(fd)
	if err != nil {
		return nil, err
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt)
	done := make(chan struct{})
	defer func() { signal.Stop(c); close(done) }()
	go func() {
		select {
		case <-c:
			_ = term.Restore(fd, state)
			os.Exit(caddy.ExitCodeFailedStartup)
		case <-done:
		}
	}()
	fmt.Fprint(cmd.ErrOrStderr(), prompt)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(cmd.ErrOrStderr())
	return b, err
}

// readSecretInput reads a secret the way `caddy hash-password` does: from
// the terminal without echo, asking twice, or else the first line of stdin
// (without its line ending).
func readSecretInput(cmd *cobra.Command, what string) ([]byte, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		s, err := readPassword(cmd, f, "Enter "+what+": ")
		if err != nil {
			return nil, err
		}
		again, err := readPassword(cmd, f, "Confirm "+what+": ")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(s, again) {
			return nil, fmt.Errorf("%s does not match", what)
		}
		return s, nil
	}
	line, err := bufio.NewReader(in).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s from stdin: %w", what, err)
	}
	if trimmed, ok := bytes.CutSuffix(line, []byte("\n")); ok {
		line = bytes.TrimSuffix(trimmed, []byte("\r"))
	}
	return line, nil
}

// splitList flattens repeatable, comma-separated flag values
// (--scope a,b --scope c) and drops empty entries.
func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// scopesFlag returns the --scope values (repeatable, comma lists), each
// checked against the broker's scope grammar, so a value no registration
// could ever use is refused here instead of sent.
func scopesFlag(cmd *cobra.Command) ([]string, error) {
	vals, _ := cmd.Flags().GetStringSlice("scope")
	list := splitList(vals)
	if err := scopemap.CheckScopes(list); err != nil {
		return nil, fmt.Errorf("--scope: %w", err)
	}
	return list, nil
}

// parseSeconds reads a lifetime flag: whole seconds ("300") or a Caddy
// duration ("5m", "1d"), which must come to a whole, positive number of
// seconds.
func parseSeconds(flag, v string) (int64, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0, fmt.Errorf("--%s %s: must be positive", flag, v)
		}
		return n, nil
	}
	d, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: want seconds or a duration like 5m: %w", flag, v, err)
	}
	if d < time.Second || d%time.Second != 0 {
		return 0, fmt.Errorf("--%s %s: must be a positive whole number of seconds", flag, v)
	}
	return int64(d / time.Second), nil
}

// secondsFlag returns a lifetime flag's value in seconds, and whether it was
// given at all (so unset flags leave the broker's defaults alone).
func secondsFlag(cmd *cobra.Command, flag string) (int64, bool, error) {
	f := cmd.Flags().Lookup(flag)
	if f == nil || !f.Changed {
		return 0, false, nil
	}
	n, err := parseSeconds(flag, f.Value.String())
	return n, err == nil, err
}

// humanTime renders a unix time with its distance from now, e.g.
// "2026-01-02T15:04:05Z (in 4m59s)".
func humanTime(unix int64, now time.Time) string {
	t := time.Unix(unix, 0).UTC()
	d := t.Sub(now).Round(time.Second)
	switch {
	case d > 0:
		return fmt.Sprintf("%s (in %s)", t.Format(time.RFC3339), d)
	case d < 0:
		return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), -d)
	default:
		return t.Format(time.RFC3339) + " (now)"
	}
}

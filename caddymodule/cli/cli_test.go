package cli

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
	_ "modernc.org/sqlite"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

const cmdTestSecret = brokertest.AdminSecret

// cmdTestBroker is a test broker with the database path tests restart on.
type cmdTestBroker struct {
	*brokertest.Server
	t      *testing.T
	DBPath string
}

// startCmdTestBroker serves a broker over the database at path (created if
// missing); adminSecret "" means brokertest's.
func startCmdTestBroker(t *testing.T, path, adminSecret string) *cmdTestBroker {
	t.Helper()
	s := brokertest.New(t, brokertest.Options{Database: path, Config: func(c *broker.Config) {
		if adminSecret != "" {
			c.AdminSecret = adminSecret
		}
	}})
	return &cmdTestBroker{Server: s, t: t, DBPath: path}
}

func newCmdTestBroker(t *testing.T) *cmdTestBroker {
	return startCmdTestBroker(t, filepath.Join(t.TempDir(), "broker.db"), "")
}

// Stop shuts the server down and closes the store; it is idempotent.
func (tb *cmdTestBroker) Stop() { tb.Close() }

type cmdResult struct {
	Stdout, Stderr string
	Err            error
}

// runCmd runs `caddy agentwrit <args...>` in-process with stdin and
// captured output, through a command tree built like Caddy builds it.
func runCmd(t *testing.T, stdin string, args ...string) cmdResult {
	t.Helper()
	root := &cobra.Command{Use: "caddy", SilenceUsage: true}
	aw := &cobra.Command{Use: "agentwrit"}
	setupAgentwritCommand(aw)
	root.AddCommand(aw)
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"agentwrit"}, args...))
	err := root.ExecuteContext(t.Context())
	return cmdResult{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// admin runs a command as admin against tb.
func (tb *cmdTestBroker) admin(args ...string) cmdResult {
	tb.t.Helper()
	return runCmd(tb.t, "", append(args, "--broker", tb.URL, "--admin-secret", cmdTestSecret)...)
}

func requireOK(t *testing.T, r cmdResult) {
	t.Helper()
	require.NoError(t, r.Err, "stdout: %s\nstderr: %s", r.Stdout, r.Stderr)
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// launchToken creates a launch token through the CLI.
func (tb *cmdTestBroker) launchToken(scopes ...string) string {
	tb.t.Helper()
	r := tb.admin("launch-token", "--agent-name", "cli-test", "--scope", strings.Join(scopes, ","), "--max-ttl", "10m", "--ttl", "60")
	requireOK(tb.t, r)
	lt := strings.TrimSpace(r.Stdout)
	require.Regexp(tb.t, hex64, lt)
	return lt
}

// registerAgent registers an agent through the CLI and returns its token
// and agent ID.
func (tb *cmdTestBroker) registerAgent(scopes ...string) (token, agentID string) {
	tb.t.Helper()
	lt := tb.launchToken(scopes...)
	r := runCmd(tb.t, "", "register", "--broker", tb.URL, "--launch-token", lt, "--orch-id", "orch-1", "--task-id", "task-1",
		"--scope", strings.Join(scopes, ","), "--json")
	requireOK(tb.t, r)
	var resp struct {
		AgentID     string `json:"agent_id"`
		AccessToken string `json:"access_token"`
	}
	require.NoError(tb.t, json.Unmarshal([]byte(r.Stdout), &resp))
	return resp.AccessToken, resp.AgentID
}

func TestCommandTree(t *testing.T) {
	t.Parallel()
	aw := &cobra.Command{Use: "agentwrit"}
	setupAgentwritCommand(aw)
	var names []string
	var walk func(c *cobra.Command, prefix string)
	walk = func(c *cobra.Command, prefix string) {
		for _, s := range c.Commands() {
			names = append(names, prefix+s.Name())
			walk(s, prefix+s.Name()+" ")
		}
	}
	walk(aw, "")
	require.ElementsMatch(t, []string{
		"hash-secret", "launch-token", "app", "app register", "app list", "app show", "app update", "app remove",
		"revoke", "audit", "audit verify", "token", "token inspect", "register", "routes",
		"login", "status", "keys", "keys list", "keys rotate", "agents", "usage",
	}, names)
}

func TestCommandHashSecret(t *testing.T) {
	t.Parallel()
	r := runCmd(t, "s3cret-admin\r\n", "hash-secret")
	requireOK(t, r)
	hash := strings.TrimSpace(r.Stdout)
	require.NotContains(t, r.Stdout+r.Stderr, "s3cret-admin", "the secret must never be echoed")
	require.NoError(t, bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret-admin")))
	cost, err := bcrypt.Cost([]byte(hash))
	require.NoError(t, err)
	require.Equal(t, 12, cost)

	// The hash is a working admin_secret: a broker configured with it
	// accepts the plaintext, and refuses anything else.
	tb := startCmdTestBroker(t, filepath.Join(t.TempDir(), "b.db"), hash)
	r = runCmd(t, "", "launch-token", "--broker", tb.URL, "--admin-secret", "s3cret-admin", "--agent-name", "a", "--scope", "read:x:y")
	requireOK(t, r)
	require.Regexp(t, hex64, strings.TrimSpace(r.Stdout))

	for _, in := range []string{"", "\n", "change-me-in-production\n"} {
		r = runCmd(t, in, "hash-secret")
		require.Error(t, r.Err, "input %q", in)
		require.Empty(t, r.Stdout)
	}
}

func TestCommandAdminSecretFromEnv(t *testing.T) {
	tb := newCmdTestBroker(t)
	t.Setenv(envAdminSecret, cmdTestSecret)
	t.Setenv(envBroker, tb.URL)
	r := runCmd(t, "", "launch-token", "--agent-name", "a", "--scope", "read:x:y")
	requireOK(t, r)

	t.Setenv(envAdminSecret, "")
	r = runCmd(t, "", "launch-token", "--agent-name", "a", "--scope", "read:x:y")
	require.ErrorContains(t, r.Err, "admin secret required")

	t.Setenv(envBroker, "ftp://nope")
	r = runCmd(t, "", "launch-token", "--admin-secret", "x", "--agent-name", "a", "--scope", "read:x:y")
	require.ErrorContains(t, r.Err, "--broker")
	require.ErrorContains(t, r.Err, "scheme must be http or https")
}

func TestCommandLaunchToken(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	r := tb.admin("launch-token", "--agent-name", "reader", "--scope", "read:orders:*", "--scope", "read:reports:a,read:reports:b",
		"--max-ttl", "15m", "--ttl", "2m", "--single-use=false", "--json")
	requireOK(t, r)
	var resp struct {
		LaunchToken string `json:"launch_token"`
		ExpiresAt   string `json:"expires_at"`
		Policy      struct {
			AllowedScope []string `json:"allowed_scope"`
			MaxTTL       int64    `json:"max_ttl"`
		} `json:"policy"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &resp))
	require.Regexp(t, hex64, resp.LaunchToken)
	require.Equal(t, []string{"read:orders:*", "read:reports:a", "read:reports:b"}, resp.Policy.AllowedScope)
	require.EqualValues(t, 900, resp.Policy.MaxTTL)

	// Multi-use: two agents register with the same token.
	for i := range 2 {
		r = runCmd(t, "", "register", "--broker", tb.URL, "--launch-token", resp.LaunchToken,
			"--orch-id", "o", "--task-id", fmt.Sprint("t", i), "--scope", "read:orders:1")
		requireOK(t, r)
	}

	// Failures: the broker's detail and error_code, and local checks.
	r = tb.admin("launch-token", "--agent-name", "reader", "--scope", "")
	require.ErrorContains(t, r.Err, "400 allowed_scope must not be empty (error_code invalid_request)")
	r = tb.admin("launch-token", "--agent-name", "reader")
	require.ErrorContains(t, r.Err, `required flag(s) "scope" not set`)
	r = tb.admin("launch-token", "--agent-name", "reader", "--scope", "a:b:c", "--max-ttl", "1.5s")
	require.ErrorContains(t, r.Err, "--max-ttl")
}

func TestCommandApp(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	r := tb.admin("app", "register", "--name", "orders-svc", "--scope", "read:orders:*,write:orders:*", "--token-ttl", "10m")
	requireOK(t, r)
	require.Contains(t, r.Stderr, "cannot be shown again")
	m := regexp.MustCompile(`(?m)^app_id:\s+(\S+)$`).FindStringSubmatch(r.Stdout)
	require.NotNil(t, m, r.Stdout)
	appID := m[1]
	require.Regexp(t, `(?m)^client_secret:\s+[0-9a-f]{64}$`, r.Stdout)
	require.Regexp(t, `(?m)^token_ttl:\s+600s$`, r.Stdout)

	r = tb.admin("app", "list")
	requireOK(t, r)
	require.Contains(t, r.Stdout, "APP ID")
	require.Contains(t, r.Stdout, appID)
	require.Contains(t, r.Stdout, "read:orders:* write:orders:*")

	r = tb.admin("app", "list", "--json")
	requireOK(t, r)
	var list struct {
		Apps  []broker.App `json:"apps"`
		Total int          `json:"total"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &list))
	require.Equal(t, 1, list.Total)
	require.Equal(t, "orders-svc", list.Apps[0].Name)

	r = tb.admin("app", "show", appID)
	requireOK(t, r)
	require.Regexp(t, `(?m)^status:\s+active$`, r.Stdout)

	r = tb.admin("app", "update", appID, "--scope", "read:orders:*", "--token-ttl", "3600", "--json")
	requireOK(t, r)
	var app broker.App
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &app))
	require.Equal(t, []string{"read:orders:*"}, app.Scopes)
	require.EqualValues(t, 3600, app.TokenTTL)

	r = tb.admin("app", "remove", appID)
	requireOK(t, r)
	require.Contains(t, r.Stdout, "app "+appID+" deregistered at ")
	r = tb.admin("app", "show", appID, "--json")
	requireOK(t, r)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &app))
	require.Equal(t, "inactive", app.Status)

	// Failures.
	r = tb.admin("app", "register", "--name", "orders-svc", "--scope", "read:orders:*")
	require.ErrorContains(t, r.Err, "409")
	require.ErrorContains(t, r.Err, "(error_code conflict)")
	r = tb.admin("app", "register", "--name", "Bad_Name", "--scope", "read:orders:*")
	require.ErrorContains(t, r.Err, "invalid app name")
	r = tb.admin("app", "show", "app-nope-000000")
	require.ErrorContains(t, r.Err, "404 app not found (error_code not_found)")
	r = tb.admin("app", "update", appID)
	require.ErrorContains(t, r.Err, "nothing to update")
	r = tb.admin("app", "update", appID, "--token-ttl", "30")
	require.ErrorContains(t, r.Err, "(error_code invalid_ttl)")
	r = tb.admin("app", "remove", "app-nope-000000")
	require.ErrorContains(t, r.Err, "404")
	r = tb.admin("app", "show")
	require.ErrorContains(t, r.Err, "accepts 1 arg")
}

func TestCommandRevoke(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	tok, _ := tb.registerAgent("read:orders:1")
	_, claims, err := decodeJWT(tok)
	require.NoError(t, err)
	var jti string
	require.NoError(t, json.Unmarshal(claims["jti"], &jti))

	r := tb.admin("revoke", "--level", "token", "--target", jti)
	requireOK(t, r)
	require.Equal(t, "revoked level=token target="+jti+"\n", r.Stdout)
	_, err = tb.Broker.Verify(t.Context(), tok)
	require.Error(t, err, "the token is revoked")

	r = tb.admin("revoke", "--level", "bogus", "--target", "x")
	require.ErrorContains(t, r.Err, "400 invalid revocation level: bogus (error_code invalid_request)")
	r = tb.admin("revoke", "--level", "token")
	require.ErrorContains(t, r.Err, `required flag(s) "target" not set`)
}

func TestCommandAudit(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	tb.launchToken("read:orders:1")
	r := tb.admin("revoke", "--level", "task", "--target", "task-9")
	requireOK(t, r)

	r = tb.admin("audit")
	requireOK(t, r)
	require.Regexp(t, `(?m)^ID\s+TIME\s+EVENT`, r.Stdout)
	require.Regexp(t, `(?m)^evt-000001\s+\S+\s+admin_auth\s+success`, r.Stdout)
	require.Contains(t, r.Stdout, "launch_token_issued")
	require.Regexp(t, `(?m)token_revoked\s+success\s+task-9`, r.Stdout)
	require.Contains(t, r.Stderr, "matching events")

	r = tb.admin("audit", "--event-type", "token_revoked", "--agent-id", "task-9", "--since", "1h", "--limit", "5", "--json")
	requireOK(t, r)
	var page broker.AuditPage
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &page))
	require.Len(t, page.Events, 1)
	require.Equal(t, 1, page.Total)
	require.Equal(t, 5, page.Limit)
	require.Equal(t, "revoked at level=task target=task-9", page.Events[0].Detail)

	r = tb.admin("audit", "--outcome", "denied", "--until", "2000-01-01T00:00:00Z", "--json")
	requireOK(t, r)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &page))
	require.Empty(t, page.Events)

	// Failures: a time the broker would silently ignore is refused here;
	// without admin rights the broker says so.
	r = tb.admin("audit", "--since", "yesterday")
	require.ErrorContains(t, r.Err, `--since "yesterday"`)
	r = runCmd(t, "", "audit", "--broker", tb.URL, "--admin-secret", "wrong-secret")
	require.ErrorContains(t, r.Err, "admin auth: POST /v1/admin/auth: 401 invalid credentials (error_code unauthorized)")
	require.NotContains(t, r.Err.Error()+r.Stdout+r.Stderr, "wrong-secret", "secrets are never echoed")
}

// copyDB copies a closed SQLite database (and any WAL left beside it).
func copyDB(t *testing.T, from, to string) {
	t.Helper()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(from + suffix)
		if os.IsNotExist(err) && suffix != "" {
			continue
		}
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(to+suffix, b, 0o600))
	}
}

// tamper alters one audit row in the database at path, behind the
// broker's back.
func tamper(t *testing.T, path, id string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	defer db.Close()
	res, err := db.Exec(`UPDATE audit_events SET detail = 'tampered' WHERE id = ?`, id)
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

// TestCommandAuditVerify is Must-show 4: `audit verify` detects a single
// altered event in a copied database, and passes the original.
func TestCommandAuditVerify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	orig := filepath.Join(dir, "broker.db")
	tb := startCmdTestBroker(t, orig, "")
	tb.launchToken("read:orders:1")                                         // evt-000001 admin_auth, evt-000002 launch_token_issued
	requireOK(t, tb.admin("revoke", "--level", "agent", "--target", "a-1")) // 3, 4
	requireOK(t, tb.admin("revoke", "--level", "agent", "--target", "a-2")) // 5, 6
	requireOK(t, tb.admin("revoke", "--level", "task", "--target", "t-1"))  // 7, 8
	tb.Stop()

	copied := filepath.Join(dir, "copy.db")
	copyDB(t, orig, copied)
	tamper(t, copied, "evt-000003")

	bad := startCmdTestBroker(t, copied, "")
	r := bad.admin("audit", "verify")
	require.Error(t, r.Err)
	require.ErrorIs(t, r.Err, errChainBroken)
	require.Contains(t, r.Err.Error(), "evt-000003")
	require.Contains(t, r.Stdout, "chain BROKEN at index 2, id evt-000003: hash ")
	require.Contains(t, r.Stdout, "2 events before it verified")

	r = bad.admin("audit", "verify", "--json")
	require.Error(t, r.Err)
	var v struct {
		Intact   bool `json:"intact"`
		Verified int  `json:"verified"`
		Broken   struct {
			Index int    `json:"index"`
			ID    string `json:"id"`
		} `json:"broken"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &v))
	require.False(t, v.Intact)
	require.Equal(t, 2, v.Broken.Index)
	require.Equal(t, "evt-000003", v.Broken.ID)

	good := startCmdTestBroker(t, orig, "")
	r = good.admin("audit", "verify")
	requireOK(t, r)
	// 8 events from before; this command's own admin_auth is left out.
	require.Contains(t, r.Stdout, "8 events, chain intact")
	require.Regexp(t, `head hash [0-9a-f]{64}`, r.Stdout)
}

// TestCommandAuditVerifyPages checks that verify walks the chain across
// pages and finds a break past the first one.
func TestCommandAuditVerifyPages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	orig := filepath.Join(dir, "broker.db")
	tb := startCmdTestBroker(t, orig, "")
	for i := range 1010 {
		tb.Broker.RecordDenial(t.Context(), broker.Denial{EventType: broker.EventScopeViolation, Claims: &broker.Claims{Sub: "spiffe://agentwrit.local/agent/o/t/1"}, Resource: "GET /x", Detail: fmt.Sprint("n=", i)})
	}
	r := tb.admin("audit", "verify")
	requireOK(t, r)
	require.Contains(t, r.Stdout, "1010 events, chain intact", "the denials; verify's own login is left out")
	tb.Stop()

	copied := filepath.Join(dir, "copy.db")
	copyDB(t, orig, copied)
	tamper(t, copied, "evt-001005")
	r = startCmdTestBroker(t, copied, "").admin("audit", "verify")
	require.ErrorIs(t, r.Err, errChainBroken)
	require.Contains(t, r.Stdout, "chain BROKEN at index 1004, id evt-001005")
}

func TestCommandTokenInspect(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	tok, agentID := tb.registerAgent("read:orders:1", "write:orders:1")

	r := runCmd(t, "", "token", "inspect", "--broker", tb.URL, tok)
	requireOK(t, r)
	require.Regexp(t, `(?m)^\s+alg:\s+EdDSA$`, r.Stdout)
	require.Regexp(t, `(?m)^\s+sub:\s+`+regexp.QuoteMeta(agentID)+`$`, r.Stdout)
	require.Regexp(t, `(?m)^\s+scope:\s+read:orders:1 write:orders:1$`, r.Stdout)
	require.Regexp(t, `(?m)^\s+exp:\s+\S+ \(in (9m5\ds|10m0s)\)$`, r.Stdout)
	require.Regexp(t, `(?m)^expiry:\s+expires in (9m5\ds|10m0s)$`, r.Stdout)
	require.Contains(t, r.Stdout, "broker:  VALID")

	// From stdin, as JSON.
	r = runCmd(t, tok+"\n", "token", "inspect", "--broker", tb.URL, "--json")
	requireOK(t, r)
	var j struct {
		Header map[string]any `json:"header"`
		Claims map[string]any `json:"claims"`
		Valid  bool           `json:"valid"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &j))
	require.True(t, j.Valid)
	require.Equal(t, agentID, j.Claims["sub"])

	// Failures: a revoked token decodes but is invalid; garbage does not decode.
	requireOK(t, tb.admin("revoke", "--level", "agent", "--target", agentID))
	r = runCmd(t, "", "token", "inspect", "--broker", tb.URL, tok)
	require.ErrorContains(t, r.Err, "invalid")
	require.Contains(t, r.Stdout, "broker:  INVALID (token is invalid or expired)")
	require.Contains(t, r.Stdout, agentID, "the claims are still shown")

	r = runCmd(t, "", "token", "inspect", "--broker", tb.URL, "not-a-jwt")
	require.ErrorContains(t, r.Err, "not an AgentWrit token: invalid token: malformed")
	r = runCmd(t, "", "token", "inspect", "--offline", "a.b.c")
	require.ErrorContains(t, r.Err, "not an AgentWrit token: invalid token: malformed: signature")
}

func TestCommandRegister(t *testing.T) {
	tb := newCmdTestBroker(t)
	lt := tb.launchToken("read:orders:*")
	keyFile := filepath.Join(t.TempDir(), "agent.pem")
	r := runCmd(t, "", "register", "--broker", tb.URL, "--launch-token", lt, "--orch-id", "orch-7", "--task-id", "task-7",
		"--scope", "read:orders:42", "--key-file", keyFile)
	requireOK(t, r)
	tok := strings.TrimSpace(r.Stdout)
	require.Contains(t, r.Stderr, "agent_id spiffe://agentwrit.local/agent/orch-7/task-7/")
	claims, err := tb.Broker.Verify(t.Context(), tok)
	require.NoError(t, err)
	require.Equal(t, []string{"read:orders:42"}, claims.Scope)
	require.Equal(t, "task-7", claims.TaskID)
	st, err := os.Stat(keyFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	pemBefore, err := os.ReadFile(keyFile)
	require.NoError(t, err)

	// The key file is reused, and the launch token comes from the env.
	t.Setenv(envLaunchToken, tb.launchToken("read:orders:*"))
	r = runCmd(t, "", "register", "--broker", tb.URL, "--orch-id", "o", "--task-id", "t", "--scope", "read:orders:1",
		"--key-file", keyFile, "--json")
	requireOK(t, r)
	var j struct {
		AgentID     string `json:"agent_id"`
		AccessToken string `json:"access_token"`
		PublicKey   string `json:"public_key"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &j))
	require.EqualValues(t, 600, j.ExpiresIn)
	require.NotEmpty(t, j.AccessToken)
	require.NotEmpty(t, j.PublicKey)
	require.Contains(t, j.AgentID, "/agent/o/t/")
	pemAfter, _ := os.ReadFile(keyFile)
	require.Equal(t, pemBefore, pemAfter)

	// Failures: the launch token is single-use (already consumed), unknown,
	// or does not allow the scope.
	r = runCmd(t, "", "register", "--broker", tb.URL, "--launch-token", lt, "--orch-id", "o", "--task-id", "t", "--scope", "read:orders:1")
	require.ErrorContains(t, r.Err, "401 launch token: launch token already consumed (error_code unauthorized)")
	r = runCmd(t, "", "register", "--broker", tb.URL, "--launch-token", strings.Repeat("0", 64), "--orch-id", "o", "--task-id", "t", "--scope", "read:orders:1")
	require.ErrorContains(t, r.Err, "launch token not found")
	r = runCmd(t, "", "register", "--broker", tb.URL, "--launch-token", tb.launchToken("read:orders:1"), "--orch-id", "o", "--task-id", "t", "--scope", "write:orders:1")
	require.ErrorContains(t, r.Err, "403 requested scope exceeds allowed scope (error_code scope_violation)")
	require.Empty(t, r.Stdout)
}

func TestCommandRoutes(t *testing.T) {
	t.Parallel()
	// routes reads only the config; a running broker is not needed, but the
	// scopes it prints must be what the broker's tokens are checked against.
	cf := filepath.Join("testdata", "commands", "Caddyfile")
	routes := func(args ...string) cmdResult {
		return runCmd(t, "", append([]string{"routes", "--config", cf}, args...)...)
	}

	r := routes("GET", "/orders/42")
	requireOK(t, r)
	require.Contains(t, r.Stdout, "server srv1 (listen :8081)")
	require.Regexp(t, `(?m)^\s+rule:\s+require GET /orders/\{id\} read:orders:\{id\}$`, r.Stdout)
	require.Regexp(t, `(?m)^\s+requires:\s+read:orders:42$`, r.Stdout)
	// The other site's handler has its own answer.
	require.Contains(t, r.Stdout, "api.example.com")
	require.Regexp(t, `(?m)^\s+result:\s+unmapped$`, r.Stdout)
	require.Contains(t, r.Stdout, "unmapped authenticated: any valid token")

	r = routes("post", "/transfer/a%2Bb/c?x=1", "--json")
	requireOK(t, r)
	var xs []routeExplanation
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &xs))
	require.Len(t, xs, 2)
	require.Equal(t, "require", xs[0].Result)
	require.Equal(t, []string{"read:acct:a+b", "write:acct:c"}, xs[0].Required)

	// A value outside the scope grammar (here a space) can form no scope.
	r = routes("post", "/transfer/a%20b/c", "--json")
	requireOK(t, r)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &xs))
	require.Equal(t, "bad_value", xs[0].Result)
	require.Contains(t, xs[0].Detail, "403 Forbidden")

	r = routes("GET", "/healthz", "--json")
	requireOK(t, r)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &xs))
	require.Equal(t, "public", xs[0].Result)

	r = routes("GET", "/v2/items/7", "--json")
	requireOK(t, r)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &xs))
	require.Equal(t, "unmapped", xs[0].Result)
	require.Equal(t, "require", xs[1].Result)
	require.Equal(t, []string{"read:items:7"}, xs[1].Required)
	require.Equal(t, "report", xs[1].Mode)

	r = routes("GET", "/orders/a%3Ab", "--json")
	requireOK(t, r)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &xs))
	require.Equal(t, "bad_value", xs[0].Result)

	r = routes("GET", "/orders/../admin")
	requireOK(t, r)
	require.Regexp(t, `(?m)^\s+result:\s+not_canonical$`, r.Stdout)

	// Listing.
	r = routes()
	requireOK(t, r)
	require.Contains(t, r.Stdout, "  public GET /healthz\n")
	require.Contains(t, r.Stdout, "  require * /reports/{rest...} read:reports:*\n")

	// Failures.
	r = runCmd(t, "", "routes", "--config", filepath.Join("testdata", "commands", "Caddyfile.conflict"), "GET", "/orders/1")
	require.ErrorContains(t, r.Err, "rules do not compile")
	require.Contains(t, r.Stdout, "conflicting route rules")
	r = runCmd(t, "", "routes", "--config", filepath.Join(t.TempDir(), "missing"), "GET", "/")
	require.ErrorContains(t, r.Err, "read config")
	r = runCmd(t, ":80 {\n\trespond hi\n}\n", "routes", "--config", "-", "GET", "/")
	require.ErrorContains(t, r.Err, "no agentwrit handler")
	r = routes("GET")
	require.ErrorContains(t, r.Err, "want <METHOD> <path>")
}

// TestCommandErrorsWithoutProblem covers a broker (or proxy) that answers
// without problem+json.
func TestCommandErrorsWithoutProblem(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "upstream down\n")
	}))
	defer srv.Close()
	r := runCmd(t, "", "audit", "--broker", srv.URL, "--admin-secret", "x")
	require.ErrorContains(t, r.Err, `POST /v1/admin/auth: 502 Bad Gateway: "upstream down"`)
}

// TestCommandRefusesBadScopes: a scope no registration could use is
// refused before anything is sent (the broker here would fail the test if
// it were asked).
func TestCommandRefusesBadScopes(t *testing.T) {
	asked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the broker was asked: %s %s", r.Method, r.URL.Path)
	}))
	defer asked.Close()
	for _, args := range [][]string{
		{"launch-token", "--agent-name", "a", "--scope", "S"},
		{"launch-token", "--agent-name", "a", "--scope", "read:orders:1 write:orders:2"},
		{"app", "register", "--name", "x", "--scope", "read:orders"},
		{"app", "update", "app-x", "--scope", "read:orders:a:b"},
		{"register", "--launch-token", "lt", "--orch-id", "o", "--task-id", "t", "--scope", `read:orders:a\b`},
	} {
		r := runCmd(t, "", append(args, "--broker", asked.URL, "--admin-secret", "x")...)
		require.ErrorContains(t, r.Err, "--scope: invalid scope", args)
	}
}

package caddymodule_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	awclient "github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"
)

const adminSecret = "e2e-admin-secret"

// caddyMu serializes tests that drive the process-wide Caddy instance.
var caddyMu sync.Mutex

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// backend is a real upstream that records what the gateway forwarded.
type backend struct {
	*httptest.Server
	mu   sync.Mutex
	last http.Header
	hits int
}

func newBackend(t testing.TB) *backend {
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.last, b.hits = r.Header.Clone(), b.hits+1
		b.mu.Unlock()
		fmt.Fprintf(w, "backend %s %s", r.Method, r.URL.EscapedPath())
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) header(k string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last.Get(k)
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hits
}

// env is a running Caddy with an embedded broker site, a gateway site in
// front of a backend, and a metrics site.
type env struct {
	t                                   testing.TB
	db                                  string
	brokerPort, gatewayPort, metricPort int
	backend                             *backend
}

// gatewayRules is the rule set most tests run with.
const gatewayRules = `
		require GET        /orders/{id}          read:orders:{id}
		require POST,PUT   /orders/{id}          write:orders:{id}
		require *          /reports/{rest...}    read:reports:*
		require POST       /transfer/{from}/{to} read:acct:{from} write:acct:{to}
		require GET        /hosts/{id}           read:hosts:{http.request.host}
		public  GET        /healthz
`

func newEnv(t testing.TB, db string) *env {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(func() {
		_ = caddy.Stop()
		caddyMu.Unlock()
	})
	return &env{
		t: t, db: db, backend: newBackend(t),
		brokerPort: freePort(t), gatewayPort: freePort(t), metricPort: freePort(t),
	}
}

// caddyfile renders the test configuration with the given gateway body.
func (e *env) caddyfile(gateway string) string {
	return fmt.Sprintf(`{
	admin off
	persist_config off
	log {
		output discard
	}
	agentwrit {
		admin_secret %s
		database %s
	}
}
http://127.0.0.1:%d {
	agentwrit_broker
}
http://127.0.0.1:%d {
	agentwrit {
%s
	}
	reverse_proxy %s {
		header_up X-Placeholder-User {http.auth.user.id}
		header_up X-Placeholder-Required {agentwrit.required_scope}
		header_up X-Placeholder-Depth {agentwrit.delegation_depth}
		header_up X-Placeholder-Jti {agentwrit.jti}
	}
}
http://127.0.0.1:%d {
	metrics
}
`, adminSecret, e.db, e.brokerPort, e.gatewayPort, gateway, strings.TrimPrefix(e.backend.URL, "http://"), e.metricPort)
}

// load adapts and (re)loads a Caddyfile into the process's Caddy.
func (e *env) load(caddyfile string) error {
	e.t.Helper()
	cfg, warn, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		return fmt.Errorf("adapt: %w (warnings %v)", err, warn)
	}
	return caddy.Load(cfg, true)
}

func (e *env) start(gateway string) {
	e.t.Helper()
	require.NoError(e.t, e.load(e.caddyfile(gateway)))
}

// restart stops Caddy (everything it held is closed) and starts it again
// on the same database.
func (e *env) restart(gateway string) {
	e.t.Helper()
	require.NoError(e.t, caddy.Stop())
	e.start(gateway)
}

func (e *env) brokerURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", e.brokerPort, path)
}
func (e *env) gatewayURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", e.gatewayPort, path)
}

// client opens a connection per request: reloads close idle keep-alive
// connections, and a request racing that close would fail in the client.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

// call sends a JSON request and decodes a JSON answer (if any). A request
// that fails below HTTP (a connection reset while a reload swaps servers)
// is retried a few times; any HTTP answer is returned as it is.
func call(t testing.TB, method, url, bearer string, body any) (*http.Response, map[string]any) {
	t.Helper()
	var raw []byte
	if body != nil {
		var err error
		raw, err = json.Marshal(body)
		require.NoError(t, err)
	}
	var resp *http.Response
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var req *http.Request
		req, err = http.NewRequest(method, url, bytes.NewReader(raw))
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		if resp, err = client.Do(req); err == nil {
			break
		}
		t.Logf("retrying %s %s after transport error: %v", method, url, err)
		time.Sleep(50 * time.Millisecond)
	}
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var m map[string]any
	_ = json.Unmarshal(out, &m)
	if m == nil {
		m = map[string]any{"_raw": string(out)}
	}
	return resp, m
}

func (e *env) adminToken() string {
	e.t.Helper()
	resp, m := call(e.t, "POST", e.brokerURL("/v1/admin/auth"), "", map[string]string{"secret": adminSecret})
	require.Equal(e.t, 200, resp.StatusCode, m)
	return m["access_token"].(string)
}

// agent registers an agent with the given scopes and returns its ID and token.
func (e *env) agent(scope ...string) (string, string) {
	e.t.Helper()
	ctx := context.Background()
	c, err := awclient.New(e.brokerURL(""), awclient.WithHTTPClient(client))
	require.NoError(e.t, err)
	admin, err := c.LoginAdmin(ctx, adminSecret)
	require.NoError(e.t, err)
	lt, err := admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "e2e", AllowedScope: scope, MaxTTL: 600})
	require.NoError(e.t, err)
	a, err := c.Register(ctx, lt.LaunchToken, scope, awclient.WithOrchID("orch-e2e"), awclient.WithTaskID("task-e2e"))
	require.NoError(e.t, err)
	return a.ID, a.Token
}

// raw sends a request line exactly as given (no client-side path cleaning).
func (e *env) raw(method, target string, header ...string) *http.Response {
	e.t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.gatewayPort), 5*time.Second)
	require.NoError(e.t, err)
	defer conn.Close()
	req := method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
	for _, h := range header {
		req += h + "\r\n"
	}
	_, err = conn.Write([]byte(req + "\r\n"))
	require.NoError(e.t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(e.t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// metric returns the sum of the samples of a metric whose line contains all of match.
func (e *env) metric(name string, match ...string) float64 {
	e.t.Helper()
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", e.metricPort))
	require.NoError(e.t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
lines:
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		for _, m := range match {
			if !strings.Contains(line, m) {
				continue lines
			}
		}
		var v float64
		fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
		sum += v
	}
	return sum
}

// auditEvents fetches audit events of one type through the broker API.
func (e *env) auditEvents(eventType string) []any {
	e.t.Helper()
	resp, m := call(e.t, "GET", e.brokerURL("/v1/audit/events?limit=1000&event_type="+eventType), e.adminToken(), nil)
	require.Equal(e.t, 200, resp.StatusCode, m)
	return m["events"].([]any)
}

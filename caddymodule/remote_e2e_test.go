package caddymodule_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"
)

// remoteGateway renders a Caddyfile with no agentwrit app at all: a
// gateway in remote mode in front of the test backend, and a metrics site.
func (e *env) remoteGateway(gateway string) string {
	return fmt.Sprintf(`{
	admin off
	persist_config off
	log {
		output discard
	}
}
http://127.0.0.1:%d {
	agentwrit {
%s
	}
	reverse_proxy %s
}
http://127.0.0.1:%d {
	metrics
}
`, e.gatewayPort, gateway, strings.TrimPrefix(e.backend.URL, "http://"), e.metricPort)
}

// revoke revokes one token through the broker API at e.brokerPort.
func (e *env) revoke(tok string) {
	e.t.Helper()
	resp, m := call(e.t, "POST", e.brokerURL("/v1/revoke"), e.adminToken(),
		map[string]string{"level": "token", "target": brokertest.JTI(e.t, tok)})
	require.Equal(e.t, 200, resp.StatusCode, m)
}

// pollStatus repeats a GET until it answers want, failing after limit.
// Every answer on the way must be one of allowed.
func pollStatus(t *testing.T, url, tok string, want int, limit time.Duration, allowed ...int) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		resp, m := call(t, "GET", url, tok, nil)
		if resp.StatusCode == want {
			return time.Since(start)
		}
		require.Contains(t, allowed, resp.StatusCode, m)
		if time.Since(start) > limit {
			t.Fatalf("%s: still %d after %s, want %d", url, resp.StatusCode, limit, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func requireStatus(t *testing.T, want int, method, url, tok string) (*http.Response, map[string]any) {
	t.Helper()
	resp, m := call(t, method, url, tok, nil)
	require.Equal(t, want, resp.StatusCode, m)
	return resp, m
}

// TestRemoteE2ESameCaddy: the gateway validates remotely against the
// agentwrit_broker served by the same Caddy, which is not listening yet
// while the config provisions. Rows of the enforcement table, revocation
// within cache_ttl, then cache_ttl 0 after a reload.
func TestRemoteE2ESameCaddy(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(fmt.Sprintf("\t\tbroker http://127.0.0.1:%d {\n\t\t\tcache_ttl 1s\n\t\t}\n", e.brokerPort) + gatewayRules)
	agentID, tok := e.agent("read:orders:42")

	requireStatus(t, 200, "GET", e.gatewayURL("/orders/42"), tok)
	require.Equal(t, agentID, e.backend.header("X-AgentWrit-Agent-ID"))
	require.Equal(t, "read:orders:42", e.backend.header("X-AgentWrit-Scope"))
	require.Equal(t, agentID, e.backend.header("X-Placeholder-User"))

	resp, m := requireStatus(t, 403, "GET", e.gatewayURL("/orders/43"), tok)
	require.Equal(t, `Bearer realm="agentwrit", error="insufficient_scope", scope="read:orders:43"`, resp.Header.Get("WWW-Authenticate"))
	require.Equal(t, "insufficient_scope", m["error_code"])
	resp, _ = requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), "")
	require.Equal(t, `Bearer realm="agentwrit"`, resp.Header.Get("WWW-Authenticate"))
	resp, m = requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), tok[:len(tok)-4]+"AAAA")
	require.Equal(t, `Bearer realm="agentwrit", error="invalid_token"`, resp.Header.Get("WWW-Authenticate"))
	require.Equal(t, "token verification failed", m["detail"])
	requireStatus(t, 200, "GET", e.gatewayURL("/healthz"), "garbage")
	requireStatus(t, 403, "GET", e.gatewayURL("/unmapped"), tok)

	// The agentwrit app is configured, so the gateway's denials are audited.
	require.NotEmpty(t, e.auditEvents("scope_violation"))

	e.revoke(tok)
	took := pollStatus(t, e.gatewayURL("/orders/42"), tok, 401, 3*time.Second, 200)
	require.LessOrEqual(t, took, 2*time.Second, "revocation seen within cache_ttl (1s) plus slack")

	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_remote_calls_total", `outcome="valid"`), 1.0)
	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_remote_calls_total", `outcome="invalid"`), 1.0)
	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_cache_hits_total"), 1.0)
	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_cache_misses_total"), 1.0)
	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_remote_call_duration_seconds_count"), 2.0)

	t.Run("cache_ttl 0 sees a revocation on the next request", func(t *testing.T) {
		require.NoError(t, e.load(e.caddyfile(fmt.Sprintf("\t\tbroker http://127.0.0.1:%d {\n\t\t\tcache_ttl 0\n\t\t}\n", e.brokerPort)+gatewayRules)))
		_, tok := e.agent("read:orders:42")
		for range 3 {
			requireStatus(t, 200, "GET", e.gatewayURL("/orders/42"), tok)
		}
		e.revoke(tok)
		requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), tok)
	})
}

// TestRemoteE2EMutualTLS: a gateway with no broker of its own validates
// against a broker that requires a client certificate.
func TestRemoteE2EMutualTLS(t *testing.T) {
	pki := caddymodule.NewTestPKI(t)
	tb := brokertest.New(t, brokertest.Options{TLS: pki.ServerTLS})
	e := newEnv(t, "")
	tok := tb.Agent(t, "read:orders:42").Token
	rules := "\t\trequire GET /orders/{id} read:orders:{id}\n"
	require.NoError(t, e.load(e.remoteGateway(fmt.Sprintf(`		broker %s {
			cache_ttl 1s
			tls_ca %s
			tls_client_cert %s %s
		}
`, tb.URL, pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile)+rules)))
	requireStatus(t, 200, "GET", e.gatewayURL("/orders/42"), tok)
	requireStatus(t, 403, "GET", e.gatewayURL("/orders/7"), tok)
	requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), "")
	tb.RevokeToken(t, tok)
	pollStatus(t, e.gatewayURL("/orders/42"), tok, 401, 3*time.Second, 200)

	// Without the client certificate the broker refuses the handshake:
	// nothing validates, everything is 503.
	tok2 := tb.Agent(t, "read:orders:42").Token
	hits := e.backend.count()
	require.NoError(t, e.load(e.remoteGateway(fmt.Sprintf("\t\tbroker %s {\n\t\t\ttls_ca %s\n\t\t}\n", tb.URL, pki.CAFile)+rules)))
	resp, _ := requireStatus(t, 503, "GET", e.gatewayURL("/orders/42"), tok2)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	require.Equal(t, hits, e.backend.count(), "nothing unconfirmed reached the backend")
}

// TestRemoteE2EFaults: broker failures through Caddy are 503 with
// Retry-After, never an allow, and the gateway recovers by itself.
func TestRemoteE2EFaults(t *testing.T) {
	f := brokertest.NewFakeBroker(t)
	e := newEnv(t, "")
	require.NoError(t, e.load(e.remoteGateway(fmt.Sprintf(`		broker %s {
			timeout 300ms
		}
		require GET /orders/{id} read:orders:{id}
`, f.Server.URL))))
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	for name, answer := range map[string]func(http.ResponseWriter, *http.Request, []byte){
		"500": brokertest.FakeStatus(500), "malformed": brokertest.FakeBody(`{"valid":`), "hang": f.Hang,
	} {
		f.Set(answer)
		resp, m := requireStatus(t, 503, "GET", e.gatewayURL("/orders/42"), tok)
		require.Equal(t, "5", resp.Header.Get("Retry-After"), name)
		require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"), name)
		require.Equal(t, "broker_unavailable", m["error_code"], name)
	}
	require.Zero(t, e.backend.count())
	require.Equal(t, 1.0, e.metric("agentwrit_gateway_remote_calls_total", `outcome="timeout"`))
	require.Equal(t, 2.0, e.metric("agentwrit_gateway_remote_calls_total", `outcome="error"`))
	require.Equal(t, 3.0, e.metric("agentwrit_gateway_decisions_total", `reason="broker_unavailable"`))

	f.Set(brokertest.FakeBody(`{"valid":false,"error":"token is invalid or expired"}`))
	resp, _ := requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), tok)
	require.Equal(t, `Bearer realm="agentwrit", error="invalid_token"`, resp.Header.Get("WWW-Authenticate"))

	other := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	f.Set(brokertest.FakeValid)
	requireStatus(t, 200, "GET", e.gatewayURL("/orders/42"), other)
	require.Equal(t, 1, e.backend.count())
}

// TestRemoteE2ELoadErrors: bad remote settings fail the config load with
// a clear message, before anything is contacted.
func TestRemoteE2ELoadErrors(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("junk"), 0o600))
	for gateway, want := range map[string]string{
		"broker ftp://10.0.0.5":                                                          "scheme must be http or https",
		"broker http://10.0.0.5/?a=b":                                                    "must not have a query",
		"broker 10.0.0.5:8080":                                                           "must start with http:// or https://",
		"broker http://10.0.0.5 {\n cache_ttl -1s\n}":                                    "cache_ttl must be positive",
		"broker http://10.0.0.5 {\n timeout 0s\n}":                                       "timeout must be positive",
		"broker http://10.0.0.5 {\n cache_size -3\n}":                                    "cache_size must be a positive integer",
		"broker https://10.0.0.5 {\n tls_ca " + dir + "/no.pem\n}":                       "no such file",
		"broker https://10.0.0.5 {\n tls_ca " + garbage + "\n}":                          "no PEM certificate",
		"broker http://10.0.0.5 {\n tls_ca " + garbage + "\n}":                           "need an https URL",
		"broker https://10.0.0.5 {\n tls_client_cert " + garbage + " " + garbage + "\n}": "tls_client_cert",
		"broker embedded":                                                                "no broker",
	} {
		err := e.load(e.remoteGateway(gateway + "\nrequire GET /orders/{id} read:orders:{id}"))
		require.ErrorContains(t, err, want, gateway)
	}
}

// TestRemoteE2ESeparateCaddy builds cmd/caddy-agentwrit, runs it as a
// separate process serving this project's broker, and points an
// in-process gateway at it in remote mode: allow, insufficient scope,
// revoke, denied within cache_ttl.
func TestRemoteE2ESeparateCaddy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the caddy-agentwrit binary")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "caddy-agentwrit")
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/caddy-agentwrit")
	build.Dir = ".."
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	port := freePort(t)
	cfg := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`{
	admin off
	persist_config off
	default_bind 127.0.0.1
	storage file_system %s
	agentwrit {
		admin_secret %s
		database %s
	}
}
http://127.0.0.1:%d {
	agentwrit_broker
}
`, filepath.Join(dir, "storage"), adminSecret, filepath.Join(dir, "broker.db"), port)), 0o600))
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	proc := exec.CommandContext(ctx, bin, "run", "--config", cfg, "--adapter", "caddyfile")
	proc.Dir = dir
	proc.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	proc.Stdout, proc.Stderr = &logs, &logs
	proc.Cancel = func() error { return proc.Process.Signal(os.Interrupt) }
	proc.WaitDelay = 10 * time.Second
	require.NoError(t, proc.Start())
	t.Cleanup(func() {
		cancel()
		_ = proc.Wait()
		if t.Failed() {
			t.Logf("broker process output:\n%s", logs.String())
		}
	})
	health := fmt.Sprintf("http://127.0.0.1:%d/v1/health", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		require.True(t, time.Now().Before(deadline), "broker process not ready: %v\n%s", err, logs.String())
		time.Sleep(100 * time.Millisecond)
	}

	e := newEnv(t, "")
	e.brokerPort = port // e.agent, e.revoke talk to the separate broker
	require.NoError(t, e.load(e.remoteGateway(fmt.Sprintf(`		broker http://127.0.0.1:%d {
			cache_ttl 1s
		}
		require GET /orders/{id} read:orders:{id}
`, port))))
	agentID, tok := e.agent("read:orders:42")
	requireStatus(t, 200, "GET", e.gatewayURL("/orders/42"), tok)
	require.Equal(t, agentID, e.backend.header("X-AgentWrit-Agent-ID"))
	resp, _ := requireStatus(t, 403, "GET", e.gatewayURL("/orders/43"), tok)
	require.Equal(t, `Bearer realm="agentwrit", error="insufficient_scope", scope="read:orders:43"`, resp.Header.Get("WWW-Authenticate"))
	requireStatus(t, 200, "GET", e.gatewayURL("/orders/42"), tok)
	e.revoke(tok)
	took := pollStatus(t, e.gatewayURL("/orders/42"), tok, 401, 3*time.Second, 200)
	require.LessOrEqual(t, took, 2*time.Second, "revocation seen within cache_ttl (1s) plus slack")
	hits := e.backend.count()
	requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), tok)
	require.Equal(t, hits, e.backend.count())
}

// syncBuffer is a bytes.Buffer safe for a subprocess's two output pipes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

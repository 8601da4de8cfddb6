package caddymodule

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// The validator itself (cache, coalescing, faults, TLS, answer parsing)
// is tested in package remote. These tests cover the glue: configuration,
// Caddyfile, Prometheus metrics, and how the handler answers what the
// validator returns.

func dur(d time.Duration) *caddy.Duration { v := caddy.Duration(d); return &v }

// gateway is an enforcement handler in remote mode, driven without Caddy.
type gateway struct {
	h   *Handler
	reg *prometheus.Registry
}

func newGateway(t testing.TB, rb *RemoteBroker) *gateway {
	t.Helper()
	rules := []scopemap.Rule{
		{Methods: []string{"GET"}, Pattern: "/orders/{id}", Scopes: []string{"read:orders:{id}"}},
		{Public: true, Methods: []string{"GET"}, Pattern: "/healthz"},
	}
	reg := prometheus.NewRegistry()
	col := testCollectors(t, reg)
	v, err := rb.newValidator(col.remote, slog.New(slog.DiscardHandler), reg)
	require.NoError(t, err)
	h := testHandler(t, &Handler{Rules: rules, Broker: rb, remote: v}, v, nil, col, nil)
	t.Cleanup(func() { _ = h.Cleanup() })
	return &gateway{h: h, reg: reg}
}

// result of one request through the gateway.
type result struct {
	status    int
	forwarded bool // the next handler ran
	header    http.Header
	agent     string
}

func (g *gateway) get(path, tok string) result {
	req := httptest.NewRequest("GET", path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	rec := httptest.NewRecorder()
	var res result
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		res.forwarded, res.agent = true, r.Header.Get(HeaderAgentID)
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if err := g.h.ServeHTTP(rec, req, next); err != nil {
		panic(err)
	}
	res.status, res.header = rec.Code, rec.Header()
	return res
}

// metric is the value of the counter name with the given label value (or
// the only one), 0 if there is none.
func (g *gateway) metric(name, label string) float64 {
	c, err := g.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range c {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func (g *gateway) calls(outcome string) float64 {
	return g.metric("agentwrit_gateway_remote_calls_total", outcome)
}

func requireUnavailable(t *testing.T, r result, msg ...any) {
	t.Helper()
	require.Equal(t, http.StatusServiceUnavailable, r.status, msg...)
	require.NotEmpty(t, r.header.Get("Retry-After"), msg...)
	require.False(t, r.forwarded, msg...)
}

func requireInvalid(t *testing.T, r result, msg ...any) {
	t.Helper()
	require.Equal(t, http.StatusUnauthorized, r.status, msg...)
	require.Equal(t, `Bearer realm="agentwrit", error="invalid_token"`, r.header.Get("WWW-Authenticate"), msg...)
	require.False(t, r.forwarded, msg...)
}

// TestRemoteOptions: the configuration becomes remote.Options with the
// defaults, placeholders expanded and TLS files loaded; bad values are
// refused by their configuration names.
func TestRemoteOptions(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not a certificate"), 0o600))
	pki := NewTestPKI(t)

	o, err := (&RemoteBroker{URL: "https://broker.example:8443/aw/"}).options()
	require.NoError(t, err)
	require.Equal(t, remote.Options{URL: "https://broker.example:8443/aw/",
		CacheTTL: remote.DefaultCacheTTL, NegativeCacheTTL: remote.DefaultNegativeCacheTTL}, o,
		"defaults for what was not given; Timeout and CacheSize 0 are remote's defaults")

	o, err = (&RemoteBroker{URL: "http://10.0.0.5:8080", CacheTTL: dur(0), NegativeCacheTTL: dur(0), CacheSize: 7,
		Timeout: caddy.Duration(time.Second), StaleIfError: caddy.Duration(time.Minute)}).options()
	require.NoError(t, err)
	require.Equal(t, remote.Options{URL: "http://10.0.0.5:8080", CacheSize: 7, Timeout: time.Second, StaleIfError: time.Minute}, o,
		"an explicit 0 turns a cache off")

	o, err = (&RemoteBroker{URL: "https://127.0.0.1", TLSCA: pki.CAFile,
		TLSClientCert: &RemoteClientCert{pki.ClientCertFile, pki.ClientKeyFile}}).options()
	require.NoError(t, err)
	require.NotNil(t, o.TLS.RootCAs)
	require.Len(t, o.TLS.Certificates, 1)
	require.Equal(t, uint16(tls.VersionTLS12), o.TLS.MinVersion)

	t.Setenv("AGENTWRIT_TEST_BROKER", "http://127.0.0.1:9")
	t.Setenv("AGENTWRIT_TEST_CA", pki.CAFile)
	o, err = (&RemoteBroker{URL: " {env.AGENTWRIT_TEST_BROKER} "}).options()
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:9", o.URL)
	v, err := (&RemoteBroker{URL: "{env.AGENTWRIT_TEST_BROKER}"}).newValidator(newCollectors().remote, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	require.NoError(t, err)
	v.Close()
	o, err = (&RemoteBroker{URL: "https://127.0.0.1", TLSCA: "{env.AGENTWRIT_TEST_CA}"}).options()
	require.NoError(t, err)
	require.NotNil(t, o.TLS.RootCAs, "placeholders in file names too")

	for _, c := range []struct {
		rb   RemoteBroker
		want string
	}{
		{RemoteBroker{}, "url is required"},
		{RemoteBroker{URL: "{env.AGENTWRIT_TEST_UNSET}"}, "url is required"},
		{RemoteBroker{URL: "broker.example:8080"}, "must start with http:// or https://"},
		{RemoteBroker{URL: "ftp://broker.example"}, "scheme must be http or https"},
		{RemoteBroker{URL: "http://b.example/?x=1"}, "must not have a query"},
		{RemoteBroker{URL: "http://u:p@b.example"}, "credentials"},
		{RemoteBroker{URL: "http://b", CacheTTL: dur(-time.Second)}, "cache_ttl must not be negative"},
		{RemoteBroker{URL: "http://b", NegativeCacheTTL: dur(-time.Second)}, "negative_cache_ttl must not be negative"},
		{RemoteBroker{URL: "http://b", Timeout: -1}, "timeout must not be negative"},
		{RemoteBroker{URL: "http://b", StaleIfError: -1}, "stale_if_error must not be negative"},
		{RemoteBroker{URL: "http://b", CacheSize: -1}, "cache_size must be positive"},
		{RemoteBroker{URL: "http://b", TLSCA: pki.CAFile}, "need an https URL"},
		{RemoteBroker{URL: "http://b", TLSCA: garbage}, "need an https URL"},
		{RemoteBroker{URL: "https://b", TLSCA: filepath.Join(dir, "missing.pem")}, "no such file"},
		{RemoteBroker{URL: "https://b", TLSCA: garbage}, "no PEM certificate"},
		{RemoteBroker{URL: "https://b", TLSClientCert: &RemoteClientCert{Cert: pki.ClientCertFile}}, "both a certificate and a key"},
		{RemoteBroker{URL: "https://b", TLSClientCert: &RemoteClientCert{garbage, pki.ClientKeyFile}}, "tls_client_cert"},
		{RemoteBroker{URL: "https://b", TLSClientCert: &RemoteClientCert{pki.ClientCertFile, filepath.Join(dir, "nokey")}}, "no such file"},
	} {
		_, err := c.rb.newValidator(newCollectors().remote, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
		require.ErrorContains(t, err, c.want, "%+v", c.rb)
	}
}

// parse reads body as the block of the agentwrit directive.
func parse(body string) (*Handler, error) {
	h := new(Handler)
	return h, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("agentwrit {\n" + body + "\n}"))
}

// requireParseErrors checks that each body fails with its message, and
// that no message repeats the secret "hunter2" some of them hold.
func requireParseErrors(t *testing.T, cases map[string]string) {
	t.Helper()
	for body, want := range cases {
		_, err := parse(body)
		require.ErrorContains(t, err, want, body)
		require.NotContains(t, err.Error(), "hunter2", "no secret in an error")
	}
}

func TestRemoteCaddyfile(t *testing.T) {
	h, err := parse(`broker https://10.0.0.5:8443/aw {
		cache_ttl 1s
		cache_size 10
		negative_cache_ttl 0
		timeout 250ms
		stale_if_error 1m
		tls_ca /etc/agentwrit/ca.pem
		tls_client_cert /etc/agentwrit/client.pem /etc/agentwrit/client.key
	}
	require GET /orders/{id} read:orders:{id}`)
	require.NoError(t, err)
	require.Equal(t, &RemoteBroker{
		URL: "https://10.0.0.5:8443/aw", CacheTTL: dur(time.Second), CacheSize: 10, NegativeCacheTTL: dur(0),
		Timeout: caddy.Duration(250 * time.Millisecond), StaleIfError: caddy.Duration(time.Minute),
		TLSCA: "/etc/agentwrit/ca.pem", TLSClientCert: &RemoteClientCert{"/etc/agentwrit/client.pem", "/etc/agentwrit/client.key"},
	}, h.Broker)
	require.Len(t, h.Rules, 1)
	// The JSON form round-trips, and an explicit cache_ttl 0 survives omitempty.
	raw, err := json.Marshal(h.Broker)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"negative_cache_ttl":0`)
	var back RemoteBroker
	require.NoError(t, json.Unmarshal(raw, &back))
	require.Equal(t, h.Broker, &back)

	h, err = parse("broker http://127.0.0.1:8080")
	require.NoError(t, err)
	require.Equal(t, &RemoteBroker{URL: "http://127.0.0.1:8080"}, h.Broker)
	h, err = parse("broker embedded")
	require.NoError(t, err)
	require.Nil(t, h.Broker)

	requireParseErrors(t, map[string]string{
		"broker":                                            "embedded' or the URL",
		"broker a b":                                        "broker takes one argument",
		"broker embedded {\n cache_ttl 1s\n}":               "takes no options",
		"broker http://b {\n cache_ttl -1s\n}":              "cache_ttl must be positive",
		"broker http://b {\n cache_ttl soon\n}":             "cache_ttl",
		"broker http://b {\n timeout 0\n}":                  "timeout must be positive",
		"broker http://b {\n stale_if_error -5s\n}":         "stale_if_error must be positive",
		"broker http://b {\n cache_size 0\n}":               "cache_size must be a positive integer",
		"broker http://b {\n cache_size lots\n}":            "cache_size must be a positive integer",
		"broker http://b {\n tls_client_cert a\n}":          "two arguments",
		"broker http://b {\n tls_ca\n}":                     "broker tls_ca takes exactly one argument",
		"broker http://b {\n cache_ttl 1s 2s\n}":            "broker cache_ttl takes exactly one argument",
		"broker http://b {\n cache_ttl 1s\ncache_ttl 2s\n}": "given twice",
		"broker http://b {\n retries 3\n}":                  "unrecognized broker option",
	})
}

// TestRemoteGateway runs the handler in remote mode against this
// project's broker: the enforcement table's token rows, then how the
// validator's answers become statuses (503 with Retry-After when the
// broker fails, 401 for its "no") and Prometheus counters.
func TestRemoteGateway(t *testing.T) {
	tb := brokertest.New(t, brokertest.Options{})
	tok := tb.Agent(t, "read:orders:42").Token
	g := newGateway(t, &RemoteBroker{URL: tb.URL, CacheTTL: dur(time.Second)})
	keysBefore := g.metric("agentwrit_gateway_jwks_refreshes_total", "ok") // the process's counter

	r := g.get("/orders/42", tok)
	require.Equal(t, http.StatusOK, r.status)
	require.True(t, r.forwarded)
	require.True(t, strings.HasPrefix(r.agent, "spiffe://"), r.agent)

	r = g.get("/orders/43", tok)
	require.Equal(t, http.StatusForbidden, r.status)
	require.Equal(t, `Bearer realm="agentwrit", error="insufficient_scope", scope="read:orders:43"`, r.header.Get("WWW-Authenticate"))
	require.False(t, r.forwarded)

	r = g.get("/orders/42", "")
	require.Equal(t, http.StatusUnauthorized, r.status)
	require.Equal(t, `Bearer realm="agentwrit"`, r.header.Get("WWW-Authenticate"))

	// A forged signature passes the pre-checks, but this broker publishes
	// its keys: the forgery is refused before any call.
	parts := strings.Split(tok, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[0] ^= 1
	forged := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	requireInvalid(t, g.get("/orders/42", forged))
	requireInvalid(t, g.get("/orders/42", forged))
	requireInvalid(t, g.get("/orders/42", "garbage"))

	require.Equal(t, http.StatusOK, g.get("/healthz", "garbage").status)

	require.Equal(t, 1.0, g.calls("valid"))
	require.Equal(t, 0.0, g.calls("invalid"), "forgeries cost no call")
	require.Equal(t, 3.0, g.metric("agentwrit_gateway_cache_misses_total", ""), "garbage is refused before the cache counts")
	require.Equal(t, 1.0, g.metric("agentwrit_gateway_cache_hits_total", ""))
	require.Equal(t, 1.0, g.metric("agentwrit_gateway_jwks_refreshes_total", "ok")-keysBefore, "the key set is fetched once")

	t.Run("a failing broker is 503 with Retry-After, never an allow", func(t *testing.T) {
		f := brokertest.NewFakeBroker(t)
		g := newGateway(t, &RemoteBroker{URL: f.Server.URL, Timeout: caddy.Duration(300 * time.Millisecond)})
		f.Set(brokertest.FakeStatus(500))
		tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
		requireUnavailable(t, g.get("/orders/42", tok))
		f.Set(brokertest.FakeBody(`{"valid":false,"Valid":true}`))
		requireUnavailable(t, g.get("/orders/42", tok), "a case-variant key is malformed, not a yes")
		f.Set(f.Hang)
		requireUnavailable(t, g.get("/orders/42", tok))
		require.Equal(t, 2.0, g.calls("error"))
		require.Equal(t, 1.0, g.calls("timeout"))
		require.Equal(t, 3.0, g.metric("agentwrit_gateway_decisions_total", "broker_unavailable"))
		f.Set(brokertest.FakeBody(`{"valid":false}`))
		requireInvalid(t, g.get("/orders/42", tok))
		f.Set(brokertest.FakeValid)
		r := g.get("/orders/42", brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42"))
		require.Equal(t, http.StatusOK, r.status)
		require.True(t, r.forwarded)
	})
}

// TestRemoteMetrics: each Observer event lands on its Prometheus series,
// and two handlers share them.
func TestRemoteMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := testCollectors(t, reg).remote
	again := m
	var o remote.Observer = m
	o.CacheHit()
	o.CacheMiss()
	again.CacheMiss()
	o.CacheEviction()
	o.StaleHit()
	for _, outcome := range []remote.Outcome{remote.OutcomeValid, remote.OutcomeInvalid, remote.OutcomeError, remote.OutcomeTimeout, remote.OutcomeError} {
		o.Call(outcome, 3*time.Millisecond)
	}
	require.Equal(t, 1.0, testutil.ToFloat64(m.hits))
	require.Equal(t, 2.0, testutil.ToFloat64(m.misses))
	require.Equal(t, 1.0, testutil.ToFloat64(m.evictions))
	require.Equal(t, 1.0, testutil.ToFloat64(m.staleHits))
	g := &gateway{reg: reg}
	for outcome, want := range map[string]float64{"valid": 1, "invalid": 1, "error": 2, "timeout": 1} {
		require.Equal(t, want, g.calls(outcome), outcome)
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var observed uint64
	for _, mf := range mfs {
		if mf.GetName() == "agentwrit_gateway_remote_call_duration_seconds" {
			observed = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	require.EqualValues(t, 5, observed, "every call's latency")
}

// BenchmarkHandlerAllowedRemote is BenchmarkHandlerAllowed in remote mode
// with the token's answer cached: the remote gateway's hot path.
func BenchmarkHandlerAllowedRemote(b *testing.B) {
	f := brokertest.NewFakeBroker(b)
	g := newGateway(b, &RemoteBroker{URL: f.Server.URL})
	g.benchAllowed(b, brokertest.FakeToken(b, time.Now().Add(time.Hour), "read:orders:*"))
	if f.Calls() != 1 {
		b.Fatalf("%d broker calls, want 1", f.Calls())
	}
}

// benchAllowed is benchRequests on the gateway's handler.
func (g *gateway) benchAllowed(b *testing.B, tok string) { benchRequests(b, g.h, tok) }

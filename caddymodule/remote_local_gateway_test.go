package caddymodule

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
)

// localGateway is a gateway in verify local mode against tb, with an app
// registered for it.
func localGateway(t testing.TB, tb *brokertest.Server, staleness time.Duration) *gateway {
	t.Helper()
	app, err := tb.Admin(t).CreateApp(context.Background(), broker.AppRequest{Name: "gateway", Scopes: []string{broker.FeedScope}})
	require.NoError(t, err)
	return newGateway(t, &RemoteBroker{URL: tb.URL, Verify: VerifyLocal, Timeout: caddy.Duration(10 * time.Second),
		ClientID: app.ClientID, ClientSecret: app.ClientSecret, MaxStaleness: caddy.Duration(staleness)})
}

// until repeats a request until it answers want; every answer before
// must be one of allowed.
func (g *gateway) until(t testing.TB, path, tok string, want int, allowed ...int) result {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := g.get(path, tok)
		if r.status == want {
			return r
		}
		require.Contains(t, allowed, r.status)
		require.True(t, time.Now().Before(deadline), "still %d, want %d", r.status, want)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRemoteLocalGateway: the handler in verify local mode. Requests on
// enforced routes are 503 until the feed has synchronized, then decided
// from memory (no validate call); a revocation is refused at once.
func TestRemoteLocalGateway(t *testing.T) {
	tb := brokertest.New(t, brokertest.Options{})
	tok := tb.Agent(t, "read:orders:42").Token
	g := localGateway(t, tb, 0)
	connects := g.metric("agentwrit_gateway_feed_connects_total", "") // the process's counter

	r := g.until(t, "/orders/42", tok, http.StatusOK, http.StatusServiceUnavailable)
	require.True(t, r.forwarded)
	require.Equal(t, http.StatusForbidden, g.get("/orders/43", tok).status)
	requireInvalid(t, g.get("/orders/42", tok[:len(tok)-4]+"AAAA"))
	require.Equal(t, http.StatusOK, g.get("/healthz", "").status)

	tb.RevokeToken(t, tok)
	g.until(t, "/orders/42", tok, http.StatusUnauthorized, http.StatusOK)
	require.Equal(t, 1.0, g.metric("agentwrit_gateway_decisions_total", "revoked"))

	require.Zero(t, g.calls("valid")+g.calls("invalid")+g.calls("error")+g.calls("timeout"), "no validate call")
	require.Equal(t, 1.0, g.metric("agentwrit_gateway_feed_connects_total", "")-connects)
}

// TestRemoteLocalNoFeed: verify local against an upstream-like broker is
// 503 with Retry-After, never an allow.
func TestRemoteLocalNoFeed(t *testing.T) {
	f := brokertest.NewFakeBroker(t)
	g := newGateway(t, &RemoteBroker{URL: f.Server.URL, Verify: VerifyLocal, ClientID: "gw", ClientSecret: "upstream-secret"})
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	for range 5 {
		requireUnavailable(t, g.get("/orders/42", tok))
	}
	require.Zero(t, f.Calls())
}

// TestRemoteHealthMetrics: each HealthObserver event lands on its
// Prometheus series, which a second registry (the next configuration's)
// gets as they are.
func TestRemoteHealthMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	col := testCollectors(t, reg)
	v, err := (&RemoteBroker{URL: "http://127.0.0.1:9"}).newValidator(col.remote, nil, reg)
	require.NoError(t, err)
	v.Close()
	g := &gateway{reg: reg}
	series := [][2]string{
		{"agentwrit_gateway_feed_connects_total", ""}, {"agentwrit_gateway_feed_disconnects_total", ""},
		{"agentwrit_gateway_feed_stale_total", ""}, {"agentwrit_gateway_breaker_opens_total", ""},
		{"agentwrit_gateway_client_limited_total", ""},
		{"agentwrit_gateway_jwks_refreshes_total", "ok"}, {"agentwrit_gateway_jwks_refreshes_total", "error"},
	}
	before := map[[2]string]float64{} // the counters are the process's: other tests count too
	for _, s := range series {
		before[s] = g.metric(s[0], s[1])
	}
	var o remote.HealthObserver = gatewayObserver{col.remote, remoteHealth()}
	o.FeedConnected()
	o.FeedDisconnected()
	o.FeedStale()
	o.BreakerOpened()
	o.ClientLimited()
	o.KeysRefreshed(true)
	o.KeysRefreshed(false)
	for _, s := range series {
		require.Equal(t, 1.0, g.metric(s[0], s[1])-before[s], s)
	}

	again := prometheus.NewRegistry()
	v, err = (&RemoteBroker{URL: "http://127.0.0.1:9"}).newValidator(col.remote, nil, again)
	require.NoError(t, err)
	v.Close()
	require.Equal(t, g.metric("agentwrit_gateway_breaker_opens_total", ""), (&gateway{reg: again}).metric("agentwrit_gateway_breaker_opens_total", ""))
}

// BenchmarkHandlerAllowedRemoteLocal is BenchmarkHandlerAllowedRemote in
// verify local mode: the token verified before, checked against the
// revocations, no call. It should cost what BenchmarkHandlerAllowed
// (embedded) does.
func BenchmarkHandlerAllowedRemoteLocal(b *testing.B) {
	tb := brokertest.New(b, brokertest.Options{})
	tok := tb.Agent(b, "read:orders:*").Token
	g := localGateway(b, tb, time.Hour)
	g.until(b, "/orders/42", tok, http.StatusOK, http.StatusServiceUnavailable)
	g.benchAllowed(b, tok)
	if c := g.calls("valid"); c != 0 {
		b.Fatalf("%v broker calls, want none", c)
	}
}

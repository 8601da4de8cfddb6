package broker_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// The fleet tests run several replicas, each a broker with its own Store,
// on one PostgreSQL database, and check that together they behave as one
// broker: challenges, single-use tokens and nonces, the signing key, the
// audit chain and revocations are shared.

// fleet starts n replicas on the database dsn.
func fleet(t *testing.T, dsn string, n int) []*brokertest.Server {
	t.Helper()
	rs := make([]*brokertest.Server, n)
	for i := range rs {
		rs[i] = brokertest.New(t, brokertest.Options{Store: brokertest.OpenStore(t, dsn)})
	}
	return rs
}

// multiUse creates a launch token any number of agents may register with.
func multiUse(t *testing.T, r *brokertest.Server, scopes ...string) string {
	t.Helper()
	no := false
	lt, err := r.Admin(t).CreateLaunchToken(context.Background(), broker.LaunchTokenRequest{
		AgentName: "fleet", AllowedScope: scopes, SingleUse: &no,
	})
	require.NoError(t, err)
	return lt.LaunchToken
}

// signedRegistration is a registration of a new key for nonce.
func signedRegistration(t *testing.T, launchToken, nonce string, scopes []string) broker.RegisterRequest {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	sig, err := client.SignNonce(key, nonce)
	require.NoError(t, err)
	return broker.RegisterRequest{
		LaunchToken: launchToken, Nonce: nonce, PublicKey: client.PublicKey(key), Signature: sig,
		OrchID: client.DefaultOrchID, TaskID: client.DefaultTaskID, RequestedScope: scopes,
	}
}

// startTogether runs f(i) for i < n on goroutines released at once by
// closing a gate, and waits for all.
func startTogether(n int, f func(i int)) {
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { <-gate; f(i) })
	}
	close(gate)
	wg.Wait()
}

func TestFleetChallengeAcrossReplicas(t *testing.T) {
	rs := fleet(t, brokertest.PostgresDSN(t), 2)
	ctx := context.Background()
	scopes := []string{"read:data:*"}
	ch, err := rs[0].Client(t).Challenge(ctx)
	require.NoError(t, err)
	res, err := rs[1].Client(t).RegisterRaw(ctx, signedRegistration(t, rs[0].LaunchToken(t, scopes...), ch.Nonce, scopes))
	require.NoError(t, err, "a nonce issued by replica A must be accepted by replica B")
	_, err = rs[0].Broker.Verify(ctx, res.AccessToken)
	require.NoError(t, err, "a token issued by B verifies on A")
}

// raceRegistrations sends regs, spread over the replicas, at once, and
// returns how many succeeded; every failure must be a 401 whose detail
// contains want.
func raceRegistrations(t *testing.T, rs []*brokertest.Server, regs []broker.RegisterRequest, want string) int {
	t.Helper()
	errs := make([]error, len(regs))
	clients := make([]*client.Client, len(rs))
	for i, r := range rs {
		clients[i] = r.Client(t)
	}
	startTogether(len(regs), func(i int) {
		_, errs[i] = clients[i%len(rs)].RegisterRaw(context.Background(), regs[i])
	})
	wins := 0
	for i, err := range errs {
		var ce *client.Error
		switch {
		case err == nil:
			wins++
		case errors.As(err, &ce) && ce.Status == http.StatusUnauthorized && strings.Contains(ce.Detail, want):
		default:
			t.Errorf("racer %d on replica %d: %v", i, i%len(rs), err)
		}
	}
	return wins
}

func TestFleetSingleUseRaces(t *testing.T) {
	rs := fleet(t, brokertest.PostgresDSN(t), 3)
	ctx := context.Background()
	scopes := []string{"read:data:*"}
	const racers = 16

	t.Run("launch token", func(t *testing.T) {
		lt := rs[0].LaunchToken(t, scopes...) // single-use by default
		regs := make([]broker.RegisterRequest, racers)
		for i := range regs {
			ch, err := rs[i%len(rs)].Client(t).Challenge(ctx)
			require.NoError(t, err)
			regs[i] = signedRegistration(t, lt, ch.Nonce, scopes)
		}
		require.Equal(t, 1, raceRegistrations(t, rs, regs, "launch token already consumed"),
			"exactly one registration may consume a single-use launch token, fleet-wide")
	})
	t.Run("nonce", func(t *testing.T) {
		lt := multiUse(t, rs[0], scopes...)
		ch, err := rs[1].Client(t).Challenge(ctx)
		require.NoError(t, err)
		regs := make([]broker.RegisterRequest, racers)
		for i := range regs {
			regs[i] = signedRegistration(t, lt, ch.Nonce, scopes)
		}
		require.Equal(t, 1, raceRegistrations(t, rs, regs, "nonce already consumed"),
			"exactly one registration may consume a nonce, fleet-wide")
	})
}

func TestFleetSigningKeyCreatedOnce(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	stores := make([]*broker.Store, 3)
	errs := make([]error, len(stores))
	startTogether(len(stores), func(i int) { stores[i], errs[i] = brokertest.Open(dsn) })
	for i, s := range stores {
		require.NoError(t, errs[i], "store %d", i)
		t.Cleanup(func() { s.Close() })
	}
	ctx := context.Background()
	var kid string
	var jwks *broker.JWKSet
	for i, s := range stores {
		r := brokertest.New(t, brokertest.Options{Store: s})
		got, err := r.Client(t).JWKS(ctx)
		require.NoError(t, err)
		if i == 0 {
			kid, jwks = r.Broker.KeyID(), got
			require.Len(t, jwks.Keys, 1, "one signing key for a fresh fleet")
			continue
		}
		require.Equal(t, kid, r.Broker.KeyID(), "replica %d signs with another key", i)
		require.Equal(t, jwks, got, "replica %d publishes another JWKS", i)
	}
}

func TestFleetOneAuditChain(t *testing.T) {
	rs := fleet(t, brokertest.PostgresDSN(t), 3)
	ctx := context.Background()
	scopes := []string{"read:data:*"}
	lts := make([]string, len(rs))
	for i, r := range rs {
		lts[i] = multiUse(t, r, scopes...)
	}
	const workers, each = 4, 6
	errs := make([]error, len(rs)*workers)
	clients := make([]*client.Client, len(rs))
	for i, r := range rs {
		clients[i] = r.Client(t)
	}
	startTogether(len(errs), func(w int) {
		c := clients[w%len(rs)]
		for j := range each {
			var err error
			if j%2 == 0 {
				_, err = c.Register(ctx, lts[w%len(rs)], scopes)
			} else {
				_, err = c.LoginAdmin(ctx, brokertest.AdminSecret)
			}
			if err != nil {
				errs[w] = err
				return
			}
		}
	})
	require.NoError(t, errors.Join(errs...))

	admin := rs[0].Admin(t)
	var ids []string
	for e, err := range admin.AllAuditEvents(ctx, client.AuditQuery{}) {
		require.NoError(t, err)
		ids = append(ids, e.ID)
	}
	// Every replica's appends and the logins above, at least.
	require.GreaterOrEqual(t, len(ids), len(errs)*each)
	for i, id := range ids {
		require.Equal(t, fmt.Sprintf("evt-%06d", i+1), id, "audit ids must be gap-free and in order")
	}
	for i, r := range rs {
		v, err := r.Admin(t).VerifyAudit(ctx)
		require.NoError(t, err)
		require.True(t, v.Intact, "replica %d: chain broken: %+v", i, v.Broken)
		require.GreaterOrEqual(t, v.Verified, int64(len(ids)))
	}
}

// revocationAction revokes agent's token on replica r, one way or another.
type revocationAction struct {
	name string
	do   func(ctx context.Context, r *brokertest.Server, admin *client.Client, a *client.Agent, jti string) error
}

var revocationActions = []revocationAction{
	{"revoke", func(ctx context.Context, _ *brokertest.Server, admin *client.Client, _ *client.Agent, jti string) error {
		_, err := admin.Revoke(ctx, broker.LevelToken, jti)
		return err
	}},
	{"release", func(ctx context.Context, _ *brokertest.Server, _ *client.Client, a *client.Agent, _ string) error {
		return a.Client().Release(ctx)
	}},
	{"renew", func(ctx context.Context, _ *brokertest.Server, _ *client.Client, a *client.Agent, _ string) error {
		_, err := a.Client().Renew(ctx)
		return err
	}},
}

// propagationTimeout is how long a revocation may take to reach another
// replica before the test calls it lost.
const propagationTimeout = 10 * time.Second

// awaitRefusal polls r's Verify of tok until it is revoked, and returns
// how long that took; it fails t if the token is ever refused for another
// reason or not within propagationTimeout.
func awaitRefusal(t *testing.T, r *brokertest.Server, tok string, since time.Time) time.Duration {
	t.Helper()
	for {
		_, err := r.Broker.Verify(context.Background(), tok)
		if errors.Is(err, broker.ErrRevoked) {
			return time.Since(since)
		}
		if err != nil {
			t.Fatalf("verify on the other replica: %v", err)
		}
		if time.Since(since) > propagationTimeout {
			t.Fatalf("revocation not enforced on the other replica after %s", propagationTimeout)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func TestFleetRevocationPropagation(t *testing.T) {
	rs := fleet(t, brokertest.PostgresDSN(t), 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	scopes := []string{"read:data:*"}
	lt := multiUse(t, a, scopes...)
	admin := a.Admin(t)
	n := 210
	if testing.Short() {
		n = 30
	}
	lags := make([]time.Duration, 0, n)
	for i := range n {
		act := revocationActions[i%len(revocationActions)]
		ag, err := a.Client(t).Register(ctx, lt, scopes)
		require.NoError(t, err)
		c, err := b.Broker.Verify(ctx, ag.Token)
		require.NoError(t, err, "B must accept A's fresh token")
		start := time.Now()
		require.NoError(t, act.do(ctx, a, admin, ag, c.Jti), act.name)
		_, err = a.Broker.Verify(ctx, ag.Token)
		require.ErrorIs(t, err, broker.ErrRevoked, "%s is effective at once on the replica that made it", act.name)
		lags = append(lags, awaitRefusal(t, b, ag.Token, start))
	}
	p50, p99, maxLag := percentiles(lags)
	t.Logf("revocation propagation A→B over %d revocations (revoke/release/renew): p50 %s p99 %s max %s", n, p50, p99, maxLag)
}

// percentiles returns the 50th and 99th percentile and the maximum of ds.
func percentiles(ds []time.Duration) (p50, p99, maxD time.Duration) {
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return at(0.50), at(0.99), s[len(s)-1]
}

// TestFleetStalenessFailsClosed cuts replica B off the database through a
// proxy: once its revocations are older than MaxStaleness B refuses every
// token (503, never an allow) and every write; when the database is back B
// recovers by itself and enforces what A revoked meanwhile.
func TestFleetStalenessFailsClosed(t *testing.T) {
	dsn := brokertest.PostgresDSN(t)
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	proxy := brokertest.NewProxy(t, u.Host)
	viaProxy, err := proxy.URL(dsn)
	require.NoError(t, err)

	ctx := context.Background()
	a := brokertest.New(t, brokertest.Options{Store: brokertest.OpenStore(t, dsn)})
	db, err := storage.Open(ctx, viaProxy, storage.Options{StatementTimeout: 2 * time.Second})
	require.NoError(t, err)
	const staleness = time.Second
	bs, err := broker.NewStore(ctx, db, broker.StoreOptions{MaxStaleness: staleness, CatchUpInterval: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { bs.Close() })
	b := brokertest.New(t, brokertest.Options{Store: bs})

	scopes := []string{"read:data:*"}
	kept, doomed := a.Agent(t, scopes...), a.Agent(t, scopes...)
	bAdmin := b.AdminToken(t)
	for _, ag := range []*client.Agent{kept, doomed} {
		_, err := b.Broker.Verify(ctx, ag.Token)
		require.NoError(t, err)
	}

	proxy.Cut()
	cutAt := time.Now()
	// Within the bound B may still answer from its index; past it, it
	// must refuse. Wait for the refusal, bounded.
	for {
		_, err := b.Broker.Verify(ctx, kept.Token)
		if errors.Is(err, broker.ErrUnavailable) {
			break
		}
		require.NoError(t, err)
		require.Less(t, time.Since(cutAt), staleness+10*time.Second, "B still allows long after MaxStaleness without its database")
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("B refused %s after the cut (MaxStaleness %s)", time.Since(cutAt).Round(time.Millisecond), staleness)

	// Revoked on A while B cannot hear of it.
	_, err = a.Admin(t).Revoke(ctx, broker.LevelAgent, doomed.ID)
	require.NoError(t, err)

	hc := b.Server.Client()
	expect503 := func(method, path, token string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, b.URL+path, strings.NewReader(`{}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := hc.Do(req)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "%s %s", method, path)
		require.Equal(t, "application/problem+json", res.Header.Get("Content-Type"), "%s %s", method, path)
		require.NotEmpty(t, res.Header.Get("Retry-After"), "%s %s", method, path)
	}
	expect503(http.MethodPost, "/v1/token/renew", kept.Token)     // a valid agent token
	expect503(http.MethodGet, "/v1/admin/status", bAdmin)         // a valid admin token
	expect503(http.MethodPost, "/v1/admin/launch-tokens", bAdmin) // a write
	expect503(http.MethodGet, "/v1/challenge", "")                // a write without a token
	v, err := b.Client(t).Validate(ctx, kept.Token)               // validate's contract: valid or not
	require.NoError(t, err)
	require.False(t, v.Valid, "validate must not say valid while B is stale")

	require.NoError(t, proxy.Restore())
	restoredAt := time.Now()
	// From now on the doomed token must never verify: the first answer
	// other than "unavailable" is "revoked".
	for {
		_, err := b.Broker.Verify(ctx, doomed.Token)
		if errors.Is(err, broker.ErrRevoked) {
			break
		}
		require.ErrorIs(t, err, broker.ErrUnavailable, "a token revoked on A while B was cut must never be allowed on B")
		require.Less(t, time.Since(restoredAt), 30*time.Second, "B did not recover")
		time.Sleep(10 * time.Millisecond)
	}
	_, err = b.Broker.Verify(ctx, kept.Token)
	require.NoError(t, err, "B allows again once synchronized")
	t.Logf("B recovered %s after the database came back", time.Since(restoredAt).Round(time.Millisecond))
	// Writes work again too (the pool reconnects by itself).
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := b.Client(t).Challenge(ctx)
		if err == nil {
			break
		}
		require.Less(t, time.Now(), deadline, "B's writes did not recover: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
}

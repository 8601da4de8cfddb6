package remote

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// Validate mode under attack and against a broker that misbehaves: the
// signature checked before a call, the circuit breaker, the per-client
// bound, and answers that would widen a token.

// TestSignatureBeforeCall: against a broker that publishes its keys, a
// forged token, or one naming a key that does not exist, costs no call;
// the key set is fetched once, not per token.
func TestSignatureBeforeCall(t *testing.T) {
	ctx := context.Background()
	tb := newTestBroker(t, nil)
	tok := tb.Agent(t, "read:orders:42").Token
	v, rec := newTestValidator(t, cached(Options{URL: tb.Server.URL}))
	c, err := v.Validate(ctx, tok)
	requireValid(t, tok, c, err)
	require.EqualValues(t, 1, tb.validations.Load())
	for i := range 100 {
		junk := forge(tok)
		if i%2 == 0 {
			junk = withKid(tok, fmt.Sprintf("no-such-key-%d", i))
		}
		c, err := v.Validate(ctx, junk)
		requireInvalid(t, c, err)
	}
	require.EqualValues(t, 1, tb.validations.Load(), "junk reached the broker")
	require.LessOrEqual(t, rec.keysOK.Load(), int64(3), "the key set is not fetched per token")

	// Against an upstream broker (no JWKS) the broker decides, as before.
	f := brokertest.NewFakeBroker(t)
	up, _ := newTestValidator(t, cached(Options{URL: f.Server.URL}))
	ft := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	c, err = up.Validate(ctx, ft)
	requireValid(t, ft, c, err)
	require.EqualValues(t, 1, f.Calls())
	require.EqualValues(t, 1, f.JWKSCalls())
	for range 5 {
		_, _ = up.Validate(ctx, brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42"))
	}
	require.EqualValues(t, 1, f.JWKSCalls(), "a 404 is remembered")
}

// TestBreaker: a broker that answers 5xx or times out is asked
// breakerThreshold times, then not at all while the breaker is open
// (ErrUnavailable, no call); after the backoff one call probes, and calls
// resume when it succeeds. Statuses that waiting does not cure (4xx) do
// not open it.
func TestBreaker(t *testing.T) {
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	for name, failure := range map[string]func(f *brokertest.FakeBroker) brokertest.FakeAnswer{
		"500":     func(*brokertest.FakeBroker) brokertest.FakeAnswer { return brokertest.FakeStatus(500) },
		"429":     func(*brokertest.FakeBroker) brokertest.FakeAnswer { return brokertest.FakeStatus(429) },
		"timeout": func(f *brokertest.FakeBroker) brokertest.FakeAnswer { return f.Hang },
	} {
		t.Run(name, func(t *testing.T) {
			f := brokertest.NewFakeBroker(t)
			v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL, Timeout: 200 * time.Millisecond}))
			// Open for 0.5–1 s, then 1–2 s: long enough that a loaded
			// machine does not reach the probe within the loops below.
			v.gate.breaker.min, v.gate.breaker.max = time.Second, 2*time.Second
			f.Set(failure(f))
			for range 20 {
				c, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
				requireUnavailable(t, c, err)
			}
			require.EqualValues(t, breakerThreshold, f.Calls(), "calls stop once the breaker is open")
			require.EqualValues(t, 1, rec.breakerOpened.Load())
			_, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
			require.ErrorIs(t, err, errBreakerOpen)

			// Still failing: the probe reopens it, for longer.
			eventually(t, 10*time.Second, func() bool {
				_, _ = v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
				return f.Calls() > breakerThreshold
			}, "a probe")
			for range 5 {
				_, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
				require.ErrorIs(t, err, errBreakerOpen)
			}
			require.EqualValues(t, breakerThreshold+1, f.Calls(), "one probe, not a burst")
			require.EqualValues(t, 2, rec.breakerOpened.Load())

			f.Set(brokertest.FakeValid)
			eventually(t, 10*time.Second, func() bool {
				tok := brokertest.FakeToken(t, exp, "read:orders:42")
				c, err := v.Validate(ctx, tok)
				return err == nil && c.Jti == tokenJTI(t, tok)
			}, "calls resume after the backoff")
			calls := f.Calls()
			for range 10 {
				_, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
				require.NoError(t, err)
			}
			require.Equal(t, calls+10, f.Calls(), "closed again")
		})
	}
	t.Run("4xx does not open it", func(t *testing.T) {
		f := brokertest.NewFakeBroker(t)
		v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL}))
		f.Set(brokertest.FakeStatus(400))
		for range 20 {
			c, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
			requireUnavailable(t, c, err)
		}
		require.EqualValues(t, 20, f.Calls())
		require.Zero(t, rec.breakerOpened.Load())
	})
}

// slowBroker makes f answer after a release (or never, until the test
// ends), counting the calls in flight: the highest count is returned by
// peak.
func slowBroker(f *brokertest.FakeBroker, delay time.Duration, answer func(http.ResponseWriter, *http.Request, []byte)) (inFlight, peak *atomic.Int64) {
	inFlight, peak = new(atomic.Int64), new(atomic.Int64)
	f.Set(func(w http.ResponseWriter, r *http.Request, p []byte) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		select {
		case <-time.After(delay):
			answer(w, r, p)
		case <-r.Context().Done():
		case <-f.Done():
		}
	})
	return inFlight, peak
}

// TestClientBound: one client holds at most MaxCallsPerClient calls in
// flight and ClientCallRate per second (bursts of twice that); other
// clients are not affected; an IPv6 client is its /64; a validation
// without a client address, or with the bound off, is not bounded.
func TestClientBound(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	from := func(ip string) context.Context { return WithClientIP(context.Background(), ip) }

	t.Run("in flight", func(t *testing.T) {
		f := brokertest.NewFakeBroker(t)
		v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL, Timeout: 5 * time.Second}))
		_, peak := slowBroker(f, 300*time.Millisecond, brokertest.FakeValid)
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for i := range 40 {
			wg.Go(func() {
				_, err := v.Validate(from("10.1.1.1"), shapedToken(i, exp.Unix()))
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		busy := 0
		for err := range errs {
			if err != nil {
				require.ErrorIs(t, err, errClientBusy)
				busy++
			}
		}
		require.LessOrEqual(t, peak.Load(), int64(MaxCallsPerClient))
		require.Positive(t, busy)
		require.EqualValues(t, busy, rec.clientLimited.Load())
	})

	t.Run("per second", func(t *testing.T) {
		f := brokertest.NewFakeBroker(t)
		v, _ := newTestValidator(t, cached(Options{URL: f.Server.URL, ClientCallRate: 1}))
		refused := func(ip string, n int) int {
			r := 0
			for range n {
				if _, err := v.Validate(from(ip), brokertest.FakeToken(t, exp, "read:orders:42")); err != nil {
					require.ErrorIs(t, err, errClientBusy)
					r++
				}
			}
			return r
		}
		require.Equal(t, 8, refused("2001:db8::1", 10), "a burst of twice the rate, then refusals")
		require.Positive(t, refused("2001:db8::2", 1), "the same /64")
		require.Zero(t, refused("2001:db9::1", 2), "another network")
		require.Zero(t, refused("10.2.2.2", 2), "another client")
		require.Zero(t, refused("", 40), "no address: not bounded per client")

		off, _ := newTestValidator(t, cached(Options{URL: f.Server.URL, ClientCallRate: -1}))
		for range 40 {
			_, err := off.Validate(from("10.3.3.3"), brokertest.FakeToken(t, exp, "read:orders:42"))
			require.NoError(t, err)
		}
	})
}

// TestFloodSparesOthers: with the broker slow (0.2s an answer), a client
// flooding junk tokens gets refusals, and a client that is not flooding
// still gets its fresh, real token answered: the flood cannot take the
// connection pool.
func TestFloodSparesOthers(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	f := brokertest.NewFakeBroker(t)
	good := brokertest.FakeToken(t, exp, "read:orders:42")
	inFlight, peak := slowBroker(f, 200*time.Millisecond, func(w http.ResponseWriter, r *http.Request, p []byte) {
		if strings.Contains(string(p), tokenJTI(t, good)) {
			brokertest.FakeValid(w, r, p)
			return
		}
		brokertest.FakeBody(`{"valid":false}`)(w, r, p)
	})
	v, _ := newTestValidator(t, cached(Options{URL: f.Server.URL, Timeout: time.Second}))
	flooder := WithClientIP(context.Background(), "203.0.113.66")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var accepted atomic.Bool
	var next atomic.Int64
	for range 400 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Well-formed, fresh, and unsigned: each needs the broker.
				if c, err := v.Validate(flooder, shapedToken(int(next.Add(1)), exp.Unix())); err == nil || c != nil {
					accepted.Store(true)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	eventually(t, 10*time.Second, func() bool { return inFlight.Load() >= MaxCallsPerClient }, "the flood is at its bound")
	c, err := v.Validate(WithClientIP(context.Background(), "198.51.100.7"), good)
	close(stop)
	wg.Wait()
	requireValid(t, good, c, err, "the real token is answered during the flood")
	require.False(t, accepted.Load(), "junk was accepted")
	require.LessOrEqual(t, peak.Load(), int64(MaxCallsPerClient+1), "the flood never held more than its share")
}

// TestForeignClaims: the broker (or whatever rewrites its answers) may
// confirm a token only with the token's own claims; anything it would
// widen, narrow or reattribute is refused (ErrUnavailable, logged), not
// cached, and does not open the breaker.
func TestForeignClaims(t *testing.T) {
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	hop := map[string]any{"agent": "spiffe://agentwrit.local/agent/o/t/root", "scope": []string{"read:orders:*"},
		"delegated_at": "2025-01-01T00:00:00Z", "signature": "c2ln"}
	for field, change := range map[string]func(m map[string]any){
		"scope":            func(m map[string]any) { m["scope"] = []string{"read:orders:*"} },
		"scope, added":     func(m map[string]any) { m["scope"] = []string{"read:orders:42", "write:orders:42"} },
		"task_id":          func(m map[string]any) { m["task_id"] = "other-task" },
		"orch_id":          func(m map[string]any) { m["orch_id"] = "other-orch" },
		"delegation_chain": func(m map[string]any) { m["delegation_chain"] = []any{hop} },
		"chain_hash":       func(m map[string]any) { m["chain_hash"] = "abc" },
		"aud":              func(m map[string]any) { m["aud"] = []string{"other-service"} },
		"iss":              func(m map[string]any) { m["iss"] = "elsewhere" },
		"sub":              func(m map[string]any) { m["sub"] = "spiffe://agentwrit.local/agent/o/t/admin" },
		"exp":              func(m map[string]any) { m["exp"] = exp.Add(time.Hour).Unix() },
		"iat":              func(m map[string]any) { m["iat"] = 1 },
		"nbf":              func(m map[string]any) { m["nbf"] = 1 },
		"sid":              func(m map[string]any) { m["sid"] = "session" },
	} {
		t.Run(field, func(t *testing.T) {
			f := brokertest.NewFakeBroker(t)
			var logs syncLog
			v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL, Logger: slog.New(slog.NewTextHandler(&logs, nil))}))
			f.Set(brokertest.FakeEdited(change))
			tok := brokertest.FakeToken(t, exp, "read:orders:42")
			for range 6 {
				c, err := v.Validate(ctx, tok)
				requireUnavailable(t, c, err)
				require.ErrorIs(t, err, errForeignClaims)
			}
			require.EqualValues(t, 6, f.Calls(), "not cached, and the breaker stays closed")
			require.Zero(t, rec.breakerOpened.Load())
			require.Equal(t, 1, strings.Count(logs.String(), "remote broker answer refused"), "logged, but not every time")
			require.Contains(t, logs.String(), "level=ERROR")
			f.Set(brokertest.FakeValid)
			c, err := v.Validate(ctx, tok)
			requireValid(t, tok, c, err)
		})
	}
}

// TestClaimsDiff: every field of broker.Claims, present or future, is
// compared; a nil and an empty list are the same.
func TestClaimsDiff(t *testing.T) {
	base := broker.Claims{Iss: "i", Sub: "s", Exp: 2, Iat: 1, Jti: "j", Scope: []string{"a:b:c"}, TaskID: "t", OrchID: "o",
		DelegationChain: []broker.DelegRecord{{Agent: "a", Scope: []string{"a:b:c"}, DelegatedAt: "d", Signature: "x"}}}
	diff := func(a, b broker.Claims) string { return claimsDiff(reflect.ValueOf(a), reflect.ValueOf(b)) }
	require.Empty(t, diff(base, base))
	empty := base
	empty.Aud = []string{}
	require.Empty(t, diff(base, empty), "nil and empty aud")
	typ := reflect.TypeFor[broker.Claims]()
	for i := range typ.NumField() {
		other := base
		f := reflect.ValueOf(&other).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(f.String() + "-other")
		case reflect.Int64:
			f.SetInt(f.Int() + 1)
		case reflect.Slice:
			f.Set(reflect.Append(reflect.MakeSlice(f.Type(), 0, f.Len()+1), reflect.Zero(f.Type().Elem())))
		default:
			t.Fatalf("claimsDiff's test does not know how to change %s (%s)", typ.Field(i).Name, f.Kind())
		}
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		require.Equal(t, name, diff(base, other), typ.Field(i).Name)
	}
	hop := base
	hop.DelegationChain = []broker.DelegRecord{{Agent: "a", Scope: []string{"a:b:*"}, DelegatedAt: "d", Signature: "x"}}
	require.Equal(t, "delegation_chain", diff(base, hop), "a hop's scope")
}

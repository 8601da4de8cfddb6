package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// cached is o with the default cache settings where o gives none, as
// the Caddy glue resolves an absent cache_ttl and negative_cache_ttl.
func cached(o Options) Options {
	if o.CacheTTL == 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.NegativeCacheTTL == 0 {
		o.NegativeCacheTTL = DefaultNegativeCacheTTL
	}
	return o
}

// TestRealBroker validates against this project's broker over HTTP: a
// confirmed token, a forged one, negative caching and revocation lag.
func TestRealBroker(t *testing.T) {
	ctx := context.Background()
	tb := newTestBroker(t, nil)
	tok := tb.Agent(t, "read:orders:42").Token
	v, _ := newTestValidator(t, cached(Options{URL: tb.Server.URL, CacheTTL: time.Second}))

	c, err := v.Validate(ctx, tok)
	requireValid(t, tok, c, err)
	require.True(t, strings.HasPrefix(c.Sub, "spiffe://"), c.Sub)
	require.Equal(t, []string{"read:orders:42"}, c.Scope, "what the gateway's scope check reads")

	c, err = v.Validate(ctx, "")
	requireInvalid(t, c, err, "no token")

	// A forged signature passes the pre-checks, but this broker publishes
	// its keys: the signature is checked before any call, and a forgery
	// costs none.
	forged := forge(tok)
	before := tb.validations.Load()
	for range 3 {
		c, err = v.Validate(ctx, forged)
		require.ErrorIs(t, err, broker.ErrBadSignature)
		requireInvalid(t, c, err)
	}
	require.Equal(t, before, tb.validations.Load(), "forgeries reached the broker")

	// Revocation is seen within CacheTTL (1s), not before the cache says so.
	c, err = v.Validate(ctx, tok)
	requireValid(t, tok, c, err)
	tb.RevokeToken(t, tok)
	took := eventuallyRefused(t, v, tok, requireInvalid, "revocation seen through the cache")
	require.LessOrEqual(t, took, 1500*time.Millisecond)
	c, err = v.Validate(ctx, tok)
	requireInvalid(t, c, err)

	t.Run("CacheTTL 0 sees a revocation on the next validation", func(t *testing.T) {
		tok := tb.Agent(t, "read:orders:42").Token
		v, _ := newTestValidator(t, Options{URL: tb.Server.URL, CacheTTL: 0, NegativeCacheTTL: DefaultNegativeCacheTTL})
		require.Nil(t, v.cache)
		for range 3 {
			c, err := v.Validate(ctx, tok)
			requireValid(t, tok, c, err)
		}
		before := tb.validations.Load()
		c, err := v.Validate(ctx, tok)
		requireValid(t, tok, c, err)
		require.Equal(t, before+1, tb.validations.Load(), "every validation asks")
		tb.RevokeToken(t, tok)
		c, err = v.Validate(ctx, tok)
		requireInvalid(t, c, err)
	})
}

// clientTLS is the TLS configuration of a gateway trusting the CA in
// caFile, presenting the PKI's client certificate if withCert.
func clientTLS(t *testing.T, p *testPKI, caFile string, withCert bool) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	require.NoError(t, err)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: x509.NewCertPool()}
	require.True(t, tc.RootCAs.AppendCertsFromPEM(pem))
	if withCert {
		cert, err := tls.LoadX509KeyPair(p.ClientCertFile, p.ClientKeyFile)
		require.NoError(t, err)
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc
}

// TestMutualTLS: the broker requires a client certificate.
func TestMutualTLS(t *testing.T) {
	ctx := context.Background()
	pki := newTestPKI(t)
	tb := newTestBroker(t, pki.ServerTLS)
	tok := tb.Agent(t, "read:orders:42").Token
	v, _ := newTestValidator(t, cached(Options{URL: tb.Server.URL, TLS: clientTLS(t, pki, pki.CAFile, true)}))
	c, err := v.Validate(ctx, tok)
	requireValid(t, tok, c, err)
	require.Equal(t, []string{"read:orders:42"}, c.Scope)
	tb.RevokeToken(t, tok)
	tok2 := tb.Agent(t, "read:orders:42").Token
	c, err = v.Validate(ctx, tok2)
	requireValid(t, tok2, c, err)

	before := tb.validations.Load()
	noCert, noCertRec := newTestValidator(t, cached(Options{URL: tb.Server.URL, TLS: clientTLS(t, pki, pki.CAFile, false)}))
	c, err = noCert.Validate(ctx, tok2)
	requireUnavailable(t, c, err, "no client certificate")
	wrongCA, wrongCARec := newTestValidator(t, cached(Options{URL: tb.Server.URL, TLS: clientTLS(t, pki, pki.OtherCAFile, true)}))
	c, err = wrongCA.Validate(ctx, tok2)
	requireUnavailable(t, c, err, "server certificate from an unknown CA")
	require.Equal(t, before, tb.validations.Load(), "neither reached the broker's handler")
	require.EqualValues(t, 2, noCertRec.outcomes(OutcomeError)+wrongCARec.outcomes(OutcomeError))
}

// TestFaults: every way the broker can fail is ErrUnavailable (a
// definitive no wraps broker.ErrInvalidToken), nothing unconfirmed is
// returned as valid, and the validator recovers by itself.
func TestFaults(t *testing.T) {
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	newFake := func(t *testing.T, o Options) (*brokertest.FakeBroker, *Validator, *recorder) {
		f := brokertest.NewFakeBroker(t)
		o.URL = f.Server.URL
		if o.Timeout == 0 {
			o.Timeout = 300 * time.Millisecond
		}
		v, rec := newTestValidator(t, cached(o))
		return f, v, rec
	}

	t.Run("broker down", func(t *testing.T) {
		f, v, rec := newFake(t, Options{})
		f.Server.Close()
		c, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
		requireUnavailable(t, c, err)
		require.EqualValues(t, 1, rec.outcomes(OutcomeError))
	})
	t.Run("broker hangs", func(t *testing.T) {
		f, v, rec := newFake(t, Options{})
		f.Set(f.Hang)
		start := time.Now()
		c, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
		requireUnavailable(t, c, err)
		require.Less(t, time.Since(start), 2*time.Second, "the timeout bounds the wait")
		require.EqualValues(t, 1, rec.outcomes(OutcomeTimeout))
	})
	bad := map[string]func(http.ResponseWriter, *http.Request, []byte){
		"500":                 brokertest.FakeStatus(500),
		"502":                 brokertest.FakeStatus(502),
		"404":                 brokertest.FakeStatus(404),
		"400":                 brokertest.FakeStatus(400),
		"302":                 func(w http.ResponseWriter, r *http.Request, _ []byte) { http.Redirect(w, r, "/elsewhere", 302) },
		"malformed JSON":      brokertest.FakeBody(`{"valid":tru`),
		"not JSON":            brokertest.FakeBody(`<html>ok</html>`),
		"empty body":          brokertest.FakeBody(``),
		"valid as string":     brokertest.FakeBody(`{"valid":"true","claims":{}}`),
		"no valid field":      brokertest.FakeBody(`{"claims":{"sub":"x"}}`),
		"valid, no claims":    brokertest.FakeBody(`{"valid":true}`),
		"valid, null claims":  brokertest.FakeBody(`{"valid":true,"claims":null}`),
		"valid, claims array": brokertest.FakeBody(`{"valid":true,"claims":[]}`),
		"trailing garbage": func(w http.ResponseWriter, r *http.Request, p []byte) {
			brokertest.FakeValid(w, r, p)
			w.Write([]byte(`{}`))
		},
		"claims of another token": brokertest.FakeEdited(func(m map[string]any) {
			m["jti"] = "0000000000000000000000000000000f"
		}),
		"claims without sub":    brokertest.FakeEdited(func(m map[string]any) { delete(m, "sub") }),
		"claims of wrong types": brokertest.FakeBody(`{"valid":true,"claims":{"sub":1,"jti":"x","exp":"soon"}}`),
		// encoding/json would take the last of duplicate keys, and match
		// "Valid" to the valid field: both would read as a yes.
		"duplicate valid":      brokertest.FakeBody(`{"valid":false,"valid":true}`),
		"case-variant valid":   brokertest.FakeBody(`{"valid":false,"Valid":true}`),
		"duplicate claims key": brokertest.FakeEdited(func(m map[string]any) { m["Sub"] = m["sub"] }),
	}
	for name, answer := range bad {
		t.Run(name, func(t *testing.T) {
			f, v, _ := newFake(t, Options{})
			f.Set(answer)
			tok := brokertest.FakeToken(t, exp, "read:orders:42")
			c, err := v.Validate(ctx, tok)
			requireUnavailable(t, c, err)
			c, err = v.Validate(ctx, tok)
			requireUnavailable(t, c, err)
			require.EqualValues(t, 2, f.Calls(), "failures are not cached")
			f.Set(brokertest.FakeValid) // recovers on its own
			c, err = v.Validate(ctx, tok)
			requireValid(t, tok, c, err)
		})
	}
	t.Run("valid:false is a definitive no, cached negatively", func(t *testing.T) {
		f, v, rec := newFake(t, Options{NegativeCacheTTL: 300 * time.Millisecond})
		f.Set(brokertest.FakeBody(`{"valid":false,"error":"token is invalid or expired"}`))
		tok := brokertest.FakeToken(t, exp, "read:orders:42")
		c, err := v.Validate(ctx, tok)
		requireInvalid(t, c, err)
		c, err = v.Validate(ctx, tok)
		requireInvalid(t, c, err)
		require.EqualValues(t, 1, f.Calls())
		require.EqualValues(t, 1, rec.outcomes(OutcomeInvalid))
		f.Set(brokertest.FakeValid)
		c, err = v.Validate(ctx, tok)
		requireInvalid(t, c, err, "still negatively cached")
		eventually(t, 2*time.Second, func() bool { _, err := v.Validate(ctx, tok); return err == nil }, "negative entry expires")
	})
	t.Run("refused tokens cannot push valid ones out of the cache", func(t *testing.T) {
		f, v, _ := newFake(t, Options{CacheSize: 8})
		good := brokertest.FakeToken(t, exp, "read:orders:42")
		c, err := v.Validate(ctx, good)
		requireValid(t, good, c, err)
		f.Set(brokertest.FakeBody(`{"valid":false}`))
		for range 50 { // six times the cache size, each refused and cached negatively
			c, err := v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
			requireInvalid(t, c, err)
		}
		calls := f.Calls()
		c, err = v.Validate(ctx, good)
		requireValid(t, good, c, err)
		require.Equal(t, calls, f.Calls(), "the valid token is still cached")
	})
	t.Run("slow then recovering", func(t *testing.T) {
		f, v, rec := newFake(t, Options{Timeout: 200 * time.Millisecond})
		var slow atomic.Bool
		slow.Store(true)
		f.Set(func(w http.ResponseWriter, r *http.Request, p []byte) {
			if slow.Load() {
				select {
				case <-time.After(time.Second):
				case <-r.Context().Done():
					return
				}
			}
			brokertest.FakeValid(w, r, p)
		})
		tok := brokertest.FakeToken(t, exp, "read:orders:42")
		for range 3 {
			c, err := v.Validate(ctx, tok)
			requireUnavailable(t, c, err)
		}
		require.EqualValues(t, 3, rec.outcomes(OutcomeTimeout))
		slow.Store(false)
		c, err := v.Validate(ctx, tok)
		requireValid(t, tok, c, err)
	})
	t.Run("StaleIfError serves a recent positive answer, then fails closed", func(t *testing.T) {
		f, v, rec := newFake(t, Options{CacheTTL: 200 * time.Millisecond, StaleIfError: time.Second})
		tok := brokertest.FakeToken(t, exp, "read:orders:42")
		c, err := v.Validate(ctx, tok)
		requireValid(t, tok, c, err)
		f.Set(brokertest.FakeStatus(500))
		time.Sleep(300 * time.Millisecond) // past CacheTTL, within StaleIfError
		c, err = v.Validate(ctx, tok)
		requireValid(t, tok, c, err, "stale entry served while the broker fails")
		require.EqualValues(t, 1, rec.staleHits.Load())
		require.EqualValues(t, 1, rec.outcomes(OutcomeError))
		eventuallyRefused(t, v, tok, requireUnavailable, "stale window ends")
		// An unknown token gets nothing from StaleIfError.
		c, err = v.Validate(ctx, brokertest.FakeToken(t, exp, "read:orders:42"))
		requireUnavailable(t, c, err)
		// A definitive no is never overridden by a stale yes.
		tok2 := brokertest.FakeToken(t, exp, "read:orders:42")
		f.Set(brokertest.FakeValid)
		// The failures opened the breaker: calls resume after its backoff.
		eventually(t, 5*time.Second, func() bool {
			c, err := v.Validate(ctx, tok2)
			if err != nil {
				requireUnavailable(t, c, err)
				return false
			}
			requireValid(t, tok2, c, err)
			return true
		}, "the breaker lets a call through again")
		time.Sleep(300 * time.Millisecond)
		f.Set(brokertest.FakeBody(`{"valid":false,"error":"token is invalid or expired"}`))
		c, err = v.Validate(ctx, tok2)
		requireInvalid(t, c, err)
	})
	t.Run("without StaleIfError an expired entry is not served", func(t *testing.T) {
		f, v, _ := newFake(t, Options{CacheTTL: 200 * time.Millisecond})
		tok := brokertest.FakeToken(t, exp, "read:orders:42")
		c, err := v.Validate(ctx, tok)
		requireValid(t, tok, c, err)
		f.Set(brokertest.FakeStatus(503))
		c, err = v.Validate(ctx, tok)
		requireValid(t, tok, c, err, "fresh entry")
		time.Sleep(300 * time.Millisecond)
		c, err = v.Validate(ctx, tok)
		requireUnavailable(t, c, err)
	})
	t.Run("StaleIfError never outlives the token", func(t *testing.T) {
		f, v, _ := newFake(t, Options{CacheTTL: time.Hour, StaleIfError: time.Hour})
		tok := brokertest.FakeToken(t, time.Now().Add(1500*time.Millisecond), "read:orders:42")
		c, err := v.Validate(ctx, tok)
		requireValid(t, tok, c, err)
		f.Set(brokertest.FakeStatus(500))
		e, ok := v.cache.positive.Peek(broker.TokenHash(tok))
		require.True(t, ok)
		exp := time.Unix(e.claims.Exp, 0).UnixNano()
		require.LessOrEqual(t, e.fresh, exp, "positive TTL = min(CacheTTL, exp - now)")
		require.LessOrEqual(t, e.stale, exp)
		eventuallyRefused(t, v, tok, requireInvalid, "the expired token is refused")
	})
}

// TestCoalescing: 100 concurrent validations of one new token cost one
// broker call; garbage costs none.
func TestCoalescing(t *testing.T) {
	ctx := context.Background()
	f := brokertest.NewFakeBroker(t)
	release := make(chan struct{})
	f.Set(func(w http.ResponseWriter, r *http.Request, p []byte) {
		<-release
		brokertest.FakeValid(w, r, p)
	})
	v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL}))
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			c, err := v.Validate(ctx, tok)
			if err == nil && c.Jti != tokenJTI(t, tok) {
				err = fmt.Errorf("claims of another token: %s", c.Jti)
			}
			errs <- err
		})
	}
	eventually(t, 5*time.Second, func() bool { return f.Calls() >= 1 }, "the call is made")
	time.Sleep(100 * time.Millisecond) // let stragglers reach the cache or the flight
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, f.Calls(), "one broker call for 100 concurrent validations")
	require.EqualValues(t, 1, rec.outcomes(OutcomeValid))
	require.EqualValues(t, 100, rec.hits.Load()+rec.misses.Load())

	// Afterwards the cache answers.
	c, err := v.Validate(ctx, tok)
	requireValid(t, tok, c, err)
	require.EqualValues(t, 1, f.Calls())

	t.Run("garbage costs no broker call", func(t *testing.T) {
		before := f.Calls()
		hdr := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
		sig := base64.RawURLEncoding.EncodeToString(make([]byte, 64))
		pay := func(exp int64) string { return hdr(fmt.Sprintf(`{"sub":"a","jti":"b","exp":%d}`, exp)) }
		future, past := time.Now().Add(time.Hour).Unix(), time.Now().Add(-time.Second).Unix()
		ok := hdr(`{"alg":"EdDSA"}`) + "." + pay(future) + "." + sig
		_, err := precheck(ok, time.Now())
		require.NoError(t, err, "the control token passes")
		for _, g := range []string{
			"x", "a.b", "a.b.c.d", "..", ok + ".", "." + pay(future) + "." + sig,
			hdr(`{"alg":"none"}`) + "." + pay(future) + "." + sig,
			hdr(`{"alg":"HS256"}`) + "." + pay(future) + "." + sig,
			hdr(`{"alg":"eddsa"}`) + "." + pay(future) + "." + sig,
			hdr(`{"typ":"JWT"}`) + "." + pay(future) + "." + sig,
			hdr(`not json`) + "." + pay(future) + "." + sig,
			hdr(`{"alg":"EdDSA"}`) + "." + pay(past) + "." + sig,
			hdr(`{"alg":"EdDSA"}`) + "." + hdr(`{"sub":"a","jti":"b"}`) + "." + sig,
			hdr(`{"alg":"EdDSA"}`) + "." + hdr(`{"exp":"tomorrow"}`) + "." + sig,
			hdr(`{"alg":"EdDSA"}`) + "." + hdr(`[]`) + "." + sig,
			hdr(`{"alg":"EdDSA"}`) + "." + pay(future) + "." + sig[:40],
			hdr(`{"alg":"EdDSA"}`) + "." + pay(future) + "." + sig + "AA",
			hdr(`{"alg":"EdDSA"}`) + "." + pay(future) + "." + strings.ReplaceAll(sig, "A", "+"),
			hdr(`{"alg":"EdDSA","alg":"EdDSA"}`) + "." + pay(future) + "." + sig,
			strings.ReplaceAll(ok, ".", "=."),
			"ey!." + pay(future) + "." + sig,
			ok[:10] + "\x00" + ok[11:],
			strings.Repeat("A", broker.MaxTokenLength+1),
		} {
			c, err := v.Validate(ctx, g)
			requireInvalid(t, c, err, g)
		}
		require.Equal(t, before, f.Calls(), "garbage reached the broker")
	})
}

// TestCachedNoAlloc: a cache hit, positive or negative, hashes the token
// on the stack and allocates nothing.
func TestCachedNoAlloc(t *testing.T) {
	ctx := context.Background()
	f := brokertest.NewFakeBroker(t)
	v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL}))
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	_, err := v.Validate(ctx, tok)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(1000, func() { _, err = v.Validate(ctx, tok) })
	require.NoError(t, err)
	require.Zero(t, allocs)

	f.Set(brokertest.FakeBody(`{"valid":false}`))
	refused := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	_, err = v.Validate(ctx, refused)
	require.ErrorIs(t, err, broker.ErrInvalidToken)
	allocs = testing.AllocsPerRun(1000, func() { _, err = v.Validate(ctx, refused) })
	require.ErrorIs(t, err, broker.ErrInvalidToken)
	require.Zero(t, allocs)
	require.EqualValues(t, 2, f.Calls())
	require.EqualValues(t, 2, rec.misses.Load(), "hits never reach the pre-check")
}

// TestCacheBounds: the cache never holds more than CacheSize.
func TestCacheBounds(t *testing.T) {
	ctx := context.Background()
	f := brokertest.NewFakeBroker(t)
	v, rec := newTestValidator(t, cached(Options{URL: f.Server.URL, CacheSize: 50}))
	exp := time.Now().Add(time.Hour)
	toks := make([]string, 200)
	for i := range toks {
		toks[i] = brokertest.FakeToken(t, exp, "read:orders:42")
		c, err := v.Validate(ctx, toks[i])
		requireValid(t, toks[i], c, err)
		require.LessOrEqual(t, v.cache.positive.Len(), 50)
	}
	require.EqualValues(t, 150, rec.evictions.Load())
	require.EqualValues(t, 200, f.Calls())
	c, err := v.Validate(ctx, toks[199])
	requireValid(t, toks[199], c, err)
	require.EqualValues(t, 200, f.Calls(), "recent token cached")
	c, err = v.Validate(ctx, toks[0])
	requireValid(t, toks[0], c, err)
	require.EqualValues(t, 201, f.Calls(), "oldest token was evicted")
}

// TestNoBackgroundGoroutines: building and closing many validators (as
// config reloads do) starts nothing that outlives them.
func TestNoBackgroundGoroutines(t *testing.T) {
	f := brokertest.NewFakeBroker(t)
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	before := runtime.NumGoroutine()
	for range 50 {
		v, err := New(cached(Options{URL: f.Server.URL}))
		require.NoError(t, err)
		_, err = v.Validate(context.Background(), tok)
		require.NoError(t, err)
		v.Close()
	}
	f.Server.CloseClientConnections()
	eventually(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= before+5 },
		fmt.Sprintf("goroutines: %d before, %d after", before, runtime.NumGoroutine()))
}

// TestRequestCancel: a waiter whose context ends stops waiting, without
// cancelling the shared call for the others.
func TestRequestCancel(t *testing.T) {
	f := brokertest.NewFakeBroker(t)
	release := make(chan struct{})
	f.Set(func(w http.ResponseWriter, r *http.Request, p []byte) { <-release; brokertest.FakeValid(w, r, p) })
	v, _ := newTestValidator(t, cached(Options{URL: f.Server.URL}))
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	done := make(chan error, 1)
	go func() { _, err := v.Validate(context.Background(), tok); done <- err }()
	eventually(t, 5*time.Second, func() bool { return f.Calls() == 1 }, "call in flight")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := v.Validate(ctx, tok)
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorIs(t, err, context.Canceled)
	close(release)
	require.NoError(t, <-done)
	require.EqualValues(t, 1, f.Calls())
}

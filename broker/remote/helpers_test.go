package remote

// Helpers for the validator's tests: a CA and certificates, and this
// project's broker over HTTP(S); the fake broker the tests control is
// brokertest.FakeBroker.

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// testPKI is brokertest.PKI.
type testPKI = brokertest.PKI

func newTestPKI(t testing.TB) *testPKI { return brokertest.NewPKI(t) }

// testBroker is this project's broker (brokertest) whose POST
// /v1/token/validate calls are counted.
type testBroker struct {
	*brokertest.Server
	validations atomic.Int64
}

// newTestBroker serves a fresh broker; serverTLS nil means plain HTTP.
func newTestBroker(t testing.TB, serverTLS *tls.Config) *testBroker {
	t.Helper()
	tb := new(testBroker)
	tb.Server = brokertest.New(t, brokertest.Options{TLS: serverTLS, Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == validatePath {
				tb.validations.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}})
	return tb
}

// tokenJTI reads a token's jti (without verifying it).
func tokenJTI(t testing.TB, tok string) string {
	t.Helper()
	lc, err := precheck(tok, time.Now())
	require.NoError(t, err)
	return lc.Jti
}

// forge flips a bit of tok's signature.
func forge(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
	sig[0] ^= 1
	return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// recorder is an Observer (and HealthObserver) that counts events.
type recorder struct {
	hits, misses, evictions, staleHits atomic.Int64
	calls                              [NumOutcomes]atomic.Int64
	connected, disconnected, stale     atomic.Int64
	keysOK, keysFailed                 atomic.Int64
	breakerOpened, clientLimited       atomic.Int64
}

func (r *recorder) FeedConnected()    { r.connected.Add(1) }
func (r *recorder) FeedDisconnected() { r.disconnected.Add(1) }
func (r *recorder) FeedStale()        { r.stale.Add(1) }
func (r *recorder) BreakerOpened()    { r.breakerOpened.Add(1) }
func (r *recorder) ClientLimited()    { r.clientLimited.Add(1) }
func (r *recorder) KeysRefreshed(ok bool) {
	if ok {
		r.keysOK.Add(1)
	} else {
		r.keysFailed.Add(1)
	}
}

func (r *recorder) CacheHit()                       { r.hits.Add(1) }
func (r *recorder) CacheMiss()                      { r.misses.Add(1) }
func (r *recorder) CacheEviction()                  { r.evictions.Add(1) }
func (r *recorder) StaleHit()                       { r.staleHits.Add(1) }
func (r *recorder) Call(o Outcome, _ time.Duration) { r.calls[o].Add(1) }

// outcomes returns the number of calls that ended with o.
func (r *recorder) outcomes(o Outcome) int64 { return r.calls[o].Load() }

// newTestValidator builds a Validator on o, counting into a recorder, and
// closes it when the test ends.
func newTestValidator(t testing.TB, o Options) (*Validator, *recorder) {
	t.Helper()
	rec := new(recorder)
	o.Observer = rec
	v, err := New(o)
	require.NoError(t, err)
	t.Cleanup(v.Close)
	return v, rec
}

// requireUnavailable: no usable answer, nothing allowed.
func requireUnavailable(t *testing.T, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.ErrorIs(t, err, ErrUnavailable, msg...)
	require.Nil(t, c, msg...)
}

// requireInvalid: a definitive no, nothing allowed.
func requireInvalid(t *testing.T, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.ErrorIs(t, err, broker.ErrInvalidToken, msg...)
	require.NotErrorIs(t, err, ErrUnavailable, msg...)
	require.Nil(t, c, msg...)
}

// requireValid: the token's claims, confirmed.
func requireValid(t *testing.T, tok string, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.NoError(t, err, msg...)
	require.NotNil(t, c, msg...)
	require.Equal(t, tokenJTI(t, tok), c.Jti, msg...)
}

// eventually polls cond every 50ms for up to d.
func eventually(t testing.TB, d time.Duration, cond func() bool, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not within %s: %s", d, msg)
	return 0
}

// eventuallyRefused validates tok until it is refused (within 3s), which
// check must then accept; every answer before is a valid one.
func eventuallyRefused(t *testing.T, v *Validator, tok string, check func(*testing.T, *broker.Claims, error, ...any), msg string) time.Duration {
	t.Helper()
	return eventually(t, 3*time.Second, func() bool {
		c, err := v.Validate(context.Background(), tok)
		if err == nil {
			requireValid(t, tok, c, nil)
			return false
		}
		check(t, c, err, msg)
		return true
	}, msg)
}

package remote

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// TestLocalRealBroker: local mode against this project's broker. Nothing
// is decided before the first heartbeat; then tokens verify from memory,
// and every kind of revocation (revoke, release, renew) is refused
// within moments, without a single validate call.
func TestLocalRealBroker(t *testing.T) {
	ctx := context.Background()
	fb := newFeedBroker(t, brokertest.Options{})
	a := fb.agent(t, "read:orders:42")
	v, rec := fb.validator(t, Options{})

	if v.local.f.beat.Load() == 0 {
		c, err := v.Validate(ctx, a.Token)
		if v.local.f.beat.Load() == 0 { // still before the first heartbeat
			requireUnavailable(t, c, err, "nothing is allowed before the first sync")
			require.ErrorIs(t, err, errNotSynced)
		}
	}
	waitSynced(t, v)
	require.EqualValues(t, 1, rec.connected.Load())
	c, err := v.Validate(ctx, a.Token)
	requireValid(t, a.Token, c, err)
	require.Equal(t, []string{"read:orders:42"}, c.Scope)

	c, err = v.Validate(ctx, forge(a.Token))
	require.ErrorIs(t, err, broker.ErrBadSignature)
	requireInvalid(t, c, err)
	c, err = v.Validate(ctx, "garbage")
	requireInvalid(t, c, err)

	// Revoked by jti, at the agent's level, by task: each seen at once.
	fb.revoke(t, broker.LevelToken, tokenJTI(t, a.Token))
	eventuallyRefused(t, v, a.Token, requireRevoked, "revoked token")
	b := fb.agent(t, "read:orders:42")
	c, err = v.Validate(ctx, b.Token)
	requireValid(t, b.Token, c, err)
	fb.revoke(t, broker.LevelAgent, b.ID)
	eventuallyRefused(t, v, b.Token, requireRevoked, "revoked agent")

	// Released: the token handed back is refused.
	rel := fb.agent(t, "read:orders:42")
	c, err = v.Validate(ctx, rel.Token)
	requireValid(t, rel.Token, c, err)
	require.NoError(t, rel.Client().Release(ctx))
	eventuallyRefused(t, v, rel.Token, requireRevoked, "released token")

	// Renewed: the predecessor dies, the successor lives.
	ren := fb.agent(t, "read:orders:42")
	c, err = v.Validate(ctx, ren.Token)
	requireValid(t, ren.Token, c, err)
	res, err := ren.Client().Renew(ctx)
	require.NoError(t, err)
	eventuallyRefused(t, v, ren.Token, requireRevoked, "renewed-away token")
	c, err = v.Validate(ctx, res.AccessToken)
	requireValid(t, res.AccessToken, c, err)

	require.Zero(t, fb.validations.Load(), "local mode asks the broker nothing on the request path")
	require.Zero(t, rec.misses.Load()+rec.hits.Load(), "and keeps no answer cache")
}

// TestLocalResume: a feed connection that breaks is resumed from the last
// sequence number, and a revocation made while it was down is applied.
func TestLocalResume(t *testing.T) {
	ctx := context.Background()
	fb := newFeedBroker(t, brokertest.Options{})
	fb.revoke(t, broker.LevelToken, "some-older-jti")
	fb.revoke(t, broker.LevelToken, "another-older-jti")
	a := fb.agent(t, "read:orders:42")
	v, rec := fb.validator(t, Options{})
	waitSynced(t, v)
	c, err := v.Validate(ctx, a.Token)
	requireValid(t, a.Token, c, err)
	seq := v.local.f.index.Seq()
	require.Positive(t, seq)

	fb.refuseFeed.Store(true)
	fb.cut()
	eventually(t, 10*time.Second, func() bool { return fb.open() == 0 && rec.disconnected.Load() == 1 }, "the stream is down")
	fb.revoke(t, broker.LevelToken, tokenJTI(t, a.Token)) // while nobody listens
	fb.refuseFeed.Store(false)

	eventuallyRefused(t, v, a.Token, requireRevoked, "the revocation made while disconnected")
	require.Equal(t, fmt.Sprint(seq-1), fb.lastEventID.Load(), "resumed with the last revocation applied, to check the broker still has it")
	require.Greater(t, v.local.f.index.Seq(), seq)
	waitSynced(t, v)
}

// TestLocalStaleness: a feed that goes silent (heartbeats stop, the
// connection stays up) makes every token unavailable after MaxStaleness;
// a revocation it swallowed is applied before anything is allowed again.
// A broker that is down entirely is the same, and both recover alone.
func TestLocalStaleness(t *testing.T) {
	ctx := context.Background()
	fb := newFeedBroker(t, brokertest.Options{})
	a := fb.agent(t, "read:orders:42")
	other := fb.agent(t, "read:orders:42")
	v, rec := fb.validator(t, Options{MaxStaleness: 2500 * time.Millisecond})
	waitSynced(t, v)
	c, err := v.Validate(ctx, a.Token)
	requireValid(t, a.Token, c, err)

	fb.muted.Store(true)
	eventuallyRefused(t, v, a.Token, requireUnavailable, "silent feed")
	_, err = v.Validate(ctx, a.Token)
	require.ErrorIs(t, err, errStale)
	require.EqualValues(t, 1, rec.stale.Load())

	fb.revoke(t, broker.LevelToken, tokenJTI(t, a.Token))
	eventually(t, 10*time.Second, func() bool { return fb.dropped.Load() > 0 }, "the broker sent the revocation into the silence")
	fb.muted.Store(false)
	eventually(t, 20*time.Second, func() bool {
		c, err := v.Validate(ctx, a.Token)
		if errors.Is(err, ErrUnavailable) {
			return false
		}
		requireRevoked(t, c, err, "the first decision after the silence knows the revocation")
		return true
	}, "feed fresh again")
	c, err = v.Validate(ctx, other.Token)
	requireValid(t, other.Token, c, err)

	fb.down.Store(true)
	fb.cut()
	eventuallyRefused(t, v, other.Token, requireUnavailable, "broker down")
	fb.down.Store(false)
	eventually(t, 40*time.Second, func() bool { _, err := v.Validate(ctx, other.Token); return err == nil }, "recovered")
	require.EqualValues(t, 2, rec.stale.Load())
}

// TestLocalKeyRotation: after a rotation the gateway, never restarted,
// accepts tokens of both keys; when the old key retires (max_ttl after the
// rotation, on the broker's clock) its tokens are refused.
func TestLocalKeyRotation(t *testing.T) {
	ctx := context.Background()
	var skew atomic.Int64 // how far the broker's clock runs ahead
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	db, err := storage.Open(ctx, filepath.Join(t.TempDir(), "broker.db"), storage.Options{})
	require.NoError(t, err)
	store, err := broker.NewStore(ctx, db, broker.StoreOptions{Now: now})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	fb := newFeedBroker(t, brokertest.Options{Store: store, Config: func(c *broker.Config) { c.MaxTTL, c.Now = time.Minute, now }})
	old := fb.agent(t, "read:orders:42")
	v, rec := fb.validator(t, Options{})
	waitSynced(t, v)
	c, err := v.Validate(ctx, old.Token)
	requireValid(t, old.Token, c, err)

	_, err = fb.Broker.RotateKey(ctx, "test")
	require.NoError(t, err)
	eventually(t, 10*time.Second, func() bool { return len(v.keys.Keys()) == 2 }, "the keys event fetched the new set")
	fresh := fb.agent(t, "read:orders:42")
	require.NotEqual(t, kidOf(t, old.Token), kidOf(t, fresh.Token))
	c, err = v.Validate(ctx, fresh.Token)
	requireValid(t, fresh.Token, c, err)
	c, err = v.Validate(ctx, old.Token)
	requireValid(t, old.Token, c, err, "the old key verifies until it retires")

	skew.Store(int64(time.Minute + time.Second)) // the old key retires
	require.NoError(t, v.keys.refresh(ctx))      // what KeysRefresh does every minute
	require.Len(t, v.keys.Keys(), 1)
	c, err = v.Validate(ctx, old.Token)
	requireInvalid(t, c, err, "a retired key's token")
	c, err = v.Validate(ctx, fresh.Token)
	requireValid(t, fresh.Token, c, err)
	require.GreaterOrEqual(t, rec.keysOK.Load(), int64(3))
}

// kidOf is the kid in a token's header.
func kidOf(t *testing.T, tok string) string {
	u, err := broker.ParseUnverified(tok)
	require.NoError(t, err)
	return u.Kid
}

// TestLocalNoFeed: local mode against an upstream-like broker (no JWKS,
// no revocation feed) refuses everything with 503 and says why in the
// log; fallback does not paper over it (once the follower has found out:
// until then, fallback validates through the broker, which is safe).
func TestLocalNoFeed(t *testing.T) {
	ctx := context.Background()
	f := brokertest.NewFakeBroker(t)
	var logs syncLog
	v, _ := newTestValidator(t, Options{URL: f.Server.URL, Mode: ModeLocal, ClientID: "gw", ClientSecret: "upstream-secret",
		Fallback: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	tok := brokertest.FakeToken(t, time.Now().Add(time.Hour), "read:orders:42")
	eventually(t, 10*time.Second, func() bool { return errors.Is(v.local.ready(), errNoFeed) }, "the broker is known to have no feed")
	calls := f.Calls()
	for range 3 {
		c, err := v.Validate(ctx, tok)
		requireUnavailable(t, c, err)
		require.ErrorIs(t, err, errNoFeed)
	}
	require.Equal(t, calls, f.Calls(), "a broker without a feed is not fallen back on")
	eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "has no revocation feed") }, "the log says why")
	require.Contains(t, logs.String(), "level=ERROR")
	require.NotContains(t, logs.String(), "upstream-secret")
}

// TestLocalMisconfigured: credentials the broker refuses, or an app whose
// ceiling lacks the feed's scope, are logged as what to fix, and nothing
// is allowed.
func TestLocalMisconfigured(t *testing.T) {
	ctx := context.Background()
	fb := newFeedBroker(t, brokertest.Options{})
	a := fb.agent(t, "read:orders:42")
	noFeedScope := fb.newApp(t, 1800, "read:orders:*")
	for _, c := range []struct {
		want           string
		clientID, secr string
	}{
		{"the broker refused the app's client_id and client_secret", fb.app.ClientID, "not-the-secret"},
		{"its scope ceiling must include read:revocations:*", noFeedScope.ClientID, noFeedScope.ClientSecret},
	} {
		var logs syncLog
		o := fb.options(Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		o.ClientID, o.ClientSecret = c.clientID, c.secr
		v, _ := newTestValidator(t, o)
		eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), c.want) }, c.want)
		require.Contains(t, logs.String(), "level=ERROR")
		require.NotContains(t, logs.String(), c.secr, "the secret is never logged")
		cl, err := v.Validate(ctx, a.Token)
		requireUnavailable(t, cl, err)
	}
}

// TestLocalFallback: with Fallback, a stale feed sends validations to the
// broker (cached, as validate mode) instead of refusing them.
func TestLocalFallback(t *testing.T) {
	ctx := context.Background()
	fb := newFeedBroker(t, brokertest.Options{})
	a := fb.agent(t, "read:orders:42")
	v, _ := fb.validator(t, cached(Options{Fallback: true, MaxStaleness: 2500 * time.Millisecond}))
	waitSynced(t, v)
	c, err := v.Validate(ctx, a.Token)
	requireValid(t, a.Token, c, err)
	require.Zero(t, fb.validations.Load())

	fb.muted.Store(true)
	eventually(t, 10*time.Second, func() bool { return v.local.ready() != nil }, "stale")
	c, err = v.Validate(ctx, a.Token)
	requireValid(t, a.Token, c, err, "validated through the broker")
	require.EqualValues(t, 1, fb.validations.Load())
	c, err = v.Validate(ctx, forge(a.Token))
	requireInvalid(t, c, err, "a forgery still costs no call")
	require.EqualValues(t, 1, fb.validations.Load())
	b := fb.agent(t, "read:orders:42")
	fb.revoke(t, broker.LevelToken, tokenJTI(t, b.Token))
	c, err = v.Validate(ctx, b.Token)
	requireInvalid(t, c, err, "the broker knows the revocation the feed did not deliver")
	fb.muted.Store(false)
	waitSynced(t, v)
}

// TestLocalForgeriesCostNothing: in local mode no token, however forged,
// reaches the broker; one naming unknown keys costs at most a key fetch a
// second.
func TestLocalForgeriesCostNothing(t *testing.T) {
	ctx := context.Background()
	fb := newFeedBroker(t, brokertest.Options{})
	a := fb.agent(t, "read:orders:42")
	v, _ := fb.validator(t, Options{})
	waitSynced(t, v)
	jwks := fb.jwks.Load()
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				tok := forge(a.Token)
				if i%2 == 0 { // a kid nobody knows
					tok = withKid(a.Token, fmt.Sprintf("kid-%d-%d", g, i))
				}
				c, err := v.Validate(ctx, tok)
				if err == nil || c != nil {
					panic("a forgery was accepted")
				}
			}
		})
	}
	wg.Wait()
	require.Zero(t, fb.validations.Load())
	require.LessOrEqual(t, fb.jwks.Load()-jwks, int64(time.Since(start)/keysMinInterval)+2)
}

// withKid re-headers tok with another kid (its signature no longer fits).
func withKid(tok, kid string) string {
	i := strings.IndexByte(tok, '.')
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT","kid":"` + kid + `"}`))
	return hdr + tok[i:]
}

// TestLocalSharedFollower: Validators of one broker and app share one
// follower (one login, one stream), and it stops with the last of them:
// no goroutine outlives Close.
func TestLocalSharedFollower(t *testing.T) {
	fb := newFeedBroker(t, brokertest.Options{})
	before := runtime.NumGoroutine()
	first, err := New(fb.options(Options{}))
	require.NoError(t, err)
	waitSynced(t, first)
	second, err := New(fb.options(Options{MaxStaleness: time.Minute}))
	require.NoError(t, err)
	require.Same(t, first.local.f, second.local.f)
	require.NoError(t, second.local.ready(), "a Validator joining a synchronized follower is ready at once")
	first.Close() // as a reload closes the old configuration
	require.NoError(t, second.local.ready())
	require.EqualValues(t, 1, fb.logins.Load())
	require.EqualValues(t, 1, fb.feeds.Load())
	second.Close()
	for range 20 { // started and closed before they even connect
		v, err := New(fb.options(Options{}))
		require.NoError(t, err)
		v.Close()
	}
	eventually(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= before+2 && fb.open() == 0 },
		fmt.Sprintf("goroutines: %d before, %d after", before, runtime.NumGoroutine()))
	followers.Lock()
	require.Empty(t, followers.all)
	followers.Unlock()
}

// TestLocalAppTokenRenewal: the follower logs in again before its app
// token expires, and when the broker refuses the token, without the feed
// going stale.
func TestLocalAppTokenRenewal(t *testing.T) {
	fb := newFeedBroker(t, brokertest.Options{})
	fb.app = fb.newApp(t, 6) // seconds: renewed every 4.8
	v, rec := fb.validator(t, Options{MaxStaleness: 20 * time.Second})
	waitSynced(t, v)
	eventually(t, 60*time.Second, func() bool { return fb.logins.Load() >= 3 }, "renewed twice")
	require.NoError(t, v.local.ready())
	require.Zero(t, rec.stale.Load())

	// A refused token (revoked here) is replaced by a new login.
	var tok string
	eventually(t, 30*time.Second, func() bool {
		v.local.f.mu.Lock()
		defer v.local.f.mu.Unlock()
		tok = v.local.f.token
		return tok != "" // between a renewal and the next login there is none
	}, "an app token")
	logins := fb.logins.Load()
	fb.revoke(t, broker.LevelToken, tokenJTI(t, tok))
	eventually(t, 30*time.Second, func() bool { return fb.logins.Load() > logins && v.local.ready() == nil }, "logged in again")
}

// syncLog is a log destination safe for concurrent writers.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

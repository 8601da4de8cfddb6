package remote

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// The follower of local mode: it logs in as the app, fetches the broker's
// key set and follows its revocation feed, so that a Validator decides
// every request from memory. One follower serves every local-mode
// Validator of the process that names the same broker and credentials:
// several routes, and the old and new configuration across a reload,
// share one feed connection, one app login, one key set and one claims
// cache, and a reload does not start from an unsynchronized copy.

// Reconnection backoff (with jitter): from feedRetryMin, doubling, to
// feedRetryMax; a stream that had synchronized reconnects after about
// feedRetryMin.
const (
	feedRetryMin = 250 * time.Millisecond
	feedRetryMax = 30 * time.Second
)

var (
	errNotSynced = fmt.Errorf("%w: not yet synchronized with the broker's revocation feed", ErrUnavailable)
	errStale     = fmt.Errorf("%w: the broker's revocation feed has been silent for longer than the staleness bound", ErrUnavailable)
	errNoFeed    = fmt.Errorf("%w: the broker has no revocation feed, which local verification needs (an upstream AgentWrit broker supports only validate mode)", ErrUnavailable)
	// errRenewal ends a stream whose app token is due for renewal.
	errRenewal = errors.New("app token due for renewal")
	// errStartOver ends a stream resumed in a numbering the broker no
	// longer has: the next one starts from the first revocation.
	errStartOver = errors.New("the broker's revocation sequence went back")
)

// followerID is what Validators must agree on to share a follower.
type followerID struct {
	url, clientID string
	secret        [sha256.Size]byte
	timeout       time.Duration
}

// followers is the process's registry of followers.
var followers struct {
	sync.Mutex
	all []*follower
}

type follower struct {
	id   followerID
	tls  *tls.Config
	refs int // under followers' lock

	secret      string
	api, stream *client.Client
	login       *client.Client // bounded by LoginTimeout
	httpClients []*http.Client
	timeout     time.Duration
	keys        *keyring
	index       *broker.RevocationIndex
	now         func() time.Time

	beat        atomic.Int64 // Unix nanoseconds of the last heartbeat, 0 before the first
	noFeed      atomic.Bool  // the broker answered 404 where the feed, its keys or app login should be
	keysFailing atomic.Bool  // the last refresh of a held key set failed
	keysNow     chan struct{}

	mu      sync.Mutex
	holders []*Validator // newest last: whose logger and observer are used
	token   string       // the app token, "" when none
	renewAt time.Time    // when to log in again
	problem string       // what was last logged as failing, "" when healthy

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// joinFollower returns the follower of o's broker and credentials for v,
// starting it if there is none. The follower contacts the broker only
// from its own goroutines, never before this returns.
func joinFollower(v *Validator, o *Options) (*follower, error) {
	id := followerID{url: o.URL, clientID: o.ClientID, secret: sha256.Sum256([]byte(o.ClientSecret)), timeout: v.timeout}
	followers.Lock()
	defer followers.Unlock()
	for _, f := range followers.all {
		if f.id == id && sameTLS(f.tls, o.TLS) {
			f.refs++
			f.mu.Lock()
			f.holders = append(f.holders, v)
			f.mu.Unlock()
			return f, nil
		}
	}
	f, err := newFollower(id, o, v)
	if err != nil {
		return nil, err
	}
	followers.all = append(followers.all, f)
	return f, nil
}

func newFollower(id followerID, o *Options, v *Validator) (*follower, error) {
	f := &follower{id: id, tls: o.TLS.Clone(), refs: 1, secret: o.ClientSecret, timeout: v.timeout,
		index: broker.NewRevocationIndex(), now: v.now, keysNow: make(chan struct{}, 1), holders: []*Validator{v}}
	apiHTTP := newHTTPClient(v.timeout, f.tls)
	streamHTTP := newHTTPClient(v.timeout, f.tls)
	// The feed's first bytes follow its backlog; the stream has its own
	// idle bound (client.FeedIdleTimeout) past the headers.
	streamHTTP.Transport.(*http.Transport).ResponseHeaderTimeout = client.FeedIdleTimeout
	loginHTTP := newOffPathHTTPClient(v.timeout, f.tls)
	f.httpClients = []*http.Client{apiHTTP, streamHTTP, loginHTTP}
	var err error
	if f.api, err = client.New(o.URL, client.WithHTTPClient(apiHTTP)); err != nil {
		return nil, err
	}
	if f.login, err = client.New(o.URL, client.WithHTTPClient(loginHTTP)); err != nil {
		return nil, err
	}
	if f.stream, err = client.New(o.URL, client.WithHTTPClient(streamHTTP)); err != nil {
		return nil, err
	}
	fetch := func(ctx context.Context) (*broker.JWKSet, error) {
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		return f.api.JWKS(ctx)
	}
	f.keys = newKeyring(fetch, f.now, 0, f.keysFetched)
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(2)
	go f.run(ctx)
	go f.keysLoop(ctx)
	return f, nil
}

// leave drops v's use of f; the last one out stops it and waits for its
// goroutines.
func (f *follower) leave(v *Validator) {
	followers.Lock()
	f.mu.Lock()
	if i := slices.Index(f.holders, v); i >= 0 {
		f.holders = slices.Delete(f.holders, i, i+1)
	}
	f.mu.Unlock()
	f.refs--
	last := f.refs == 0
	if last {
		followers.all = slices.DeleteFunc(followers.all, func(g *follower) bool { return g == f })
	}
	followers.Unlock()
	if !last {
		return
	}
	f.cancel()
	f.wg.Wait()
	for _, hc := range f.httpClients {
		hc.CloseIdleConnections()
	}
}

// sameTLS reports whether two TLS settings (as package caddymodule builds
// them, from files, anew at every load) would connect alike.
func sameTLS(a, b *tls.Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.MinVersion != b.MinVersion || a.ServerName != b.ServerName || a.InsecureSkipVerify != b.InsecureSkipVerify ||
		!a.RootCAs.Equal(b.RootCAs) || len(a.Certificates) != len(b.Certificates) {
		return false
	}
	for i := range a.Certificates {
		if !slices.EqualFunc(a.Certificates[i].Certificate, b.Certificates[i].Certificate, slices.Equal) {
			return false
		}
	}
	return true
}

// holder is the newest Validator using f, for its logger and observer;
// nil once all have left.
func (f *follower) holder() *Validator {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.holders) == 0 {
		return nil
	}
	return f.holders[len(f.holders)-1]
}

func (f *follower) logger() *slog.Logger {
	if v := f.holder(); v != nil {
		return v.log
	}
	return slog.New(slog.DiscardHandler)
}

func (f *follower) health() HealthObserver {
	if v := f.holder(); v != nil {
		return v.health
	}
	return nopObserver{}
}

// run follows the feed until ctx ends: one session after another, with
// backoff after a session that never synchronized.
func (f *follower) run(ctx context.Context) {
	defer f.wg.Done()
	var delay time.Duration
	for {
		synced, err := f.session(ctx)
		if ctx.Err() != nil {
			return
		}
		delay = nextDelay(delay, synced, err)
		f.report(err, synced, delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// nextDelay is the wait before the next session.
func nextDelay(prev time.Duration, synced bool, err error) time.Duration {
	d := feedRetryMin
	var ce *client.Error
	switch {
	case synced || errors.Is(err, errRenewal) || errors.Is(err, errStartOver):
	case errors.As(err, &ce) && ce.RetryAfter > 0:
		d = min(max(ce.RetryAfter, 2*prev), feedRetryMax)
	default:
		d = min(max(2*prev, feedRetryMin), feedRetryMax)
	}
	return d/2 + rand.N(d/2+1)
}

// session is one login (when the app token is missing or due), one key
// fetch (when none is held) and one feed stream. It reports whether the
// stream delivered a heartbeat.
func (f *follower) session(ctx context.Context) (synced bool, err error) {
	tok, renewAt, err := f.appToken(ctx)
	if err != nil {
		return false, err
	}
	if f.keys.verifier.Load() == nil {
		if err := f.keys.refresh(ctx); err != nil {
			f.noFeed.Store(client.IsStatus(err, http.StatusNotFound))
			return false, err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, renewAt.Sub(f.now()))
	defer cancel()
	// Resume from the revocation before the last one applied, to check
	// that the broker still has that one there: one whose database was
	// restored from an older backup numbers revocations anew, and
	// resuming after the last would skip those renumbered below it.
	seq, last := f.index.Position()
	from := max(seq-1, 0)
	checking := from < seq
	err = f.stream.WithToken(tok).Revocations(sctx, from, func(ev client.FeedEvent) error {
		if checking {
			checking = false
			switch {
			case ev.Type == client.EventRevocation && ev.Revocation.Same(last):
				return nil // applied already
			case ev.Type == client.EventRevocation:
				f.index.Apply([]broker.Revocation{ev.Revocation}) // the broker's all the same: fail closed
				f.rewound(seq, "found", fmt.Sprintf("revocation %d of %s %s, not of %s %s", ev.Seq, ev.Revocation.Level, ev.Revocation.Target, last.Level, last.Target))
				return errStartOver
			case ev.Type != client.EventReset: // the broker says so itself: below
				f.rewound(seq, "found", fmt.Sprintf("no revocation after %d", from))
				return errStartOver
			}
		}
		switch ev.Type {
		case client.EventRevocation:
			f.index.Apply([]broker.Revocation{ev.Revocation})
		case client.EventHeartbeat:
			f.beat.Store(f.now().UnixNano())
			if !synced {
				synced = true
				f.synced()
			}
		case client.EventKeys:
			select {
			case f.keysNow <- struct{}{}:
			default: // a refresh is already asked for
			}
		case client.EventReset:
			f.rewound(f.index.Seq(), "broker_seq", ev.Head)
		}
		return nil
	})
	if synced {
		f.health().FeedDisconnected()
	}
	switch {
	case ctx.Err() == nil && sctx.Err() != nil:
		err = errRenewal
		f.dropToken(tok)
	case client.IsStatus(err, http.StatusUnauthorized):
		f.dropToken(tok) // expired, or revoked: log in again
	case client.IsStatus(err, http.StatusNotFound):
		f.noFeed.Store(true)
	}
	return synced, err
}

// rewound handles a broker whose revocation sequence went back (its
// database was restored from an older backup), as the feed said with a
// reset event or as the check on resuming found: the index counts from 0
// again but keeps every revocation it holds, so one the restore lost
// stays in force here, and the feed is read again from the first.
func (f *follower) rewound(seq int64, attrs ...any) {
	f.index.Rewind()
	f.logger().Warn("the broker's revocation sequence went back, as after a restore of its database from an older backup; "+
		"following its feed again from the start, and the revocations already held stay in force",
		append([]any{"broker", f.id.url, "gateway_seq", seq}, attrs...)...)
}

// synced notes a stream's first heartbeat.
func (f *follower) synced() {
	f.noFeed.Store(false)
	f.health().FeedConnected()
	f.mu.Lock()
	was := f.problem
	f.problem = ""
	f.mu.Unlock()
	if was != "" {
		f.logger().Info("revocation feed synchronized", "broker", f.id.url, "recovered_from", was)
	}
}

// appToken returns the app token and when to renew it, logging in when
// there is none or it is due: at four fifths of its lifetime, so a stream
// is replaced well before the broker ends it at expiry.
func (f *follower) appToken(ctx context.Context) (string, time.Time, error) {
	f.mu.Lock()
	tok, renewAt := f.token, f.renewAt
	f.mu.Unlock()
	now := f.now()
	if tok != "" && now.Before(renewAt) {
		return tok, renewAt, nil
	}
	ctx, cancel := context.WithTimeout(ctx, max(f.timeout, LoginTimeout))
	defer cancel()
	res, err := f.login.AppAuth(ctx, f.id.clientID, f.secret)
	if err != nil {
		f.noFeed.Store(client.IsStatus(err, http.StatusNotFound))
		return "", time.Time{}, err
	}
	life := time.Duration(res.ExpiresIn) * time.Second
	if life <= 0 {
		life = time.Minute
	}
	renewAt = f.now().Add(life * 4 / 5) // from the answer: the login itself may have been slow
	f.mu.Lock()
	f.token, f.renewAt = res.AccessToken, renewAt
	f.mu.Unlock()
	return res.AccessToken, renewAt, nil
}

func (f *follower) dropToken(tok string) {
	f.mu.Lock()
	if f.token == tok {
		f.token = ""
	}
	f.mu.Unlock()
}

// keysLoop fetches the key set when the feed announces a change, and
// every KeysRefresh so that retired keys drop out.
func (f *follower) keysLoop(ctx context.Context) {
	defer f.wg.Done()
	t := time.NewTicker(KeysRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.keysNow:
		}
		if f.keys.verifier.Load() != nil { // the first set is the session's to fetch
			_ = f.keys.refresh(ctx)
		}
	}
}

// keysFetched observes a fetch of the key set, and logs when refreshing
// a held set starts failing or recovers. (A session that cannot fetch its
// first set reports that itself.)
func (f *follower) keysFetched(err error) {
	f.health().KeysRefreshed(err == nil)
	if f.keys.verifier.Load() == nil || errors.Is(err, context.Canceled) {
		return
	}
	switch was := f.keysFailing.Swap(err != nil); {
	case err != nil && !was:
		f.logger().Warn("refreshing the broker's key set failed; the keys last fetched stay in use", "broker", f.id.url, "error", err)
	case err == nil && was:
		f.logger().Info("the broker's key set is fetched again", "broker", f.id.url)
	}
}

// report logs why a session ended: a new problem at Warn (Error for one
// that only configuration fixes), a repeated one at Debug. A synchronized
// stream the broker closed (its configuration reloads) is only noted.
func (f *follower) report(err error, synced bool, retry time.Duration) {
	if errors.Is(err, errRenewal) || errors.Is(err, errStartOver) {
		return // nothing wrong, or rewound logged it
	}
	if synced && errors.Is(err, io.EOF) {
		f.logger().Info("the broker ended the revocation feed stream; reconnecting", "broker", f.id.url)
		return
	}
	msg, level := "revocation feed disconnected; tokens are accepted until the staleness bound, then refused", slog.LevelWarn
	switch {
	case f.noFeed.Load():
		msg, level = "verify local: the broker has no revocation feed (it answered 404); an upstream AgentWrit broker supports only verify validate: every token is refused (503) until the gateway points at this project's broker", slog.LevelError
	case client.IsStatus(err, http.StatusUnauthorized) && isAppAuth(err):
		msg, level = "verify local: the broker refused the app's client_id and client_secret", slog.LevelError
	case client.IsStatus(err, http.StatusForbidden):
		msg, level = "verify local: the app may not read the revocation feed; its scope ceiling must include "+broker.FeedScope, slog.LevelError
	case f.beat.Load() == 0:
		msg = "revocation feed not synchronized yet; tokens are refused (503) until it is"
	}
	f.mu.Lock()
	repeated := f.problem == msg
	f.problem = msg
	f.mu.Unlock()
	if repeated {
		level = slog.LevelDebug
	}
	f.logger().Log(context.Background(), level, msg, "broker", f.id.url, "client_id", f.id.clientID,
		"error", err, "retry_in", retry.Round(time.Millisecond).String())
}

// isAppAuth reports whether err is the app login's.
func isAppAuth(err error) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Path == "/v1/app/auth"
}

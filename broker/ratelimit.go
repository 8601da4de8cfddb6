package broker

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The rate limits. appAuthLimit is upstream's; the others are this
// product's (docs/compatibility.md, D16 and D17).
var (
	// credentialLimit is per client IP, in front of every credential check
	// (admin and app auth share it): a bcrypt at cost 12 takes about a
	// quarter of a CPU second here, so one client can make the broker
	// spend at most about half a CPU second per second on its guesses,
	// after a burst of ten. Upstream limited admin auth to 5/s per IP and
	// app auth only per client_id, which random client IDs walked around.
	credentialLimit = limitSpec{rate: 2, burst: 10, retryAfter: "1"}
	// appAuthLimit is upstream's per client_id limit, kept behind the IP
	// limit.
	appAuthLimit = limitSpec{rate: rate.Limit(10.0 / 60.0), burst: 3, retryAfter: "60"}
	// challengeLimit is per client IP: generous for agents (an
	// orchestrator starting a hundred at once), but no client can fetch
	// nonces fast enough to push another's out of the bounded store.
	challengeLimit = limitSpec{rate: 20, burst: 100, retryAfter: "1"}
)

type limitSpec struct {
	rate       rate.Limit
	burst      int
	retryAfter string
}

// maxBuckets bounds each limiter's key space; upstream never forgets a
// bucket, so a stream of fresh keys would grow memory without end.
const maxBuckets = 50_000

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// keyedLimiter is a token bucket per key (client IP or client_id).
type keyedLimiter struct {
	spec    limitSpec
	mu      sync.Mutex
	buckets map[string]*bucket
}

func (l *keyedLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			l.forgetIdleLocked(now)
		}
		b = &bucket{lim: rate.NewLimiter(l.spec.rate, l.spec.burst)}
		l.buckets[key] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// forgetIdleLocked drops buckets idle long enough to have refilled: dropping
// them changes no decision. If that is not enough, an arbitrary half goes.
func (l *keyedLimiter) forgetIdleLocked(now time.Time) {
	full := time.Duration(float64(l.spec.burst)/float64(l.spec.rate)*float64(time.Second)) + time.Second
	for k, b := range l.buckets {
		if now.Sub(b.seen) > full {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < maxBuckets/2 {
			break
		}
		delete(l.buckets, k)
	}
}

type limiters struct {
	credential, app, challenge *keyedLimiter
}

func newLimiter(spec limitSpec) *keyedLimiter {
	return &keyedLimiter{spec: spec, buckets: map[string]*bucket{}}
}

func newLimiters() *limiters {
	return &limiters{
		credential: newLimiter(credentialLimit),
		app:        newLimiter(appAuthLimit),
		challenge:  newLimiter(challengeLimit),
	}
}

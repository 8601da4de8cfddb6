package broker

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Upstream's limits (§11).
var (
	adminAuthLimit = limitSpec{rate: 5, burst: 10, retryAfter: "1"}
	appAuthLimit   = limitSpec{rate: rate.Limit(10.0 / 60.0), burst: 3, retryAfter: "60"}
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
	admin, app *keyedLimiter
}

func newLimiters() *limiters {
	return &limiters{
		admin: &keyedLimiter{spec: adminAuthLimit, buckets: map[string]*bucket{}},
		app:   &keyedLimiter{spec: appAuthLimit, buckets: map[string]*bucket{}},
	}
}

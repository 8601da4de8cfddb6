package remote

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The per-client bound: a token no answer is cached for costs the broker
// a call, so a client sending fresh junk would otherwise decide how busy
// the broker is, and how many of the Validator's connections are left for
// everyone else.

type clientIPKey struct{}

// WithClientIP returns a copy of ctx that names the client a validation
// is made for (an IP address, as the embedder sees it): the key of the
// per-client bound on calls to the broker. Options.ClientIP replaces the
// lookup, for embedders that already carry the address in ctx.
func WithClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

// clientIPOf is the default Options.ClientIP.
func clientIPOf(ctx context.Context) string {
	ip, _ := ctx.Value(clientIPKey{}).(string)
	return ip
}

var errClientBusy = fmt.Errorf("%w: this client has too many validations of uncached tokens in progress or per second", ErrUnavailable)

// maxClients bounds the clients tracked at once. When full, the clients
// with no call in flight are forgotten (their rate state with them); a
// flood from that many addresses is beyond what a per-client bound does.
const maxClients = 10000

// clientTable is the per-client state: calls in flight and a token bucket.
type clientTable struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*clientState
}

type clientState struct {
	inFlight int
	bucket   *rate.Limiter
}

// newClientTable returns nil (no bound) for a negative perSecond.
func newClientTable(perSecond int) *clientTable {
	if perSecond < 0 {
		return nil
	}
	if perSecond == 0 {
		perSecond = DefaultClientCallRate
	}
	return &clientTable{rate: rate.Limit(perSecond), burst: 2 * perSecond, m: map[string]*clientState{}}
}

// clientKey is the bound's key for an address: an IPv6 client is its /64,
// which is what one host can draw addresses from.
func clientKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is6() || a.Is4In6() {
		return ip
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	return p.String()
}

// acquire admits one call for the client at ip, or refuses it. An empty
// ip (or a nil table) is not bounded. Every admitted call is matched by a
// release with the returned key.
func (t *clientTable) acquire(ip string, now time.Time) (string, error) {
	if t == nil || ip == "" {
		return "", nil
	}
	key := clientKey(ip)
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[key]
	if c == nil {
		if len(t.m) >= maxClients {
			for k, idle := range t.m {
				if idle.inFlight == 0 {
					delete(t.m, k)
				}
			}
		}
		c = &clientState{bucket: rate.NewLimiter(t.rate, t.burst)}
		t.m[key] = c
	}
	if c.inFlight >= MaxCallsPerClient || !c.bucket.AllowN(now, 1) {
		return "", errClientBusy
	}
	c.inFlight++
	return key, nil
}

// release ends a call admitted under key.
func (t *clientTable) release(key string) {
	if t == nil || key == "" {
		return
	}
	t.mu.Lock()
	if c := t.m[key]; c != nil {
		c.inFlight--
	}
	t.mu.Unlock()
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// soakPool is the tokens the soak's workers use: live ones, and dead ones
// with when each stopped being valid as far as a client can know (its
// revoke or release call returned).
type soakPool struct {
	mu         sync.RWMutex
	live, dead []agent
	revoked    map[string]time.Time
}

// pick returns a live token nine times in ten, a dead one otherwise, so
// the load is mostly allowed traffic that keeps probing revocations.
func (p *soakPool) pick() agent {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if len(p.dead) > 0 && (len(p.live) == 0 || randInt(10) == 0) {
		return p.dead[randInt(len(p.dead))]
	}
	return p.live[randInt(len(p.live))]
}

// victim returns a live token to revoke or release.
func (p *soakPool) victim() (agent, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if len(p.live) == 0 {
		return agent{}, false
	}
	return p.live[randInt(len(p.live))], true
}

// deadSince says when tok's revoke or release call returned, if it has.
func (p *soakPool) deadSince(tok string) (time.Time, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	t, dead := p.revoked[tok]
	return t, dead
}

func (p *soakPool) add(a agent) {
	p.mu.Lock()
	p.live = append(p.live, a)
	p.mu.Unlock()
}

// kill records that tok's revoke or release returned at at.
func (p *soakPool) kill(tok string, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.revoked[tok] = at
	for i, a := range p.live {
		if a.Token == tok {
			p.live = append(p.live[:i], p.live[i+1:]...)
			p.dead = append(p.dead, a)
			return
		}
	}
}

// drop takes tok out of the pool altogether.
func (p *soakPool) drop(tok string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live = slices.DeleteFunc(p.live, func(a agent) bool { return a.Token == tok })
}

// soakCounters are the invariants the soak checks.
type soakCounters struct {
	ok, denied, unavailable, other5xx, transport atomic.Int64
	lateAllows                                   atomic.Int64 // allowed after revoke (+ cache_ttl for remote)
	unavailableWhileUp                           atomic.Int64 // 503 with the broker up (past a grace period)
	okAfterRestart                               atomic.Int64
}

// soak runs sustained load against the embedded gateway and the three
// remote ones (cached, uncached, local mode)
// while tokens are revoked and released, agents register, and the remote
// broker is killed and restarted.
func soak(ctx context.Context, ps *procs, s *setup, o options) error {
	ctx, cancel := context.WithTimeout(ctx, o.soak)
	defer cancel()
	type gw struct {
		t      target
		lag    time.Duration // how long after a revocation an allow is still on time
		pool   *soakPool
		broker *brokerClient
		c      soakCounters
	}
	mkPool := func(toks []string) *soakPool {
		p := &soakPool{revoked: map[string]time.Time{}}
		for _, t := range toks {
			p.live = append(p.live, agent{Token: t, JTI: claimsOf(t).Jti})
		}
		return p
	}
	// A remote gateway hears that its broker is back at its next probe
	// (validate: the circuit breaker's backoff, at most 5 s) or
	// reconnection (local: the feed's backoff, which grew while the
	// broker was down); a 503 later than this with the broker up fails.
	const grace = 10 * time.Second
	emb := &gw{t: s.targets["embedded"], pool: mkPool(s.targets["embedded"].tokens), broker: s.embeddedBroker}
	rem := &gw{t: s.targets["remote"], lag: o.remoteTTL, pool: mkPool(s.targets["remote"].tokens), broker: s.remoteBroker}
	// cache_ttl 0 and local mode share the cached gateway's broker and
	// tokens (so its revocations). cache_ttl 0 must never allow a revoked
	// token at all; local mode not beyond max_staleness.
	remNC := &gw{t: s.targets["remote-nocache"], pool: rem.pool, broker: s.remoteBroker}
	loc := &gw{t: s.targets["remote-local"], lag: localStaleness, pool: rem.pool, broker: s.remoteBroker}
	gws := []*gw{emb, rem, remNC, loc}

	var brokerDown atomic.Bool
	var upSince atomic.Int64 // unix nanos when the broker last came back
	var restarts atomic.Int64
	upSince.Store(time.Now().UnixNano())

	var wg sync.WaitGroup
	for _, g := range gws {
		// Each connection is a client of its own address, as agents on
		// many hosts are: the remote gateways' per-client bound is for one
		// flooding address, not for a fleet of agents.
		client := newClient(o.conns / 2)
		for w := 0; w < o.conns/2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					a := g.pool.pick()
					req, _ := http.NewRequestWithContext(ctx, "GET", g.t.url+"1", nil)
					req.Header.Set("Authorization", "Bearer "+a.Token)
					start := time.Now()
					resp, err := client.Do(req)
					if err != nil {
						if ctx.Err() == nil {
							g.c.transport.Add(1)
						}
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch code := resp.StatusCode; {
					case code == http.StatusOK:
						g.c.ok.Add(1)
						// Looked up after the answer, so a revoke that
						// returned while the request was in flight counts
						// too: allowed is wrong if the request started later.
						if deadAt, dead := g.pool.deadSince(a.Token); dead && start.After(deadAt.Add(g.lag)) {
							g.c.lateAllows.Add(1)
						}
						if g != emb && restarts.Load() > 0 && time.Since(time.Unix(0, upSince.Load())) < 10*time.Second {
							g.c.okAfterRestart.Add(1)
						}
					case code == http.StatusServiceUnavailable:
						g.c.unavailable.Add(1)
						if !brokerDown.Load() && time.Since(time.Unix(0, upSince.Load())) > grace {
							g.c.unavailableWhileUp.Add(1)
						}
					case code >= 500:
						g.c.other5xx.Add(1)
					default:
						g.c.denied.Add(1)
					}
				}
			}()
		}
	}

	// Churn, in each broker: every 200 ms revoke or release a live token
	// and register a new agent in its place.
	for _, g := range []*gw{emb, rem} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if brokerDown.Load() && g == rem {
					continue
				}
				a, ok := g.pool.victim()
				if !ok {
					continue
				}
				var err error
				if i%2 == 0 {
					err = g.broker.release(ctx, a.Token)
				} else {
					var admin *client.Client
					if admin, err = g.broker.admin(ctx); err == nil {
						err = g.broker.revoke(ctx, admin, a.JTI)
					}
				}
				if err != nil {
					continue
				}
				g.pool.kill(a.Token, time.Now())
				if na, err := g.broker.registerOneNew(ctx); err == nil {
					g.pool.add(na)
				}
			}
		}()
	}

	// Broker faults: kill the remote broker every minute, restart it 5 s later.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(45 * time.Second):
			}
			logf("soak: killing the remote broker")
			brokerDown.Store(true)
			s.broker.kill()
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			if err := ps.restart(s.broker); err != nil {
				logf("soak: restart broker: %v", err)
				return
			}
			upSince.Store(time.Now().UnixNano())
			restarts.Add(1)
			brokerDown.Store(false)
			logf("soak: remote broker back")
		}
	}()

	// Resource samples of the gateways under load, every 30 s from 30 s
	// in (once the caches and pools have filled).
	type res struct{ goroutines, rssKiB []int }
	stats := map[string]*res{}
	tick := time.NewTicker(30 * time.Second)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			if ctx.Err() != nil { // the load is over: not a sample under load
				done = true
				break
			}
			for _, g := range gws {
				st := stats[g.t.name]
				if st == nil {
					st = &res{}
					stats[g.t.name] = st
				}
				st.goroutines = append(st.goroutines, g.t.proc.goroutines(context.Background()))
				st.rssKiB = append(st.rssKiB, g.t.proc.rssKiB())
			}
		}
	}
	tick.Stop()
	wg.Wait()

	fmt.Printf("\nsoak %v: %d connections per gateway, every 200 ms a token revoked or released and a new agent registered, remote broker killed every ~50 s\n\n", o.soak, o.conns)
	failed := false
	for _, g := range gws {
		c := &g.c
		st := stats[g.t.name]
		fmt.Printf("%-14s ok %d  denied %d  503 %d (with broker up: %d)  other 5xx %d  transport errors %d  allowed after revoke: %d  ok within 10 s of a broker restart: %d\n",
			g.t.name, c.ok.Load(), c.denied.Load(), c.unavailable.Load(), c.unavailableWhileUp.Load(), c.other5xx.Load(),
			c.transport.Load(), c.lateAllows.Load(), c.okAfterRestart.Load())
		if st != nil && len(st.goroutines) >= 2 {
			fmt.Printf("%-14s every 30 s under load: goroutines %v, RSS KiB %v\n", g.t.name, st.goroutines, st.rssKiB)
			// Growth is the last sample against the first, with room for
			// the agents registered meanwhile and the GC's swings.
			g0, g1 := st.goroutines[0], st.goroutines[len(st.goroutines)-1]
			r0, r1 := st.rssKiB[0], st.rssKiB[len(st.rssKiB)-1]
			if g1 > g0+g0/10+5 || r1 > r0+r0/5 {
				fmt.Printf("%-14s grew: goroutines %d → %d, RSS %d → %d KiB\n", g.t.name, g0, g1, r0, r1)
				failed = true
			}
		}
		if c.lateAllows.Load() > 0 || c.other5xx.Load() > 0 || c.transport.Load() > 0 || (g == emb && c.unavailable.Load() > 0) || c.unavailableWhileUp.Load() > 0 {
			failed = true
		}
	}
	for _, g := range []*gw{rem, remNC, loc} {
		if g.c.okAfterRestart.Load() == 0 && o.soak > time.Minute {
			fmt.Printf("%s never recovered after a broker restart\n", g.t.name)
			failed = true
		}
	}
	if failed {
		return fmt.Errorf("soak invariants violated")
	}
	fmt.Println("\nsoak invariants held: nothing allowed after revocation, no 5xx but 503 while the broker was down, recovery after restarts, no goroutine or memory growth")
	return nil
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// soakPool is the tokens the soak's workers use, and when each stopped
// being valid as far as a client can know (its revoke/release returned).
type soakPool struct {
	mu      sync.RWMutex
	agents  []agent
	revoked map[string]time.Time
}

func (p *soakPool) pick() (agent, time.Time, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	a := p.agents[randInt(len(p.agents))]
	t, dead := p.revoked[a.Token]
	return a, t, dead
}

func (p *soakPool) add(a agent) {
	p.mu.Lock()
	p.agents = append(p.agents, a)
	p.mu.Unlock()
}

func (p *soakPool) kill(tok string, at time.Time) {
	p.mu.Lock()
	p.revoked[tok] = at
	p.mu.Unlock()
}

// soakCounters are the invariants the soak checks.
type soakCounters struct {
	ok, denied, unavailable, other5xx, transport atomic.Int64
	lateAllows                                   atomic.Int64 // allowed after revoke (+ cache_ttl for remote)
	unavailableWhileUp                           atomic.Int64 // 503 with the broker up (past a grace period)
	okAfterRestart                               atomic.Int64
}

// soak runs sustained load against the embedded and cached remote gateways
// while tokens are revoked and released, agents register, and the remote
// broker is killed and restarted.
func soak(ctx context.Context, ps *procs, s *setup, o options) error {
	ctx, cancel := context.WithTimeout(ctx, o.soak)
	defer cancel()
	type gw struct {
		t      target
		lag    time.Duration
		pool   *soakPool
		broker *brokerClient
		c      soakCounters
	}
	mkPool := func(toks []string) *soakPool {
		p := &soakPool{revoked: map[string]time.Time{}}
		for _, t := range toks {
			p.agents = append(p.agents, agent{Token: t})
		}
		return p
	}
	emb := &gw{t: s.targets["embedded"], pool: mkPool(s.targets["embedded"].tokens), broker: s.embeddedBroker}
	rem := &gw{t: s.targets["remote"], lag: o.remoteTTL, pool: mkPool(s.targets["remote"].tokens), broker: s.remoteBroker}
	gws := []*gw{emb, rem}

	var brokerDown atomic.Bool
	var upSince atomic.Int64 // unix nanos when the broker last came back
	upSince.Store(time.Now().UnixNano())
	const grace = 3 * time.Second

	var wg sync.WaitGroup
	for _, g := range gws {
		tr := &http.Transport{MaxIdleConnsPerHost: o.conns, MaxConnsPerHost: o.conns}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for w := 0; w < o.conns/2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					a, deadAt, dead := g.pool.pick()
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
						if dead && start.After(deadAt.Add(g.lag)) {
							g.c.lateAllows.Add(1)
						}
						if g == rem && time.Since(time.Unix(0, upSince.Load())) < 10*time.Second {
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

	// Churn: revoke or release a token every 200 ms, register an agent per second.
	for _, g := range gws {
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
				a, _, dead := g.pool.pick()
				if dead {
					continue
				}
				var err error
				if i%2 == 0 {
					err = g.broker.release(ctx, a.Token)
				} else {
					var admin string
					if admin, err = g.broker.admin(ctx); err == nil {
						err = g.broker.revoke(ctx, admin, jtiOf(a.Token))
					}
				}
				if err == nil {
					g.pool.kill(a.Token, time.Now())
				}
				if i%5 == 0 {
					if na, err := g.broker.registerOneNew(ctx); err == nil {
						g.pool.add(na)
					}
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
			brokerDown.Store(false)
			logf("soak: remote broker back")
		}
	}()

	// Resource samples of the gateways.
	type res struct{ g0, g1, r0, r1 int }
	stats := map[string]*res{}
	sampleRes := func(first bool) {
		for _, g := range gws {
			st := stats[g.t.name]
			if st == nil {
				st = &res{}
				stats[g.t.name] = st
			}
			gr, rss := g.t.proc.goroutines(context.Background()), g.t.proc.rssKiB()
			if first {
				st.g0, st.r0 = gr, rss
			}
			st.g1, st.r1 = gr, rss
		}
	}
	warm := time.After(30 * time.Second)
	select {
	case <-warm:
		sampleRes(true)
	case <-ctx.Done():
	}
	wg.Wait()
	sampleRes(false)

	fmt.Printf("\nsoak %v: %d connections, revoke/release every 200 ms, a new agent every second, remote broker killed every ~50 s\n\n", o.soak, o.conns)
	failed := false
	for _, g := range gws {
		c := &g.c
		st := stats[g.t.name]
		fmt.Printf("%-9s ok %d  denied %d  503 %d (with broker up: %d)  other 5xx %d  transport errors %d  allowed after revoke: %d  ok within 10 s of a broker restart: %d\n",
			g.t.name, c.ok.Load(), c.denied.Load(), c.unavailable.Load(), c.unavailableWhileUp.Load(), c.other5xx.Load(),
			c.transport.Load(), c.lateAllows.Load(), c.okAfterRestart.Load())
		if st != nil {
			fmt.Printf("%-9s goroutines %d → %d, RSS %d → %d KiB (from 30 s in to the end)\n", g.t.name, st.g0, st.g1, st.r0, st.r1)
		}
		if c.lateAllows.Load() > 0 || c.other5xx.Load() > 0 || (g == emb && c.unavailable.Load() > 0) || c.unavailableWhileUp.Load() > 0 {
			failed = true
		}
	}
	if rem.c.okAfterRestart.Load() == 0 && o.soak > time.Minute {
		fmt.Println("remote gateway never recovered after a broker restart")
		failed = true
	}
	if failed {
		return fmt.Errorf("soak invariants violated")
	}
	fmt.Println("\nsoak invariants held: nothing allowed after revocation, no 5xx but 503 while the broker was down, recovery after restarts")
	return nil
}

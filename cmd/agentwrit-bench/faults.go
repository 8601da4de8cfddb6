package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// The faults phase of -fleet: load on every replica (gateway requests,
// registrations, revocations) while one replica is killed with SIGKILL
// and restarted, the database server is restarted (-pg-restart), and
// replica 0 reloads its configuration. Afterwards every acknowledged
// registration must still be valid, every acknowledged revocation
// refused by every replica, and the audit chain intact.

// faultWindows say which failures a fault explains: each is the unix
// nanoseconds until which it does (0: none).
type faultWindows struct {
	killed     atomic.Int64 // index+1 of the replica down, 0 for none
	killedTill atomic.Int64 // its requests may fail until then
	dbTill     atomic.Int64 // 503s and failed writes are expected until then
}

// explains says whether replica is down (killed), was restarted within
// faultGrace (restarting), and whether the database is or just was
// restarting (db).
func (w *faultWindows) explains(replica int, now time.Time) (killed, restarting, db bool) {
	killed = int(w.killed.Load()) == replica+1
	restarting = now.UnixNano() < w.killedTill.Load() && int(w.killed.Load()) == -(replica+1)
	return killed, restarting, now.UnixNano() < w.dbTill.Load()
}

// faultCounts are what the faults phase saw, per replica.
type faultCounts struct {
	ok, refused, unexplained          atomic.Int64
	whileDown, afterRestart, duringDB atomic.Int64 // failures a fault explains
	late, beyondBound                 atomic.Int64 // allowed more than 1 s, and more than broker.DefaultMaxStaleness, after a revocation
	firstUnexplained                  atomic.Value // string
}

func (c *faultCounts) fail(format string, args ...any) {
	c.unexplained.Add(1)
	c.firstUnexplained.CompareAndSwap(nil, fmt.Sprintf(format, args...))
}

// faultGrace is how long after a fault ends its effects still explain a
// failure: a restarted replica opening its sites, replicas reconnecting
// to the database with backoff.
const faultGrace = 10 * time.Second

// fleetFaults runs the faults phase; pgRestart is a shell command that
// restarts the database server ("" skips that fault).
func fleetFaults(ctx context.Context, ps *procs, rs []*replica, pgRestart string, o options) error {
	logf("faults: load on %d replicas; kill -9 and restart replica-%d, restart the database, reload replica-0", len(rs), len(rs)-1)
	pool := &soakPool{revoked: map[string]time.Time{}}
	for range 50 {
		a, err := rs[randInt(len(rs))].broker.registerOneNew(ctx)
		if err != nil {
			return err
		}
		pool.add(a)
	}
	var acked struct {
		sync.Mutex
		agents []agent
	}
	// pending holds the tokens whose revoke call was made and has not
	// returned (or failed, so that whether it committed is unknown): a 401
	// for one of them is no failure.
	var pending sync.Map
	isPending := func(tok string) bool { _, ok := pending.Load(tok); return ok }
	var win faultWindows
	counts := make([]faultCounts, len(rs))
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	hc := newClient(o.conns)
	// Gateway load: each worker on one replica.
	for w := range o.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			i := w % len(rs)
			c := &counts[i]
			for lctx.Err() == nil {
				a := pool.pick()
				start := time.Now()
				st, err := gatewayStatus(lctx, hc, rs[i].gateway+"1", a.Token)
				if lctx.Err() != nil {
					return
				}
				killed, restarting, db := win.explains(i, time.Now())
				deadAt, dead := pool.deadSince(a.Token)
				switch {
				case (err != nil || st == http.StatusServiceUnavailable) && killed:
					c.whileDown.Add(1)
				case (err != nil || st == http.StatusServiceUnavailable) && restarting:
					c.afterRestart.Add(1)
				case st == http.StatusServiceUnavailable && db:
					c.duringDB.Add(1)
				case err != nil:
					c.fail("replica-%d: %v", i, err)
				case st == http.StatusOK:
					c.ok.Add(1)
					if dead && start.After(deadAt.Add(time.Second)) {
						c.late.Add(1) // beyond the propagation the fleet promises
					}
					if dead && start.After(deadAt.Add(broker.DefaultMaxStaleness)) {
						c.beyondBound.Add(1) // beyond what bounded staleness allows, ever
					}
				case st == http.StatusUnauthorized && (dead || isPending(a.Token)):
					c.refused.Add(1)
				default:
					c.fail("replica-%d: status %d (token dead: %v)", i, st, dead)
				}
			}
		}()
	}
	// Writes: every 100 ms a registration, every 200 ms a revocation, on
	// a random replica; only acknowledged ones are recorded.
	admins := make([]*client.Client, len(rs))
	for i, r := range rs {
		a, err := r.broker.admin(ctx)
		if err != nil {
			return err
		}
		admins[i] = a
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-lctx.Done():
				return
			case <-tick.C:
			}
			i := randInt(len(rs))
			if k, _, _ := win.explains(i, time.Now()); k {
				continue
			}
			if a, err := rs[i].broker.registerOneNew(lctx); err == nil {
				acked.Lock()
				acked.agents = append(acked.agents, a)
				acked.Unlock()
				pool.add(a)
			}
			if n%2 == 0 {
				if v, ok := pool.victim(); ok {
					pending.Store(v.Token, true)
					if err := rs[i].broker.revoke(lctx, admins[i], v.JTI); err == nil {
						pool.kill(v.Token, time.Now())
						pending.Delete(v.Token)
					} else {
						pool.drop(v.Token) // revoked or not: no longer sent, never counted
					}
				}
			}
		}
	}()
	// The faults, in turn.
	pause := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	var faultErr error
	victim := len(rs) - 1
	if pause(5 * time.Second) {
		logf("faults: kill -9 replica-%d", victim)
		win.killed.Store(int64(victim + 1))
		rs[victim].proc.kill()
		pause(3 * time.Second)
		if err := ps.restart(rs[victim].proc); err != nil {
			faultErr = fmt.Errorf("restart replica-%d: %w", victim, err)
		}
		win.killedTill.Store(time.Now().Add(faultGrace).UnixNano())
		win.killed.Store(int64(-(victim + 1)))
		logf("faults: replica-%d back", victim)
	}
	if pgRestart != "" && faultErr == nil && pause(5*time.Second) {
		logf("faults: restarting the database server: %s", pgRestart)
		win.dbTill.Store(time.Now().Add(time.Hour).UnixNano())
		out, err := exec.CommandContext(ctx, "sh", "-c", pgRestart).CombinedOutput()
		win.dbTill.Store(time.Now().Add(faultGrace).UnixNano())
		if err != nil {
			faultErr = fmt.Errorf("-pg-restart: %v: %s", err, out)
		}
		logf("faults: database back")
	}
	if faultErr == nil && pause(5*time.Second) {
		logf("faults: reloading replica-0 under load")
		if err := reload(ctx, ps, rs[0].proc); err != nil {
			faultErr = err
		}
	}
	pause(faultGrace)
	stop()
	wg.Wait()
	if faultErr != nil {
		return faultErr
	}
	return faultReport(ctx, rs, admins, pool, acked.agents, counts)
}

// reload posts p's Caddyfile to its admin endpoint, forcing a reload
// even though it has not changed.
func reload(ctx context.Context, ps *procs, p *proc) error {
	cfg, err := os.ReadFile(filepath.Join(ps.dir, p.name+".Caddyfile"))
	if err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/load", p.admin), bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reload %s: %w", p.name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reload %s: status %d", p.name, resp.StatusCode)
	}
	return nil
}

// faultReport checks and prints what survived the faults.
func faultReport(ctx context.Context, rs []*replica, admins []*client.Client, pool *soakPool, acked []agent, counts []faultCounts) error {
	var lost, notRefused int
	hc := newClient(1)
	for _, a := range acked {
		if _, dead := pool.deadSince(a.Token); dead {
			continue
		}
		v, err := rs[randInt(len(rs))].broker.Validate(ctx, a.Token)
		if err != nil || !v.Valid {
			lost++
		}
	}
	pool.mu.RLock()
	dead := append([]agent(nil), pool.dead...)
	pool.mu.RUnlock()
	for _, a := range dead {
		for _, r := range rs {
			if st, err := gatewayStatus(ctx, hc, r.gateway+"1", a.Token); err != nil || st != http.StatusUnauthorized {
				notRefused++
			}
		}
	}
	v, err := admins[0].VerifyAudit(ctx)
	if err != nil {
		return fmt.Errorf("audit verify: %w", err)
	}
	fmt.Printf("\nfaults (kill -9 and restart of replica-%d, database restart, reload of replica-0, all under load):\n", len(rs)-1)
	failed := lost > 0 || notRefused > 0 || !v.Intact
	for i := range counts {
		c := &counts[i]
		first, _ := c.firstUnexplained.Load().(string)
		fmt.Printf("  replica-%d gateway: ok %d, revoked refused %d; failed while killed %d, within %s of its restart %d, 503 while the database restarted (+%s) %d; unexplained %d %s; allowed after revocation: >1 s %d, >%s %d\n",
			i, c.ok.Load(), c.refused.Load(), c.whileDown.Load(), faultGrace, c.afterRestart.Load(), faultGrace, c.duringDB.Load(), c.unexplained.Load(), first, c.late.Load(), broker.DefaultMaxStaleness, c.beyondBound.Load())
		failed = failed || c.unexplained.Load() > 0 || c.beyondBound.Load() > 0
	}
	fmt.Printf("  acknowledged registrations %d, lost %d; acknowledged revocations %d, not refused by some replica %d; audit chain intact %v (%d events)\n",
		len(acked), lost, len(dead), notRefused, v.Intact, v.Verified)
	if failed {
		return fmt.Errorf("faults: invariants violated")
	}
	return nil
}

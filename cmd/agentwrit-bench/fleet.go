package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// The -fleet mode starts N replicas (each an embedded broker and a
// gateway) on one fresh PostgreSQL database, spreads registrations over
// them, and measures how long a revocation made on one replica takes to
// be enforced by another's gateway.

// replica is one process of the fleet.
type replica struct {
	proc    *proc
	broker  *brokerClient
	gateway string // URL prefix of the gateway's protected route
}

// freshDatabase creates an empty database on the server dsn names (a role
// that may create databases) and returns its URL and a function that
// drops it.
func freshDatabase(ctx context.Context, dsn string) (string, func(), error) {
	if !storage.IsURL(dsn) {
		return "", nil, fmt.Errorf("-database %q is not a postgres:// URL", dsn)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", nil, fmt.Errorf("-database: %w", err)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "agentwrit_bench_" + hex.EncodeToString(b[:]) // [a-z0-9_]: safe as an identifier
	exec := func(ctx context.Context, sql string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", storage.Redact(dsn), err)
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			logf("dropping %s: %v", name, err)
		}
	}
	u.Path = "/" + name
	return u.String(), drop, nil
}

// forwardedFor sends every request as if from another client IP (the
// replicas trust 127.0.0.1 as a proxy), so the per-IP challenge limit of
// one replica does not cap what the harness can offer.
type forwardedFor struct{ next http.RoundTripper }

func (f forwardedFor) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", randInt(256), randInt(256), 1+randInt(254)))
	return f.next.RoundTrip(r)
}

// startFleet starts o.fleet replicas on the database dsn.
func startFleet(ps *procs, dsn string, o options) ([]*replica, error) {
	globals := fmt.Sprintf("\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n"+
		"\tagentwrit {\n\t\tadmin_secret %s\n\t\tdatabase %s\n\t}", adminSecret, dsn)
	hc := &http.Client{Transport: forwardedFor{newClient(o.conns).Transport}, Timeout: 10 * time.Second}
	rs := make([]*replica, o.fleet)
	for i := range rs {
		bPort, gPort := freePort(), freePort()
		p, err := ps.start(fmt.Sprintf("replica-%d", i), globals, fmt.Sprintf(
			"http://127.0.0.1:%d {\n\tagentwrit_broker\n}\nhttp://127.0.0.1:%d {\n\tagentwrit {%s\n\t}\n\trespond \"ok\" 200\n}\n",
			bPort, gPort, rules))
		if err != nil {
			return nil, err
		}
		c, err := client.New(fmt.Sprintf("http://127.0.0.1:%d", bPort), client.WithHTTPClient(hc))
		if err != nil {
			return nil, err
		}
		rs[i] = &replica{proc: p, broker: &brokerClient{Client: c, secret: adminSecret},
			gateway: fmt.Sprintf("http://127.0.0.1:%d/orders/", gPort)}
	}
	return rs, nil
}

// runFleet is the -fleet mode.
func runFleet(ctx context.Context, ps *procs, o options) error {
	if o.database == "" {
		return errors.New("-fleet needs -database postgres://… (or AGENTWRIT_TEST_POSTGRES): a server where the harness may create a database")
	}
	dsn, drop, err := freshDatabase(ctx, o.database)
	if err != nil {
		return err
	}
	if o.keep {
		logf("database kept: %s", storage.Redact(dsn))
	} else {
		defer drop()
	}
	defer ps.stopAll() // before the drop: the replicas hold connections
	logf("starting %d replicas on %s", o.fleet, storage.Redact(dsn))
	rs, err := startFleet(ps, dsn, o)
	if err != nil {
		return err
	}
	scope := []string{"read:orders:*"}
	// One multi-use launch token for the whole fleet, made on replica 0:
	// every replica must honour it.
	if _, err := rs[0].broker.register(ctx, 1, scope); err != nil {
		return fmt.Errorf("first registration: %w", err)
	}
	for _, r := range rs[1:] {
		r.broker.launch, r.broker.scope = rs[0].broker.launch, scope
	}
	reg, err := fleetRegistrations(ctx, rs, o)
	if err != nil {
		return err
	}
	lags, err := fleetPropagation(ctx, rs, o.revocations)
	if err != nil {
		return err
	}
	w := os.Stdout
	fmt.Fprintf(w, "\nfleet of %d replicas on one PostgreSQL database, %d connections\n\n", o.fleet, o.conns)
	fmt.Fprintf(w, "registrations: %d in %s = %.0f/s, latency p50 %s p99 %s, %d failed\n",
		len(reg.lat), reg.elapsed.Round(time.Millisecond), float64(len(reg.lat))/reg.elapsed.Seconds(),
		percentile(reg.lat, 0.50).Round(time.Microsecond), percentile(reg.lat, 0.99).Round(time.Microsecond), reg.failed)
	for i, n := range reg.perReplica {
		fmt.Fprintf(w, "  replica-%d: %d (%.0f/s)\n", i, n, float64(n)/reg.elapsed.Seconds())
	}
	if len(lags) > 0 {
		fmt.Fprintf(w, "revocation propagation (revoke on replica i, refused by replica i+1's gateway), %d revocations: p50 %s p99 %s max %s\n",
			len(lags), percentile(lags, 0.50).Round(time.Microsecond), percentile(lags, 0.99).Round(time.Microsecond),
			percentile(lags, 1).Round(time.Microsecond))
	}
	if reg.failed > 0 {
		return fmt.Errorf("%d registrations failed, first: %v", reg.failed, reg.firstErr)
	}
	return nil
}

// registrationResult is what the registration load measured.
type registrationResult struct {
	lat        []time.Duration
	perReplica []int
	elapsed    time.Duration
	failed     int
	firstErr   error
}

// fleetRegistrations registers agents for o.duration with o.conns
// workers, worker i on replica i mod N.
func fleetRegistrations(ctx context.Context, rs []*replica, o options) (registrationResult, error) {
	logf("registering for %s with %d workers over %d replicas", o.duration, o.conns, len(rs))
	res := registrationResult{perReplica: make([]int, len(rs))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	start := time.Now()
	for w := range o.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rs[w%len(rs)]
			for ctx.Err() == nil {
				t0 := time.Now()
				_, err := r.broker.registerOneNew(ctx)
				d := time.Since(t0)
				if ctx.Err() != nil {
					return // cut off by the end of the run: not counted
				}
				mu.Lock()
				if err != nil {
					res.failed++
					if res.firstErr == nil {
						res.firstErr = err
					}
				} else {
					res.lat = append(res.lat, d)
					res.perReplica[w%len(rs)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if len(res.lat) == 0 {
		return res, fmt.Errorf("no registration succeeded: %v", res.firstErr)
	}
	return res, nil
}

// propagationTimeout is how long a revocation may take to reach another
// replica before the harness calls it lost.
const propagationTimeout = 10 * time.Second

// fleetPropagation revokes n tokens, each on replica i mod N, and times
// until the gateway of replica i+1 mod N refuses it.
func fleetPropagation(ctx context.Context, rs []*replica, n int) ([]time.Duration, error) {
	if len(rs) < 2 {
		return nil, nil
	}
	logf("measuring revocation propagation over %d revocations", n)
	admins := make([]*client.Client, len(rs))
	for i, r := range rs {
		a, err := r.broker.admin(ctx)
		if err != nil {
			return nil, fmt.Errorf("replica-%d: admin login: %w", i, err)
		}
		admins[i] = a
	}
	hc := newClient(1)
	lags := make([]time.Duration, 0, n)
	for i := range n {
		on, other := rs[i%len(rs)], rs[(i+1)%len(rs)]
		a, err := on.broker.registerOneNew(ctx)
		if err != nil {
			return nil, fmt.Errorf("register: %w", err)
		}
		if st, err := gatewayStatus(ctx, hc, other.gateway+"1", a.Token); err != nil || st != http.StatusOK {
			return nil, fmt.Errorf("fresh token at the other replica's gateway: %d %v", st, err)
		}
		start := time.Now()
		if err := on.broker.revoke(ctx, admins[i%len(rs)], a.JTI); err != nil {
			return nil, fmt.Errorf("revoke: %w", err)
		}
		for {
			st, err := gatewayStatus(ctx, hc, other.gateway+"1", a.Token)
			if err != nil {
				return nil, err
			}
			if st == http.StatusUnauthorized {
				lags = append(lags, time.Since(start))
				break
			}
			if st != http.StatusOK {
				return nil, fmt.Errorf("gateway answered %d while waiting for a revocation", st)
			}
			if time.Since(start) > propagationTimeout {
				return nil, fmt.Errorf("revocation %d not enforced by the other replica within %s", i, propagationTimeout)
			}
		}
	}
	return lags, nil
}

func gatewayStatus(ctx context.Context, hc *http.Client, url, token string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, nil
}

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

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
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
	url     string // the broker's
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
		rs[i] = &replica{proc: p, url: fmt.Sprintf("http://127.0.0.1:%d", bPort), broker: &brokerClient{Client: c, secret: adminSecret},
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
	local, err := startFleetLocal(ctx, ps, rs[0])
	if err != nil {
		return err
	}
	prop, err := fleetPropagation(ctx, rs, local, o.revocations)
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
	pr := func(what string, lags []time.Duration) {
		if len(lags) > 0 {
			fmt.Fprintf(w, "%s, %d revocations: p50 %s p99 %s max %s\n", what,
				len(lags), percentile(lags, 0.50).Round(time.Microsecond), percentile(lags, 0.99).Round(time.Microsecond),
				percentile(lags, 1).Round(time.Microsecond))
		}
	}
	pr("revocation propagation (revoke on replica i returns → first 401 at replica i+1's gateway)", prop.replica)
	pr("revocation lag at a remote gateway in local mode following replica-0 (revoke on replica-0 returns → first 401)", prop.localSame)
	pr("revocation lag at a remote gateway in local mode following replica-0 (revoke on another replica returns → first 401)", prop.localOther)
	if reg.failed > 0 {
		return fmt.Errorf("%d registrations failed, first: %v", reg.failed, reg.firstErr)
	}
	if o.faults {
		return fleetFaults(ctx, ps, rs, o.pgRestart, o)
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

// startFleetLocal starts a remote gateway in local mode that follows r's
// revocation feed, as an app allowed to read it, and returns the URL
// prefix of its protected route.
func startFleetLocal(ctx context.Context, ps *procs, r *replica) (string, error) {
	admin, err := r.broker.admin(ctx)
	if err != nil {
		return "", err
	}
	app, err := admin.CreateApp(ctx, broker.AppRequest{Name: "bench-gateway", Scopes: []string{"read:revocations:*"}})
	if err != nil {
		return "", fmt.Errorf("create the gateway's app: %w", err)
	}
	port := freePort()
	_, err = ps.start("remote-local", "", fmt.Sprintf(
		"http://127.0.0.1:%d {\n\tagentwrit {\n\t\tbroker %s {\n\t\t\tverify local\n\t\t\tclient_id %s\n\t\t\tclient_secret %s\n\t\t\tmax_staleness %s\n\t\t}%s\n\t}\n\trespond \"ok\" 200\n}\n",
		port, r.url, app.ClientID, app.ClientSecret, localStaleness, rules))
	if err != nil {
		return "", err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/orders/", port)
	a, err := r.broker.registerOneNew(ctx)
	if err != nil {
		return "", err
	}
	return url, waitAllowed(ctx, url+"1", a.Token)
}

// propagation is what fleetPropagation measured.
type propagation struct {
	replica               []time.Duration // at the next replica's gateway
	localSame, localOther []time.Duration // at the local-mode gateway following replica 0, revoked on it or elsewhere
}

// fleetPropagation revokes n tokens, each on replica i mod N, and times
// until the gateway of replica i+1 mod N, and the local-mode gateway at
// local, refuse it.
func fleetPropagation(ctx context.Context, rs []*replica, local string, n int) (propagation, error) {
	var p propagation
	logf("measuring revocation propagation over %d revocations", n)
	admins := make([]*client.Client, len(rs))
	for i, r := range rs {
		a, err := r.broker.admin(ctx)
		if err != nil {
			return p, fmt.Errorf("replica-%d: admin login: %w", i, err)
		}
		admins[i] = a
	}
	hc := newClient(2)
	for i := range n {
		on := i % len(rs)
		a, err := rs[on].broker.registerOneNew(ctx)
		if err != nil {
			return p, fmt.Errorf("register: %w", err)
		}
		urls := []string{local + "1"}
		if len(rs) > 1 {
			urls = append(urls, rs[(on+1)%len(rs)].gateway+"1")
		}
		lags, err := timeRefusals(ctx, hc, urls, a.Token, func() error { return rs[on].broker.revoke(ctx, admins[on], a.JTI) })
		if err != nil {
			return p, fmt.Errorf("revocation %d: %w", i, err)
		}
		if on == 0 {
			p.localSame = append(p.localSame, lags[0])
		} else {
			p.localOther = append(p.localOther, lags[0])
		}
		if len(lags) > 1 {
			p.replica = append(p.replica, lags[1])
		}
	}
	return p, nil
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

// Command agentwrit-bench measures what AgentWrit enforcement costs on top
// of Caddy's own proxying. It starts, as separate processes, a backend and
// gateways in front of it — plain reverse_proxy (the reference), agentwrit
// embedded, agentwrit remote with a cache, and agentwrit remote with
// cache_ttl 0 (a validate call per request) — gets real tokens through the
// broker API, drives each with a fixed number of keep-alive connections in
// alternating rounds, and prints medians over rounds. With -soak it instead
// runs sustained load while tokens are revoked and released, agents
// register, and the remote broker is killed and restarted. With -fleet N
// it starts N replicas on one PostgreSQL database and measures
// registrations spread over them and revocation propagation between them.
//
// The binary is its own Caddy: `agentwrit-bench caddy run …` is Caddy with
// the standard modules and this plugin, which is how the children start.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"
)

const adminSecret = "agentwrit-bench-secret"

// logger writes progress to stderr; the standard logger is Caddy's once
// its modules are linked in.
var logger = log.New(os.Stderr, "", log.Ltime)

func logf(format string, args ...any) { logger.Printf(format, args...) }

type options struct {
	duration  time.Duration
	slice     time.Duration
	conns     int
	rounds    int
	tokens    int
	junk      float64
	configs   string
	soak      time.Duration
	remoteTTL time.Duration
	profile   string
	keep      bool

	fleet       int    // replicas of the -fleet mode; 0: not that mode
	database    string // PostgreSQL server of the -fleet mode
	revocations int    // revocations timed by -fleet, and at remote-local
	faults      bool   // -fleet: also the faults phase
	pgRestart   string // -fleet faults: shell command restarting the database server
	flood       time.Duration
	floodConns  int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "caddy" {
		os.Args = append(os.Args[:1], os.Args[2:]...)
		caddycmd.Main()
		return
	}
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per configuration per round")
	flag.DurationVar(&o.slice, "slice", time.Second, "configurations alternate every slice within a round, so drift hits all alike")
	flag.IntVar(&o.conns, "conns", 32, "keep-alive connections")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (configurations alternate within each)")
	flag.IntVar(&o.tokens, "tokens", 100, "distinct agent tokens per broker, cycled through")
	flag.Float64Var(&o.junk, "junk", 0, "also run each gateway with this fraction of requests carrying a random bad-signature token (e.g. 0.5)")
	flag.StringVar(&o.configs, "configs", "plain,embedded,remote,remote-nocache,remote-local", "configurations to run, in round order: plain, plain-headers (plain adding the five identity headers, no enforcement), embedded, embedded-nousage (usage off), embedded-pg (on a fresh PostgreSQL database of -database), remote (validate, cached), remote-nocache (validate, cache_ttl 0), remote-local (verify local)")
	flag.DurationVar(&o.soak, "soak", 0, "run a soak of this length instead of the comparison")
	flag.DurationVar(&o.remoteTTL, "remote-cache-ttl", 30*time.Second, "cache_ttl of the cached remote gateway")
	flag.StringVar(&o.profile, "cpuprofile", "", "write CPU profiles of the last round to <prefix>-<process>.prof, one per process (gateways, broker, backend)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs, databases)")
	flag.IntVar(&o.fleet, "fleet", 0, "instead of the comparison, run N replicas on one PostgreSQL database: registrations spread over them for -duration with -conns workers, then revocation propagation between replicas")
	flag.StringVar(&o.database, "database", os.Getenv("AGENTWRIT_TEST_POSTGRES"), "PostgreSQL server of -fleet, as a role that may create databases (a fresh one is made and dropped); default $AGENTWRIT_TEST_POSTGRES")
	flag.IntVar(&o.revocations, "revocations", 200, "revocations whose propagation -fleet times, and whose lag at the remote-local gateway the comparison times")
	flag.BoolVar(&o.faults, "faults", false, "-fleet: then run load while a replica is killed -9 and restarted, the database restarted (-pg-restart) and replica 0 reloaded, and check that nothing acknowledged was lost, nothing revoked allowed late, and the audit chain is intact")
	flag.StringVar(&o.pgRestart, "pg-restart", "", "-faults: shell command that restarts the PostgreSQL server, e.g. 'pg_ctlcluster --skip-systemctl-redirect 15 main restart' (it affects everything else on that server)")
	flag.DurationVar(&o.flood, "flood", 0, "after the comparison, flood each remote gateway this long with bad-signature tokens from -flood-conns connections, while another client IP presents fresh real tokens")
	flag.IntVar(&o.floodConns, "flood-conns", 400, "connections of the -flood attacker")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "agentwrit-bench-")
	if err != nil {
		logger.Fatal(err)
	}
	ps := &procs{dir: dir}
	code := 0
	if err := run(ctx, ps, o); err != nil {
		logf("error: %v", err)
		code = 1
	}
	ps.stopAll() // also on Ctrl-C: ctx is cancelled, run returns, we get here
	if o.keep {
		logf("work directory kept: %s", dir)
	} else {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func run(ctx context.Context, ps *procs, o options) error {
	if o.fleet > 0 {
		return runFleet(ctx, ps, o)
	}
	s, err := start(ctx, ps, o)
	defer s.cleanup(ps) // after an error too: what started must stop
	if err != nil {
		return err
	}
	if o.soak > 0 {
		return soak(ctx, ps, s, o)
	}
	if err := compare(ctx, s, o); err != nil {
		return err
	}
	if t, ok := s.targets["remote-local"]; ok && o.revocations > 0 {
		if err := localLag(ctx, s, t, o.revocations); err != nil {
			return err
		}
	}
	if o.flood > 0 {
		return flood(ctx, s, o)
	}
	return nil
}

// sliceWarmup is the uncounted start of each slice: the gateway just
// taking over the CPU from the previous one.
const sliceWarmup = 100 * time.Millisecond

// compare alternates the configurations in rounds (A B C D, A B C D, …),
// and within a round every slice, so drift on a shared machine hits all
// alike, and prints medians over rounds.
func compare(ctx context.Context, s *setup, o options) error {
	names := strings.Split(o.configs, ",")
	samples := map[string][]sample{}
	rss0 := map[string]int{}
	for _, n := range names {
		t, ok := s.targets[n]
		if !ok {
			return fmt.Errorf("unknown configuration %q", n)
		}
		rss0[n] = t.proc.rssKiB()
		t.client, t.next = newClient(o.conns), new(atomic.Uint64)
		s.targets[n] = t
	}
	if o.junk > 0 {
		// Each gateway also runs with junk mixed in, right after its clean
		// run, so the valid-token p99 has its baseline side by side.
		var withJunk []string
		for _, n := range names {
			withJunk = append(withJunk, n)
			if n != "plain" {
				t := s.targets[n]
				t.name, t.junk = n+"+junk", o.junk
				s.targets[t.name] = t
				rss0[t.name] = rss0[n]
				withJunk = append(withJunk, t.name)
			}
		}
		names = withJunk
	}
	for _, n := range names {
		if t := s.targets[n]; n != "plain" && !strings.HasSuffix(n, "+junk") && len(t.tokens) > 0 {
			start := time.Now()
			if err := warmTokens(ctx, t, o.conns); err != nil {
				return err
			}
			logf("%s: sent each of %d tokens once in %v", n, len(t.tokens), time.Since(start).Round(time.Millisecond))
		}
	}
	calls0 := brokerCalls(ctx, s, names)
	nSlices := max(1, int(o.duration/o.slice))
	roundTime := time.Duration(len(names)) * (o.slice + sliceWarmup) * time.Duration(nSlices)
	for r := 1; r <= o.rounds; r++ {
		var stopProfiles []func() error
		if o.profile != "" && r == o.rounds {
			profiled := map[*proc]bool{}
			procs := []*proc{s.backend, s.broker}
			for _, n := range names {
				procs = append(procs, s.targets[n].proc)
			}
			for _, p := range procs {
				if p != nil && !profiled[p] {
					profiled[p] = true
					stopProfiles = append(stopProfiles, profileCPU(ctx, p, roundTime, o.profile+"-"+p.name+".prof"))
				}
			}
		}
		round := map[string]*sample{}
		for k := 0; k < nSlices; k++ {
			for _, n := range names {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				warmup := sliceWarmup
				if r == 1 && k == 0 {
					warmup = time.Second // opens the connections
				}
				if round[n] == nil {
					round[n] = &sample{}
				}
				round[n].add(runLoad(ctx, s.targets[n], o.conns, warmup, o.slice, k*o.conns))
			}
		}
		for _, stop := range stopProfiles {
			if err := stop(); err != nil {
				logf("profile: %v", err)
			}
		}
		for _, n := range names {
			smp := round[n]
			smp.finish()
			samples[n] = append(samples[n], *smp)
			logf("round %d %-15s %8.0f req/s  p50 %-10v p99 %-10v statuses %v transport errors %d  RSS %d KiB",
				r, n, smp.rps, smp.p50.Round(time.Microsecond), smp.p99.Round(time.Microsecond), smp.statuses, smp.errs, s.targets[n].proc.rssKiB())
		}
	}
	report(os.Stdout, names, samples, rss0, s, o)
	calls1 := brokerCalls(ctx, s, names)
	for _, n := range names {
		if c, ok := calls1[n]; ok {
			fmt.Printf("broker validate calls of %s during the rounds: %.0f\n", n, c-calls0[n])
		}
	}
	return nil
}

// brokerCalls reads, for each remote gateway among names, how many
// /v1/token/validate calls it has made.
func brokerCalls(ctx context.Context, s *setup, names []string) map[string]float64 {
	calls := map[string]float64{}
	for _, n := range names {
		if t := s.targets[n]; strings.HasPrefix(n, "remote") && !strings.HasSuffix(n, "+junk") && t.metrics != 0 {
			c, err := metric(ctx, t.metrics, "agentwrit_gateway_remote_calls_total")
			if err != nil {
				logf("%s: %v", n, err)
				continue
			}
			calls[n] = c
		}
	}
	return calls
}

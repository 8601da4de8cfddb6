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
	revocations int    // revocations timed by the -fleet mode
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
	flag.StringVar(&o.configs, "configs", "plain,embedded,remote,remote-nocache", "configurations to run, in round order; also plain-headers (plain adding the five identity headers, no enforcement)")
	flag.DurationVar(&o.soak, "soak", 0, "run a soak of this length instead of the comparison")
	flag.DurationVar(&o.remoteTTL, "remote-cache-ttl", 30*time.Second, "cache_ttl of the cached remote gateway")
	flag.StringVar(&o.profile, "cpuprofile", "", "write CPU profiles of the last round to <prefix>-<process>.prof, one per process (gateways, broker, backend)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs, databases)")
	flag.IntVar(&o.fleet, "fleet", 0, "instead of the comparison, run N replicas on one PostgreSQL database: registrations spread over them for -duration with -conns workers, then revocation propagation between replicas")
	flag.StringVar(&o.database, "database", os.Getenv("AGENTWRIT_TEST_POSTGRES"), "PostgreSQL server of -fleet, as a role that may create databases (a fresh one is made and dropped); default $AGENTWRIT_TEST_POSTGRES")
	flag.IntVar(&o.revocations, "revocations", 200, "revocations whose propagation -fleet times")
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

// setup is every process and token the runs need.
type setup struct {
	backend, plain, embedded, broker, remote, remoteNoCache *proc
	embeddedBroker, remoteBroker                            *brokerClient
	targets                                                 map[string]target
}

const rules = `
		require GET /orders/{id} read:orders:{id}
		public  GET /healthz`

func start(ctx context.Context, ps *procs, o options) (*setup, error) {
	s := &setup{targets: map[string]target{}}
	port := func() string { return fmt.Sprint(freePort()) }
	bPort, pPort, eBrokerPort, ePort, brPort, rPort, r0Port := port(), port(), port(), port(), port(), port(), port()
	upstream := "127.0.0.1:" + bPort
	var err error
	if s.backend, err = ps.start("backend", "", fmt.Sprintf("http://127.0.0.1:%s {\n\trespond \"ok\" 200\n}\n", bPort)); err != nil {
		return nil, err
	}
	if s.plain, err = ps.start("plain", "", fmt.Sprintf("http://127.0.0.1:%s {\n\treverse_proxy %s\n}\n", pPort, upstream)); err != nil {
		return nil, err
	}
	brokerGlobals := func(db string) string {
		return fmt.Sprintf("\tagentwrit {\n\t\tadmin_secret %s\n\t\tdatabase %s/%s.db\n\t}", adminSecret, ps.dir, db)
	}
	if s.embedded, err = ps.start("embedded", brokerGlobals("embedded"), fmt.Sprintf(
		"http://127.0.0.1:%s {\n\tagentwrit_broker\n}\nhttp://127.0.0.1:%s {\n\tagentwrit {%s\n\t}\n\treverse_proxy %s\n}\n",
		eBrokerPort, ePort, rules, upstream)); err != nil {
		return nil, err
	}
	needRemote := o.soak > 0 || strings.Contains(o.configs, "remote")
	if s.embeddedBroker, err = newBrokerClient("http://127.0.0.1:"+eBrokerPort, adminSecret); err != nil {
		return nil, err
	}
	if s.remoteBroker, err = newBrokerClient("http://127.0.0.1:"+brPort, adminSecret); err != nil {
		return nil, err
	}
	scope := []string{"read:orders:*"}
	toks := func(as []agent) []string {
		out := make([]string, len(as))
		for i, a := range as {
			out[i] = a.Token
		}
		return out
	}
	logf("registering %d agents at the embedded broker", o.tokens)
	eAgents, err := s.embeddedBroker.register(ctx, o.tokens, scope)
	if err != nil {
		return nil, fmt.Errorf("register (embedded): %w", err)
	}
	s.targets["plain"] = target{name: "plain", url: "http://127.0.0.1:" + pPort + "/orders/", tokens: toks(eAgents), proc: s.plain}
	if strings.Contains(o.configs, "plain-headers") {
		// plain reverse_proxy adding the five identity headers the
		// gateway sets, with one agent's values: the cost of the headers
		// alone, without any enforcement.
		c := claimsOf(eAgents[0].Token)
		hPort := port()
		ph, err := ps.start("plain-headers", "", fmt.Sprintf(
			"http://127.0.0.1:%s {\n\treverse_proxy %s {\n"+
				"\t\theader_up X-AgentWrit-Agent-ID %q\n\t\theader_up X-AgentWrit-Task-ID %q\n\t\theader_up X-AgentWrit-Orch-ID %q\n"+
				"\t\theader_up X-AgentWrit-Scope %q\n\t\theader_up X-AgentWrit-JTI %q\n\t}\n}\n",
			hPort, upstream, c.Sub, c.TaskID, c.OrchID, strings.Join(c.Scope, " "), c.Jti))
		if err != nil {
			return nil, err
		}
		s.targets["plain-headers"] = target{name: "plain-headers", url: "http://127.0.0.1:" + hPort + "/orders/", tokens: toks(eAgents), proc: ph}
	}
	s.targets["embedded"] = target{name: "embedded", url: "http://127.0.0.1:" + ePort + "/orders/", tokens: toks(eAgents), proc: s.embedded}
	if !needRemote {
		return s, nil
	}
	if s.broker, err = ps.start("broker", brokerGlobals("broker"), fmt.Sprintf("http://127.0.0.1:%s {\n\tagentwrit_broker\n}\n", brPort)); err != nil {
		return nil, err
	}
	remote := func(name, port string, ttl time.Duration) (*proc, error) {
		return ps.start(name, "", fmt.Sprintf(
			"http://127.0.0.1:%s {\n\tagentwrit {\n\t\tbroker http://127.0.0.1:%s {\n\t\t\tcache_ttl %s\n\t\t}%s\n\t}\n\treverse_proxy %s\n}\n",
			port, brPort, ttl, rules, upstream))
	}
	if s.remote, err = remote("remote", rPort, o.remoteTTL); err != nil {
		return nil, err
	}
	if s.remoteNoCache, err = remote("remote-nocache", r0Port, 0); err != nil {
		return nil, err
	}
	logf("registering %d agents at the remote broker", o.tokens)
	rAgents, err := s.remoteBroker.register(ctx, o.tokens, scope)
	if err != nil {
		return nil, fmt.Errorf("register (remote): %w", err)
	}
	s.targets["remote"] = target{name: "remote", url: "http://127.0.0.1:" + rPort + "/orders/", tokens: toks(rAgents), proc: s.remote}
	s.targets["remote-nocache"] = target{name: "remote-nocache", url: "http://127.0.0.1:" + r0Port + "/orders/", tokens: toks(rAgents), proc: s.remoteNoCache}
	return s, nil
}

func run(ctx context.Context, ps *procs, o options) error {
	if o.fleet > 0 {
		return runFleet(ctx, ps, o)
	}
	s, err := start(ctx, ps, o)
	if err != nil {
		return err
	}
	if o.soak > 0 {
		return soak(ctx, ps, s, o)
	}
	return compare(ctx, s, o)
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
	return nil
}

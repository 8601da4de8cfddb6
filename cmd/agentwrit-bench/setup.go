package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// setup is every process and token the runs need.
type setup struct {
	backend, broker              *proc
	embeddedBroker, remoteBroker *brokerClient
	targets                      map[string]target
	upstream                     string   // the backend's host:port
	drops                        []func() // databases to drop once every process has stopped
}

// cleanup stops every process, then drops the databases they held.
func (s *setup) cleanup(ps *procs) {
	if s == nil {
		return
	}
	ps.stopAll()
	for _, drop := range s.drops {
		drop()
	}
}

const rules = `
		require GET /orders/{id} read:orders:{id}
		public  GET /healthz`

// localStaleness is the max_staleness of the remote-local gateway: the
// value the Caddyfile shape shows, and the bound the soak holds
// it to.
const localStaleness = 3 * time.Second

// configurations the comparison knows, for the error on a typo.
var configurations = []string{"plain", "plain-headers", "embedded", "embedded-nousage", "embedded-pg", "remote", "remote-nocache", "remote-local"}

// start starts the backend, plain reverse_proxy, the embedded gateway
// (whose tokens every plain configuration reuses) and whatever else
// o.configs (or the soak) names, and registers each broker's agents.
func start(ctx context.Context, ps *procs, o options) (*setup, error) {
	s := &setup{targets: map[string]target{}}
	want := map[string]bool{}
	for _, n := range strings.Split(o.configs, ",") {
		n = strings.TrimSuffix(n, "+junk")
		if !slices.Contains(configurations, n) {
			return s, fmt.Errorf("unknown configuration %q (known: %s)", n, strings.Join(configurations, ", "))
		}
		want[n] = true
	}
	if o.soak > 0 {
		want["remote"], want["remote-nocache"], want["remote-local"] = true, true, true
	}
	bPort, pPort := freePort(), freePort()
	s.upstream = fmt.Sprintf("127.0.0.1:%d", bPort)
	var err error
	if s.backend, err = ps.start("backend", "", fmt.Sprintf("http://127.0.0.1:%d {\n\trespond \"ok\" 200\n}\n", bPort)); err != nil {
		return s, err
	}
	plain, err := ps.start("plain", "", fmt.Sprintf("http://127.0.0.1:%d {\n\treverse_proxy %s\n}\n", pPort, s.upstream))
	if err != nil {
		return s, err
	}
	emb, err := s.startEmbedded(ctx, ps, o, "embedded", filepath.Join(ps.dir, "embedded.db"), "")
	if err != nil {
		return s, err
	}
	s.embeddedBroker = emb.broker
	s.targets["plain"] = target{name: "plain", url: fmt.Sprintf("http://127.0.0.1:%d/orders/", pPort), tokens: emb.tokens, proc: plain}
	if want["plain-headers"] {
		if err := s.startPlainHeaders(ps, emb.tokens); err != nil {
			return s, err
		}
	}
	if want["embedded-nousage"] {
		if _, err := s.startEmbedded(ctx, ps, o, "embedded-nousage", filepath.Join(ps.dir, "embedded-nousage.db"), "\n\t\tusage off"); err != nil {
			return s, err
		}
	}
	if want["embedded-pg"] {
		if o.database == "" {
			return s, errors.New("embedded-pg needs -database postgres://… (or AGENTWRIT_TEST_POSTGRES): a server where the harness may create a database")
		}
		dsn, drop, err := freshDatabase(ctx, o.database)
		if err != nil {
			return s, err
		}
		s.drops = append(s.drops, drop)
		if _, err := s.startEmbedded(ctx, ps, o, "embedded-pg", dsn, ""); err != nil {
			return s, err
		}
	}
	if !want["remote"] && !want["remote-nocache"] && !want["remote-local"] {
		return s, nil
	}
	return s, s.startRemote(ctx, ps, o, want)
}

// brokerGlobals is the agentwrit app of a broker process on database db
// (a file path or a postgres:// URL).
func brokerGlobals(db string) string {
	return fmt.Sprintf("\tagentwrit {\n\t\tadmin_secret %s\n\t\tdatabase %s\n\t}", adminSecret, db)
}

// gatewaySites is a protected site (the agentwrit directive, with extra
// lines before its rules, in front of the backend) and a metrics site.
func gatewaySites(port, metricsPort int, extra, upstream string) string {
	return fmt.Sprintf("http://127.0.0.1:%d {\n\tagentwrit {%s%s\n\t}\n\treverse_proxy %s\n}\nhttp://127.0.0.1:%d {\n\tmetrics\n}\n",
		port, extra, rules, upstream, metricsPort)
}

// embedded is one broker-and-gateway process and its agents' tokens.
type embedded struct {
	broker *brokerClient
	tokens []string
}

// startEmbedded starts a process that is broker and gateway at once on
// db, with extra lines in its agentwrit directive, registers o.tokens
// agents at it and adds its target.
func (s *setup) startEmbedded(ctx context.Context, ps *procs, o options, name, db, extra string) (embedded, error) {
	brPort, gPort, mPort := freePort(), freePort(), freePort()
	p, err := ps.start(name, brokerGlobals(db), fmt.Sprintf("http://127.0.0.1:%d {\n\tagentwrit_broker\n}\n", brPort)+
		gatewaySites(gPort, mPort, extra, s.upstream))
	if err != nil {
		return embedded{}, err
	}
	bc, err := newBrokerClient(fmt.Sprintf("http://127.0.0.1:%d", brPort), adminSecret)
	if err != nil {
		return embedded{}, err
	}
	logf("registering %d agents at %s", o.tokens, name)
	agents, err := bc.register(ctx, o.tokens, []string{"read:orders:*"})
	if err != nil {
		return embedded{}, fmt.Errorf("register (%s): %w", name, err)
	}
	toks := tokensOf(agents)
	s.targets[name] = target{name: name, url: fmt.Sprintf("http://127.0.0.1:%d/orders/", gPort), tokens: toks, proc: p, metrics: mPort}
	return embedded{broker: bc, tokens: toks}, nil
}

func tokensOf(as []agent) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.Token
	}
	return out
}

// startPlainHeaders starts plain reverse_proxy adding the five identity
// headers the gateway sets, with one agent's values: the cost of the
// headers alone, without any enforcement.
func (s *setup) startPlainHeaders(ps *procs, tokens []string) error {
	c := claimsOf(tokens[0])
	port := freePort()
	p, err := ps.start("plain-headers", "", fmt.Sprintf(
		"http://127.0.0.1:%d {\n\treverse_proxy %s {\n"+
			"\t\theader_up X-AgentWrit-Agent-ID %q\n\t\theader_up X-AgentWrit-Task-ID %q\n\t\theader_up X-AgentWrit-Orch-ID %q\n"+
			"\t\theader_up X-AgentWrit-Scope %q\n\t\theader_up X-AgentWrit-JTI %q\n\t}\n}\n",
		port, s.upstream, c.Sub, c.TaskID, c.OrchID, strings.Join(c.Scope, " "), c.Jti))
	if err != nil {
		return err
	}
	s.targets["plain-headers"] = target{name: "plain-headers", url: fmt.Sprintf("http://127.0.0.1:%d/orders/", port), tokens: tokens, proc: p}
	return nil
}

// startRemote starts a broker of its own and the remote gateways in
// front of it that want names: validate mode with a cache (remote) and
// without (remote-nocache), and local mode (remote-local), which logs in
// as an app allowed to read the revocation feed.
func (s *setup) startRemote(ctx context.Context, ps *procs, o options, want map[string]bool) error {
	brPort := freePort()
	var err error
	if s.broker, err = ps.start("broker", brokerGlobals(filepath.Join(ps.dir, "broker.db")), fmt.Sprintf("http://127.0.0.1:%d {\n\tagentwrit_broker\n}\n", brPort)); err != nil {
		return err
	}
	brokerURL := fmt.Sprintf("http://127.0.0.1:%d", brPort)
	if s.remoteBroker, err = newBrokerClient(brokerURL, adminSecret); err != nil {
		return err
	}
	logf("registering %d agents at the remote broker", o.tokens)
	agents, err := s.remoteBroker.register(ctx, o.tokens, []string{"read:orders:*"})
	if err != nil {
		return fmt.Errorf("register (remote): %w", err)
	}
	toks := tokensOf(agents)
	gateway := func(name, block string) error {
		gPort, mPort := freePort(), freePort()
		p, err := ps.start(name, "", gatewaySites(gPort, mPort, fmt.Sprintf("\n\t\tbroker %s {%s\n\t\t}", brokerURL, block), s.upstream))
		if err != nil {
			return err
		}
		s.targets[name] = target{name: name, url: fmt.Sprintf("http://127.0.0.1:%d/orders/", gPort), tokens: toks, proc: p, metrics: mPort}
		return nil
	}
	if want["remote"] {
		if err := gateway("remote", fmt.Sprintf("\n\t\t\tcache_ttl %s", o.remoteTTL)); err != nil {
			return err
		}
	}
	if want["remote-nocache"] {
		// Every request of this one costs a broker call, and they all come
		// from the harness's one address: the per-client bound is off.
		if err := gateway("remote-nocache", "\n\t\t\tcache_ttl 0\n\t\t\tclient_call_rate off"); err != nil {
			return err
		}
	}
	if want["remote-local"] {
		admin, err := s.remoteBroker.admin(ctx)
		if err != nil {
			return err
		}
		app, err := admin.CreateApp(ctx, broker.AppRequest{Name: "bench-gateway", Scopes: []string{"read:revocations:*"}})
		if err != nil {
			return fmt.Errorf("create the gateway's app: %w", err)
		}
		if err := gateway("remote-local", fmt.Sprintf("\n\t\t\tverify local\n\t\t\tclient_id %s\n\t\t\tclient_secret %s\n\t\t\tmax_staleness %s",
			app.ClientID, app.ClientSecret, localStaleness)); err != nil {
			return err
		}
		return waitAllowed(ctx, s.targets["remote-local"].url+"1", toks[0])
	}
	return nil
}

// waitAllowed waits until the gateway at url allows token: a local-mode
// gateway refuses everything (503) until its revocation feed has
// synchronized.
func waitAllowed(ctx context.Context, url, token string) error {
	hc := newClient(1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := gatewayStatus(ctx, hc, url, token)
		if err == nil && st == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not allowing a valid token after 30s: %d %v", url, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

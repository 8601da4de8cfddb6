package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// replica is one caddy-agentwrit process of a fleet: an embedded broker
// and a gateway in front of a `respond` backend, on a shared database.
type replica struct {
	name                    string
	config, admin           string // Caddyfile path, admin endpoint host:port
	brokerURL, gatewayURL   string
	brokerPort, gatewayPort string
	dsn                     string
	cmd                     *exec.Cmd
	out                     lockedBuffer
	exited                  chan struct{}
}

// fleetSecret is the admin secret of the fleet tests; the processes get
// its cheap hash, so logins do not cost a bcrypt of cost 12.
const fleetSecret = brokertest.AdminSecret

// writeConfig writes the replica's Caddyfile; version shows in the
// backend's answers, so a test can tell a reload happened.
func (r *replica) writeConfig(t *testing.T, version string) {
	t.Helper()
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	agentwrit {
		admin_secret {env.AGENTWRIT_ADMIN_SECRET}
		database %s {
			pool_size 8
		}
		max_revocation_staleness 2s
	}
}
http://127.0.0.1:%s {
	agentwrit_broker
}
http://127.0.0.1:%s {
	route {
		agentwrit {
			require GET /data/{id} read:data:{id}
			unmapped deny
		}
		respond "%s {http.request.header.X-AgentWrit-Agent-ID}"
	}
}
`, r.admin, r.dsn, r.brokerPort, r.gatewayPort, version)
	if err := os.WriteFile(r.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// buildProduct builds the binary (without the test's instrumentation,
// so the replicas run as users run them) into a temp dir and returns a
// function making commands of it, with their data and config directories
// inside t's temp dir.
func buildProduct(t *testing.T) func(env []string, args ...string) *exec.Cmd {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not on PATH: cannot build caddy-agentwrit for the fleet test")
	}
	bin := filepath.Join(t.TempDir(), "caddy-agentwrit")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return func(env []string, args ...string) *exec.Cmd {
		home := t.TempDir()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "HOME="+home,
			"XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"))
		cmd.Env = append(cmd.Env, env...)
		return cmd
	}
}

// startReplica starts a process of the binary run makes on the database
// dsn and waits until its broker answers.
func startReplica(t *testing.T, run func([]string, ...string) *exec.Cmd, name, dsn string) *replica {
	t.Helper()
	r := &replica{
		name: name, dsn: dsn, config: filepath.Join(t.TempDir(), "Caddyfile"),
		admin: "127.0.0.1:" + freePort(t), brokerPort: freePort(t), gatewayPort: freePort(t),
		exited: make(chan struct{}),
	}
	r.brokerURL, r.gatewayURL = "http://127.0.0.1:"+r.brokerPort, "http://127.0.0.1:"+r.gatewayPort
	r.writeConfig(t, "v1")
	r.cmd = run([]string{"AGENTWRIT_ADMIN_SECRET=" + brokertest.AdminSecretHash()}, "run", "--config", r.config)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Signal(os.Interrupt)
		select {
		case <-r.exited:
		case <-time.After(10 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", r.name, r.out.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if res, err := http.Get(r.brokerURL + "/v1/health"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return r
			}
		}
		select {
		case <-r.exited:
			t.Fatalf("%s exited before it was healthy:\n%s", name, r.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never became healthy:\n%s", name, r.out.String())
		}
	}
}

// kill ends the process at once, as a crash would (SIGKILL).
func (r *replica) kill(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-r.exited
}

func (r *replica) client(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New(r.brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *replica) adminClient(t *testing.T) *client.Client {
	t.Helper()
	c, err := r.client(t).LoginAdmin(context.Background(), fleetSecret)
	if err != nil {
		t.Fatalf("%s: admin login: %v", r.name, err)
	}
	return c
}

// get calls the replica's gateway with token and returns the status and body.
func (r *replica) get(ctx context.Context, hc *http.Client, path, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.gatewayURL+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), err
}

// agentIDs lists every agent the replica's broker knows.
func agentIDs(t *testing.T, admin *client.Client) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for offset := 0; ; {
		page, err := admin.Agents(context.Background(), client.AgentQuery{All: true, Limit: 100, Offset: offset})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page.Agents {
			ids[a.AgentID] = true
		}
		offset += len(page.Agents)
		if len(page.Agents) == 0 || offset >= page.Total {
			return ids
		}
	}
}

// TestFleetProcesses runs two caddy-agentwrit processes on one PostgreSQL
// database: a token from one works at the other's gateway, a revocation
// on one reaches the other, a crash of one loses nothing it acknowledged,
// and a reload of the other under load fails no request.
func TestFleetProcesses(t *testing.T) {
	if os.Getenv(brokertest.PostgresEnv) == "" {
		t.Skip("set " + brokertest.PostgresEnv + "=postgres://… to run the fleet test (two processes on one PostgreSQL database)")
	}
	dsn := brokertest.PostgresDSN(t)
	run := buildProduct(t)
	a, b := startReplica(t, run, "A", dsn), startReplica(t, run, "B", dsn)
	ctx := context.Background()
	scopes := []string{"read:data:*"}
	no := false
	newLaunchToken := func(r *replica) string {
		lt, err := r.adminClient(t).CreateLaunchToken(ctx, broker.LaunchTokenRequest{AgentName: "fleet", AllowedScope: scopes, SingleUse: &no})
		if err != nil {
			t.Fatalf("%s: launch token: %v", r.name, err)
		}
		return lt.LaunchToken
	}
	ltA, ltB := newLaunchToken(a), newLaunchToken(b)
	hc := &http.Client{Timeout: 10 * time.Second}

	// Registered on A, allowed at B's gateway.
	ag, err := a.client(t).Register(ctx, ltA, scopes)
	if err != nil {
		t.Fatalf("register on A: %v", err)
	}
	if st, body, err := b.get(ctx, hc, "/data/1", ag.Token); err != nil || st != http.StatusOK {
		t.Fatalf("B's gateway with A's token: %d %q %v", st, body, err)
	}
	if st, _, err := a.get(ctx, hc, "/data/1", ag.Token); err != nil || st != http.StatusOK {
		t.Fatalf("A's gateway: %d %v", st, err)
	}

	// Revoked on B, refused by A's gateway within a bounded wait.
	if _, err := b.adminClient(t).Revoke(ctx, broker.LevelAgent, ag.ID); err != nil {
		t.Fatalf("revoke on B: %v", err)
	}
	revokedAt := time.Now()
	for {
		st, body, err := a.get(ctx, hc, "/data/1", ag.Token)
		if err != nil {
			t.Fatal(err)
		}
		if st == http.StatusUnauthorized {
			break
		}
		if st != http.StatusOK {
			t.Fatalf("A's gateway after the revocation: %d %q", st, body)
		}
		if time.Since(revokedAt) > 10*time.Second {
			t.Fatal("a revocation on B was not enforced by A's gateway within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("revocation on B enforced by A's gateway after %s", time.Since(revokedAt).Round(time.Microsecond))

	t.Run("crash", func(t *testing.T) { crash(t, a, b, ltA, ltB, scopes, hc) })
	t.Run("reload under load", func(t *testing.T) { reloadUnderLoad(t, run, b, ltB, scopes) })
}

// crash registers on A and B at the same time, kills A with SIGKILL
// midway, and checks that B kept serving and knows every agent A
// acknowledged.
func crash(t *testing.T, a, b *replica, ltA, ltB string, scopes []string, hc *http.Client) {
	ctx := context.Background()
	const perReplica = 40 // within one client IP's challenge burst
	var ackedA []*client.Agent
	var bFailures []error
	var ackedCount atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c := a.client(t)
		for range perReplica {
			ag, err := c.Register(ctx, ltA, scopes)
			if err != nil {
				return // A is gone
			}
			ackedA = append(ackedA, ag)
			ackedCount.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		c := b.client(t)
		for range perReplica {
			if _, err := c.Register(ctx, ltB, scopes); err != nil {
				bFailures = append(bFailures, err)
			}
			time.Sleep(5 * time.Millisecond) // keep B registering past A's death
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for ackedCount.Load() < 10 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	a.kill(t)
	wg.Wait()
	if len(bFailures) > 0 {
		t.Fatalf("B failed %d registrations while A crashed, first: %v", len(bFailures), bFailures[0])
	}
	if len(ackedA) == 0 {
		t.Fatal("A acknowledged no registration before it was killed")
	}
	t.Logf("A acknowledged %d registrations before SIGKILL", len(ackedA))
	known := agentIDs(t, b.adminClient(t))
	c := b.client(t)
	for _, ag := range ackedA {
		if !known[ag.ID] {
			t.Errorf("agent %s, acknowledged by A, is unknown to B", ag.ID)
		}
		v, err := c.Validate(ctx, ag.Token)
		if err != nil || !v.Valid {
			t.Errorf("token of %s, acknowledged by A, does not validate on B: %+v %v", ag.ID, v, err)
		}
		if st, body, err := b.get(ctx, hc, "/data/1", ag.Token); err != nil || st != http.StatusOK {
			t.Errorf("B's gateway after A's crash, token of %s: %d %q %v", ag.ID, st, body, err)
		}
	}
}

// reloadUnderLoad sends gateway requests through r while `caddy-agentwrit
// reload` changes its configuration: none may fail, and the new
// configuration must be serving by the end.
func reloadUnderLoad(t *testing.T, run func([]string, ...string) *exec.Cmd, r *replica, lt string, scopes []string) {
	ag, err := r.client(t).Register(context.Background(), lt, scopes)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var sent, failed atomic.Int64
	var firstFailure atomic.Value
	var sawV2 atomic.Bool
	var wg sync.WaitGroup
	// Keep-alive clients, as gateways' callers are: one idle connection
	// kept per worker.
	const workers = 4
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var reused bool
				ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
					GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused },
				})
				st, body, err := r.get(ctx, hc, "/data/7", ag.Token)
				sent.Add(1)
				if err != nil || st != http.StatusOK {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %q %v (connection reused: %v)", st, body, err, reused))
					continue
				}
				if len(body) >= 2 && body[:2] == "v2" {
					sawV2.Store(true)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // load first
	r.writeConfig(t, "v2")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := run(nil, "reload", "--config", r.config, "--address", r.admin)
	reload := exec.CommandContext(ctx, p.Path, p.Args[1:]...)
	reload.Env = p.Env
	out, err := reload.CombinedOutput()
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("reload: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !sawV2.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // load after, too
	close(stop)
	wg.Wait()
	t.Logf("reload under load: %d gateway requests, %d failed", sent.Load(), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d gateway requests failed during the reload, first: %v", n, sent.Load(), firstFailure.Load())
	}
	if !sawV2.Load() {
		t.Fatal("the reloaded configuration never served")
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("reload timed out")
	}
}

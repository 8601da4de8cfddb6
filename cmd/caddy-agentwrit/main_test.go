package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as caddy-agentwrit: run with this variable set it
// is the real main, so the tests start the product exactly as a user does.
const beMain = "CADDY_AGENTWRIT_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(beMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// product runs the product with args and the given extra environment, with
// its data and config directories inside t's temp dir.
func product(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), beMain+"=1", "HOME="+home,
		"XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// waitHealthy polls url until it answers 200 or the deadline passes.
func waitHealthy(t *testing.T, url string, out *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never became healthy; output:\n%s", url, out.String())
}

// exampleOnFreePorts writes examples/Caddyfile with its three ports and
// Caddy's admin endpoint moved to free loopback ports, so the tests run
// while a quick start holds the real ones. It returns the config's path
// and the broker, gateway and backend ports that replace 8080, 8081 and
// 9001.
func exampleOnFreePorts(t *testing.T) (path string, ports map[string]string) {
	t.Helper()
	src, err := os.ReadFile("../../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(src)
	ports = map[string]string{}
	for _, p := range []string{"8080", "8081", "9001"} {
		ports[p] = freePort(t)
		cfg = strings.ReplaceAll(cfg, ":"+p, ":"+ports[p])
	}
	open := regexp.MustCompile(`(?m)^\{$`).FindStringIndex(cfg)
	if open == nil {
		t.Fatal("examples/Caddyfile has no global options block")
	}
	cfg = cfg[:open[1]] + "\n\tadmin 127.0.0.1:" + freePort(t) + cfg[open[1]:]
	path = filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, ports
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// TestExampleCaddyfile runs the README's quick start: the example config
// with only AGENTWRIT_ADMIN_SECRET set, then examples/quickstart-go (the Go
// client walk), the README's curl lines and examples/quickstart.py.
func TestExampleCaddyfile(t *testing.T) {
	var out bytes.Buffer
	config, ports := exampleOnFreePorts(t)
	brokerURL, gatewayURL := "http://localhost:"+ports["8080"], "http://localhost:"+ports["8081"]
	cmd := product(t, []string{"AGENTWRIT_ADMIN_SECRET=quickstart-secret"}, "run", "--config", config)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	waitHealthy(t, brokerURL+"/v1/health", &out)

	goQuickstart := buildQuickstartGo(t)
	clientEnv := append(os.Environ(), "AGENTWRIT_ADMIN_SECRET=quickstart-secret",
		"AGENTWRIT_BROKER="+brokerURL, "AGENTWRIT_GATEWAY="+gatewayURL)
	walk := exec.Command(goQuickstart)
	walk.Env = clientEnv
	got, err := walk.CombinedOutput()
	if err != nil {
		t.Fatalf("examples/quickstart-go: %v\n%s\ncaddy:\n%s", err, got, out.String())
	}
	for _, want := range []string{"registered spiffe://agentwrit.local/agent/demo-orch/demo-task/",
		"GET /orders/42: 200 hello spiffe://agentwrit.local/agent/demo-orch/demo-task/", "GET /orders/43: 403",
		"renewed: a new token valid for", "released: GET /orders/42 with that token: 401"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("examples/quickstart-go output lacks %q:\n%s", want, got)
		}
	}
	printToken := exec.Command(goQuickstart, "--print-token")
	printToken.Env = clientEnv
	printToken.Stderr = os.Stderr
	raw, err := printToken.Output()
	if err != nil {
		t.Fatalf("examples/quickstart-go --print-token: %v", err)
	}
	token := strings.TrimSuffix(string(raw), "\n")
	if strings.Count(token, ".") != 2 || strings.ContainsAny(token, " \n") {
		t.Fatalf("--print-token printed %q, want one JWT and nothing else", raw)
	}
	resp, err := http.Get(gatewayURL + "/orders/42")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: got %d, want 401", resp.StatusCode)
	}
	// The README's curl lines, run as written.
	if _, err := exec.LookPath("curl"); err == nil {
		lines := readmeBlock(t, "<!-- quickstart:curl -->")
		lines = strings.NewReplacer("localhost:8080", "localhost:"+ports["8080"], "localhost:8081", "localhost:"+ports["8081"]).Replace(lines)
		sh := exec.Command("bash", "-euo", "pipefail", "-c", lines)
		sh.Env = append(os.Environ(), "TOKEN="+token)
		got, err := sh.CombinedOutput()
		if err != nil {
			t.Fatalf("README curl lines: %v\n%s", err, got)
		}
		for _, want := range []string{"hello spiffe://", "insufficient_scope", `"valid":true`, `"kty":"OKP"`, "token verification failed"} {
			if !strings.Contains(string(got), want) {
				t.Errorf("README curl output lacks %q:\n%s", want, got)
			}
		}
	} else {
		t.Log("curl not found: the README's curl lines were not exercised")
	}
	if python, err := exec.LookPath("python3"); err == nil && exec.Command(python, "-c", "import requests, cryptography").Run() == nil {
		py := exec.Command(python, "../../examples/quickstart.py")
		py.Env = clientEnv
		got, err := py.CombinedOutput()
		if err != nil || !strings.Contains(string(got), "hello spiffe://") || !strings.Contains(string(got), "403") {
			t.Fatalf("python quick start: %v\n%s", err, got)
		}
	} else {
		t.Log("python3 with requests and cryptography not found: the Python client was not exercised")
	}
}

// TestMissingAdminSecret: no default secret, ever; the load error says why.
func TestMissingAdminSecret(t *testing.T) {
	config, _ := exampleOnFreePorts(t)
	cmd := product(t, []string{"AGENTWRIT_ADMIN_SECRET="}, "run", "--config", config)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Env = append(os.Environ(), beMain+"=1", "AGENTWRIT_ADMIN_SECRET=", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("started without an admin secret:\n%s", out)
	}
	if !strings.Contains(string(out), "admin_secret") {
		t.Fatalf("error does not name admin_secret:\n%s", out)
	}
}

// buildQuickstartGo builds examples/quickstart-go, the program the README
// runs with `go run ./examples/quickstart-go`.
func buildQuickstartGo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "quickstart-go")
	build := exec.Command("go", "build", "-o", bin, "../../examples/quickstart-go")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build examples/quickstart-go: %v\n%s", err, out)
	}
	return bin
}

// readmeBlock returns the fenced code block that follows marker in README.md.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), marker)
	if !ok {
		t.Fatalf("README.md has no %s", marker)
	}
	_, after, _ = strings.Cut(after, "```")
	_, body, _ := strings.Cut(after, "\n")
	body, _, _ = strings.Cut(body, "```")
	return body
}

// TestReadmeSnippetsAreTested keeps the README's Python client identical
// to the examples/quickstart.py TestExampleCaddyfile runs.
func TestReadmeSnippetsAreTested(t *testing.T) {
	py, err := os.ReadFile("../../examples/quickstart.py")
	if err != nil {
		t.Fatal(err)
	}
	if got := readmeBlock(t, "<!-- python-quickstart -->"); got != string(py) {
		t.Errorf("README Python snippet differs from examples/quickstart.py")
	}
}

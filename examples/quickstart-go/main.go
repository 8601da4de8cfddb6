// Command quickstart-go walks the example (examples/Caddyfile) with the Go
// client of package broker/client: as the operator it gets a launch token,
// as the agent it registers, calls the gateway with its token, renews the
// token and releases it.
//
//	AGENTWRIT_ADMIN_SECRET=change-this go run ./examples/quickstart-go
//	TOKEN=$(go run ./examples/quickstart-go --print-token)
//
// The broker and gateway default to the example's http://localhost:8080
// and http://localhost:8081; $AGENTWRIT_BROKER and $AGENTWRIT_GATEWAY
// point elsewhere. It exits non-zero when the gateway does not answer as
// the example's rules say it should.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

func main() {
	printToken := flag.Bool("print-token", false, "Register an agent and print only its token (for TOKEN=$(...))")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, os.Stdout, *printToken); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart-go:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, out io.Writer, printToken bool) error {
	secret := os.Getenv("AGENTWRIT_ADMIN_SECRET")
	if secret == "" {
		return errors.New("set AGENTWRIT_ADMIN_SECRET to the secret the example runs with")
	}
	gateway := strings.TrimRight(env("AGENTWRIT_GATEWAY", "http://localhost:8081"), "/")
	c, err := client.New(env("AGENTWRIT_BROKER", "http://localhost:8080"))
	if err != nil {
		return err
	}

	// Operator: an admin token, then a launch token allowing read:orders:*.
	admin, err := c.LoginAdmin(ctx, secret)
	if err != nil {
		return err
	}
	launch, err := admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{
		AgentName: "demo", AllowedScope: []string{"read:orders:*"}, MaxTTL: 600,
	})
	if err != nil {
		return err
	}

	// Agent: Register makes a key pair, signs the broker's nonce and
	// registers, asking for read:orders:42 only.
	agent, err := c.Register(ctx, launch.LaunchToken, []string{"read:orders:42"},
		client.WithOrchID("demo-orch"), client.WithTaskID("demo-task"))
	if err != nil {
		return err
	}
	if printToken {
		fmt.Fprintln(out, agent.Token)
		return nil
	}
	fmt.Fprintf(out, "registered %s, token valid for %s\n", agent.ID, agent.ExpiresIn)

	// The gateway lets the token through where its scope covers the rule.
	body, err := expect(ctx, gateway+"/orders/42", agent.Token, http.StatusOK)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "GET /orders/42: 200 %s\n", body)
	if _, err := expect(ctx, gateway+"/orders/43", agent.Token, http.StatusForbidden); err != nil {
		return err
	}
	fmt.Fprintln(out, "GET /orders/43: 403 (read:orders:42 does not cover read:orders:43)")

	// Renew: a fresh token with the same scope.
	renewed, err := agent.Client().Renew(ctx)
	if err != nil {
		return err
	}
	if _, err := expect(ctx, gateway+"/orders/42", renewed.AccessToken, http.StatusOK); err != nil {
		return err
	}
	fmt.Fprintf(out, "renewed: a new token valid for %ds, and GET /orders/42: 200\n", renewed.ExpiresIn)

	// Release: the agent is done; from now on the broker refuses the token.
	if err := c.WithToken(renewed.AccessToken).Release(ctx); err != nil {
		return err
	}
	if _, err := expect(ctx, gateway+"/orders/42", renewed.AccessToken, http.StatusUnauthorized); err != nil {
		return err
	}
	fmt.Fprintln(out, "released: GET /orders/42 with that token: 401")
	return nil
}

// expect calls GET url with the bearer token and returns the body, or an
// error when the status is not want.
func expect(ctx context.Context, url, token string, want int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != want {
		return "", fmt.Errorf("GET %s: %d %s, want %d", url, resp.StatusCode, strings.TrimSpace(string(b)), want)
	}
	return strings.TrimSpace(string(b)), nil
}

package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// An operator makes a launch token; the agent it is handed to registers,
// calls a protected URL with its token, and hands the token back.
func ExampleClient_Register() {
	ctx := context.Background()
	brokerURL, adminSecret, stop := exampleBroker() // a broker running in this process
	defer stop()
	reports := exampleReports(brokerURL) // a URL that wants read:data:reports
	defer reports.Close()

	c, err := client.New(brokerURL)
	if err != nil {
		log.Fatal(err)
	}

	// The operator logs in and makes a launch token for one agent.
	admin, err := c.LoginAdmin(ctx, adminSecret)
	if err != nil {
		log.Fatal(err)
	}
	lt, err := admin.CreateLaunchToken(ctx, broker.LaunchTokenRequest{
		AgentName:    "report-reader",
		AllowedScope: []string{"read:data:*"},
	})
	if err != nil {
		log.Fatal(err)
	}

	// The agent registers with it: Register makes a key, answers the
	// broker's challenge, and returns the agent's identity and token.
	agent, err := c.Register(ctx, lt.LaunchToken, []string{"read:data:reports"},
		client.WithOrchID("nightly"), client.WithTaskID("q3-summary"))
	if err != nil {
		log.Fatal(err)
	}
	// Its ID is a SPIFFE ID whose last segment is random.
	fmt.Println("agent:", agent.ID[:strings.LastIndex(agent.ID, "/")+1]+"…")

	// It calls the protected URL with its token.
	get := func() string {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, reports.URL+"/reports/q3", nil)
		if err != nil {
			log.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+agent.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		resp.Body.Close()
		return resp.Status
	}
	fmt.Println("GET /reports/q3:", get())

	// Done, it hands the token back; from then on the token is refused.
	if err := agent.Client().Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("after release:", get())

	// Output:
	// agent: spiffe://agentwrit.local/agent/nightly/q3-summary/…
	// GET /reports/q3: 200 OK
	// after release: 401 Unauthorized
}

// exampleReports stands in for a route protected by the agentwrit handler:
// it asks the broker about each bearer token and wants read:data:reports.
func exampleReports(brokerURL string) *httptest.Server {
	c, err := client.New(brokerURL)
	if err != nil {
		log.Fatal(err)
	}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		res, err := c.Validate(r.Context(), tok)
		switch {
		case err != nil:
			http.Error(w, "broker unavailable", http.StatusServiceUnavailable)
		case !res.Valid:
			http.Error(w, "invalid token", http.StatusUnauthorized)
		case !slices.Contains(res.Claims.Scope, "read:data:reports"):
			http.Error(w, "insufficient scope", http.StatusForbidden)
		default:
			fmt.Fprintln(w, "Q3 report")
		}
	}))
}

package console_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/caddymodule/console"
)

// Scale of TestConsoleAtScale. The full million audit events take longer
// to seed than a default test run should (about 1 to 2 minutes), so they
// run only with AGENTWRIT_SCALE=1 (CI sets it); otherwise a tenth. Under
// the race detector both are cut further (raceAgents, raceEvents).
const (
	scaleAgents      = 10_000
	scaleEventsFull  = 1_000_000
	scaleEventsQuick = 100_000
	auditBatch       = 5_000
	raceAgents       = 1_000
	raceEvents       = 20_000
)

// TestConsoleAtScale seeds a SQLite store with 10,000 agents and up to a
// million audit events, then times the first pages the console loads (and
// a few deeper ones) through the console handler. It logs times and
// asserts only that each answer is a full page: performance is reported,
// not asserted.
func TestConsoleAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds a large database")
	}
	agents, events := scaleAgents, scaleEventsQuick
	switch {
	case os.Getenv("AGENTWRIT_SCALE") == "1":
		events = scaleEventsFull
	case raceEnabled:
		agents, events = raceAgents, raceEvents
	}
	ctx := context.Background()
	store := brokertest.OpenStore(t, "")
	db := store.Database()

	began := time.Now()
	seedAgents(t, ctx, db, agents)
	t.Logf("seeded %d agents in %v", agents, time.Since(began).Round(time.Millisecond))
	began = time.Now()
	seedAudit(t, ctx, db, events, agents)
	t.Logf("seeded %d audit events in %v", events, time.Since(began).Round(time.Millisecond))

	b := brokertest.New(t, brokertest.Options{Store: store})
	c := httptest.NewServer(console.New(b.Broker))
	t.Cleanup(c.Close)
	token := b.AdminToken(t)

	for _, q := range []struct {
		path string
		want int // rows in a full page, or -1 to skip the count
	}{
		{"/v1/admin/agents?limit=50", 50},
		{fmt.Sprintf("/v1/admin/agents?limit=50&offset=%d", agents-100), 50},
		{"/v1/admin/agents?limit=50&task_id=task-7", min(50, agents/100)},
		{fmt.Sprintf("/v1/admin/agents?limit=50&q=instance-%d", agents-1), 1},
		{"/v1/admin/agents?limit=50&live=false", 50},
		{"/v1/audit/events?order=newest&limit=50", 50},
		{fmt.Sprintf("/v1/audit/events?order=newest&limit=50&before_id=evt-%06d", events/2), 50},
		{fmt.Sprintf("/v1/audit/events?limit=1000&after_id=evt-%06d", events-10), -1},
		{"/v1/audit/events?order=newest&limit=50&event_type=scope_violation", 50},
		{"/v1/audit/events?order=newest&limit=50&agent_id=" + agentID(77), -1},
		{"/v1/admin/status", -1},
	} {
		// The first call is what an operator waits for; the second shows
		// what a warm cache does.
		for _, round := range []string{"cold", "warm"} {
			start := time.Now()
			resp := do(t, "GET", c.URL+q.path, token, "")
			var body struct {
				Agents json.RawMessage `json:"agents"`
				Events []any           `json:"events"`
				Total  int             `json:"total"`
			}
			decodeJSON(t, resp, &body)
			took := time.Since(start)
			require.Equal(t, http.StatusOK, resp.StatusCode, q.path)
			if q.want >= 0 {
				var agents []any
				if len(body.Agents) > 0 {
					require.NoError(t, json.Unmarshal(body.Agents, &agents))
				}
				require.Equal(t, q.want, len(agents)+len(body.Events), q.path)
			}
			t.Logf("%-4s %8.1f ms  %s (total %d)", round, float64(took.Microseconds())/1000, q.path, body.Total)
		}
	}

	// Not a page load: the Verify chain button reads the whole chain. It
	// is quadratic today (each page of VerifyAudit's walk runs QueryAudit,
	// which counts every event after the page: about 4 minutes at a million
	// events), so it is timed only below the full size.
	if events < scaleEventsFull {
		start := time.Now()
		resp := do(t, "GET", c.URL+"/v1/admin/audit/verify", token, "")
		var v struct {
			Intact   bool  `json:"intact"`
			Verified int64 `json:"verified"`
		}
		decodeJSON(t, resp, &v)
		require.True(t, v.Intact)
		t.Logf("once %8.1f ms  /v1/admin/audit/verify (%d events)", float64(time.Since(start).Microseconds())/1000, v.Verified)
	}
}

func agentID(i int) string {
	return fmt.Sprintf("spiffe://agentwrit.local/agent/orch-%d/task-%d/instance-%d", i%10, i%100, i)
}

// seedAgents registers n agents, each with one live token, four writers
// at a time.
func seedAgents(t *testing.T, ctx context.Context, db broker.Database, n int) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	var g errgroup.Group
	g.SetLimit(4)
	for i := range n {
		g.Go(func() error {
			id := agentID(i)
			return db.Register(ctx, &broker.Registration{
				Agent: broker.Agent{ID: id, PublicKey: pub, OrchID: fmt.Sprintf("orch-%d", i%10), TaskID: fmt.Sprintf("task-%d", i%100),
					Scope: []string{"read:orders:*"}, AgentName: "scale", LaunchScope: []string{"read:orders:*"}, RegisteredAt: now},
				Token: broker.TokenRecord{JTI: fmt.Sprintf("%032x", i), Subject: id, TaskID: fmt.Sprintf("task-%d", i%100),
					OrchID: fmt.Sprintf("orch-%d", i%10), Scope: []string{"read:orders:*"}, IssuedAt: now, ExpiresAt: now.Add(time.Hour)},
			})
		})
	}
	require.NoError(t, g.Wait())
}

// seedAudit appends n events in batches, shaped like gateway traffic.
func seedAudit(t *testing.T, ctx context.Context, db broker.Database, n, agents int) {
	now := time.Now()
	batch := make([]broker.Event, 0, auditBatch)
	for i := range n {
		e := broker.Event{EventType: broker.EventTokenIssued, AgentID: agentID(i % agents), TaskID: fmt.Sprintf("task-%d", i%100),
			Detail: "seeded", Outcome: broker.OutcomeSuccess}
		if i%10 == 0 {
			e.EventType, e.Outcome, e.Resource = broker.EventScopeViolation, broker.OutcomeDenied, fmt.Sprintf("GET /orders/%d", i)
		}
		batch = append(batch, e)
		if len(batch) == auditBatch || i == n-1 {
			require.NoError(t, db.AppendAudit(ctx, batch, now))
			batch = batch[:0]
		}
	}
}

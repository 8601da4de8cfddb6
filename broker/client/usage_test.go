package client_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// TestUsageReporter: a remote gateway's flush arrives in chunks, and a
// refused app token is replaced by a fresh login, once.
func TestUsageReporter(t *testing.T) {
	ctx := context.Background()
	var posts, refuse atomic.Int64
	refuse.Store(1)
	s := brokertest.New(t, brokertest.Options{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/usage" {
				posts.Add(1)
				if refuse.Add(-1) >= 0 {
					broker.WriteProblem(w, r, http.StatusUnauthorized, broker.ErrTypeUnauthorized, "token expired")
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	}})
	admin := s.Admin(t)
	agent := s.Agent(t, "read:orders:*")
	app, err := admin.CreateApp(ctx, broker.AppRequest{Name: "gateway", Scopes: []string{broker.UsageScope}})
	require.NoError(t, err)

	rep := client.NewUsageReporter(s.Client(t), app.ClientID, app.ClientSecret)
	now := time.Now().UTC()
	records := make([]broker.UsageRecord, 2500)
	for i := range records {
		records[i] = broker.UsageRecord{Hour: now, AgentID: agent.ID, Rule: "GET /orders/{id}", Required: fmt.Sprint("read:orders:", i),
			Granted: "read:orders:*", Result: broker.UsageAllowed, Count: 1, First: now, Last: now}
	}
	require.NoError(t, rep.AddUsage(ctx, records, []broker.DecisionCount{{Minute: now, Result: "allow", Reason: "ok", Count: 2500}}))
	require.Equal(t, int64(4), posts.Load(), "one refused, then three chunks of at most 1,000")

	report, err := admin.Usage(ctx, client.UsageQuery{AgentID: agent.ID})
	require.NoError(t, err)
	require.Len(t, report.Groups, 1)
	require.Equal(t, int64(2500), report.Groups[0].Grants[0].Count)

	// A reporter whose app lacks the scope is refused, not retried forever.
	plain, err := admin.CreateApp(ctx, broker.AppRequest{Name: "plain", Scopes: []string{"read:orders:*"}})
	require.NoError(t, err)
	err = client.NewUsageReporter(s.Client(t), plain.ClientID, plain.ClientSecret).AddUsage(ctx, records[:1], nil)
	var pe *client.Error
	require.ErrorAs(t, err, &pe)
	require.Equal(t, http.StatusForbidden, pe.Status)
}

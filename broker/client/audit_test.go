package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

func TestAuditEvents(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	start := time.Now().Add(-time.Minute)
	a := e.register(t, "read:data:*")
	b := e.register(t, "read:data:*")
	_, err := e.admin.Revoke(ctx, broker.LevelAgent, b.ID)
	require.NoError(t, err)

	page, err := e.admin.AuditEvents(ctx, client.AuditQuery{EventType: broker.EventAgentRegistered})
	require.NoError(t, err)
	require.Equal(t, 2, page.Total)
	assert.Equal(t, a.ID, page.Events[0].AgentID)
	assert.Equal(t, b.ID, page.Events[1].AgentID)

	page, err = e.admin.AuditEvents(ctx, client.AuditQuery{EventType: broker.EventAgentRegistered, Limit: 1, Offset: 1})
	require.NoError(t, err)
	require.Len(t, page.Events, 1)
	assert.Equal(t, b.ID, page.Events[0].AgentID)
	assert.Equal(t, 2, page.Total)
	assert.Equal(t, 1, page.Limit)
	assert.Equal(t, 1, page.Offset)

	page, err = e.admin.AuditEvents(ctx, client.AuditQuery{AgentID: b.ID, Outcome: broker.OutcomeSuccess})
	require.NoError(t, err)
	assert.Equal(t, 3, page.Total, "registered, token issued, revoked")
	page, err = e.admin.AuditEvents(ctx, client.AuditQuery{AgentID: b.ID, TaskID: client.DefaultTaskID})
	require.NoError(t, err)
	assert.Equal(t, 2, page.Total, "the revocation event has no task_id")

	// Since and Until are sent as RFC 3339 (an offset's "+" escaped).
	east := time.FixedZone("east", 2*3600)
	page, err = e.admin.AuditEvents(ctx, client.AuditQuery{Since: start.In(east), Until: time.Now().Add(time.Minute).In(east)})
	require.NoError(t, err)
	assert.Positive(t, page.Total)
	page, err = e.admin.AuditEvents(ctx, client.AuditQuery{Since: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	assert.Zero(t, page.Total)
	page, err = e.admin.AuditEvents(ctx, client.AuditQuery{Until: start})
	require.NoError(t, err)
	assert.Zero(t, page.Total)

	// Every event, and the chain they form.
	var all []broker.Event
	for ev, err := range e.admin.AllAuditEvents(ctx, client.AuditQuery{}) {
		require.NoError(t, err)
		all = append(all, ev)
	}
	h, err := e.c.Health(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, h.AuditEventsCount, len(all))
	assert.NoError(t, broker.VerifyChain(all))

	_, err = a.Client().AuditEvents(ctx, client.AuditQuery{})
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeInsufficientScope), "%v", err)
	for _, err := range a.Client().AllAuditEvents(ctx, client.AuditQuery{}) {
		assert.True(t, client.IsErrorCode(err, broker.ErrTypeInsufficientScope), "%v", err)
	}
}

// auditServer serves n synthetic events with the broker's paging rules
// and records the limit and offset of each request.
type auditServer struct {
	n      int
	failAt int // offset whose request fails; 0: none
	mu     sync.Mutex
	asked  [][2]int
}

func (s *auditServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	s.mu.Lock()
	s.asked = append(s.asked, [2]int{limit, offset})
	s.mu.Unlock()
	if s.failAt != 0 && offset == s.failAt {
		answer(w, 500, "application/problem+json", `{"detail":"failed to query audit events","error_code":"internal_error"}`)
		return
	}
	if limit <= 0 {
		limit = 100
	}
	page := broker.AuditPage{Events: []broker.Event{}, Total: s.n, Offset: offset, Limit: limit}
	for i := offset; i < min(offset+min(limit, 1000), s.n); i++ {
		page.Events = append(page.Events, broker.Event{ID: fmt.Sprintf("evt-%06d", i+1)})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(page)
}

func TestAllAuditEventsPages(t *testing.T) {
	collect := func(s *auditServer, q client.AuditQuery, stopAfter int) ([]string, error) {
		var ids []string
		for ev, err := range fake(t, s.ServeHTTP).AllAuditEvents(context.Background(), q) {
			if err != nil {
				return ids, err
			}
			ids = append(ids, ev.ID)
			if len(ids) == stopAfter {
				break
			}
		}
		return ids, nil
	}

	s := &auditServer{n: 2500}
	ids, err := collect(s, client.AuditQuery{}, 0)
	require.NoError(t, err)
	require.Len(t, ids, 2500)
	for i, id := range ids {
		require.Equal(t, fmt.Sprintf("evt-%06d", i+1), id)
	}
	assert.Equal(t, [][2]int{{1000, 0}, {1000, 1000}, {1000, 2000}}, s.asked)

	s = &auditServer{n: 2000}
	ids, err = collect(s, client.AuditQuery{}, 0)
	require.NoError(t, err)
	assert.Len(t, ids, 2000)
	assert.Equal(t, [][2]int{{1000, 0}, {1000, 1000}}, s.asked, "no request past the total")

	s = &auditServer{n: 2500}
	ids, err = collect(s, client.AuditQuery{Offset: 700, Limit: 1500}, 0)
	require.NoError(t, err)
	require.Len(t, ids, 1500)
	assert.Equal(t, "evt-000701", ids[0])
	assert.Equal(t, [][2]int{{1000, 700}, {500, 1700}}, s.asked)

	s = &auditServer{n: 2500}
	ids, err = collect(s, client.AuditQuery{}, 10)
	require.NoError(t, err)
	assert.Len(t, ids, 10)
	assert.Len(t, s.asked, 1, "breaking off fetches no more")

	s = &auditServer{n: 2500, failAt: 1000}
	ids, err = collect(s, client.AuditQuery{}, 0)
	assert.Len(t, ids, 1000)
	assert.True(t, client.IsStatus(err, 500), "%v", err)
	assert.ErrorContains(t, err, "audit events: GET /v1/audit/events: 500 failed to query audit events")

	s = &auditServer{n: 0}
	ids, err = collect(s, client.AuditQuery{}, 0)
	require.NoError(t, err)
	assert.Empty(t, ids)
}

func TestAuditQueryEncoding(t *testing.T) {
	var raw string
	c := fake(t, func(w http.ResponseWriter, r *http.Request) {
		raw = r.URL.RawQuery
		answer(w, 200, "application/json", `{"events":[],"total":0,"offset":0,"limit":100}`)
	})
	since := time.Date(2026, 11, 28, 10, 27, 52, 500_000_000, time.FixedZone("", 2*3600))
	_, err := c.AuditEvents(context.Background(), client.AuditQuery{
		AgentID: "spiffe://d/agent/o/t/1", TaskID: "t", EventType: "token_revoked", Outcome: "denied",
		Since: since, Until: since.Add(time.Hour), Limit: 5, Offset: 10,
	})
	require.NoError(t, err)
	assert.Equal(t, "agent_id=spiffe%3A%2F%2Fd%2Fagent%2Fo%2Ft%2F1&event_type=token_revoked&limit=5&offset=10"+
		"&outcome=denied&since=2026-11-28T10%3A27%3A52.5%2B02%3A00&task_id=t&until=2026-11-28T11%3A27%3A52.5%2B02%3A00", raw)

	_, err = c.AuditEvents(context.Background(), client.AuditQuery{})
	require.NoError(t, err)
	assert.Empty(t, raw, "zero fields are left out")
}

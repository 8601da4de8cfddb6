package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// fakeSink records what a recorder flushes.
type fakeSink struct {
	mu        sync.Mutex
	records   []UsageRecord
	decisions []DecisionCount
	fail      error
}

func (s *fakeSink) AddUsage(_ context.Context, r []UsageRecord, d []DecisionCount) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.records = append(s.records, r...)
	s.decisions = append(s.decisions, d...)
	return nil
}

var readRule = &scopemap.Rule{Methods: []string{"GET"}, Pattern: "/orders/{id}", Scopes: []string{"read:orders:{id}"}}

func TestUsageRecorder(t *testing.T) {
	sink := &fakeSink{}
	clk := newTestClock()
	r := NewUsageRecorder(UsageOptions{Sink: sink, Now: clk.Now, Flush: time.Hour, MaxKeys: 64})
	defer r.Close(context.Background())
	c1 := &Claims{Sub: "spiffe://t/agent/o/t/1", Jti: "a0", TaskID: "t", OrchID: "o", Scope: []string{"write:orders:*", "read:orders:*"}}
	c2 := &Claims{Sub: c1.Sub, Jti: "b1", TaskID: "t", OrchID: "o", Scope: c1.Scope} // the same agent, renewed
	for range 3 {
		r.Record(c1, readRule, []string{"read:orders:42"}, UsageAllowed)
	}
	r.Record(c2, readRule, []string{"read:orders:42"}, UsageAllowed)
	r.Record(c1, readRule, []string{"read:orders:43"}, UsageAllowed)
	r.Record(c1, readRule, []string{"delete:orders:1"}, UsageDenied)
	r.Decision("allow", "ok")
	r.Decision("allow", "ok")
	require.NoError(t, r.Flush(context.Background()))
	byReq := map[string]UsageRecord{}
	for _, rec := range sink.records {
		byReq[rec.Required+" "+rec.Result] = rec
	}
	require.Len(t, byReq, 3, "one record per agent, rule, scope and result: the renewed token folds in")
	got := byReq["read:orders:42 allowed"]
	require.EqualValues(t, 4, got.Count)
	require.Equal(t, "read:orders:*", got.Granted, "the granted scope that covered it")
	require.Equal(t, readRule.String(), got.Rule)
	require.Equal(t, "t", got.TaskID)
	require.Empty(t, byReq["delete:orders:1 denied"].Granted)
	require.Equal(t, []DecisionCount{{Minute: clk.Now().Truncate(time.Minute).UTC(), Result: "allow", Reason: "ok", Count: 2}}, sink.decisions)

	// A failed flush is kept and sent with the next one.
	sink.records, sink.fail = nil, errors.New("down")
	r.Record(c1, readRule, []string{"read:orders:42"}, UsageAllowed)
	require.Error(t, r.Flush(context.Background()))
	sink.fail = nil
	r.Record(c1, readRule, []string{"read:orders:42"}, UsageAllowed)
	require.NoError(t, r.Flush(context.Background()))
	require.Len(t, sink.records, 1)
	require.EqualValues(t, 2, sink.records[0].Count, "nothing counted was lost")

	// At the bound, decisions are dropped and counted, never blocked.
	for i := range 1000 {
		r.Record(&Claims{Sub: fmt.Sprint("agent-", i), Jti: fmt.Sprintf("%x", i)}, readRule, []string{"read:orders:1"}, UsageAllowed)
	}
	require.Positive(t, r.Dropped())
	require.LessOrEqual(t, r.Dropped(), int64(1000-16))
}

// TestUsageRecorderCloseFlushes: closing (a reload's Cleanup, a stop)
// flushes what was counted.
func TestUsageRecorderCloseFlushes(t *testing.T) {
	sink := &fakeSink{}
	r := NewUsageRecorder(UsageOptions{Sink: sink, Flush: time.Hour})
	r.Record(&Claims{Sub: "a", Jti: "1", Scope: []string{"read:orders:*"}}, readRule, []string{"read:orders:1"}, UsageAllowed)
	require.NoError(t, r.Close(context.Background()))
	require.Len(t, sink.records, 1)
}

// BenchmarkUsageRecorderMemory reports the heap the recorder holds per
// distinct key at its bound: 1,000,000 distinct (agent, scope) keys
// offered to a recorder of DefaultUsageMaxKeys.
//
//	go test -run '^$' -bench BenchmarkUsageRecorderMemory -benchtime 1x ./broker/
func BenchmarkUsageRecorderMemory(b *testing.B) {
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	const offered = 1_000_000
	claims := make([]*Claims, offered/10)
	for i := range claims {
		claims[i] = &Claims{Sub: fmt.Sprintf("spiffe://agentwrit.local/agent/orch/task/%016x", i), Jti: fmt.Sprintf("%032x", i), Scope: []string{"read:orders:*"}}
	}
	scopes := make([]string, 10)
	for i := range scopes {
		scopes[i] = fmt.Sprint("read:orders:", i)
	}
	for b.Loop() {
		r := NewUsageRecorder(UsageOptions{Sink: &fakeSink{}, Flush: time.Hour})
		h0 := heap()
		for i := range offered {
			r.Record(claims[i%len(claims)], readRule, scopes[i/len(claims):i/len(claims)+1], UsageAllowed)
		}
		h1 := heap()
		b.ReportMetric(float64(h1-h0)/float64(DefaultUsageMaxKeys), "B/key")
		b.ReportMetric(float64(h1-h0)/(1<<20), "MiB")
		b.ReportMetric(float64(r.Dropped()), "dropped")
		r.Close(context.Background())
	}
}

// BenchmarkUsageRecord is the hot path: one allowed decision of a cached
// token.
func BenchmarkUsageRecord(b *testing.B) {
	r := NewUsageRecorder(UsageOptions{Sink: &fakeSink{}, Flush: time.Hour})
	defer r.Close(context.Background())
	c := &Claims{Sub: "spiffe://agentwrit.local/agent/o/t/0123456789abcdef", Jti: "0123456789abcdef0123456789abcdef", Scope: []string{"read:orders:*"}}
	req := []string{"read:orders:42"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Record(c, readRule, req, UsageAllowed)
		}
	})
}

// TestUsageReport: an agent granted read:orders:* and write:orders:* that
// only read 42 and 43: read used with both identifiers, write never used,
// the suggestion narrows to what was read; its denied asks are beside it;
// grouping by app and by launch token carries the same evidence.
func TestUsageReport(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	app := e.createApp("usage-app", []string{"read:orders:*", "write:orders:*", "read:users:*"})
	lt := decode(t, e.do("POST", "/v1/app/launch-tokens", e.appToken(app), map[string]any{
		"agent_name": "order-reader", "allowed_scope": []string{"read:orders:*", "write:orders:*"}}))["launch_token"].(string)
	rec := e.do("POST", "/v1/register", "", e.registration(lt, "read:orders:*", "write:orders:*"))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	agent := decode(t, rec)["agent_id"].(string)
	tok := decode(t, rec)["access_token"].(string)
	c, err := e.broker.Verify(context.Background(), tok)
	require.NoError(t, err)
	u := e.store.Usage()
	for i := range 10 {
		u.Record(c, readRule, []string{fmt.Sprint("read:orders:", 42+i%2)}, UsageAllowed)
	}
	u.Record(c, readRule, []string{"delete:orders:7"}, UsageDenied)
	require.NoError(t, u.Flush(context.Background()))

	var rep UsageReport
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/usage", admin, nil).Body.Bytes(), &rep))
	require.Equal(t, 1, rep.Total)
	g := rep.Groups[0]
	require.Equal(t, agent, g.ID)
	require.Equal(t, app.ID, g.AppID)
	require.Equal(t, "order-reader", g.Name)
	require.Len(t, g.Grants, 2)
	read, write := g.Grants[0], g.Grants[1]
	require.Equal(t, "read:orders:*", read.Scope)
	require.True(t, read.Used)
	require.EqualValues(t, 10, read.Count)
	require.Equal(t, []string{"42", "43"}, read.Identifiers)
	require.NotEmpty(t, read.LastUsed)
	require.Equal(t, GrantUsage{Scope: "write:orders:*"}, write, "never used")
	require.Equal(t, []string{"read:orders:42", "read:orders:43"}, g.Suggested)
	require.Equal(t, []DeniedAsk{{Required: "delete:orders:7", Count: 1, LastSeen: g.Denied[0].LastSeen, Holds: []string{"read:orders:*", "write:orders:*"}}}, g.Denied)

	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/usage?group_by=app", admin, nil).Body.Bytes(), &rep))
	require.Equal(t, app.ID, rep.Groups[0].ID)
	require.Equal(t, "usage-app", rep.Groups[0].Name)
	require.Equal(t, []string{"read:orders:*", "write:orders:*", "read:users:*"}, scopesOf(rep.Groups[0].Grants), "the ceiling")
	require.Equal(t, []bool{true, false, false}, usedOf(rep.Groups[0].Grants))
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/usage?group_by=launch_token&unused=true", admin, nil).Body.Bytes(), &rep))
	require.Equal(t, LaunchTokenHash(lt), rep.Groups[0].ID)
	require.Equal(t, []bool{true, false}, usedOf(rep.Groups[0].Grants))

	// Filters and errors.
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/usage?since="+time.Now().Add(time.Hour).Format(time.RFC3339), admin, nil).Body.Bytes(), &rep))
	require.False(t, rep.Groups[0].Grants[0].Used, "nothing in range")
	requireProblem(t, e.do("GET", "/v1/admin/usage?since=yesterday", admin, nil), 400, "invalid_request", "since: want an RFC 3339 time")
	requireProblem(t, e.do("GET", "/v1/admin/usage?group_by=task", admin, nil), 400, "invalid_request", "group_by must be agent, app or launch_token")
	requireScopeError(t, e, "GET", "/v1/admin/usage", "admin:audit:*")
}

func scopesOf(gs []GrantUsage) []string {
	out := []string{}
	for _, g := range gs {
		out = append(out, g.Scope)
	}
	return out
}

func usedOf(gs []GrantUsage) []bool {
	out := []bool{}
	for _, g := range gs {
		out = append(out, g.Used)
	}
	return out
}

// TestReportUsageRoute: only a gateway app (ceiling holding write:usage:*)
// may post usage; batches are checked.
func TestReportUsageRoute(t *testing.T) {
	e := newTestEnv(t)
	gw := e.appToken(e.createApp("gateway", []string{UsageScope}))
	other := e.appToken(e.createApp("other", []string{"read:data:*"}))
	now := time.Now().UTC()
	good := map[string]any{"records": []map[string]any{{"hour": now, "agent_id": "a", "rule": "require GET / read:x:*",
		"required": "read:x:1", "granted": "read:x:*", "result": "allowed", "count": 2, "first": now, "last": now}}}
	require.Equal(t, http.StatusNoContent, e.do("POST", "/v1/usage", gw, good).Code)
	rows, err := e.store.db.QueryUsage(context.Background(), UsageFilter{})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	requireProblem(t, e.do("POST", "/v1/usage", other, good), 403, "forbidden", "the app's scope ceiling does not include write:usage:*")
	requireProblem(t, e.do("POST", "/v1/usage", e.cachedAdmin(), good), 403, "forbidden", "only an app token may report usage")
	bad := map[string]any{"records": []map[string]any{{"agent_id": "a", "rule": "r", "required": "read x", "result": "allowed", "count": 1}}}
	rec := e.do("POST", "/v1/usage", gw, bad)
	require.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
	requireProblem(t, e.do("POST", "/v1/usage", gw, "junk"), 400, "invalid_request", "malformed JSON body")
}

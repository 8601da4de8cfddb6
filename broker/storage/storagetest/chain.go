package storagetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

func testRevocations(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	head, err := db.RevocationHead(ctx())
	require.NoError(t, err)
	require.Zero(t, head, "no revocation yet")
	r1, err := db.Revoke(ctx(), broker.LevelToken, "jti-1", now)
	require.NoError(t, err)
	require.Positive(t, r1.Seq)
	require.Equal(t, broker.Revocation{Seq: r1.Seq, Level: broker.LevelToken, Target: "jti-1", RevokedAt: now}, r1)
	r2, err := db.Revoke(ctx(), broker.LevelTask, "task-1", now.Add(time.Second))
	require.NoError(t, err)
	require.Greater(t, r2.Seq, r1.Seq)
	again, err := db.Revoke(ctx(), broker.LevelToken, "jti-1", now.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, r1, again, "revoking twice returns the first record")

	all, err := db.RevocationsSince(ctx(), 0, 100)
	require.NoError(t, err)
	require.Equal(t, []broker.Revocation{r1, r2}, all)
	after, err := db.RevocationsSince(ctx(), r1.Seq, 100)
	require.NoError(t, err)
	require.Equal(t, []broker.Revocation{r2}, after)
	one, err := db.RevocationsSince(ctx(), 0, 1)
	require.NoError(t, err)
	require.Equal(t, []broker.Revocation{r1}, one)
	none, err := db.RevocationsSince(ctx(), r2.Seq, 100)
	require.NoError(t, err)
	require.Empty(t, none)
	head, err = db.RevocationHead(ctx())
	require.NoError(t, err)
	require.Equal(t, r2.Seq, head, "the head is the newest revocation's sequence number, a repeated one consumes none")
}

// testWatch: a revocation or key rotation committed through any handle
// reaches a watcher.
func testWatch(t *testing.T, h Harness) {
	dbs := handles(t, h, 2)
	got := make(chan broker.Change, 16)
	wctx, cancel := contextWithCancel(t)
	done := make(chan error, 1)
	go func() { done <- dbs[0].Watch(wctx, func(c broker.Change) { got <- c }) }()
	// The watch may need a moment to subscribe: revoke until a notice comes.
	deadline := time.After(10 * time.Second)
	var rev broker.Revocation
	for i := 0; ; i++ {
		var err error
		rev, err = dbs[1].Revoke(ctx(), broker.LevelToken, fmt.Sprintf("watched-%d", i), now)
		require.NoError(t, err)
		select {
		case c := <-got:
			require.Equal(t, broker.ChangeRevocation, c.Kind)
			require.Contains(t, []int64{0, rev.Seq}, c.Seq)
			goto keys
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("no change notice for a revocation")
		}
	}
keys:
	require.NoError(t, dbs[1].InitSigningKey(ctx(), newKey(t, now)))
	require.NoError(t, dbs[1].RotateSigningKey(ctx(), newKey(t, now), now.Add(time.Hour)))
	for {
		select {
		case c := <-got:
			if c.Kind == broker.ChangeKeys {
				cancel()
				require.Error(t, <-done, "Watch returns when its context ends")
				return
			}
		case <-deadline:
			t.Fatal("no change notice for a key rotation")
		}
	}
}

func testAudit(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	head, err := db.AuditHead(ctx())
	require.NoError(t, err)
	require.Equal(t, broker.AuditHead{Hash: broker.GenesisHash}, head)

	batch := []broker.Event{
		{EventType: broker.EventAdminAuth, Detail: "admin authenticated as admin", Outcome: broker.OutcomeSuccess},
		{EventType: broker.EventScopeViolation, AgentID: "a", TaskID: "t", OrchID: "o", Detail: "x", Resource: "GET /p",
			Outcome: broker.OutcomeDenied, DelegDepth: 2, DelegChainHash: "abc"},
	}
	require.NoError(t, db.AppendAudit(ctx(), batch, now))
	require.Equal(t, "evt-000001", batch[0].ID, "AppendAudit fills in what it stored")
	require.Equal(t, int64(2), batch[1].Seq)
	head, err = db.AuditHead(ctx())
	require.NoError(t, err)
	require.Equal(t, int64(2), head.Seq)
	require.Equal(t, batch[1].Hash, head.Hash)
	require.True(t, head.Timestamp.Equal(now))

	// A clock behind the chain (another replica's) never stamps earlier.
	late := []broker.Event{{EventType: broker.EventAdminAuth, Detail: "late clock"}}
	require.NoError(t, db.AppendAudit(ctx(), late, now.Add(-time.Hour)))
	require.Equal(t, batch[1].Timestamp, late[0].Timestamp)

	evs, n, err := db.QueryAudit(ctx(), broker.AuditFilter{})
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, append(batch, late...), evs, "stored exactly as chained")
	verified, err := broker.VerifyAudit(ctx(), db)
	require.NoError(t, err)
	require.Equal(t, int64(3), verified.Seq)
}

func testAuditQuery(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	for i := range 10 {
		ev := broker.Event{EventType: broker.EventTokenRevoked, AgentID: fmt.Sprintf("agent-%d", i%3),
			TaskID: fmt.Sprintf("task-%d", i%2), Detail: fmt.Sprint(i), Outcome: broker.OutcomeSuccess}
		if i%4 == 0 {
			ev.EventType, ev.Outcome = broker.EventScopeViolation, broker.OutcomeDenied
		}
		require.NoError(t, db.AppendAudit(ctx(), []broker.Event{ev}, now.Add(time.Duration(i)*time.Second)))
	}
	ids := func(f broker.AuditFilter) ([]string, int) {
		evs, n, err := db.QueryAudit(ctx(), f)
		require.NoError(t, err)
		out := []string{}
		for _, e := range evs {
			out = append(out, e.Detail)
		}
		return out, n
	}
	at := func(s int) *time.Time { t := now.Add(time.Duration(s) * time.Second); return &t }
	farFuture := time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC) // past what Unix nanoseconds hold
	for name, c := range map[string]struct {
		f     broker.AuditFilter
		want  []string
		total int
	}{
		"all":          {broker.AuditFilter{}, []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}, 10},
		"agent":        {broker.AuditFilter{AgentID: "agent-1"}, []string{"1", "4", "7"}, 3},
		"task":         {broker.AuditFilter{TaskID: "task-0", Limit: 2}, []string{"0", "2"}, 5},
		"type":         {broker.AuditFilter{EventType: broker.EventScopeViolation}, []string{"0", "4", "8"}, 3},
		"outcome":      {broker.AuditFilter{Outcome: broker.OutcomeDenied, Offset: 1}, []string{"4", "8"}, 3},
		"since until":  {broker.AuditFilter{Since: at(3), Until: at(5)}, []string{"3", "4", "5"}, 3},
		"far future":   {broker.AuditFilter{Since: &farFuture}, []string{}, 0},
		"after seq":    {broker.AuditFilter{AfterSeq: 8}, []string{"8", "9"}, 2},
		"before seq":   {broker.AuditFilter{BeforeSeq: 3}, []string{"0", "1"}, 2},
		"newest first": {broker.AuditFilter{NewestFirst: true, Limit: 3}, []string{"9", "8", "7"}, 10},
		"newest page":  {broker.AuditFilter{NewestFirst: true, BeforeSeq: 8, Limit: 2}, []string{"6", "5"}, 7},
		"offset past":  {broker.AuditFilter{Offset: 50}, []string{}, 10},
		"no total":     {broker.AuditFilter{AfterSeq: 8, NoTotal: true}, []string{"8", "9"}, 0},
	} {
		got, n := ids(c.f)
		assert.Equal(t, c.want, got, name)
		assert.Equal(t, c.total, n, name)
	}
}

// testAuditPrune: pruning deletes through a position and keeps the head,
// so appends go on chaining after it.
func testAuditPrune(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	for i := range 5 {
		require.NoError(t, db.AppendAudit(ctx(), []broker.Event{{EventType: broker.EventAdminAuth, Detail: fmt.Sprint(i)}}, now))
	}
	n, err := db.PruneAudit(ctx(), 3)
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	evs, total, err := db.QueryAudit(ctx(), broker.AuditFilter{})
	require.NoError(t, err)
	require.Equal(t, 2, total)
	require.Equal(t, "evt-000004", evs[0].ID)

	head, err := db.AuditHead(ctx())
	require.NoError(t, err)
	require.Equal(t, int64(5), head.Seq)
	next := []broker.Event{{EventType: broker.EventAdminAuth, Detail: "after"}}
	require.NoError(t, db.AppendAudit(ctx(), next, now))
	require.Equal(t, "evt-000006", next[0].ID)
	require.Equal(t, head.Hash, next[0].PrevHash)

	n, err = db.PruneAudit(ctx(), 3)
	require.NoError(t, err)
	require.Zero(t, n, "pruning again deletes nothing")
}

// testReplicas: what several handles on one database must share.
func testReplicas(t *testing.T, h Harness) {
	_, reopen := h.Fresh(t)
	if reopen == nil {
		t.Skip("this database serves one process; replicas need PostgreSQL")
	}
	dbs := handles(t, h, 3)

	// One audit chain, gap-free and linear, whatever replica appends.
	const per = 40
	race(6, func(i int) {
		for j := range per {
			err := dbs[i%3].AppendAudit(ctx(), []broker.Event{{EventType: broker.EventTokenRevoked, Detail: fmt.Sprintf("%d/%d", i, j)}}, now)
			assert.NoError(t, err)
		}
	})
	head, err := broker.VerifyAudit(ctx(), dbs[1])
	require.NoError(t, err)
	require.Equal(t, int64(6*per), head.Seq)

	// Revocations committed concurrently on every replica reach a reader
	// that only ever asks for what follows the last one it saw.
	var mu sync.Mutex
	seen := map[string]bool{}
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		var last int64
		read := func() {
			rs, err := dbs[2].RevocationsSince(ctx(), last, 1000)
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			for _, r := range rs {
				assert.Greater(t, r.Seq, last, "sequence order")
				seen[r.Target] = true
				last = r.Seq
			}
			mu.Unlock()
		}
		for {
			select {
			case <-stop:
				read()
				return
			default:
				read()
			}
		}
	}()
	race(6, func(i int) {
		for j := range per {
			_, err := dbs[i%3].Revoke(ctx(), broker.LevelToken, fmt.Sprintf("r-%d-%d", i, j), now)
			assert.NoError(t, err)
		}
	})
	close(stop)
	<-readerDone
	require.Len(t, seen, 6*per, "a catch-up reader misses nothing")
}

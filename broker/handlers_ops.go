package broker

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// The operator routes of this product (docs/api.md): status, keys,
// agents, audit verification. Reading needs admin:audit:*, rotating a key
// admin:revoke:* (it is a security action, like a revocation).

func (b *Broker) handleStatus(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	now := b.now()
	st := Status{
		Status: "ok", Version: Version, Uptime: int64(now.Sub(b.started) / time.Second),
		Database: StatusDatabase{DatabaseInfo: b.store.info}, Keys: b.Keys(), Audit: StatusAudit{HeadHash: GenesisHash},
	}
	problem := func(format string, a ...any) {
		st.Status = "degraded"
		st.Problems = append(st.Problems, fmt.Sprintf(format, a...))
	}
	if err := b.store.db.Ping(ctx); err != nil {
		problem("database: %v", err)
	} else {
		st.Database.Connected = true
	}
	if st.Database.Shared {
		age := b.store.syncedAgo().Seconds()
		st.Database.RevocationsSyncedAgo = &age
	}
	if err := b.store.fresh(); err != nil {
		problem("%v", err)
	}
	if head, err := b.store.db.AuditHead(ctx); err != nil {
		problem("audit head: %v", err)
	} else {
		st.Audit = StatusAudit{Events: head.Seq, HeadHash: head.Hash, HeadID: eventID(head.Seq)}
	}
	if stats, err := b.store.db.Stats(ctx, now); err != nil {
		problem("counts: %v", err)
	} else {
		st.Stats = stats
	}
	if dec, err := b.store.db.Decisions(ctx, now.Add(-time.Hour)); err != nil {
		problem("decisions: %v", err)
	} else {
		st.Gateway = StatusGateway{PerMinute: dec, LastMinute: sumDecisions(dec, now.Add(-time.Minute)), LastHour: sumDecisions(dec, time.Time{})}
	}
	writeJSON(w, http.StatusOK, st)
}

// sumDecisions sums counts per result and reason over the minutes at or
// after since (zero: all), sorted.
func sumDecisions(dec []DecisionCount, since time.Time) []DecisionCount {
	sums := map[[2]string]int64{}
	for _, d := range dec {
		if !d.Minute.Before(since.Truncate(time.Minute)) {
			sums[[2]string{d.Result, d.Reason}] += d.Count
		}
	}
	out := make([]DecisionCount, 0, len(sums))
	for k, n := range sums {
		out = append(out, DecisionCount{Result: k[0], Reason: k[1], Count: n})
	}
	slices.SortFunc(out, func(a, b DecisionCount) int {
		return cmp.Or(cmp.Compare(a.Result, b.Result), cmp.Compare(a.Reason, b.Reason))
	})
	return out
}

// eventID is the ID of the event at seq, or "" before the first.
func eventID(seq int64) string {
	if seq == 0 {
		return ""
	}
	return fmt.Sprintf("evt-%06d", seq)
}

func (b *Broker) handleKeys(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, KeyList{Keys: b.Keys()})
}

func (b *Broker) handleRotateKey(w http.ResponseWriter, r *http.Request) {
	k, err := b.RotateKey(r.Context(), claimsFrom(r).Sub)
	switch {
	case errors.Is(err, ErrFileKey):
		WriteProblem(w, r, http.StatusConflict, ErrTypeConflict, err.Error())
		return
	case err != nil:
		b.dbFailed(w, r, "key_rotate", err, "key rotation failed")
		return
	}
	writeJSON(w, http.StatusOK, k)
}

// Paging of the operator lists.
const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
)

// paging reads limit and offset as the audit route does: ≤ 0 or junk
// means the default, and the limit is capped.
func paging(r *http.Request) (limit, offset int) {
	q := r.URL.Query()
	limit, _ = strconv.Atoi(q.Get("limit"))
	if limit <= 0 {
		limit = defaultPageLimit
	}
	offset, _ = strconv.Atoi(q.Get("offset"))
	return min(limit, maxPageLimit), max(offset, 0)
}

func (b *Broker) handleAgents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, offset := paging(r)
	f := AgentFilter{
		Query: q.Get("q"), TaskID: q.Get("task_id"), OrchID: q.Get("orch_id"), AppID: q.Get("app_id"),
		Live: q.Get("live") != "false", Now: b.now(), Limit: limit, Offset: offset,
	}
	views, total, err := b.store.db.Agents(r.Context(), f)
	if err != nil {
		b.dbFailed(w, r, "agent_list", err, "failed to list agents")
		return
	}
	out := AgentList{Agents: make([]AgentInfo, len(views)), Total: total, Offset: offset, Limit: limit}
	for i, v := range views {
		a := AgentInfo{AgentID: v.ID, OrchID: v.OrchID, TaskID: v.TaskID, AppID: v.AppID, Scope: v.Scope,
			RegisteredAt: formatTime(v.RegisteredAt), Tokens: make([]TokenInfo, len(v.Tokens))}
		for j, t := range v.Tokens {
			a.Tokens[j] = TokenInfo{JTI: t.JTI, Scope: t.Scope, TaskID: t.TaskID, IssuedAt: formatTime(t.IssuedAt),
				ExpiresAt: formatTime(t.ExpiresAt), Depth: t.Depth, Root: t.Root, Parent: t.Parent}
		}
		out.Agents[i] = a
	}
	writeJSON(w, http.StatusOK, out)
}

func (b *Broker) handleAuditVerify(w http.ResponseWriter, r *http.Request) {
	head, err := VerifyAudit(r.Context(), b.store.db)
	v := AuditVerification{Intact: err == nil, Verified: head.Seq, HeadID: eventID(head.Seq), HeadHash: head.Hash}
	var broken *ChainError
	switch {
	case errors.As(err, &broken):
		v.Broken = broken
	case err != nil:
		b.dbFailed(w, r, "audit_verify", err, "failed to read the audit chain")
		return
	}
	writeJSON(w, http.StatusOK, v)
}

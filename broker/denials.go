package broker

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"
)

// Bounds on what a refused request may write to the audit chain.
const (
	// denialInterval: a caller without a valid token gets at most one
	// audit event per (event type, reason, rule) per interval, plus one
	// summary with the count of the rest.
	denialInterval = time.Minute
	// maxDenialGroups bounds the groups counted at once; beyond it,
	// denials share one overflow group per event type.
	maxDenialGroups = 1024
	// maxResourceBytes and maxDetailBytes cap the request-controlled text
	// of a denial event.
	maxResourceBytes = 256
	maxDetailBytes   = 512
)

// cut shortens s to at most n bytes on a rune boundary, marked as cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = " [cut]"
	i := n - len(mark)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + mark
}

// denialKey groups anonymous denials.
type denialKey struct{ eventType, reason, rule string }

// denialGroup counts the denials of a key after the first was written.
type denialGroup struct {
	start        time.Time // when the first was written
	count        int       // folded since
	last         time.Time
	lastResource string
}

// denialLog folds the denials of callers that presented no valid token,
// which anyone can send at line rate: unfolded, each would be a permanent
// audit row and the chain would grow without bound. A verified agent's
// denials are evidence and are never folded. It lives in the Store, so a
// reload loses no count; Store.Close writes what is pending.
type denialLog struct {
	mu     sync.Mutex
	groups map[denialKey]*denialGroup
	write  func(Event)
	now    func() time.Time
}

func newDenialLog(write func(Event), now func() time.Time) *denialLog {
	return &denialLog{groups: map[denialKey]*denialGroup{}, write: write, now: now}
}

// record reports whether e is the first of its group in this interval, to
// be written at once; otherwise it only counts it.
func (l *denialLog) record(e Event, reason, rule string) bool {
	now := l.now()
	k := denialKey{e.EventType, reason, rule}
	l.mu.Lock()
	if _, ok := l.groups[k]; !ok && len(l.groups) >= maxDenialGroups {
		k = denialKey{eventType: e.EventType, reason: "other"}
	}
	g, ok := l.groups[k]
	if ok {
		g.count++
		g.last, g.lastResource = now, e.Resource
		l.mu.Unlock()
		return false
	}
	l.groups[k] = &denialGroup{start: now}
	l.mu.Unlock()
	return true
}

// flush writes a summary for each group with folded denials, and forgets
// the groups whose interval is over (all of them when final).
func (l *denialLog) flush(final bool) {
	now := l.now()
	var out []Event
	l.mu.Lock()
	for k, g := range l.groups {
		over := final || now.Sub(g.start) >= denialInterval
		if g.count > 0 && over {
			detail := fmt.Sprintf("%s | %d more like this between %s and %s", k.reason, g.count, formatTime(g.start), formatTime(g.last))
			if k.rule != "" {
				detail += " | rule=" + k.rule
			}
			out = append(out, Event{EventType: k.eventType, Detail: cut(detail, maxDetailBytes), Resource: g.lastResource, Outcome: OutcomeDenied})
		}
		if over {
			delete(l.groups, k)
		}
	}
	l.mu.Unlock()
	for _, e := range out {
		l.write(e)
	}
}

// Denial describes a request refused for a reason the audit chain should
// keep: by the gateway, or by the broker's own Bearer check.
type Denial struct {
	// EventType is EventTokenAuthFailed, EventTokenRevokedAccess or
	// EventScopeViolation.
	EventType string
	// Claims of the presented token when it verified (or was revoked);
	// nil for a caller without a valid token.
	Claims *Claims
	// Resource is "METHOD path" of the refused request.
	Resource string
	// Reason is a short, bounded word for why (e.g. "invalid_token"); the
	// key under which a caller's denials are folded.
	Reason string
	// Rule is the route rule that matched, if any.
	Rule string
	// Detail says why, without any token material.
	Detail string
}

// RecordDenial appends a denial to the audit chain, so decisions taken in
// front of backends are as auditable as the broker's own. A verified
// agent's denial is one event each; a caller without a valid token gets at
// most one event per reason and rule per minute, and a count of the rest.
func (b *Broker) RecordDenial(ctx context.Context, d Denial) {
	e := Event{EventType: d.EventType, Resource: cut(d.Resource, maxResourceBytes), Detail: cut(d.Detail, maxDetailBytes), Outcome: OutcomeDenied}
	if c := d.Claims; c != nil {
		e.AgentID, e.TaskID, e.OrchID, e.DelegDepth, e.DelegChainHash = c.Sub, c.TaskID, c.OrchID, c.DelegationDepth(), c.ChainHash
		b.audit(ctx, e)
		return
	}
	if b.store.denials.record(e, d.Reason, d.Rule) {
		b.audit(ctx, e)
	}
}

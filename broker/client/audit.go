package client

import (
	"context"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// AuditPageSize is the most events the broker returns in one page.
const AuditPageSize = 1000

// AuditQuery selects audit events. Zero fields do not filter.
type AuditQuery struct {
	AgentID   string    // exact agent_id
	TaskID    string    // exact task_id
	EventType string    // exact event_type, e.g. broker.EventTokenRevoked
	Outcome   string    // broker.OutcomeSuccess or broker.OutcomeDenied
	Since     time.Time // events at or after, sent as RFC 3339
	Until     time.Time // events at or before, sent as RFC 3339
	// Limit is the page size for AuditEvents (the broker's default is 100,
	// its maximum AuditPageSize); for AllAuditEvents, the most events to
	// yield in all.
	Limit int
	// Offset is how many matching events to skip.
	Offset int
	// NewestFirst, AfterID and BeforeID are this product's extensions:
	// the newest events first, and keyset paging by event ID (exclusive).
	NewestFirst       bool
	AfterID, BeforeID string
}

// values encodes q with the given limit and offset; zero values are left out.
func (q AuditQuery) values(limit, offset int) url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("agent_id", q.AgentID)
	set("task_id", q.TaskID)
	set("event_type", q.EventType)
	set("outcome", q.Outcome)
	set("after_id", q.AfterID)
	set("before_id", q.BeforeID)
	if q.NewestFirst {
		v.Set("order", "newest")
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.Format(time.RFC3339Nano))
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	if offset > 0 {
		v.Set("offset", strconv.Itoa(offset))
	}
	return v
}

// AuditEvents reads one page of matching events, oldest first (GET
// /v1/audit/events, scope admin:audit:*). The page's Total counts every
// match.
func (c *Client) AuditEvents(ctx context.Context, q AuditQuery) (*broker.AuditPage, error) {
	return c.auditPage(ctx, q.values(q.Limit, q.Offset))
}

func (c *Client) auditPage(ctx context.Context, v url.Values) (*broker.AuditPage, error) {
	var out broker.AuditPage
	err := c.do(ctx, call{
		op: "audit events", method: http.MethodGet, path: "/v1/audit/events", query: v,
		bearer: true, status: http.StatusOK, limit: MaxListResponseBytes,
	}, &out)
	return ok(&out, err)
}

// AllAuditEvents yields every matching event from q.Offset on, oldest
// first, fetching pages of AuditPageSize as it goes; q.Limit, when
// positive, caps how many are yielded. It stops at the first error, which
// it yields with a zero Event. Events appended while it runs are yielded
// too when they match.
func (c *Client) AllAuditEvents(ctx context.Context, q AuditQuery) iter.Seq2[broker.Event, error] {
	return func(yield func(broker.Event, error) bool) {
		offset, left := max(q.Offset, 0), q.Limit
		for {
			size := AuditPageSize
			if left > 0 {
				size = min(size, left)
			}
			page, err := c.auditPage(ctx, q.values(size, offset))
			if err != nil {
				yield(broker.Event{}, err)
				return
			}
			events := page.Events
			if len(events) > size { // a server that ignored the limit
				events = events[:size]
			}
			for _, e := range events {
				if !yield(e, nil) {
					return
				}
			}
			offset += len(events)
			if left > 0 {
				if left -= len(events); left <= 0 {
					return
				}
			}
			if len(events) == 0 || offset >= page.Total {
				return
			}
		}
	}
}

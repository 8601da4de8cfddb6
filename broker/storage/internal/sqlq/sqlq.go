// Package sqlq holds the SQL the database implementations share: the
// audit filter, and the encodings of lists and optional values. Each
// implementation brings its own placeholder syntax.
package sqlq

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Placeholder renders the n-th (from 1) bound parameter: "?" for SQLite,
// "$n" for PostgreSQL.
type Placeholder func(n int) string

// Question is SQLite's placeholder.
func Question(int) string { return "?" }

// Dollar is PostgreSQL's placeholder.
func Dollar(n int) string { return fmt.Sprintf("$%d", n) }

// AuditColumns are the columns ScanEvent reads, in its order.
const AuditColumns = `seq, id, timestamp, event_type, agent_id, task_id, orch_id, detail,
	coalesce(resource,''), coalesce(outcome,''), coalesce(deleg_depth,0), coalesce(deleg_chain_hash,''),
	coalesce(bytes_transferred,0), hash, prev_hash`

// Scanner is a row.
type Scanner interface{ Scan(dest ...any) error }

// ScanEvent reads one row of AuditColumns.
func ScanEvent(row Scanner, e *broker.Event) error {
	return row.Scan(&e.Seq, &e.ID, &e.Timestamp, &e.EventType, &e.AgentID, &e.TaskID, &e.OrchID, &e.Detail,
		&e.Resource, &e.Outcome, &e.DelegDepth, &e.DelegChainHash, &e.BytesTransferred, &e.Hash, &e.PrevHash)
}

// EventArgs are the values of an event's insert, in the order of
// InsertAuditColumns.
func EventArgs(e *broker.Event, tsNano int64) []any {
	return []any{e.Seq, e.ID, e.Timestamp, tsNano, e.EventType, e.AgentID, e.TaskID, e.OrchID, e.Detail,
		Null(e.Resource), Null(e.Outcome), NullInt(e.DelegDepth), Null(e.DelegChainHash), NullInt(e.BytesTransferred),
		e.Hash, e.PrevHash}
}

// InsertAuditColumns are the columns EventArgs fills.
const InsertAuditColumns = `seq, id, timestamp, ts_unix_nano, event_type, agent_id, task_id, orch_id, detail,
	resource, outcome, deleg_depth, deleg_chain_hash, bytes_transferred, hash, prev_hash`

// Params renders n placeholders from first on, comma separated.
func Params(ph Placeholder, first, n int) string {
	p := make([]string, n)
	for i := range p {
		p[i] = ph(first + i)
	}
	return strings.Join(p, ",")
}

// AuditQuery builds the filter, order and paging of f: the WHERE clause
// (with its leading " WHERE ", or ""), its arguments, and the ORDER BY …
// LIMIT … OFFSET … tail with its arguments appended.
func AuditQuery(f broker.AuditFilter, ph Placeholder) (where string, args []any, tail string, all []any) {
	var conds []string
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, fmt.Sprintf(cond, ph(len(args))))
	}
	for _, c := range []struct{ col, v string }{
		{"agent_id", f.AgentID}, {"task_id", f.TaskID}, {"event_type", f.EventType}, {"outcome", f.Outcome},
	} {
		if c.v != "" {
			add(c.col+" = %s", c.v)
		}
	}
	if f.Since != nil {
		add("ts_unix_nano >= %s", UnixNano(*f.Since))
	}
	if f.Until != nil {
		add("ts_unix_nano <= %s", UnixNano(*f.Until))
	}
	if f.AfterSeq > 0 {
		add("seq > %s", f.AfterSeq)
	}
	if f.BeforeSeq > 0 {
		add("seq < %s", f.BeforeSeq)
	}
	if len(conds) > 0 {
		where = " WHERE " + strings.Join(conds, " AND ")
	}
	order := "seq"
	if f.NewestFirst {
		order = "seq DESC"
	}
	limit := int64(f.Limit)
	if limit <= 0 {
		limit = math.MaxInt64
	}
	all = append(append([]any(nil), args...), limit, max(f.Offset, 0))
	tail = fmt.Sprintf(" ORDER BY %s LIMIT %s OFFSET %s", order, ph(len(args)+1), ph(len(args)+2))
	return where, args, tail, all
}

// Bounds of the times the store can compare (it keeps Unix nanoseconds).
var (
	minNano = time.Unix(0, math.MinInt64)
	maxNano = time.Unix(0, math.MaxInt64)
)

// UnixNano is t.UnixNano clamped to the representable range, so that a
// bound like 2999-01-01 matches nothing instead of overflowing.
func UnixNano(t time.Time) int64 {
	switch {
	case t.Before(minNano):
		return math.MinInt64
	case t.After(maxNano):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// Null is s, or SQL NULL for "".
func Null(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// NullInt is i, or SQL NULL for 0.
func NullInt(i int) any {
	if i == 0 {
		return nil
	}
	return i
}

// List encodes a scope list as stored: a JSON array.
func List(l []string) (string, error) {
	b, err := json.Marshal(l)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// ParseList decodes a stored scope list.
func ParseList(s string) ([]string, error) {
	var l []string
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, fmt.Errorf("stored scope list: %w", err)
	}
	return l, nil
}

// Time parses a stored RFC 3339 time ("" is the zero time).
func Time(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// FormatTime renders a time for storage: RFC 3339 with nanoseconds, UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// LiveToken is the condition that the token row t is live at the time
// bound to the placeholder %[1]s: unexpired, and revoked at no level
// (its jti, its subject, its task, the root of its chain). Each test is a
// lookup on revocations' unique (level, target) index.
const LiveToken = `t.expires_at >= %[1]s
	AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.level = 'token' AND r.target = t.jti)
	AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.level = 'agent' AND r.target = t.subject)
	AND (t.task_id = '' OR NOT EXISTS (SELECT 1 FROM revocations r WHERE r.level = 'task' AND r.target = t.task_id))
	AND (t.root = '' OR NOT EXISTS (SELECT 1 FROM revocations r WHERE r.level = 'chain' AND r.target = t.root))`

// TokenColumns are the columns of a token row, in ScanToken's order.
const TokenColumns = `jti, subject, parent, task_id, orch_id, scope, depth, root, issued_at, expires_at`

// ScanToken reads a row of TokenColumns (times as Unix seconds).
func ScanToken(row Scanner, t *broker.TokenRecord) error {
	var scope string
	var iat, exp int64
	if err := row.Scan(&t.JTI, &t.Subject, &t.Parent, &t.TaskID, &t.OrchID, &scope, &t.Depth, &t.Root, &iat, &exp); err != nil {
		return err
	}
	t.IssuedAt, t.ExpiresAt = time.Unix(iat, 0).UTC(), time.Unix(exp, 0).UTC()
	var err error
	t.Scope, err = ParseList(scope)
	return err
}

// Rows is what both drivers' result sets have in common.
type Rows interface {
	Scanner
	Next() bool
	Err() error
}

// AttachTokens reads rows of TokenColumns into the views of their
// subjects (byID: subject → index in views).
func AttachTokens(rows Rows, views []broker.AgentView, byID map[string]int) error {
	for rows.Next() {
		var t broker.TokenRecord
		if err := ScanToken(rows, &t); err != nil {
			return err
		}
		v := &views[byID[t.Subject]]
		v.Tokens = append(v.Tokens, t)
	}
	return rows.Err()
}

// AgentQuery builds the WHERE clause (with its leading " WHERE ", or "")
// of f and its arguments, placeholders from 1.
func AgentQuery(f broker.AgentFilter, ph Placeholder) (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, fmt.Sprintf(cond, ph(len(args))))
	}
	if f.Query != "" {
		// replace() is in both dialects; LIKE would read % and _ in
		// the query as wildcards.
		add("replace(a.agent_id, %s, '') <> a.agent_id", f.Query)
	}
	for _, c := range []struct{ col, v string }{{"a.task_id", f.TaskID}, {"a.orch_id", f.OrchID}, {"a.app_id", f.AppID}} {
		if c.v != "" {
			add(c.col+" = %s", c.v)
		}
	}
	if f.Live {
		add("EXISTS (SELECT 1 FROM tokens t WHERE t.subject = a.agent_id AND "+LiveToken+")", f.Now.Unix())
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// UsageUpsert adds a usage record's counts to its row (one row per hour,
// agent, rule, required and granted scope and result); 11 parameters in
// UsageArgs' order. least and greatest are the dialect's min and max of
// two values (SQLite: min, max; PostgreSQL: LEAST, GREATEST).
func UsageUpsert(ph Placeholder, least, greatest string) string {
	return `INSERT INTO usage (hour, agent_id, task_id, orch_id, rule, required, granted, result, count, first_seen, last_seen)
		VALUES (` + Params(ph, 1, 11) + `)
		ON CONFLICT (hour, agent_id, rule, required, granted, result) DO UPDATE SET
		count = usage.count + excluded.count,
		first_seen = ` + least + `(usage.first_seen, excluded.first_seen),
		last_seen = ` + greatest + `(usage.last_seen, excluded.last_seen)`
}

// UsageArgs are a record's values for UsageUpsert.
func UsageArgs(r *broker.UsageRecord) []any {
	return []any{r.Hour.Unix(), r.AgentID, r.TaskID, r.OrchID, r.Rule, r.Required, r.Granted, r.Result, r.Count,
		r.First.Unix(), r.Last.Unix()}
}

// DecisionUpsert adds a decision count to its minute's row; 4 parameters.
func DecisionUpsert(ph Placeholder) string {
	return `INSERT INTO decisions (minute, result, reason, count) VALUES (` + Params(ph, 1, 4) + `)
		ON CONFLICT (minute, result, reason) DO UPDATE SET count = decisions.count + excluded.count`
}

// UsageQuery is the sum of usage rows matching f, per key over its range,
// with each agent's app and launch token.
func UsageQuery(f broker.UsageFilter, ph Placeholder) (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, vs ...any) {
		ps := make([]any, len(vs))
		for i, v := range vs {
			args = append(args, v)
			ps[i] = ph(len(args))
		}
		conds = append(conds, fmt.Sprintf(cond, ps...))
	}
	if !f.Since.IsZero() {
		add("u.hour >= %s", f.Since.UTC().Truncate(time.Hour).Unix())
	}
	if !f.Until.IsZero() {
		add("u.hour <= %s", f.Until.Unix())
	}
	for _, c := range []struct{ col, v string }{
		{"u.agent_id", f.AgentID}, {"u.task_id", f.TaskID}, {"u.orch_id", f.OrchID}, {"a.app_id", f.AppID}, {"a.launch_token", f.LaunchToken},
	} {
		if c.v != "" {
			add(c.col+" = %s", c.v)
		}
	}
	if f.Scope != "" {
		add("(u.required = %s OR u.granted = %s)", f.Scope, f.Scope)
	}
	where := ""
	if len(conds) > 0 {
		where = " WHERE " + strings.Join(conds, " AND ")
	}
	return `SELECT u.agent_id, u.task_id, u.orch_id, u.rule, u.required, u.granted, u.result,
		sum(u.count), min(u.first_seen), max(u.last_seen), coalesce(a.app_id, ''), coalesce(a.launch_token, '')
		FROM usage u LEFT JOIN agents a ON a.agent_id = u.agent_id` + where + `
		GROUP BY u.agent_id, u.task_id, u.orch_id, u.rule, u.required, u.granted, u.result, a.app_id, a.launch_token
		ORDER BY u.agent_id, u.required, u.result`, args
}

// ScanUsageRow reads a row of UsageQuery.
func ScanUsageRow(row Scanner) (broker.UsageRow, error) {
	var u broker.UsageRow
	var first, last int64
	err := row.Scan(&u.AgentID, &u.TaskID, &u.OrchID, &u.Rule, &u.Required, &u.Granted, &u.Result, &u.Count, &first, &last, &u.AppID, &u.LaunchToken)
	u.First, u.Last = time.Unix(first, 0).UTC(), time.Unix(last, 0).UTC()
	return u, err
}

// AgentColumns are the columns of an agent row (alias a), in ScanAgent's
// order; registered_at is stored as RFC 3339 text.
const AgentColumns = `a.agent_id, a.orch_id, a.task_id, a.app_id, a.scope, a.launch_token, a.agent_name, a.launch_scope, a.registered_at`

// ScanAgent reads a row of AgentColumns (the public key is not read).
func ScanAgent(row Scanner, a *broker.Agent) error {
	var scope, launchScope, at string
	if err := row.Scan(&a.ID, &a.OrchID, &a.TaskID, &a.AppID, &scope, &a.LaunchToken, &a.AgentName, &launchScope, &at); err != nil {
		return err
	}
	var err error
	if a.Scope, err = ParseList(scope); err != nil {
		return err
	}
	if a.LaunchScope, err = ParseList(launchScope); err != nil {
		return err
	}
	a.RegisteredAt, err = Time(at)
	return err
}

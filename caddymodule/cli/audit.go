package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/spf13/cobra"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// cliAuditCommand is `caddy agentwrit audit` (GET /v1/audit/events) and
// its `verify` subcommand.
func auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit [--agent-id <id>] [--task-id <id>] [--event-type <type>] [--outcome success|denied] [--since <t>] [--until <t>] [--limit <n>] [--offset <n>] [--oldest-first] [--follow]",
		Short: "Queries the broker's audit trail",
		Long: `
Lists audit events (GET /v1/audit/events), newest first (--oldest-first for
chain order), as a table or, with --json, as the broker's JSON answer.

--since and --until are inclusive and take RFC 3339 times
(2026-01-02T15:04:05Z) or a duration back from now (90m, 1d). The broker
returns at most 1000 events per query (default 100); page with --offset.

--follow prints the matching events as they are appended, oldest first,
asking the broker every --interval for the events after the last one seen,
until interrupted (Ctrl-C). With --json it prints one event per line.
`,
		Args: cobra.NoArgs,
		RunE: runAuditQuery,
	}
	f := cmd.Flags()
	f.String("agent-id", "", "Only events of this agent ID")
	f.String("task-id", "", "Only events of this task ID")
	f.String("event-type", "", "Only events of this type, e.g. scope_violation")
	f.String("outcome", "", "Only events with this outcome: success or denied")
	f.String("since", "", "Only events at or after this time (RFC 3339, or a duration ago)")
	f.String("until", "", "Only events at or before this time (RFC 3339, or a duration ago)")
	f.Int("limit", 0, "Most events to return (broker default 100, at most 1000)")
	f.Int("offset", 0, "Events to skip")
	f.Bool("oldest-first", false, "List in chain order, oldest first")
	f.BoolP("follow", "f", false, "Keep printing new events as they are appended")
	f.Duration("interval", time.Second, "How often --follow asks for new events")
	addJSONFlag(cmd)

	verify := &cobra.Command{
		Use:   "verify [--database <path or postgres URL>]",
		Short: "Fetches the whole audit chain and recomputes every hash",
		Long: `
Fetches every audit event, page by page, and recomputes the hash chain from
the genesis hash. Reports the first broken link (its index, id and reason)
and exits non-zero, or reports the number of events and the head (the last
event's id and hash); note the head down to detect a truncated chain later.

--database verifies offline: it opens the broker's database (an SQLite file
or a postgres:// URL) read-only and recomputes the chain there, without the
broker running and without writing anything.

Over HTTP with $AGENTWRIT_ADMIN_TOKEN (see login) nothing is written, so two
runs print the same head while the broker is idle. Logging in with the admin
secret appends an admin_auth event; verify leaves that event out and reports
the chain as it was just before its own login.
`,
		Args: cobra.NoArgs,
		RunE: runAuditVerify,
	}
	verify.Flags().String("database", "", "Verify this database offline (SQLite path or postgres:// URL), opened read-only")
	addJSONFlag(verify)
	cmd.AddCommand(verify)
	return cmd
}

// auditTime turns --since/--until into RFC 3339. The broker silently
// ignores a time it cannot parse, which would widen the query unnoticed,
// so bad input is an error here.
func auditTime(flag, v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	d, err := caddy.ParseDuration(v)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("--%s %q: want an RFC 3339 time or a duration ago like 90m", flag, v)
	}
	return now.Add(-d), nil
}

func runAuditQuery(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	var q client.AuditQuery
	q.AgentID, _ = f.GetString("agent-id")
	q.TaskID, _ = f.GetString("task-id")
	q.EventType, _ = f.GetString("event-type")
	q.Outcome, _ = f.GetString("outcome")
	now := time.Now()
	for name, dst := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		if v, _ := f.GetString(name); v != "" {
			t, err := auditTime(name, v, now)
			if err != nil {
				return err
			}
			*dst = t
		}
	}
	q.Limit, _ = f.GetInt("limit")
	q.Offset, _ = f.GetInt("offset")
	if q.Limit < 0 || q.Offset < 0 {
		return fmt.Errorf("--limit and --offset must not be negative")
	}
	oldest, _ := f.GetBool("oldest-first")
	q.NewestFirst = !oldest
	follow, _ := f.GetBool("follow")
	interval, _ := f.GetDuration("interval")
	if follow && interval <= 0 {
		return fmt.Errorf("--interval must be positive")
	}
	c, err := adminClient(cmd)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	// The newest event before the first page is where --follow starts,
	// so that nothing appended meanwhile is missed.
	var cursor string
	if follow {
		if cursor, err = newestEventID(ctx, c); err != nil {
			return err
		}
	}
	page, err := c.AuditEvents(ctx, q)
	if err != nil {
		return err
	}
	if jsonFlag(cmd) && !follow {
		return writeJSON(cmd.OutOrStdout(), page)
	}
	if err := printEvents(cmd, page.Events, true); err != nil {
		return err
	}
	// The count goes to stderr so that stdout stays one line per event.
	fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d matching events (offset %d)\n", len(page.Events), page.Total, max(page.Offset, 0))
	if !follow {
		return nil
	}
	for _, e := range page.Events {
		cursor = laterID(cursor, e.ID)
	}
	return followAudit(cmd, c, q, cursor, interval)
}

// followAudit prints the events matching q appended after the event with
// ID cursor, polling every interval, until the command's context ends
// (which is not an error: it is how --follow is stopped).
func followAudit(cmd *cobra.Command, c *client.Client, q client.AuditQuery, cursor string, interval time.Duration) error {
	ctx := cmd.Context()
	q.NewestFirst, q.Offset, q.Limit = false, 0, client.AuditPageSize
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for {
			q.AfterID = cursor
			page, err := c.AuditEvents(ctx, q)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if len(page.Events) == 0 {
				break
			}
			if err := printEvents(cmd, page.Events, false); err != nil {
				return err
			}
			cursor = page.Events[len(page.Events)-1].ID
			if len(page.Events) < q.Limit {
				break
			}
		}
	}
}

// newestEventID returns the ID of the chain's newest event, "" when the
// chain is empty.
func newestEventID(ctx context.Context, c *client.Client) (string, error) {
	page, err := c.AuditEvents(ctx, client.AuditQuery{NewestFirst: true, Limit: 1})
	if err != nil {
		return "", err
	}
	if len(page.Events) == 0 {
		return "", nil
	}
	return page.Events[0].ID, nil
}

// laterID returns whichever of two event IDs comes later in the chain.
// IDs are a fixed prefix and a zero-padded sequence number that grows
// past its padding, so a longer ID is the later one.
func laterID(a, b string) string {
	if len(a) != len(b) {
		if len(a) > len(b) {
			return a
		}
		return b
	}
	return max(a, b)
}

// printEvents writes events as table rows (with the header if asked) or,
// with --json, as one JSON object per line.
func printEvents(cmd *cobra.Command, events []broker.Event, header bool) error {
	w := cmd.OutOrStdout()
	if jsonFlag(cmd) {
		enc := json.NewEncoder(w)
		for _, e := range events {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if header {
		fmt.Fprintln(tw, "ID\tTIME\tEVENT\tOUTCOME\tAGENT\tTASK\tRESOURCE\tDETAIL")
	}
	for _, e := range events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Timestamp, e.EventType,
			dash(e.Outcome), dash(e.AgentID), dash(e.TaskID), dash(e.Resource), oneLine(e.Detail))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table row on one line whatever the detail holds.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// errChainBroken marks a verification that found a broken link.
var errChainBroken = errors.New("audit chain broken")

func runAuditVerify(cmd *cobra.Command, _ []string) error {
	var (
		res verifyResult
		err error
	)
	if dsn, _ := cmd.Flags().GetString("database"); dsn != "" {
		res, err = verifyOffline(cmd.Context(), dsn)
	} else {
		res, err = verifyOverHTTP(cmd)
	}
	if err != nil {
		return err
	}
	return res.report(cmd)
}

// verifyResult is what a verification found: how many events verified,
// the last of them, and the first broken link if any.
type verifyResult struct {
	n                int64
	headID, headHash string
	broken           *broker.ChainError
}

// verifyOffline opens the database read-only and recomputes its chain with
// broker.VerifyAudit, the function behind GET /v1/admin/audit/verify.
func verifyOffline(ctx context.Context, dsn string) (verifyResult, error) {
	db, err := storage.Open(ctx, dsn, storage.Options{ReadOnly: true})
	if err != nil {
		return verifyResult{}, fmt.Errorf("--database %s: %w", storage.Redact(dsn), err)
	}
	defer db.Close()
	head, err := broker.VerifyAudit(ctx, db)
	res := verifyResult{n: head.Seq, headHash: head.Hash}
	if head.Seq > 0 {
		// Offline there is no broker to name the event, so the ID is
		// the one the chain's last verified event carries.
		evs, _, qerr := db.QueryAudit(ctx, broker.AuditFilter{NewestFirst: true, BeforeSeq: head.Seq + 1, Limit: 1})
		if qerr == nil && len(evs) == 1 {
			res.headID = evs[0].ID
		}
	}
	if errors.As(err, &res.broken) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("verify %s: %w", storage.Redact(dsn), err)
	}
	return res, nil
}

// verifyOverHTTP fetches the chain page by page and recomputes it here, so
// what is verified is what the broker serves. After a login with the admin
// secret it stops before that login's own admin_auth event (the newest
// admin_auth at the time), so the head printed is the chain as it was
// before verify touched it.
func verifyOverHTTP(cmd *cobra.Command) (verifyResult, error) {
	ctx := cmd.Context()
	c, err := adminClient(cmd)
	if err != nil {
		return verifyResult{}, err
	}
	var q client.AuditQuery
	if os.Getenv(envAdminToken) == "" {
		page, err := c.AuditEvents(ctx, client.AuditQuery{EventType: broker.EventAdminAuth, NewestFirst: true, Limit: 1})
		if err != nil {
			return verifyResult{}, err
		}
		if len(page.Events) == 1 {
			q.BeforeID = page.Events[0].ID
		}
	}
	v := broker.NewChainVerifier()
	var res verifyResult
	for e, err := range c.AllAuditEvents(ctx, q) {
		if err != nil {
			return res, err
		}
		if err := v.Next(&e); err != nil {
			if !errors.As(err, &res.broken) {
				return res, err
			}
			break
		}
		res.n++
		res.headID, res.headHash = e.ID, e.Hash
	}
	if res.broken == nil {
		if err := v.Done(); err != nil && !errors.As(err, &res.broken) {
			return res, err
		}
	}
	return res, nil
}

// report prints the result and fails with errChainBroken on a broken link.
func (res verifyResult) report(cmd *cobra.Command) error {
	w := cmd.OutOrStdout()
	if jsonFlag(cmd) {
		out := map[string]any{"intact": res.broken == nil, "verified": res.n}
		if res.broken != nil {
			out["broken"] = map[string]any{"index": res.broken.Index, "id": res.broken.ID, "reason": res.broken.Reason}
		} else {
			out["head_id"], out["head_hash"] = res.headID, res.headHash
		}
		if err := writeJSON(w, out); err != nil {
			return err
		}
	}
	if res.broken != nil {
		if !jsonFlag(cmd) {
			fmt.Fprintf(w, "chain BROKEN at index %d, id %s: %s\n", res.broken.Index, res.broken.ID, res.broken.Reason)
			fmt.Fprintf(w, "%d events before it verified\n", res.n)
		}
		return fmt.Errorf("%w at index %d (%s)", errChainBroken, res.broken.Index, res.broken.ID)
	}
	if !jsonFlag(cmd) {
		fmt.Fprintf(w, "%d events, chain intact\n", res.n)
		if res.n > 0 {
			fmt.Fprintf(w, "head hash %s (%s)\n", res.headHash, res.headID)
		}
	}
	return nil
}

package cli

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/spf13/cobra"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// cliAuditCommand is `caddy agentwrit audit` (GET /v1/audit/events) and
// its `verify` subcommand.
func auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit [--agent-id <id>] [--task-id <id>] [--event-type <type>] [--outcome success|denied] [--since <t>] [--until <t>] [--limit <n>] [--offset <n>]",
		Short: "Queries the broker's audit trail",
		Long: `
Lists audit events (GET /v1/audit/events), oldest first, as a table or, with
--json, as the broker's JSON answer.

--since and --until are inclusive and take RFC 3339 times
(2026-01-02T15:04:05Z) or a duration back from now (90m, 1d). The broker
returns at most 1000 events per query (default 100); page with --offset.
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
	addJSONFlag(cmd)

	verify := &cobra.Command{
		Use:   "verify",
		Short: "Fetches the whole audit chain and recomputes every hash",
		Long: `
Fetches every audit event, page by page, and recomputes the hash chain from
the genesis hash. Reports the first broken link (its index, id and reason)
and exits non-zero, or reports the number of events and the head hash; note
the head hash down to detect a truncated chain later.
`,
		Args: cobra.NoArgs,
		RunE: runAuditVerify,
	}
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
	c, err := adminClient(cmd)
	if err != nil {
		return err
	}
	page, err := c.AuditEvents(cmd.Context(), q)
	if err != nil {
		return err
	}
	if jsonFlag(cmd) {
		return writeJSON(cmd.OutOrStdout(), page)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tEVENT\tOUTCOME\tAGENT\tTASK\tRESOURCE\tDETAIL")
	for _, e := range page.Events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Timestamp, e.EventType,
			dash(e.Outcome), dash(e.AgentID), dash(e.TaskID), dash(e.Resource), oneLine(e.Detail))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// The count goes to stderr so that stdout stays one line per event.
	fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d matching events (offset %d)\n", len(page.Events), page.Total, max(page.Offset, 0))
	return nil
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
	c, err := adminClient(cmd)
	if err != nil {
		return err
	}
	v := broker.NewChainVerifier()
	n, head := 0, ""
	var broken *broker.ChainError
	for e, err := range c.AllAuditEvents(cmd.Context(), client.AuditQuery{}) {
		if err != nil {
			return err
		}
		if err := v.Next(&e); err != nil {
			if !errors.As(err, &broken) {
				return err
			}
			break
		}
		n++
		head = e.Hash
	}
	if broken == nil {
		if err := v.Done(); err != nil && !errors.As(err, &broken) {
			return err
		}
	}
	if jsonFlag(cmd) {
		out := map[string]any{"intact": broken == nil, "verified": n}
		if broken != nil {
			out["broken"] = map[string]any{"index": broken.Index, "id": broken.ID, "reason": broken.Reason}
		} else {
			out["head_hash"] = head
		}
		if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
			return err
		}
	}
	if broken != nil {
		if !jsonFlag(cmd) {
			fmt.Fprintf(cmd.OutOrStdout(), "chain BROKEN at index %d, id %s: %s\n", broken.Index, broken.ID, broken.Reason)
			fmt.Fprintf(cmd.OutOrStdout(), "%d events before it verified\n", n)
		}
		return fmt.Errorf("%w at index %d (%s)", errChainBroken, broken.Index, broken.ID)
	}
	if !jsonFlag(cmd) {
		fmt.Fprintf(cmd.OutOrStdout(), "%d events, chain intact\n", n)
		if head != "" {
			fmt.Fprintf(cmd.OutOrStdout(), "head hash %s\n", head)
		}
	}
	return nil
}

package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// usageCommand is `caddy agentwrit usage`: GET /v1/admin/usage.
func usageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "usage [--app <id>] [--agent-id <id>] [--task-id <id>] [--since 24h] [--group-by agent|app|launch_token] [--unused] [--json]",
		Short: "Shows granted scopes against what the gateways saw agents use",
		Long: `
For each agent (or app, or launch-token template with --group-by), every
granted scope: used or never used, how often, when last, the identifiers it
covered; the scopes an agent asked for and was refused; and a suggested
grant, the narrowest set in the grants' own shape that covers everything
observed. A wildcard grant used with at most ` + fmt.Sprint(broker.SuggestMaxIdentifiers) + ` identifiers is narrowed to
them; used with more it is kept (listing them would refuse the next new one).

--since and --until take RFC 3339 times or a duration back from now (24h).
--unused lists only groups holding a grant never exercised.
`,
		Args: cobra.NoArgs,
		RunE: runUsage,
	}
	f := cmd.Flags()
	f.String("app", "", "Only agents of this app ID")
	f.String("agent-id", "", "Only this agent")
	f.String("task-id", "", "Only agents of this task")
	f.String("orch-id", "", "Only agents of this orchestration")
	f.String("scope", "", "Only usage of this scope (required or granted)")
	f.String("since", "", "Usage at or after this time (RFC 3339, or a duration ago)")
	f.String("until", "", "Usage at or before this time (RFC 3339, or a duration ago)")
	f.String("group-by", broker.UsageByAgent, "agent, app or launch_token")
	f.Bool("unused", false, "Only groups with a grant never used")
	f.Int("limit", 0, "Most groups (default 100, at most 1000)")
	f.Int("offset", 0, "Groups to skip")
	addJSONFlag(cmd)
	return cmd
}

func runUsage(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	var q client.UsageQuery
	q.AppID, _ = f.GetString("app")
	q.AgentID, _ = f.GetString("agent-id")
	q.TaskID, _ = f.GetString("task-id")
	q.OrchID, _ = f.GetString("orch-id")
	q.Scope, _ = f.GetString("scope")
	q.GroupBy, _ = f.GetString("group-by")
	q.Unused, _ = f.GetBool("unused")
	q.Limit, _ = f.GetInt("limit")
	q.Offset, _ = f.GetInt("offset")
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
	c, err := adminClient(cmd)
	if err != nil {
		return err
	}
	rep, err := c.Usage(cmd.Context(), q)
	if err != nil {
		return err
	}
	if jsonFlag(cmd) {
		return writeJSON(cmd.OutOrStdout(), rep)
	}
	out := cmd.OutOrStdout()
	for i, g := range rep.Groups {
		if i > 0 {
			fmt.Fprintln(out)
		}
		title := g.Kind + " " + g.ID
		if g.Name != "" {
			title += " (" + g.Name + ")"
		}
		fmt.Fprintln(out, title)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  GRANT\tUSED\tCOUNT\tLAST USE\tIDENTIFIERS")
		for _, u := range g.Grants {
			if q.Unused && u.Used {
				continue
			}
			used := "never"
			if u.Used {
				used = "yes"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", u.Scope, used, u.Count, dash(u.LastUsed), dash(strings.Join(u.Identifiers, " ")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, d := range g.Denied {
			fmt.Fprintf(out, "  asked for %s %d× (last %s), holds %s\n", d.Required, d.Count, d.LastSeen, strings.Join(d.Holds, " "))
		}
		fmt.Fprintf(out, "  suggested grant: %s\n", dash(strings.Join(g.Suggested, " ")))
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d %s groups\n", len(rep.Groups), rep.Total, rep.GroupBy)
	return nil
}

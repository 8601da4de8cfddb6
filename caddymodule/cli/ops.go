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

// loginCommand is `caddy agentwrit login`: an admin token for the shell.
func loginCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "login",
		Short: "Prints an admin token, for $" + envAdminToken,
		Long: `
Exchanges the admin secret for a short-lived admin token and prints it, so
that a shell can run several commands on one login (each login is an
admin_auth event in the audit chain):

	export ` + envAdminToken + `=$(caddy agentwrit login)

Commands use $` + envAdminToken + ` instead of the secret while it is set.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			secret, err := adminSecret(cmd)
			if err != nil {
				return err
			}
			res, err := c.AdminAuth(cmd.Context(), secret)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.AccessToken)
			fmt.Fprintf(cmd.ErrOrStderr(), "admin token valid for %ds\n", res.ExpiresIn)
			return nil
		},
	}
}

// statusCommand is `caddy agentwrit status`: GET /v1/admin/status.
func statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Shows whether the broker is healthy, and what it holds",
		Long: `
Answers an operator's first questions: is the broker healthy, which database
does it use, how many agents hold live tokens, how many revocations, the audit
chain's length and head, the key set, and the gateway's decisions in the last
minute and hour. Exits non-zero when the broker reports itself degraded.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				if err := writeJSON(cmd.OutOrStdout(), st); err != nil {
					return err
				}
			} else if err := printStatus(cmd, st); err != nil {
				return err
			}
			if st.Status != "ok" {
				return fmt.Errorf("broker degraded: %s", strings.Join(st.Problems, "; "))
			}
			return nil
		},
	}
	addJSONFlag(cmd)
	return cmd
}

func printStatus(cmd *cobra.Command, st *broker.Status) error {
	db := st.Database.Kind + " " + st.Database.Location
	if !st.Database.Connected {
		db += " (NOT CONNECTED)"
	}
	if st.Database.RevocationsSyncedAgo != nil {
		db += fmt.Sprintf(" (fleet; revocations synced %.1fs ago)", *st.Database.RevocationsSyncedAgo)
	}
	fields := [][2]string{
		{"status", st.Status}, {"version", st.Version}, {"uptime", (time.Duration(st.Uptime) * time.Second).String()},
		{"database", db},
		{"agents", fmt.Sprintf("%d registered, %d holding live tokens", st.Agents, st.LiveAgents)},
		{"live tokens", fmt.Sprint(st.LiveTokens)},
		{"revocations", fmt.Sprint(st.Revocations)},
		{"audit chain", fmt.Sprintf("%d events, head %s %s", st.Audit.Events, dash(st.Audit.HeadID), st.Audit.HeadHash)},
	}
	for _, k := range st.Keys {
		fields = append(fields, [2]string{"key", keyLine(k)})
	}
	fields = append(fields, decisionFields("last minute", st.Gateway.LastMinute)...)
	fields = append(fields, decisionFields("last hour", st.Gateway.LastHour)...)
	for _, p := range st.Problems {
		fields = append(fields, [2]string{"problem", p})
	}
	return writeFields(cmd.OutOrStdout(), fields)
}

// decisionFields renders decision counts as "allow ok 12, deny
// missing_token 3".
func decisionFields(label string, ds []broker.DecisionCount) [][2]string {
	if len(ds) == 0 {
		return [][2]string{{"decisions, " + label, "none"}}
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%s %s %d", d.Result, d.Reason, d.Count)
	}
	return [][2]string{{"decisions, " + label, strings.Join(parts, ", ")}}
}

func keyLine(k broker.KeyInfo) string {
	s := fmt.Sprintf("%s %s, created %s", k.KID, k.State, k.CreatedAt.UTC().Format(time.RFC3339))
	if !k.RetireAt.IsZero() {
		s += ", retires " + k.RetireAt.UTC().Format(time.RFC3339)
	}
	return s
}

// keysCommand is `caddy agentwrit keys list|rotate`.
func keysCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "keys <list|rotate>", Short: "Lists or rotates the broker's signing keys", Args: cobra.NoArgs}
	list := &cobra.Command{
		Use:   "list",
		Short: "Lists the signing keys: the active one and those still verifying",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			keys, err := c.Keys(cmd.Context())
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), keys)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "KID\tSTATE\tCREATED\tRETIRES")
			for _, k := range keys.Keys {
				retires := "-"
				if !k.RetireAt.IsZero() {
					retires = k.RetireAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.KID, k.State, k.CreatedAt.UTC().Format(time.RFC3339), retires)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(list)
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Makes a new signing key; the old one verifies its tokens until they expire",
		Long: `
Makes a new active signing key (POST /v1/admin/keys/rotate). Tokens signed by
the previous key keep working until their own exp: that key stays in the key
set (and in /.well-known/jwks.json) for max_ttl, then retires. The rotation is
an audit event. Gateways that verify locally learn of the new key at once.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			k, err := c.RotateKey(cmd.Context())
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new active key %s\n", k.KID)
			return nil
		},
	}
	addJSONFlag(rotate)
	cmd.AddCommand(list, rotate)
	return cmd
}

// agentsCommand is `caddy agentwrit agents`: GET /v1/admin/agents.
func agentsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents [--task-id <id>] [--orch-id <id>] [--app-id <id>] [--search <text>] [--all]",
		Short: "Lists agents holding live tokens, with their tokens' jti for revoke --level token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			var q client.AgentQuery
			q.TaskID, _ = f.GetString("task-id")
			q.OrchID, _ = f.GetString("orch-id")
			q.AppID, _ = f.GetString("app-id")
			q.Query, _ = f.GetString("search")
			q.All, _ = f.GetBool("all")
			q.Limit, _ = f.GetInt("limit")
			q.Offset, _ = f.GetInt("offset")
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			list, err := c.Agents(cmd.Context(), q)
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "AGENT\tORCH\tTASK\tSCOPE\tTOKEN (jti)\tEXPIRES\tDEPTH")
			for _, a := range list.Agents {
				if len(a.Tokens) == 0 {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\t-\t-\n", a.AgentID, a.OrchID, a.TaskID, strings.Join(a.Scope, " "))
				}
				for _, t := range a.Tokens {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", a.AgentID, a.OrchID, a.TaskID, strings.Join(t.Scope, " "),
						t.JTI, t.ExpiresAt, t.Depth)
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d agents (offset %d)\n", len(list.Agents), list.Total, list.Offset)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("task-id", "", "Only agents of this task")
	f.String("orch-id", "", "Only agents of this orchestration")
	f.String("app-id", "", "Only agents launched by this app")
	f.String("search", "", "Only agents whose ID contains this")
	f.Bool("all", false, "Include agents without a live token")
	f.Int("limit", 0, "Most agents to list (broker default 100, at most 1000)")
	f.Int("offset", 0, "Agents to skip")
	addJSONFlag(cmd)
	return cmd
}

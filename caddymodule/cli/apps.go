package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// cliLaunchTokenCommand is `caddy agentwrit launch-token`:
// POST /v1/admin/launch-tokens.
func launchTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "launch-token --agent-name <name> --scope <scope>[,<scope>...] [--max-ttl <d>] [--ttl <d>] [--single-use=true|false]",
		Short: "Creates a launch token an agent can register with",
		Long: `
Creates a launch token (POST /v1/admin/launch-tokens) and prints it on stdout.

--scope is repeatable and takes comma lists; it is the most an agent
registering with the token may ask for. --max-ttl is the lifetime of the agent
tokens it yields (broker default 300s), --ttl the launch token's own lifetime
(broker default 30s); both take seconds or durations like 5m. A single-use
token (the default) registers one agent.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, _ := cmd.Flags().GetString("agent-name")
			scopes, err := scopesFlag(cmd)
			if err != nil {
				return err
			}
			singleUse, _ := cmd.Flags().GetBool("single-use")
			req := broker.LaunchTokenRequest{AgentName: name, AllowedScope: scopes, SingleUse: &singleUse}
			if req.MaxTTL, _, err = secondsFlag(cmd, "max-ttl"); err != nil {
				return err
			}
			if req.TTL, _, err = secondsFlag(cmd, "ttl"); err != nil {
				return err
			}
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			resp, err := c.CreateLaunchToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.LaunchToken)
			fmt.Fprintf(cmd.ErrOrStderr(), "launch token for %q expires at %s; scopes %s; agent tokens live %ds; single use: %t\n",
				name, resp.ExpiresAt, strings.Join(resp.Policy.AllowedScope, " "), resp.Policy.MaxTTL, singleUse)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("agent-name", "", "Name of the agent the token is for (required)")
	f.StringSlice("scope", nil, "Allowed scope, action:resource:identifier (repeatable, comma lists; required)")
	f.String("max-ttl", "", "Lifetime of the agent tokens it yields (seconds or duration; broker default 300s)")
	f.String("ttl", "", "Lifetime of the launch token itself (seconds or duration; broker default 30s)")
	f.Bool("single-use", true, "Whether the token registers only one agent")
	_ = cmd.MarkFlagRequired("agent-name")
	_ = cmd.MarkFlagRequired("scope")
	addJSONFlag(cmd)
	return cmd
}

// cliAppCommand is `caddy agentwrit app`: the /v1/admin/apps routes.
func appCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "app <register|list|show|update|remove>",
		Short: "Manages the applications registered with the broker",
		Args:  cobra.NoArgs,
	}

	register := &cobra.Command{
		Use:   "register --name <name> --scope <scope>[,<scope>...] [--token-ttl <d>]",
		Short: "Registers an app and prints its client credentials",
		Long: `
Registers an app (POST /v1/admin/apps). The scopes are its ceiling: the most
its launch tokens may grant. The client_secret is printed once; the broker
keeps only its hash.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, _ := cmd.Flags().GetString("name")
			scopes, err := scopesFlag(cmd)
			if err != nil {
				return err
			}
			req := broker.AppRequest{Name: name, Scopes: scopes}
			ttl, ok, err := secondsFlag(cmd, "token-ttl")
			if err != nil {
				return err
			}
			if ok {
				req.TokenTTL = &ttl
			}
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			resp, err := c.CreateApp(cmd.Context(), req)
			if err != nil {
				return err
			}
			// Upstream answers with empty name and status; fill them in for
			// people, not for --json (which is the broker's answer as is).
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), map[string]any{
					"app_id": resp.AppID, "name": resp.Name, "client_id": resp.ClientID, "client_secret": resp.ClientSecret,
					"scopes": resp.Scopes, "token_ttl": resp.TokenTTL, "status": resp.Status,
				})
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 1, ' ', 0)
			fmt.Fprintf(tw, "app_id:\t%s\n", resp.AppID)
			fmt.Fprintf(tw, "name:\t%s\n", name)
			fmt.Fprintf(tw, "client_id:\t%s\n", resp.ClientID)
			fmt.Fprintf(tw, "client_secret:\t%s\n", resp.ClientSecret)
			fmt.Fprintf(tw, "scopes:\t%s\n", strings.Join(resp.Scopes, " "))
			fmt.Fprintf(tw, "token_ttl:\t%ds\n", resp.TokenTTL)
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "Store the client_secret now: it cannot be shown again.")
			return nil
		},
	}
	register.Flags().String("name", "", "App name: lowercase letters, digits, single hyphens (required)")
	register.Flags().StringSlice("scope", nil, "Scope ceiling (repeatable, comma lists; required)")
	register.Flags().String("token-ttl", "", "Lifetime of the app's tokens, 60s to 24h (broker default 30m)")
	_ = register.MarkFlagRequired("name")
	_ = register.MarkFlagRequired("scope")
	addJSONFlag(register)

	list := &cobra.Command{
		Use:   "list",
		Short: "Lists the registered apps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			resp, err := c.ListApps(cmd.Context())
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), resp)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "APP ID\tNAME\tCLIENT ID\tSTATUS\tTOKEN TTL\tSCOPES\tCREATED")
			for _, a := range resp.Apps {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%ds\t%s\t%s\n", a.AppID, a.Name, a.ClientID, a.Status, a.TokenTTL,
					strings.Join(a.Scopes, " "), a.CreatedAt)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(list)

	show := &cobra.Command{
		Use:   "show <app_id|name>",
		Short: "Shows one app, named by its ID or its name",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			app, err := findApp(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			return printApp(cmd, app)
		},
	}
	addJSONFlag(show)

	update := &cobra.Command{
		Use:   "update <app_id> [--scope <scope>[,<scope>...]] [--token-ttl <d>]",
		Short: "Changes an app's scope ceiling or token lifetime",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			scopes, err := scopesFlag(cmd)
			if err != nil {
				return err
			}
			req := broker.AppRequest{Scopes: scopes}
			ttl, ok, err := secondsFlag(cmd, "token-ttl")
			if err != nil {
				return err
			}
			if ok {
				req.TokenTTL = &ttl
			}
			if req.Scopes == nil && req.TokenTTL == nil {
				return errors.New("nothing to update: give --scope and/or --token-ttl")
			}
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			app, err := c.UpdateApp(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return printApp(cmd, app)
		},
	}
	update.Flags().StringSlice("scope", nil, "New scope ceiling, replacing the old one (repeatable, comma lists)")
	update.Flags().String("token-ttl", "", "New lifetime of the app's tokens, 60s to 24h")
	addJSONFlag(update)

	remove := &cobra.Command{
		Use:   "remove <app_id>",
		Short: "Deregisters an app, revoking its own tokens and unused launch tokens",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			resp, err := c.DeleteApp(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "app %s deregistered at %s (status %s)\n", resp.AppID, resp.DeregisteredAt, resp.Status)
			return nil
		},
	}
	addJSONFlag(remove)

	cmd.AddCommand(register, list, show, update, remove)
	return cmd
}

// findApp returns the app whose ID is ref or, when no app has that ID,
// the one app whose name is ref. A name several apps carry is an error
// listing their IDs, to pick from.
func findApp(ctx context.Context, c *client.Client, ref string) (*broker.App, error) {
	app, err := c.GetApp(ctx, ref)
	var notFound *client.Error
	if err == nil || !errors.As(err, &notFound) || notFound.Status != http.StatusNotFound {
		return app, err
	}
	list, lerr := c.ListApps(ctx)
	if lerr != nil {
		return nil, lerr
	}
	var named []*broker.App
	for _, a := range list.Apps {
		if a.Name == ref {
			named = append(named, a)
		}
	}
	switch len(named) {
	case 0:
		return nil, err // the broker's own "app not found"
	case 1:
		return named[0], nil
	}
	ids := make([]string, len(named))
	for i, a := range named {
		ids[i] = a.AppID + " (" + a.Status + ")"
	}
	return nil, fmt.Errorf("%d apps are named %q; show one by its ID: %s", len(named), ref, strings.Join(ids, ", "))
}

// printApp prints an app as "field: value" lines, or JSON with --json.
func printApp(cmd *cobra.Command, a *broker.App) error {
	if jsonFlag(cmd) {
		return writeJSON(cmd.OutOrStdout(), a)
	}
	return writeFields(cmd.OutOrStdout(), [][2]string{
		{"app_id", a.AppID}, {"name", a.Name}, {"client_id", a.ClientID}, {"status", a.Status},
		{"scopes", strings.Join(a.Scopes, " ")}, {"token_ttl", fmt.Sprintf("%ds", a.TokenTTL)},
		{"created_at", a.CreatedAt}, {"updated_at", a.UpdatedAt},
	})
}

// writeFields prints aligned "name: value" lines.
func writeFields(w io.Writer, fields [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, f := range fields {
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
	}
	return tw.Flush()
}

// cliRevokeCommand is `caddy agentwrit revoke`: POST /v1/revoke.
func revokeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke --level <token|agent|task|chain> --target <target>",
		Short: "Revokes tokens by jti, agent, task or delegation chain",
		Long: `
Revokes (POST /v1/revoke) at one level; revocations are permanent:
  token   the token whose jti is <target>
  agent   every token, current and future, whose subject is <target>
  task    every token, current and future, with task_id <target>
  chain   every token delegated from the root delegator (agent ID) <target>
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level, _ := cmd.Flags().GetString("level")
			target, _ := cmd.Flags().GetString("target")
			c, err := adminClient(cmd)
			if err != nil {
				return err
			}
			resp, err := c.Revoke(cmd.Context(), level, target)
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return writeJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked level=%s target=%s\n", resp.Level, resp.Target)
			return nil
		},
	}
	cmd.Flags().String("level", "", "token, agent, task or chain (required)")
	cmd.Flags().String("target", "", "jti, agent ID, task ID or root delegator's agent ID (required)")
	_ = cmd.MarkFlagRequired("level")
	_ = cmd.MarkFlagRequired("target")
	addJSONFlag(cmd)
	return cmd
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter
	"github.com/spf13/cobra"

	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule" // the agentwrit directives
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// cliRoutesCommand is `caddy agentwrit routes`: it explains which rule of
// which agentwrit handler a request meets and what it needs.
func routesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "routes [--config <file> [--adapter <name>] | --address <admin>] [<METHOD> <path>]",
		Short: "Explains which agentwrit rule and scopes a request needs",
		Long: `
Loads a config, finds every agentwrit handler in it
and, for the request <METHOD> <path>, prints for each handler what it would
decide before looking at a token: the rule that matches and the scopes it
requires, or that the route is public, unmapped, or not canonical (400). The
path is the raw request path, percent-encoding included; a query is ignored.
Placeholders in scope templates ({http.request.host}) are shown unexpanded.
The method is taken in upper case.

Without <METHOD> <path> it lists every handler's rules.

Without --config it explains the config Caddy is running, read from Caddy's
admin API (GET /config/ at --address, default localhost:2019), and says so
on stderr. With --config it reads that file (a Caddyfile, or JSON with
--adapter json or a .json name; - for stdin) instead.

Handlers are named by where they sit in the adapted JSON (server, route and
handler indexes, and the matchers of the routes around them), as
'caddy adapt' would show. Exits non-zero if the config cannot be loaded, holds
no agentwrit handler, or a handler's rules do not compile.
`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 0 && len(args) != 2 {
				return fmt.Errorf("want <METHOD> <path>, or nothing to list the rules; got %d arguments", len(args))
			}
			return nil
		},
		RunE: runRoutes,
	}
	cmd.Flags().StringP("config", "c", "", "Configuration file (- for stdin); default: the running config from Caddy's admin API")
	cmd.Flags().String("address", caddy.DefaultAdminListen, "Address of Caddy's admin API, for the running config")
	cmd.Flags().StringP("adapter", "a", "caddyfile", "Config adapter; json for a JSON config")
	addJSONFlag(cmd)
	return cmd
}

// foundHandler is one http.handlers.agentwrit found in a config.
type foundHandler struct {
	Server   string   // key under apps.http.servers
	Listen   []string // the server's listen addresses
	Location string   // route and handler indexes down to the handler
	Rules    []scopemap.Rule
	Unmapped string
	Mode     string
}

// loadAdaptedConfig reads the config file and adapts it to Caddy JSON, or
// without --config reads the running config from Caddy's admin API;
// adapter warnings and where the config came from go to warn.
func loadAdaptedConfig(cmd *cobra.Command, warn io.Writer) ([]byte, string, error) {
	file, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	if file == "" {
		return runningConfig(cmd, warn)
	}
	var body []byte
	var err error
	if file == "-" {
		body, err = io.ReadAll(cmd.InOrStdin())
	} else {
		body, err = os.ReadFile(file)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, file, fmt.Errorf("read config: %s does not exist; point --config at your Caddyfile (or a JSON config), or leave --config out to explain the config Caddy is running", file)
	}
	if err != nil {
		return nil, file, fmt.Errorf("read config: %w", err)
	}
	if !cmd.Flags().Changed("adapter") && strings.HasSuffix(file, ".json") {
		adapter = "json"
	}
	if adapter == "json" {
		return body, file, nil
	}
	a := caddyconfig.GetAdapter(adapter)
	if a == nil {
		return nil, file, fmt.Errorf("unrecognized config adapter %q", adapter)
	}
	out, warnings, err := a.Adapt(body, map[string]any{"filename": file})
	if err != nil {
		return nil, file, fmt.Errorf("adapt %s with %s: %w", file, adapter, err)
	}
	for _, w := range warnings {
		fmt.Fprintf(warn, "warning: %s\n", w.String())
	}
	return out, file, nil
}

// runningConfig reads the config Caddy is running from its admin API
// (GET /config/ at --address: host:port, an http(s):// URL, or unix/<path>).
func runningConfig(cmd *cobra.Command, warn io.Writer) ([]byte, string, error) {
	addr, _ := cmd.Flags().GetString("address")
	timeout, _ := cmd.Flags().GetDuration("timeout")
	hc := &http.Client{Timeout: timeout}
	base := addr
	if sock, ok := strings.CutPrefix(addr, "unix/"); ok {
		var d net.Dialer
		hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", sock)
		}}
		base = "http://localhost" // the Host Caddy's admin API expects on a socket
	} else if !strings.Contains(addr, "://") {
		base = "http://" + addr
	}
	url := strings.TrimRight(base, "/") + "/config/"
	where := "the running config at " + addr
	fail := func(err error) ([]byte, string, error) {
		return nil, where, fmt.Errorf("no --config given, and %s could not be read: %w; start Caddy, give --address of its admin API, or --config <file>", where, err)
	}
	req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, url, nil)
	if err != nil {
		return fail(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("GET %s: %s", url, resp.Status))
	}
	if t := bytes.TrimSpace(body); len(t) == 0 || string(t) == "null" {
		return fail(fmt.Errorf("caddy runs no config"))
	}
	fmt.Fprintf(warn, "using the running config from %s (give --config to explain a file)\n", url)
	return body, where, nil
}

// findAgentwritHandlers walks apps.http.servers.*.routes (and each server's
// error routes), descending into every handler that holds routes of its own
// (subroute), and returns every agentwrit handler in config order.
func findAgentwritHandlers(cfg []byte) ([]foundHandler, error) {
	var root struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string          `json:"listen"`
					Routes []json.RawMessage `json:"routes"`
					Errors struct {
						Routes []json.RawMessage `json:"routes"`
					} `json:"errors"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &root); err != nil {
		return nil, fmt.Errorf("parse config JSON: %w", err)
	}
	names := make([]string, 0, len(root.Apps.HTTP.Servers))
	for n := range root.Apps.HTTP.Servers {
		names = append(names, n)
	}
	sort.Strings(names)
	var found []foundHandler
	for _, n := range names {
		srv := root.Apps.HTTP.Servers[n]
		base := foundHandler{Server: n, Listen: srv.Listen}
		if err := walkRoutes(srv.Routes, "", base, &found); err != nil {
			return nil, fmt.Errorf("server %s: %w", n, err)
		}
		if err := walkRoutes(srv.Errors.Routes, "errors › ", base, &found); err != nil {
			return nil, fmt.Errorf("server %s errors: %w", n, err)
		}
	}
	return found, nil
}

func walkRoutes(routes []json.RawMessage, loc string, base foundHandler, found *[]foundHandler) error {
	for i, raw := range routes {
		var r struct {
			Match  json.RawMessage   `json:"match"`
			Handle []json.RawMessage `json:"handle"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("%sroute %d: %w", loc, i, err)
		}
		rloc := fmt.Sprintf("%sroute %d", loc, i)
		if len(r.Match) > 0 && string(r.Match) != "null" {
			rloc += " " + matcherSummary(r.Match)
		}
		for j, hraw := range r.Handle {
			var h struct {
				Handler  string            `json:"handler"`
				Routes   []json.RawMessage `json:"routes"`
				Rules    []scopemap.Rule   `json:"rules"`
				Unmapped string            `json:"unmapped"`
				Mode     string            `json:"mode"`
			}
			if err := json.Unmarshal(hraw, &h); err != nil {
				return fmt.Errorf("%s › handler %d: %w", rloc, j, err)
			}
			hloc := fmt.Sprintf("%s › handler %d", rloc, j)
			if h.Handler == "agentwrit" {
				fh := base
				fh.Location, fh.Rules, fh.Unmapped, fh.Mode = hloc, h.Rules, h.Unmapped, h.Mode
				*found = append(*found, fh)
			}
			if len(h.Routes) > 0 {
				if err := walkRoutes(h.Routes, hloc+" ("+h.Handler+") › ", base, found); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// matcherSummary renders a route's matcher sets compactly, e.g.
// [{"host":["api.example.com"]}], so the reader can tell sites apart.
func matcherSummary(m json.RawMessage) string {
	var v any
	if json.Unmarshal(m, &v) != nil {
		return ""
	}
	b, _ := json.Marshal(v)
	s := string(b)
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return s
}

// routeExplanation is what one handler decides for one request, before
// looking at a token.
type routeExplanation struct {
	Server   string   `json:"server"`
	Listen   []string `json:"listen,omitempty"`
	Location string   `json:"location"`
	// Result is require, public, unmapped, not_canonical, bad_value or
	// invalid_rules.
	Result   string   `json:"result"`
	Rule     string   `json:"rule,omitempty"`
	Required []string `json:"required,omitempty"`
	Detail   string   `json:"detail,omitempty"`
	Unmapped string   `json:"unmapped"`
	Mode     string   `json:"mode"`
	Rules    []string `json:"rules,omitempty"`
}

// explain runs h's rules for method and rawPath the way the handler does:
// canonical check first, then the most specific rule.
func explain(h foundHandler, method, rawPath string) routeExplanation {
	x := routeExplanation{Server: h.Server, Listen: h.Listen, Location: h.Location, Unmapped: h.Unmapped, Mode: h.Mode}
	if x.Unmapped == "" {
		x.Unmapped = "deny"
	}
	if x.Mode == "" {
		x.Mode = "enforce"
	}
	for _, r := range h.Rules {
		x.Rules = append(x.Rules, r.String())
	}
	m, err := scopemap.Compile(h.Rules)
	if err != nil {
		x.Result, x.Detail = "invalid_rules", err.Error()
		return x
	}
	if method == "" {
		return x
	}
	x.Rules = nil
	// Placeholders are request-time values; show them as written.
	keep := func(name string) (string, bool) { return "{" + name + "}", true }
	d := m.Decide(method, rawPath, keep)
	x.Result = d.Outcome.String()
	if d.Rule != nil {
		x.Rule = d.Rule.String()
	}
	switch d.Outcome {
	case scopemap.NotCanonical:
		x.Detail = "400 Bad Request: " + d.Err.Error()
	case scopemap.BadValue:
		x.Detail = "403 Forbidden: " + d.Err.Error()
	case scopemap.Unmapped:
		if x.Unmapped == "authenticated" {
			x.Detail = "no rule maps it; unmapped authenticated: any valid token"
		} else {
			x.Detail = "no rule maps it; unmapped deny: 403 route_not_mapped"
		}
	case scopemap.Public:
		x.Detail = "no token needed"
	case scopemap.Require:
		x.Required = d.Required
	}
	return x
}

func runRoutes(cmd *cobra.Command, args []string) error {
	cfg, file, err := loadAdaptedConfig(cmd, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	handlers, err := findAgentwritHandlers(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if len(handlers) == 0 {
		return fmt.Errorf("%s: no agentwrit handler (http.handlers.agentwrit) in the config", file)
	}
	var method, path string
	if len(args) == 2 {
		method = strings.ToUpper(args[0])
		path, _, _ = strings.Cut(args[1], "?")
	}
	var xs []routeExplanation
	var bad []string
	for _, h := range handlers {
		x := explain(h, method, path)
		if x.Result == "invalid_rules" {
			bad = append(bad, h.Location)
		}
		xs = append(xs, x)
	}
	out := cmd.OutOrStdout()
	if jsonFlag(cmd) {
		if err := writeJSON(out, xs); err != nil {
			return err
		}
	} else {
		for i, x := range xs {
			if i > 0 {
				fmt.Fprintln(out)
			}
			where := "server " + x.Server
			if len(x.Listen) > 0 {
				where += " (listen " + strings.Join(x.Listen, " ") + ")"
			}
			fmt.Fprintf(out, "%s › %s\n", where, x.Location)
			fields := [][2]string{{"  unmapped", x.Unmapped}, {"  mode", x.Mode}}
			if method != "" && x.Result != "invalid_rules" {
				fields = append(fields, [2]string{"  request", method + " " + path})
				if x.Rule != "" {
					fields = append(fields, [2]string{"  rule", x.Rule})
				}
				fields = append(fields, [2]string{"  result", x.Result})
				if len(x.Required) > 0 {
					fields = append(fields, [2]string{"  requires", strings.Join(x.Required, " ")})
				}
			}
			if x.Detail != "" {
				fields = append(fields, [2]string{"  detail", x.Detail})
			}
			if err := writeFields(out, fields); err != nil {
				return err
			}
			for _, r := range x.Rules {
				fmt.Fprintf(out, "  %s\n", r)
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("rules do not compile in: %s", strings.Join(bad, "; "))
	}
	return nil
}

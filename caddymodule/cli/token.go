package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// envLaunchToken is read by `register` when --launch-token is not given.
const envLaunchToken = "AGENTWRIT_LAUNCH_TOKEN"

// cliHashSecretCommand is `caddy agentwrit hash-secret`, modelled on
// `caddy hash-password`.
func hashSecretCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hash-secret",
		Short: "Hashes an admin secret with bcrypt for the admin_secret option",
		Long: `
Reads an admin secret and writes its bcrypt hash (cost 12, as AgentWrit uses)
to stdout, for the admin_secret option of the agentwrit global option, so the
Caddyfile need not hold the plaintext.

If stdin is a terminal the secret is read without echo, twice; otherwise the
first line of stdin is used. There is deliberately no flag for the secret:
command lines are visible to other local users.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			secret, err := readSecretInput(cmd, "admin secret")
			if err != nil {
				return err
			}
			hash, err := broker.HashSecret(string(secret))
			if err != nil {
				return fmt.Errorf("hash admin secret: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), hash)
			return nil
		},
	}
}

// cliTokenCommand is `caddy agentwrit token` with its `inspect` subcommand.
func tokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token <inspect>",
		Short: "Works with AgentWrit tokens",
		Args:  cobra.NoArgs,
	}
	inspect := &cobra.Command{
		Use:   "inspect [<jwt>|-]",
		Short: "Decodes a token, shows its claims and expiry, and validates it",
		Long: `
Decodes a token's header and claims without verifying them and shows them,
times in human form; then asks the broker (POST /v1/token/validate) whether
the token is valid: signature, expiry, issuer and revocation. Exits non-zero
if the token cannot be decoded or the broker says it is invalid.

Without an argument, or with "-", the token is read from stdin, which keeps
it out of the process list and shell history.
`,
		Args: cobra.MaximumNArgs(1),
		RunE: runTokenInspect,
	}
	inspect.Flags().Bool("offline", false, "Only decode; do not ask the broker")
	addJSONFlag(inspect)
	cmd.AddCommand(inspect)
	return cmd
}

// decodeJWT decodes a token's header and payload without verifying
// anything, for display.
func decodeJWT(tok string) (header, claims map[string]json.RawMessage, err error) {
	u, err := broker.ParseUnverified(tok)
	if err != nil {
		return nil, nil, fmt.Errorf("not an AgentWrit token: %w", err)
	}
	if err := json.Unmarshal(u.Header, &header); err != nil {
		return nil, nil, fmt.Errorf("not an AgentWrit token: header: %w", err)
	}
	if err := json.Unmarshal(u.Payload, &claims); err != nil {
		return nil, nil, fmt.Errorf("not an AgentWrit token: payload: %w", err)
	}
	return header, claims, nil
}

// claimOrder is the order AgentWrit serializes claims in; others follow.
var claimOrder = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "scope", "task_id", "orch_id", "delegation_chain", "chain_hash"}

func runTokenInspect(cmd *cobra.Command, args []string) error {
	var tok string
	if len(args) == 1 && args[0] != "-" {
		tok = args[0]
	} else {
		b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), broker.MaxBodyBytes))
		if err != nil {
			return fmt.Errorf("read token from stdin: %w", err)
		}
		tok = string(b)
	}
	tok = strings.TrimPrefix(strings.TrimSpace(tok), "Bearer ")
	header, claims, err := decodeJWT(tok)
	if err != nil {
		return err
	}
	now := time.Now()
	var exp int64
	_ = json.Unmarshal(claims["exp"], &exp)

	offline, _ := cmd.Flags().GetBool("offline")
	var valid broker.ValidateResponse
	if !offline {
		c, err := newClient(cmd)
		if err != nil {
			return err
		}
		v, err := c.Validate(cmd.Context(), tok)
		if err != nil {
			return err
		}
		valid = *v
	}

	out := cmd.OutOrStdout()
	if jsonFlag(cmd) {
		res := map[string]any{"header": header, "claims": claims}
		if exp > 0 {
			res["expires_in"] = exp - now.Unix()
		}
		if !offline {
			res["valid"] = valid.Valid
			if valid.Error != "" {
				res["error"] = valid.Error
			}
		}
		if err := writeJSON(out, res); err != nil {
			return err
		}
	} else {
		var hdr [][2]string
		for _, k := range []string{"alg", "typ", "kid"} {
			if v, ok := header[k]; ok {
				hdr = append(hdr, [2]string{"  " + k, claimText(k, v, now)})
			}
		}
		fmt.Fprintln(out, "header:")
		if err := writeFields(out, hdr); err != nil {
			return err
		}
		fmt.Fprintln(out, "claims:")
		var cl [][2]string
		seen := map[string]bool{}
		for _, k := range claimOrder {
			if v, ok := claims[k]; ok {
				seen[k] = true
				cl = append(cl, [2]string{"  " + k, claimText(k, v, now)})
			}
		}
		for k, v := range claims {
			if !seen[k] {
				cl = append(cl, [2]string{"  " + k, claimText(k, v, now)})
			}
		}
		if err := writeFields(out, cl); err != nil {
			return err
		}
		switch {
		case exp == 0:
			fmt.Fprintln(out, "expiry:  none (AgentWrit rejects such tokens)")
		case now.Unix() > exp:
			fmt.Fprintf(out, "expiry:  EXPIRED %s ago\n", now.Sub(time.Unix(exp, 0)).Round(time.Second))
		default:
			fmt.Fprintf(out, "expiry:  expires in %s\n", time.Unix(exp, 0).Sub(now).Round(time.Second))
		}
		switch {
		case offline:
			fmt.Fprintln(out, "broker:  not asked (--offline)")
		case valid.Valid:
			fmt.Fprintln(out, "broker:  VALID")
		default:
			fmt.Fprintf(out, "broker:  INVALID (%s)\n", valid.Error)
		}
	}
	if !offline && !valid.Valid {
		return errors.New("the broker says the token is invalid")
	}
	return nil
}

// claimText renders one header field or claim for people: times with their
// distance from now, string lists space separated, delegation chains as
// agent hops.
func claimText(name string, raw json.RawMessage, now time.Time) string {
	switch name {
	case "exp", "nbf", "iat":
		var n int64
		if json.Unmarshal(raw, &n) == nil {
			return humanTime(n, now)
		}
	case "scope", "aud":
		var l []string
		if json.Unmarshal(raw, &l) == nil {
			return strings.Join(l, " ")
		}
	case "delegation_chain":
		var chain []broker.DelegRecord
		if json.Unmarshal(raw, &chain) == nil {
			hops := make([]string, len(chain))
			for i, r := range chain {
				hops[i] = r.Agent
			}
			return fmt.Sprintf("depth %d: %s", len(chain), strings.Join(hops, " → "))
		}
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return `""`
		}
		return s
	}
	return string(raw)
}

// cliRegisterCommand is `caddy agentwrit register`: the agent side of
// challenge → sign → register, for trying a gateway from a shell.
func registerCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "register --launch-token <token> --orch-id <id> --task-id <id> --scope <scope>[,<scope>...] [--key-file <pem>]",
		Short: "Registers an agent with a launch token and prints its access token",
		Long: `
A developer helper that does what an agent does: it makes an Ed25519 key (or
loads --key-file, creating it if missing), fetches a nonce (GET
/v1/challenge), signs the nonce's bytes and registers (POST /v1/register)
with a launch token. It prints the access token on stdout and the agent ID on
stderr, so this works:

	TOKEN=$(caddy agentwrit register --launch-token $LT --orch-id o --task-id t --scope read:orders:42)
	curl -H "Authorization: Bearer $TOKEN" http://localhost:8081/orders/42

The launch token may also come from $AGENTWRIT_LAUNCH_TOKEN.
`,
		Args: cobra.NoArgs,
		RunE: runRegister,
	}
	f := cmd.Flags()
	f.String("launch-token", "", "Launch token ($"+envLaunchToken+")")
	f.String("orch-id", "", "Orchestration ID, [A-Za-z0-9._-] (required)")
	f.String("task-id", "", "Task ID, [A-Za-z0-9._-] (required)")
	f.StringSlice("scope", nil, "Requested scope (repeatable, comma lists; required)")
	f.String("key-file", "", "PKCS#8 PEM Ed25519 key to register with; created (mode 0600) if missing")
	_ = cmd.MarkFlagRequired("orch-id")
	_ = cmd.MarkFlagRequired("task-id")
	_ = cmd.MarkFlagRequired("scope")
	addJSONFlag(cmd)
	return cmd
}

func runRegister(cmd *cobra.Command, _ []string) error {
	lt := stringOrEnv(cmd, "launch-token", envLaunchToken)
	if lt == "" {
		return fmt.Errorf("launch token required: use --launch-token or $%s", envLaunchToken)
	}
	orch, _ := cmd.Flags().GetString("orch-id")
	task, _ := cmd.Flags().GetString("task-id")
	scopes, err := scopesFlag(cmd)
	if err != nil {
		return err
	}
	opts := []client.RegisterOption{client.WithOrchID(orch), client.WithTaskID(task)}
	if keyFile, _ := cmd.Flags().GetString("key-file"); keyFile != "" {
		key, err := broker.LoadKeyFile(keyFile)
		if err != nil {
			return err
		}
		opts = append(opts, client.WithKey(key))
	}
	c, err := newClient(cmd)
	if err != nil {
		return err
	}
	a, err := c.Register(cmd.Context(), lt, scopes, opts...)
	if err != nil {
		return err
	}
	expiresIn := int64(a.ExpiresIn / time.Second)
	if jsonFlag(cmd) {
		return writeJSON(cmd.OutOrStdout(), map[string]any{
			"agent_id": a.ID, "access_token": a.Token, "expires_in": expiresIn, "public_key": client.PublicKey(a.Key),
		})
	}
	fmt.Fprintln(cmd.OutOrStdout(), a.Token)
	fmt.Fprintf(cmd.ErrOrStderr(), "agent_id %s (token expires in %ds)\n", a.ID, expiresIn)
	return nil
}

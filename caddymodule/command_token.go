package caddymodule

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// envLaunchToken is read by `register` when --launch-token is not given.
const envLaunchToken = "AGENTWRIT_LAUNCH_TOKEN"

// cliHashSecretCommand is `caddy agentwrit hash-secret`, modelled on
// `caddy hash-password`.
func cliHashSecretCommand() *cobra.Command {
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
			switch string(secret) {
			case "":
				return errors.New("admin secret is required (give it on stdin or at the prompt)")
			case "change-me-in-production":
				return errors.New("admin secret must not be the placeholder \"change-me-in-production\"")
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
func cliTokenCommand() *cobra.Command {
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

// decodeJWT splits a compact JWS and decodes its header and payload without
// verifying anything.
func decodeJWT(tok string) (header, claims map[string]json.RawMessage, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("not a JWT: want 3 dot-separated parts, got %d", len(parts))
	}
	for i, dst := range []*map[string]json.RawMessage{&header, &claims} {
		name := [...]string{"header", "payload"}[i]
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return nil, nil, fmt.Errorf("not a JWT: %s is not base64url: %w", name, err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return nil, nil, fmt.Errorf("not a JWT: %s is not a JSON object: %w", name, err)
		}
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
	var valid struct {
		Valid bool   `json:"valid"`
		Error string `json:"error,omitempty"`
	}
	if !offline {
		c, err := newCLIClient(cmd)
		if err != nil {
			return err
		}
		if err := c.doBearer(cmd.Context(), http.MethodPost, "/v1/token/validate", nil, "", map[string]string{"token": tok}, &valid); err != nil {
			return fmt.Errorf("validate token: %w", err)
		}
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
		if err := cliWriteJSON(out, res); err != nil {
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
func cliRegisterCommand() *cobra.Command {
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

// agentKey loads the key in path, or generates one and, if path is set,
// saves it there with mode 0600.
func agentKey(path string) (ed25519.PrivateKey, error) {
	if path != "" {
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			blk, _ := pem.Decode(data)
			if blk == nil || blk.Type != "PRIVATE KEY" {
				return nil, fmt.Errorf("key file %s: want a PEM \"PRIVATE KEY\" block", path)
			}
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("key file %s: %w", path, err)
			}
			ek, ok := k.(ed25519.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("key file %s: not an Ed25519 key", path)
			}
			return ek, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("key file: %w", err)
		}
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if path != "" {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("save key: %w", err)
		}
		err = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("save key %s: %w", path, err)
		}
	}
	return key, nil
}

func runRegister(cmd *cobra.Command, _ []string) error {
	lt := stringOrEnv(cmd, "launch-token", envLaunchToken)
	if lt == "" {
		return fmt.Errorf("launch token required: use --launch-token or $%s", envLaunchToken)
	}
	orch, _ := cmd.Flags().GetString("orch-id")
	task, _ := cmd.Flags().GetString("task-id")
	scopes, _ := cmd.Flags().GetStringSlice("scope")
	keyFile, _ := cmd.Flags().GetString("key-file")
	key, err := agentKey(keyFile)
	if err != nil {
		return err
	}
	c, err := newCLIClient(cmd)
	if err != nil {
		return err
	}
	var ch struct {
		Nonce string `json:"nonce"`
	}
	if err := c.do(cmd.Context(), http.MethodGet, "/v1/challenge", nil, nil, &ch); err != nil {
		return fmt.Errorf("get challenge: %w", err)
	}
	// AgentWrit signs the nonce's 32 decoded bytes, not its hex text.
	msg, err := hex.DecodeString(ch.Nonce)
	if err != nil {
		return fmt.Errorf("get challenge: nonce %q is not hex", ch.Nonce)
	}
	pub := key.Public().(ed25519.PublicKey)
	req := map[string]any{
		"launch_token":    lt,
		"nonce":           ch.Nonce,
		"public_key":      base64.StdEncoding.EncodeToString(pub),
		"signature":       base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg)),
		"orch_id":         orch,
		"task_id":         task,
		"requested_scope": splitList(scopes),
	}
	var resp struct {
		AgentID     string `json:"agent_id"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := c.do(cmd.Context(), http.MethodPost, "/v1/register", nil, req, &resp); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if jsonFlag(cmd) {
		return cliWriteJSON(cmd.OutOrStdout(), map[string]any{
			"agent_id": resp.AgentID, "access_token": resp.AccessToken, "expires_in": resp.ExpiresIn,
			"public_key": base64.StdEncoding.EncodeToString(pub),
		})
	}
	fmt.Fprintln(cmd.OutOrStdout(), resp.AccessToken)
	fmt.Fprintf(cmd.ErrOrStderr(), "agent_id %s (token expires in %ds)\n", resp.AgentID, resp.ExpiresIn)
	return nil
}

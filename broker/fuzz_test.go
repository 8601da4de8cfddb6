package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// fuzzKey is a fixed signing key so tokens, and therefore the corpus built
// from them, are the same in every run (Ed25519 signing is deterministic).
var fuzzKey = func() ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("caddy-agentwrit broker fuzz key"))
	return ed25519.NewKeyFromSeed(seed[:])
}()

var fuzzNow = time.Unix(1_800_000_000, 0)

func fuzzBroker(tb testing.TB, dir string, mutate ...func(*Config)) *Broker {
	tb.Helper()
	store := openStore(tb, filepath.Join(dir, "fuzz.db"))
	cfg := Config{AdminSecret: testAdminHash, SigningKey: fuzzKey}
	for _, m := range mutate {
		m(&cfg)
	}
	b, err := New(store, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fuzzTokens are the tokens "the broker issued" in FuzzVerify, signed with
// fixed claims so they are stable across runs.
func fuzzTokens(tb testing.TB, b *Broker) []string {
	now := fuzzNow.Unix()
	var toks []string
	for _, c := range []Claims{
		{Sub: "admin", Scope: adminScopes},
		{Sub: "app:app-1", Aud: []string{"svc"}, Scope: appScopes},
		{Sub: "spiffe://agentwrit.local/agent/orch-1/task-1/0123456789abcdef", Scope: []string{"read:data:x"}, TaskID: "task-1", OrchID: "orch-1"},
		{Sub: "spiffe://agentwrit.local/agent/orch-1/task-1/fedcba9876543210", Scope: []string{"read:data:x"}, TaskID: "task-1", OrchID: "orch-1",
			DelegationChain: []DelegRecord{{Agent: "spiffe://agentwrit.local/agent/orch-1/task-1/0123456789abcdef", Scope: []string{"read:data:*"},
				DelegatedAt: "2027-01-15T08:00:00Z", Signature: "00"}}, ChainHash: strings.Repeat("ab", 32)},
	} {
		c.Iat, c.Nbf, c.Exp = now, now, now+3600
		c.Jti = hex.EncodeToString(sha256.New().Sum([]byte(c.Sub)))[:32]
		tok, err := b.signer().sign(&c)
		if err != nil {
			tb.Fatal(err)
		}
		toks = append(toks, tok)
	}
	return toks
}

// FuzzVerify: random strings and mutations of real tokens never panic and
// never verify unless they are byte-identical to an issued token.
//
//	go test -run='^$' -fuzz=FuzzVerify -fuzztime=150s ./broker/
func FuzzVerify(f *testing.F) {
	b := fuzzBroker(f, f.TempDir(), func(c *Config) { c.Now = func() time.Time { return fuzzNow } })
	toks := fuzzTokens(f, b)
	issued := make(map[string]bool, len(toks))
	for _, tok := range toks {
		issued[tok] = true
		if _, err := b.Verify(context.Background(), tok); err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
		p := strings.Split(tok, ".")
		f.Add(p[0] + "." + p[1] + "." + p[2][:len(p[2])-1] + "B")
		f.Add(p[0] + "." + p[1] + ".")
		f.Add(p[0] + "." + p[1] + "x." + p[2])
		f.Add(b64u([]byte(`{"alg":"none"}`)) + "." + p[1] + ".")
		f.Add(b64u([]byte(`{"alg":"EdDSA","crit":["b64"]}`)) + "." + p[1] + "." + p[2])
		f.Add(tok + "=")
	}
	pl := `{"sub":"admin","exp":1800003600,"jti":"j","scope":["admin:revoke:*"],"Scope":["*"]}`
	f.Add(signJWS(fuzzKey, `{"alg":"EdDSA"}`, pl)) // signed, but ambiguous
	f.Add(signJWS(fuzzKey, `{"alg":"EdDSA"}`, `{"sub":"s","exp":"1800003600","jti":"j"}`))
	f.Add(rfc8037JWS)
	f.Add("")
	f.Add("..")
	f.Add(strings.Repeat(".", 1000))
	f.Add("eyJ.eyJ.AAAA")

	ctx := context.Background()
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := b.Verify(ctx, tok)
		c2, err2 := b.verifier.verify(tok) // the uncached path
		c3, body, err3 := b.ValidResponse(ctx, tok)
		if issued[tok] {
			if err != nil || err2 != nil || err3 != nil {
				t.Fatalf("issued token refused: %v / %v / %v", err, err2, err3)
			}
			if !json.Valid(body) {
				t.Fatalf("invalid validate body %q", body)
			}
			return
		}
		if c != nil || c2 != nil || c3 != nil || body != nil || err == nil || err2 == nil || err3 == nil {
			t.Fatalf("accepted a token the broker never issued: %q", tok)
		}
		for _, e := range []error{err, err2, err3} {
			if !errorsIsInvalid(e) {
				t.Fatalf("error %v does not wrap ErrInvalidToken", e)
			}
		}
	})
}

func errorsIsInvalid(err error) bool {
	for e := err; e != nil; {
		if e == ErrInvalidToken {
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// fuzzRoute is one JSON route and the statuses it may answer.
type fuzzRoute struct {
	method, path string
	bearer       func() string
	allowed      []int
}

// FuzzDecodeRequests: random bodies sent to every JSON route through the
// whole handler never panic, never give a 5xx, and always give one of the
// route's documented statuses with a well-formed body.
//
//	go test -run='^$' -fuzz=FuzzDecodeRequests -fuzztime=150s ./broker/
func FuzzDecodeRequests(f *testing.F) {
	dir := f.TempDir()
	b := fuzzBroker(f, dir)
	admin, _, err := b.issue(Claims{Sub: "admin", Scope: adminScopes}, 86400)
	if err != nil {
		f.Fatal(err)
	}
	// A registered agent, to delegate from and to.
	rec := serve(b, "POST", "/v1/admin/launch-tokens", admin, []byte(`{"agent_name":"a","allowed_scope":["read:data:*"],"single_use":false,"ttl":86400,"max_ttl":86400}`))
	if rec.Code != http.StatusCreated {
		f.Fatal(rec.Code, rec.Body.String())
	}
	var lt struct {
		LaunchToken string `json:"launch_token"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &lt)
	pub, priv, _ := ed25519.GenerateKey(nil)
	register := func() (string, string) {
		rec := serve(b, "GET", "/v1/challenge", "", nil)
		var ch struct{ Nonce string }
		_ = json.Unmarshal(rec.Body.Bytes(), &ch)
		nb, _ := hex.DecodeString(ch.Nonce)
		body, _ := json.Marshal(map[string]any{
			"launch_token": lt.LaunchToken, "nonce": ch.Nonce, "public_key": base64.StdEncoding.EncodeToString(pub),
			"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)), "orch_id": "o", "task_id": "t",
			"requested_scope": []string{"read:data:x"},
		})
		rec = serve(b, "POST", "/v1/register", "", body)
		var reg struct {
			AgentID     string `json:"agent_id"`
			AccessToken string `json:"access_token"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &reg); err != nil || rec.Code != http.StatusOK {
			f.Fatal(rec.Code, rec.Body.String())
		}
		return reg.AgentID, reg.AccessToken
	}
	agentID, agentTok := register()
	// An app and its token (one bcrypt at cost 12).
	rec = serve(b, "POST", "/v1/admin/apps", admin, []byte(`{"name":"fuzz-app","scopes":["read:data:*"]}`))
	if rec.Code != http.StatusCreated {
		f.Fatal(rec.Code, rec.Body.String())
	}
	var app struct {
		AppID        string `json:"app_id"`
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &app)
	appTok, _, err := b.issue(Claims{Sub: "app:" + app.AppID, Scope: appScopes}, 86400)
	if err != nil {
		f.Fatal(err)
	}
	// Revocations go to a separate broker, rebuilt when a fuzzed revocation
	// kills its admin token, so they cannot starve the other routes.
	// (Inside the fuzz target f.TempDir and f.Cleanup are off limits, so the
	// revoker's databases live under one directory made here.)
	rbDir := f.TempDir()
	var rb *Broker
	var rbAdmin string
	f.Cleanup(func() {
		if rb != nil {
			rb.store.Close()
		}
	})
	revoker := func() string {
		if rb != nil {
			if _, err := rb.Verify(context.Background(), rbAdmin); err == nil {
				return rbAdmin
			}
			rb.store.Close()
		}
		dir, err := os.MkdirTemp(rbDir, "revoker")
		if err != nil {
			panic(err)
		}
		db, err := openTestDatabase(context.Background(), filepath.Join(dir, "fuzz.db"))
		if err != nil {
			panic(err)
		}
		store, err := NewStore(context.Background(), db, StoreOptions{})
		if err != nil {
			panic(err)
		}
		if rb, err = New(store, Config{AdminSecret: testAdminHash, SigningKey: fuzzKey}); err != nil {
			panic(err)
		}
		rbAdmin, _, _ = rb.issue(Claims{Sub: "admin", Scope: adminScopes}, 86400)
		return rbAdmin
	}
	none := func() string { return "" }
	asAdmin := func() string { return admin }
	routes := []fuzzRoute{
		{"POST", "/v1/token/validate", none, []int{200, 400}},
		{"POST", "/v1/register", none, []int{200, 400, 401, 403}},
		{"POST", "/v1/delegate", func() string { return agentTok }, []int{200, 400, 403, 404}},
		{"POST", "/v1/revoke", revoker, []int{200, 400}},
		{"POST", "/v1/admin/auth", none, []int{200, 400, 401, 429}},
		{"POST", "/v1/admin/launch-tokens", asAdmin, []int{201, 400}},
		{"POST", "/v1/app/launch-tokens", func() string { return appTok }, []int{201, 400, 403}},
		{"POST", "/v1/admin/apps", asAdmin, []int{201, 400, 409}},
		{"PUT", "/v1/admin/apps/" + app.AppID, asAdmin, []int{200, 400, 404}},
		{"POST", "/v1/app/auth", none, []int{200, 400, 401, 429}},
	}
	seeds := []string{
		`{"token":"` + agentTok + `"}`, `{"token":""}`, `{"token":1}`, `{"TOKEN":"x"}`,
		`{"launch_token":"` + lt.LaunchToken + `","nonce":"00","public_key":"AAAA","signature":"AAAA","orch_id":"o","task_id":"t","requested_scope":["read:data:x"]}`,
		`{"delegate_to":"` + agentID + `","scope":["read:data:x"],"ttl":30}`, `{"delegate_to":"x","scope":["admin:revoke:*"]}`,
		`{"level":"task","target":"t-1"}`, `{"level":"TOKEN","target":"x"}`,
		`{"secret":"wrong"}`, `{"client_id":"x","client_secret":"y"}`,
		`{"agent_name":"a","allowed_scope":["read:data:x"],"max_ttl":60,"single_use":true,"ttl":30}`,
		`{"name":"","scopes":[]}`, `{"scopes":["read:data:x"],"token_ttl":0}`, `{"token_ttl":-1}`,
		`{"client_id":"` + app.ClientID + `","client_secret":"nope"}`,
		"", "null", "[]", "{", `{"a":1}garbage`, "\xff\xfe", `{"scope":[1,2]}`, `{"ttl":1e309}`, strings.Repeat("[", 5000),
	}
	for i := range routes {
		for _, s := range seeds {
			f.Add(uint8(i), []byte(s))
		}
	}

	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		r := routes[int(route)%len(routes)]
		br := b
		bearer := r.bearer()
		if r.path == "/v1/revoke" {
			br = rb
		}
		rec := serve(br, r.method, r.path, bearer, body)
		ok := rec.Code == http.StatusRequestEntityTooLarge
		for _, s := range r.allowed {
			ok = ok || rec.Code == s
		}
		if !ok || rec.Code >= 500 {
			t.Fatalf("%s %s %q: status %d: %s", r.method, r.path, body, rec.Code, rec.Body)
		}
		if rec.Code != http.StatusNoContent && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s %q: body is not JSON: %q", r.method, r.path, body, rec.Body)
		}
		if rec.Code >= 400 && rec.Header().Get("Content-Type") != "application/problem+json" {
			t.Fatalf("%s %s: error without problem+json", r.method, r.path)
		}
	})
}

// FuzzScopeEntryPoints: every route that takes scopes accepts exactly the
// scopes scopemap.CheckScope accepts, and refuses the rest with a 400
// naming the scope before anything else can happen; an accepted scope
// never holds whitespace or a control byte.
//
//	go test -run='^$' -fuzz=FuzzScopeEntryPoints -fuzztime=60s ./broker/
func FuzzScopeEntryPoints(f *testing.F) {
	b := fuzzBroker(f, f.TempDir())
	admin, _, err := b.issue(Claims{Sub: "admin", Scope: adminScopes}, 86400)
	if err != nil {
		f.Fatal(err)
	}
	agent, _, err := b.issue(Claims{Sub: "spiffe://agentwrit.local/agent/o/t/0123456789abcdef", Scope: []string{"read:data:*"}, TaskID: "t", OrchID: "o"}, 86400)
	if err != nil {
		f.Fatal(err)
	}
	rec := serve(b, "POST", "/v1/admin/launch-tokens", admin, []byte(`{"agent_name":"a","allowed_scope":["read:data:*"],"single_use":false,"ttl":86400}`))
	var lt LaunchTokenResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &lt); err != nil || rec.Code != http.StatusCreated {
		f.Fatal(rec.Code, rec.Body.String())
	}
	for _, s := range []string{"read:data:x", "read:data:*", "*:*:*", "a:b:c d", "a:b:c:d", "a:b", "", "a:b:\x00", "a:b:é", `a:b:"`, "a:b:\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		valid := scopemap.CheckScope(s) == nil
		if valid && strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r > '~' }) {
			t.Fatalf("grammar accepted %q", s)
		}
		list, err := json.Marshal([]string{s})
		if err != nil {
			return // not valid UTF-8 for JSON; the entry points never see it as such
		}
		// Each request is built so that a valid scope fails on a later,
		// side-effect-free check, and an invalid one must fail first.
		for _, c := range []struct {
			method, path, bearer, body string
		}{
			{"POST", "/v1/admin/launch-tokens", admin, `{"agent_name":"","allowed_scope":` + string(list) + `}`},
			{"POST", "/v1/admin/apps", admin, `{"name":"fuzz","scopes":` + string(list) + `,"token_ttl":100000}`},
			{"PUT", "/v1/admin/apps/app-none", admin, `{"scopes":` + string(list) + `,"token_ttl":1}`},
			{"POST", "/v1/delegate", agent, `{"delegate_to":"spiffe://agentwrit.local/agent/o/t/none","scope":` + string(list) + `}`},
			{"POST", "/v1/register", "", `{"launch_token":"` + lt.LaunchToken + `","nonce":"n","public_key":"k","signature":"s","orch_id":"o","task_id":"t","requested_scope":` + string(list) + `}`},
		} {
			rec := serve(b, c.method, c.path, c.bearer, []byte(c.body))
			refused := rec.Code == http.StatusBadRequest && strings.Contains(rec.Body.String(), "invalid scope format")
			if refused == valid {
				t.Fatalf("%s %s with scope %q: %d %s (grammar says valid=%t)", c.method, c.path, s, rec.Code, rec.Body.String(), valid)
			}
		}
	})
}

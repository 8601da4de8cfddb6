package broker

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// benchEnv is a broker for benchmarks (testEnv needs a *testing.T).
func benchEnv(b testing.TB, mutate ...func(*Config)) *Broker {
	b.Helper()
	store := openStore(b, filepath.Join(b.TempDir(), "bench.db"))
	cfg := Config{AdminSecret: testAdminHash}
	for _, m := range mutate {
		m(&cfg)
	}
	br, err := New(store, cfg)
	require.NoError(b, err)
	return br
}

// agentToken issues a typical agent token.
func agentToken(b testing.TB, br *Broker) string {
	tok, _, err := br.issue(Claims{
		Sub:   "spiffe://agentwrit.local/agent/orch-1/task-1/0123456789abcdef",
		Scope: []string{"read:data:customers", "write:data:orders"}, TaskID: "task-1", OrchID: "orch-1",
	}, 3600)
	require.NoError(b, err)
	return tok
}

// BenchmarkVerify compares a first-sight verification (cache disabled:
// base64, header and payload JSON, Ed25519) with a cached one (a map lookup
// and the live revocation check).
//
//	go test -run='^$' -bench=. -benchmem ./broker/
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	b.Run("first_sight", func(b *testing.B) {
		br := benchEnv(b, func(c *Config) { c.VerifyCacheSize = -1 })
		tok := agentToken(b, br)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := br.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		br := benchEnv(b)
		tok := agentToken(b, br)
		if _, err := br.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := br.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached_parallel", func(b *testing.B) {
		br := benchEnv(b)
		tok := agentToken(b, br)
		if _, err := br.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := br.Verify(ctx, tok); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkVerifyDots: 64 KiB of dots is refused by the precheck.
func BenchmarkVerifyDots(b *testing.B) {
	br := benchEnv(b)
	tok := strings.Repeat(".", 64<<10)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Verify(ctx, tok); err == nil {
			b.Fatal("accepted")
		}
	}
}

// BenchmarkValidateHTTP: POST /v1/token/validate through the whole handler
// chain with a cached token.
func BenchmarkValidateHTTP(b *testing.B) {
	br := benchEnv(b)
	tok := agentToken(b, br)
	body := []byte(`{"token":"` + tok + `"}`)
	rec := serve(br, "POST", "/v1/token/validate", "", body)
	require.Equal(b, http.StatusOK, rec.Code)
	require.Contains(b, rec.Body.String(), `"valid":true`)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/v1/token/validate", bytes.NewReader(body))
		w := httptest.NewRecorder()
		br.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkRegister: challenge, sign, register, end to end through the
// handler, with a multi-use launch token (each registration writes the agent
// and two audit events to SQLite).
func BenchmarkRegister(b *testing.B) {
	br := benchEnv(b)
	admin, _, err := br.issue(Claims{Sub: "admin", Scope: adminScopes}, 3600)
	require.NoError(b, err)
	rec := serve(br, "POST", "/v1/admin/launch-tokens", admin,
		[]byte(`{"agent_name":"bench","allowed_scope":["read:data:*"],"single_use":false,"ttl":3600}`))
	require.Equal(b, http.StatusCreated, rec.Code, rec.Body.String())
	var lt struct {
		LaunchToken string `json:"launch_token"`
	}
	require.NoError(b, json.Unmarshal(rec.Body.Bytes(), &lt))
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(b, err)
	pubB64 := base64.StdEncoding.EncodeToString(pub)
	b.ReportAllocs()
	for b.Loop() {
		w := serve(br, "GET", "/v1/challenge", "", nil)
		var ch struct {
			Nonce string `json:"nonce"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &ch); err != nil {
			b.Fatal(err)
		}
		nb, _ := hex.DecodeString(ch.Nonce)
		body, _ := json.Marshal(map[string]any{
			"launch_token": lt.LaunchToken, "nonce": ch.Nonce, "public_key": pubB64,
			"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)),
			"orch_id":   "orch-1", "task_id": "task-1", "requested_scope": []string{"read:data:x"},
		})
		if w := serve(br, "POST", "/v1/register", "", body); w.Code != http.StatusOK {
			b.Fatal(w.Code, w.Body.String())
		}
	}
}

// TestVerifyCachedNoAlloc: a cached verification allocates nothing, and
// neither does a cached revoked one.
func TestVerifyCachedNoAlloc(t *testing.T) {
	br := benchEnv(t)
	ctx := context.Background()
	tok := agentToken(t, br)
	_, err := br.Verify(ctx, tok)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(1000, func() { _, err = br.Verify(ctx, tok) })
	require.NoError(t, err)
	require.Zero(t, allocs)

	_, body, err := br.ValidResponse(ctx, tok)
	require.NoError(t, err)
	allocs = testing.AllocsPerRun(1000, func() { _, body, err = br.ValidResponse(ctx, tok) })
	require.NoError(t, err)
	require.Zero(t, allocs)
	require.True(t, bytes.HasPrefix(body, []byte(`{"valid":true,"claims":{"iss":"","sub":"spiffe://`)))

	c, _ := br.Verify(ctx, tok)
	_, err = br.store.revoke(ctx, LevelToken, c.Jti, time.Now())
	require.NoError(t, err)
	allocs = testing.AllocsPerRun(1000, func() { _, err = br.Verify(ctx, tok) })
	require.ErrorIs(t, err, ErrRevoked)
	require.Zero(t, allocs)
}

// TestValidResponseMatchesHandler: the pre-encoded validate body is byte-
// identical to what encoding the response struct gives.
func TestValidResponseMatchesHandler(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	for _, tok := range []string{
		e.cachedAdmin(),
		e.issueToken(Claims{Sub: "spiffe://agentwrit.local/agent/o/t/1", Aud: []string{"a<b>&"}, Scope: []string{"read:data:<x>"},
			TaskID: "t", OrchID: "o", Sid: "s", DelegationChain: []DelegRecord{{Agent: "a", Scope: []string{"x:y:z"}, DelegatedAt: "now", Signature: "00"}},
			ChainHash: "ff"}, 60),
	} {
		c, body, err := e.broker.ValidResponse(ctx, tok)
		require.NoError(t, err)
		var buf bytes.Buffer
		require.NoError(t, json.NewEncoder(&buf).Encode(struct {
			Valid  bool    `json:"valid"`
			Claims *Claims `json:"claims"`
		}{true, c}))
		require.Equal(t, buf.String(), string(body))
		rec := e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok})
		require.Equal(t, buf.String(), rec.Body.String(), "the handler's body")
		_, body2, err := e.broker.ValidResponse(ctx, tok)
		require.NoError(t, err)
		require.Equal(t, &body[0], &body2[0], "encoded once, then shared")
	}
	_, body, err := e.broker.ValidResponse(ctx, "x.y.z")
	require.ErrorIs(t, err, ErrInvalidToken)
	require.Nil(t, body)
}

// TestVerifyCachedCost: in one run, a cached verification costs at most
// 1/50 of a first-sight one. Timing is meaningless under the race detector
// and in -short runs, so it is skipped there.
func TestVerifyCachedCost(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("timing test")
	}
	ctx := context.Background()
	first := benchEnv(t, func(c *Config) { c.VerifyCacheSize = -1 })
	cached := benchEnv(t)
	tok1, tok2 := agentToken(t, first), agentToken(t, cached)
	_, err := cached.Verify(ctx, tok2)
	require.NoError(t, err)
	fs := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			_, _ = first.Verify(ctx, tok1)
		}
	})
	cs := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = cached.Verify(ctx, tok2)
		}
	})
	t.Logf("first sight %d ns/op, cached %d ns/op (%d allocs/op), ratio 1/%d", fs.NsPerOp(), cs.NsPerOp(), cs.AllocsPerOp(), fs.NsPerOp()/max(cs.NsPerOp(), 1))
	require.Zero(t, cs.AllocsPerOp())
	require.LessOrEqual(t, cs.NsPerOp()*50, fs.NsPerOp())
}

// BenchmarkAuditAppendParallel: concurrent appends, as under a flood of
// gateway denials. Group commit lets one fsync cover many events.
func BenchmarkAuditAppendParallel(b *testing.B) {
	store := openStore(b, filepath.Join(b.TempDir(), "broker.db"))
	ev := Event{EventType: EventTokenAuthFailed, Detail: "signature invalid", Resource: "GET /orders/1", Outcome: OutcomeDenied}
	b.SetParallelism(16) // goroutines per CPU, like concurrent requests
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := store.audit.append(context.Background(), ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkVerifyCacheMemory reports the heap one cached verification
// holds: 20000 distinct agent tokens, each verified once through a copy of
// its string (as a request header would be), measured after GC.
//
//	go test -run '^$' -bench BenchmarkVerifyCacheMemory -benchtime 1x ./broker/
func BenchmarkVerifyCacheMemory(b *testing.B) {
	const n = 20000
	ctx := context.Background()
	br := benchEnv(b)
	toks := make([]string, n)
	for i := range toks {
		toks[i] = agentToken(b, br)
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for b.Loop() {
		br.verifier.cache = newClaimsCache(DefaultVerifyCacheSize)
		h0 := heap()
		for _, tok := range toks {
			if _, err := br.Verify(ctx, strings.Clone(tok)); err != nil {
				b.Fatal(err)
			}
		}
		h1 := heap()
		b.ReportMetric(float64(int64(h1)-int64(h0))/n, "B/entry")
		b.ReportMetric(float64(len(toks[0])), "token_bytes")
	}
}

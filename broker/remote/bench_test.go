package remote

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// BenchmarkCacheMemory pushes 1,000,000 distinct tokens through the full
// remote validation path (pre-check, broker answer parsed, cached) into a
// CacheSize 10000 cache, with an in-memory transport standing in for the
// network. It reports the heap cost of one cached entry (measured while
// filling the first 10000) and the heap once all 1,000,000 went through:
// bounded by CacheSize, not by the number of tokens.
//
//	go test -run '^$' -bench BenchmarkCacheMemory -benchtime 1x ./broker/remote/
func BenchmarkCacheMemory(b *testing.B) {
	const size, total = 10000, 1000000
	for b.Loop() {
		rec := new(recorder)
		v, err := New(cached(Options{URL: "http://broker.invalid", CacheSize: size, Observer: rec}))
		if err != nil {
			b.Fatal(err)
		}
		v.http.Transport = validTransport{}
		exp := time.Now().Add(time.Hour).Unix()
		push := func(i int) {
			if _, err := v.Validate(context.Background(), shapedToken(i, exp)); err != nil {
				b.Fatal(err)
			}
		}
		heap := func() uint64 {
			runtime.GC()
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return m.HeapAlloc
		}
		h0 := heap()
		for i := range size {
			push(i)
		}
		h1 := heap()
		for i := size; i < total; i++ {
			push(i)
		}
		h2 := heap()
		if v.cache.positive.Len() != size {
			b.Fatalf("cache holds %d entries, want %d", v.cache.positive.Len(), size)
		}
		if ev := rec.evictions.Load(); ev != total-size {
			b.Fatalf("evictions %v, want %d", ev, total-size)
		}
		perEntry := float64(int64(h1)-int64(h0)) / size
		b.ReportMetric(perEntry, "B/entry")
		b.ReportMetric(float64(h2)/(1<<20), "heapMiB_after_1M")
		b.ReportMetric(float64(int64(h2)-int64(h0))/size, "B/entry_after_1M")
		if perEntry > 1024 {
			b.Errorf("%.0f bytes per cached entry, target ≤ 1024", perEntry)
		}
		if grow := int64(h2) - int64(h1); grow > int64(h1-h0) {
			b.Errorf("heap grew by %d bytes after the cache was full (fill cost %d): not bounded", grow, h1-h0)
		}
		runtime.KeepAlive(v)
		v.Close()
	}
}

// BenchmarkValidate is one validation answered from the cache (hit: what
// a gateway pays per request) and one that misses (pre-check, a call
// through an in-memory transport, the answer parsed and cached).
func BenchmarkValidate(b *testing.B) {
	ctx := context.Background()
	exp := time.Now().Add(time.Hour).Unix()
	newValidator := func(b *testing.B) *Validator {
		v, err := New(cached(Options{URL: "http://broker.invalid", CacheSize: 1000}))
		if err != nil {
			b.Fatal(err)
		}
		v.http.Transport = validTransport{}
		b.Cleanup(v.Close)
		return v
	}
	b.Run("hit", func(b *testing.B) {
		v, tok := newValidator(b), shapedToken(0, exp)
		benchHit(b, func() (*broker.Claims, error) { return v.Validate(ctx, tok) })
	})
	b.Run("miss", func(b *testing.B) {
		v := newValidator(b)
		toks := make([]string, 4096)
		for i := range toks {
			toks[i] = shapedToken(i, exp)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i%len(toks) == 0 {
				v.cache.purge()
			}
			if _, err := v.Validate(ctx, toks[i%len(toks)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// shapedToken is the i-th of distinct tokens whose claims are shaped like
// the broker's (a SPIFFE sub, a 32-hex jti, two scopes), expiring at exp,
// with a signature of zeros.
func shapedToken(i int, exp int64) string {
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`))
	sig := base64.RawURLEncoding.EncodeToString(make([]byte, 64))
	p := fmt.Sprintf(`{"iss":"agentwrit","sub":"spiffe://agentwrit.local/agent/orch-%d/task-%d/%016x","exp":%d,"iat":%d,"jti":"%032x","scope":["read:orders:%d","write:orders:%d"],"task_id":"task-%d","orch_id":"orch-%d"}`,
		i%100, i, i, exp, exp-300, i, i, i, i, i%100)
	return hdr + "." + base64.RawURLEncoding.EncodeToString([]byte(p)) + "." + sig
}

// validTransport answers every validate call with valid:true and the
// token's own payload, in memory, as an upstream broker (no JWKS: 404).
type validTransport struct{}

func (validTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path != validatePath {
		return &http.Response{StatusCode: 404, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	var req struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return nil, err
	}
	parts := strings.Split(req.Token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	body := `{"valid":true,"claims":` + string(payload) + `}`
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: r}, nil
}

// BenchmarkValidateLocal is a validation in local mode of a token seen
// before (what a gateway pays per request: staleness check, verifier cache
// hit, revocation check), beside the embedded broker's Verify of the same
// token, which runs the same verifier code.
//
//	go test -run '^$' -bench BenchmarkValidateLocal -benchmem ./broker/remote/
func BenchmarkValidateLocal(b *testing.B) {
	ctx := context.Background()
	fb := newFeedBroker(b, brokertest.Options{})
	tok := fb.agent(b, "read:orders:42").Token
	b.Run("local-hit", func(b *testing.B) {
		v, _ := fb.validator(b, Options{MaxStaleness: time.Hour})
		waitSynced(b, v)
		benchHit(b, func() (*broker.Claims, error) { return v.Validate(ctx, tok) })
	})
	b.Run("embedded-hit", func(b *testing.B) {
		benchHit(b, func() (*broker.Claims, error) { return fb.Broker.Verify(ctx, tok) })
	})
}

// benchHit measures validate once it has seen its token.
func benchHit(b *testing.B, validate func() (*broker.Claims, error)) {
	if _, err := validate(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := validate(); err != nil {
			b.Fatal(err)
		}
	}
}

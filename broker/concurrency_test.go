package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const racers = 50

// race runs f(i) on n goroutines released at the same instant and waits.
func race(n int, f func(i int)) {
	var start, done sync.WaitGroup
	start.Add(1)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			start.Wait()
			f(i)
		}()
	}
	start.Done()
	done.Wait()
}

// TestConcurrentRegisterSingleUseLaunchToken: 50 registrations, each with its
// own nonce and key, race for one single-use launch token; exactly one wins.
func TestConcurrentRegisterSingleUseLaunchToken(t *testing.T) {
	e := newTestEnv(t)
	lt := e.mkLaunch(nil) // single_use defaults to true
	bodies := make([][]byte, racers)
	for i := range bodies {
		bodies[i] = mustJSON(t, e.registration(lt))
	}
	codes := make([]int, racers)
	details := make([]string, racers)
	race(racers, func(i int) {
		rec := serve(e.broker, "POST", "/v1/register", "", bodies[i])
		codes[i] = rec.Code
		details[i] = rec.Body.String()
	})
	wins := 0
	for i, c := range codes {
		switch c {
		case http.StatusOK:
			wins++
		case http.StatusUnauthorized:
			require.Contains(t, details[i], "launch token already consumed")
		default:
			t.Fatalf("racer %d: status %d: %s", i, c, details[i])
		}
	}
	require.Equal(t, 1, wins, "exactly one registration may consume a single-use launch token")
	require.Len(t, e.events(EventAgentRegistered), 1)
	require.NoError(t, e.verifyAudit())
}

// TestConcurrentNonceRace: 50 registrations with a multi-use launch token
// race for one nonce (each signs it with its own key); exactly one wins.
func TestConcurrentNonceRace(t *testing.T) {
	e := newTestEnv(t)
	lt := e.mkLaunch(map[string]any{"single_use": false})
	n := e.nonce()
	nb, err := hex.DecodeString(n)
	require.NoError(t, err)
	bodies := make([][]byte, racers)
	for i := range bodies {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		bodies[i] = mustJSON(t, map[string]any{
			"launch_token": lt, "nonce": n,
			"public_key": base64.StdEncoding.EncodeToString(pub),
			"signature":  base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)),
			"orch_id":    "orch-1", "task_id": "task-1", "requested_scope": []string{"read:data:x"},
		})
	}
	codes := make([]int, racers)
	details := make([]string, racers)
	race(racers, func(i int) {
		rec := serve(e.broker, "POST", "/v1/register", "", bodies[i])
		codes[i], details[i] = rec.Code, rec.Body.String()
	})
	wins := 0
	for i, c := range codes {
		switch c {
		case http.StatusOK:
			wins++
		case http.StatusUnauthorized:
			require.Contains(t, details[i], "nonce: nonce already consumed")
		default:
			t.Fatalf("racer %d: status %d: %s", i, c, details[i])
		}
	}
	require.Equal(t, 1, wins, "a nonce is good for exactly one registration")

	// The nonce store alone, without HTTP.
	n2 := e.nonce()
	var ok atomic.Int32
	race(racers, func(int) {
		if e.store.nonces.ConsumeNonce(context.Background(), n2, time.Now()) == nil {
			ok.Add(1)
		}
	})
	require.EqualValues(t, 1, ok.Load())
}

// TestRevokeDuringVerificationStream: goroutines verify one token in a loop
// (through a caching broker and a non-caching broker on the same store)
// while it is revoked. A verification that started after Revoke returned
// must never succeed, at every revocation level.
func TestRevokeDuringVerificationStream(t *testing.T) {
	e := newTestEnv(t)
	uncached, err := New(e.store, Config{AdminSecret: testAdminHash, VerifyCacheSize: -1})
	require.NoError(t, err)
	const sub = "spiffe://agentwrit.local/agent/orch-1/task-9/00000000000000aa"
	root := "spiffe://agentwrit.local/agent/orch-1/task-0/00000000000000bb"
	cases := []struct {
		level, target string
		claims        Claims
	}{
		{LevelToken, "", Claims{Sub: sub + "1", Scope: []string{"read:data:x"}}},
		{LevelAgent, sub + "2", Claims{Sub: sub + "2", Scope: []string{"read:data:x"}}},
		{LevelTask, "task-rev", Claims{Sub: sub + "3", TaskID: "task-rev", Scope: []string{"read:data:x"}}},
		{LevelChain, root, Claims{Sub: sub + "4", Scope: []string{"read:data:x"},
			DelegationChain: []DelegRecord{{Agent: root, Scope: []string{"read:data:*"}}}}},
	}
	for _, tc := range cases {
		t.Run(tc.level, func(t *testing.T) {
			tok, c, err := e.broker.issue(tc.claims, 300)
			require.NoError(t, err)
			target := tc.target
			if target == "" {
				target = c.Jti
			}
			ctx := context.Background()
			_, err = e.broker.Verify(ctx, tok) // warm the cache
			require.NoError(t, err)

			var revoked, stop atomic.Bool
			var before, late, total atomic.Int64
			var wg sync.WaitGroup
			for g := range 8 {
				b := e.broker
				if g%2 == 1 {
					b = uncached
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for !stop.Load() {
						after := revoked.Load() // Revoke had returned before this call began
						_, err := b.Verify(ctx, tok)
						total.Add(1)
						if err == nil {
							if after {
								late.Add(1)
							} else {
								before.Add(1)
							}
						}
					}
				}()
			}
			for before.Load() < 100 {
				time.Sleep(time.Millisecond)
			}
			require.NoError(t, e.revoke(tc.level, target))
			revoked.Store(true)
			n := total.Load()
			for total.Load() < n+2000 {
				time.Sleep(time.Millisecond)
			}
			stop.Store(true)
			wg.Wait()
			require.Zero(t, late.Load(), "verifications that began after Revoke returned and still succeeded")
			require.Positive(t, before.Load())
			for _, b := range []*Broker{e.broker, uncached} {
				_, err := b.Verify(ctx, tok)
				require.ErrorIs(t, err, ErrRevoked)
				require.ErrorIs(t, err, ErrInvalidToken)
			}
		})
	}
}

// TestConcurrentVerifyAndIssue exercises the cache's put/get/evict paths
// under the race detector with a tiny cache.
func TestConcurrentVerifyAndIssue(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.VerifyCacheSize = 8 })
	toks := make([]string, 16)
	for i := range toks {
		toks[i] = e.issueToken(Claims{Sub: "admin", Scope: adminScopes}, 300)
	}
	var bad atomic.Int32
	race(racers, func(i int) {
		for j := range 20 {
			tok := toks[(i+j)%len(toks)]
			c, body, err := e.broker.ValidResponse(context.Background(), tok)
			if err != nil || c == nil || len(body) == 0 {
				bad.Add(1)
			}
		}
	})
	require.Zero(t, bad.Load())
	require.LessOrEqual(t, e.broker.verifier.cache.len(), 8)
}

// TestConcurrentAuditAppends: appends racing from many goroutines (which
// the writer group-commits) each return their own event exactly as stored,
// with no id given twice and the chain intact.
func TestConcurrentAuditAppends(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	base := len(allEvents(t, e.store))
	const each = 20
	got := make([][]Event, racers)
	race(racers, func(i int) {
		for j := range each {
			ev, err := e.store.audit.append(ctx, Event{EventType: EventScopeViolation, Detail: fmt.Sprintf("racer %d append %d", i, j), Outcome: OutcomeDenied})
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = append(got[i], ev)
		}
	})
	stored := map[string]Event{}
	for _, ev := range allEvents(t, e.store) {
		stored[ev.ID] = ev
	}
	require.Len(t, stored, base+racers*each)
	for i := range got {
		require.Len(t, got[i], each)
		for j, ev := range got[i] {
			require.Equal(t, fmt.Sprintf("racer %d append %d", i, j), ev.Detail)
			require.Equal(t, stored[ev.ID], ev, "append returned what was stored")
		}
	}
	require.NoError(t, e.verifyAudit())
}

// TestAuditBatchFailureChainsNothing: when a write fails, the failing
// append reports it, nothing of its batch is chained, and later appends
// continue the chain from the last stored event.
func TestAuditBatchFailureChainsNothing(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	_, err := rawDB(t, e.dbPath).Exec(`CREATE TRIGGER poison BEFORE INSERT ON audit_events
		WHEN NEW.detail = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END`)
	require.NoError(t, err)
	before := e.auditSeq()
	var failed atomic.Int64
	race(racers, func(i int) {
		d := fmt.Sprintf("ok %d", i)
		if i == racers/2 {
			d = "poison"
		}
		if _, err := e.store.audit.append(ctx, Event{EventType: EventScopeViolation, Detail: d, Outcome: OutcomeDenied}); err != nil {
			if !strings.Contains(err.Error(), "poisoned") {
				t.Errorf("append %d: %v", i, err)
			}
			failed.Add(1)
		}
	})
	require.GreaterOrEqual(t, failed.Load(), int64(1))
	evs := allEvents(t, e.store)
	require.Equal(t, before+racers-failed.Load(), int64(len(evs)), "exactly the failed appends are missing")
	require.Equal(t, int64(len(evs)), e.auditSeq())
	_, err = e.store.audit.append(ctx, Event{EventType: EventScopeViolation, Detail: "after", Outcome: OutcomeDenied})
	require.NoError(t, err)
	require.NoError(t, e.verifyAudit())
}

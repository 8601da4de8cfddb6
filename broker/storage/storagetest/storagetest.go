// Package storagetest is the contract every broker.Database meets: one
// suite, run by each implementation's tests (SQLite always, PostgreSQL
// when a server is configured), so the broker behaves the same on both.
//
// With an implementation that allows several handles on one database (a
// fleet of replicas), the suite also checks what replicas must share:
// exactly-once consumption, one key, one audit chain, revocations in one
// order.
package storagetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Harness gives the suite its databases.
type Harness struct {
	// Fresh opens a new, empty database. Its second result opens another
	// handle on the same database, as another replica would; nil when the
	// implementation allows one handle only.
	Fresh func(t *testing.T) (broker.Database, func(t *testing.T) broker.Database)
}

// Run runs the whole contract.
func Run(t *testing.T, h Harness) {
	for _, c := range []struct {
		name string
		run  func(*testing.T, Harness)
	}{
		{"Keys", testKeys},
		{"Apps", testApps},
		{"LaunchTokens", testLaunchTokens},
		{"Register", testRegister},
		{"Tokens", testTokens},
		{"Agents", testAgents},
		{"Usage", testUsage},
		{"Nonces", testNonces},
		{"Revocations", testRevocations},
		{"Watch", testWatch},
		{"Audit", testAudit},
		{"AuditQuery", testAuditQuery},
		{"AuditPrune", testAuditPrune},
		{"Replicas", testReplicas},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, h) })
	}
}

// now is a fixed, whole-second time, so stored times compare exactly.
var now = time.Unix(1_800_000_000, 0).UTC()

func ctx() context.Context { return context.Background() }

// race runs f(i) for i in [0, n) at once and waits for all.
func race(n int, f func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(i)
		}()
	}
	close(start)
	wg.Wait()
}

// handles returns n handles on one fresh database: n replicas when the
// implementation allows, else the same handle n times.
func handles(t *testing.T, h Harness, n int) []broker.Database {
	db, reopen := h.Fresh(t)
	out := []broker.Database{db}
	for len(out) < n {
		if reopen == nil {
			out = append(out, db)
			continue
		}
		out = append(out, reopen(t))
	}
	return out
}

package postgres_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/postgres"
)

// Benchmarks need AGENTWRIT_TEST_POSTGRES, like the tests:
//
//	go test -run='^$' -bench=. ./broker/storage/postgres/

// clients is how many concurrent clients the benchmarks run, whatever
// GOMAXPROCS is.
const clients = 8

func parallel(b *testing.B, f func(i int64)) {
	var n atomic.Int64
	b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			f(n.Add(1))
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// must reports err; inside RunParallel, Fatal is not allowed.
func must(b *testing.B, err error) {
	if err != nil {
		b.Error(err)
	}
}

// BenchmarkRegister is the database work of one registration, as the
// broker does it: the challenge's nonce, the launch-token lookup, the
// nonce's consumption, the registration (agent and token) and its two
// audit events, from eight concurrent clients on one replica. (The broker
// appends the two events separately but group-commits concurrent
// appends; one append of two is what that amounts to at worst.)
func BenchmarkRegister(b *testing.B) {
	db := open(b, brokertest.PostgresDSN(b), postgres.Options{MaxConns: postgres.DefaultMaxConns})
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	must(b, db.CreateLaunchToken(ctx, "bench", &broker.LaunchToken{
		AgentName: "bench", AllowedScope: []string{"read:data:*"}, MaxTTL: 300,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour), CreatedBy: "admin",
	}))
	parallel(b, func(i int64) {
		nonce := fmt.Sprintf("%064x", i)
		must(b, db.PutNonce(ctx, nonce, now.Add(30*time.Second)))
		_, err := db.LaunchToken(ctx, "bench")
		must(b, err)
		must(b, db.ConsumeNonce(ctx, nonce, now))
		id := fmt.Sprintf("spiffe://agentwrit.local/agent/o/t/%016x", i)
		must(b, db.Register(ctx, &broker.Registration{
			Agent: broker.Agent{ID: id, PublicKey: make([]byte, 32), OrchID: "o", TaskID: "t",
				Scope: []string{"read:data:x"}, LaunchToken: "bench", RegisteredAt: now},
			Token: broker.TokenRecord{JTI: fmt.Sprintf("%032x", i), Subject: id, TaskID: "t", OrchID: "o",
				Scope: []string{"read:data:x"}, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)},
		}))
		must(b, db.AppendAudit(ctx, []broker.Event{
			{EventType: broker.EventAgentRegistered, AgentID: id, TaskID: "t", OrchID: "o",
				Detail: "Agent registered with scope [read:data:x]", Outcome: broker.OutcomeSuccess},
			{EventType: broker.EventTokenIssued, AgentID: id, TaskID: "t", OrchID: "o",
				Detail: "Token issued, jti=x, ttl=300", Outcome: broker.OutcomeSuccess},
		}, time.Now()))
	})
}

// BenchmarkAppendAudit: one-event appends from eight clients, spread over
// one replica or two (the head row's lock serializes them all).
func BenchmarkAppendAudit(b *testing.B) {
	for _, replicas := range []int{1, 2} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			dsn := brokertest.PostgresDSN(b)
			dbs := make([]*postgres.DB, replicas)
			for i := range dbs {
				dbs[i] = open(b, dsn, postgres.Options{MaxConns: postgres.DefaultMaxConns})
			}
			ctx := context.Background()
			parallel(b, func(i int64) {
				must(b, dbs[i%int64(replicas)].AppendAudit(ctx, []broker.Event{{EventType: broker.EventTokenRevoked,
					Detail: fmt.Sprint(i), Outcome: broker.OutcomeSuccess}}, time.Now()))
			})
		})
	}
}

// BenchmarkRevoke: distinct revocations from eight clients on one
// replica (the counter row's lock serializes them).
func BenchmarkRevoke(b *testing.B) {
	db := open(b, brokertest.PostgresDSN(b), postgres.Options{MaxConns: postgres.DefaultMaxConns})
	ctx := context.Background()
	parallel(b, func(i int64) {
		_, err := db.Revoke(ctx, broker.LevelToken, fmt.Sprint(i), time.Now())
		must(b, err)
	})
}

// BenchmarkRegisterHTTP: whole registrations (challenge, sign, register)
// over HTTP against one broker, from eight concurrent clients, on
// PostgreSQL and, for comparison, on SQLite.
func BenchmarkRegisterHTTP(b *testing.B) {
	for _, c := range []struct {
		name string
		dsn  func(testing.TB) string
	}{
		{"postgres", brokertest.PostgresDSN},
		{"sqlite", func(testing.TB) string { return "" }},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := brokertest.New(b, brokertest.Options{Database: c.dsn(b)})
			multiUse := false
			lt, err := s.Admin(b).CreateLaunchToken(context.Background(), broker.LaunchTokenRequest{
				AgentName: "bench", AllowedScope: []string{"read:data:*"}, SingleUse: &multiUse, TTL: 3600,
			})
			must(b, err)
			client := s.Client(b)
			parallel(b, func(int64) {
				_, err := client.Register(context.Background(), lt.LaunchToken, []string{"read:data:x"})
				must(b, err)
			})
		})
	}
}

package storagetest

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

func newKey(t *testing.T, created time.Time) broker.SigningKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return broker.SigningKey{Private: priv, CreatedAt: created}
}

func testKeys(t *testing.T, h Harness) {
	dbs := handles(t, h, 2)
	db := dbs[0]
	keys, err := db.SigningKeys(ctx())
	require.NoError(t, err)
	require.Empty(t, keys)

	// Replicas starting at once: one key wins, everyone reads it.
	race(8, func(i int) { assert.NoError(t, dbs[i%2].InitSigningKey(ctx(), newKey(t, now))) })
	keys, err = dbs[1].SigningKeys(ctx())
	require.NoError(t, err)
	require.Len(t, keys, 1)
	first := keys[0]
	require.True(t, first.RetireAt.IsZero(), "the first key is active")
	require.True(t, first.CreatedAt.Equal(now))
	require.NoError(t, db.InitSigningKey(ctx(), newKey(t, now)), "a second init is a no-op")
	keys, err = db.SigningKeys(ctx())
	require.NoError(t, err)
	require.Len(t, keys, 1)

	next := newKey(t, now.Add(time.Hour))
	retire := now.Add(25 * time.Hour)
	require.NoError(t, dbs[1].RotateSigningKey(ctx(), next, retire))
	keys, err = db.SigningKeys(ctx())
	require.NoError(t, err)
	require.Len(t, keys, 2, "oldest first")
	require.True(t, keys[0].Private.Equal(first.Private))
	require.True(t, keys[0].RetireAt.Equal(retire))
	require.True(t, keys[1].Private.Equal(next.Private))
	require.True(t, keys[1].RetireAt.IsZero(), "the new key is the only active one")
}

func testApp(name string) *broker.App {
	ts := broker.WholeSeconds(now)
	return &broker.App{
		AppID: "app-" + name + "-abcdef", Name: name, ClientID: name[:2] + "-" + fmt.Sprintf("%012x", len(name)),
		Scopes: []string{"read:data:*"}, TokenTTL: 1800, Status: broker.AppActive, CreatedAt: ts, UpdatedAt: ts,
		SecretHash: "$2a$04$hash", CreatedBy: "admin",
	}
}

func testApps(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	a, b := testApp("alpha"), testApp("bravo")
	b.ClientID = "br-000000000002"
	require.NoError(t, db.InsertApp(ctx(), a))
	require.NoError(t, db.InsertApp(ctx(), b))

	dupName := testApp("alpha")
	dupName.AppID, dupName.ClientID = "app-other", "zz-000000000009"
	require.ErrorIs(t, db.InsertApp(ctx(), dupName), broker.ErrConflict)
	dupClient := testApp("charlie")
	dupClient.ClientID = a.ClientID
	require.ErrorIs(t, db.InsertApp(ctx(), dupClient), broker.ErrConflict)

	apps, err := db.Apps(ctx())
	require.NoError(t, err)
	require.Len(t, apps, 2)
	require.Equal(t, "bravo", apps[0].Name, "newest first")
	got, err := db.App(ctx(), a.AppID)
	require.NoError(t, err)
	require.Equal(t, a, got)
	got, err = db.AppByClientID(ctx(), b.ClientID)
	require.NoError(t, err)
	require.Equal(t, b.AppID, got.AppID)
	_, err = db.App(ctx(), "app-none")
	require.ErrorIs(t, err, broker.ErrNotFound)
	_, err = db.AppByClientID(ctx(), "none")
	require.ErrorIs(t, err, broker.ErrNotFound)

	ttl := int64(600)
	later := now.Add(time.Minute)
	require.NoError(t, db.UpdateApp(ctx(), a.AppID, []string{"write:data:*"}, nil, later))
	require.NoError(t, db.UpdateApp(ctx(), a.AppID, nil, &ttl, later))
	got, err = db.App(ctx(), a.AppID)
	require.NoError(t, err)
	require.Equal(t, []string{"write:data:*"}, got.Scopes)
	require.Equal(t, ttl, got.TokenTTL)
	require.Equal(t, broker.WholeSeconds(later), got.UpdatedAt)
	require.Equal(t, a.CreatedAt, got.CreatedAt)
	require.ErrorIs(t, db.UpdateApp(ctx(), "app-none", nil, &ttl, later), broker.ErrNotFound)

	// Deregistration: inactive, unused launch tokens gone, own tokens revoked.
	unused, used := &broker.LaunchToken{AgentName: "u", AllowedScope: []string{"read:data:x"}, MaxTTL: 300, SingleUse: true,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour), CreatedBy: "app:" + a.AppID, AppID: a.AppID}, &broker.LaunchToken{}
	*used = *unused
	require.NoError(t, db.CreateLaunchToken(ctx(), "unused-hash", unused))
	require.NoError(t, db.CreateLaunchToken(ctx(), "used-hash", used))
	require.NoError(t, db.Register(ctx(), registration("spiffe://t/agent/o/t/1", "used-hash")))
	rev, err := db.DeregisterApp(ctx(), a.AppID, later)
	require.NoError(t, err)
	require.Equal(t, broker.LevelAgent, rev.Level)
	require.Equal(t, "app:"+a.AppID, rev.Target)
	require.Positive(t, rev.Seq)
	got, err = db.App(ctx(), a.AppID)
	require.NoError(t, err)
	require.Equal(t, broker.AppInactive, got.Status)
	_, err = db.LaunchToken(ctx(), "unused-hash")
	require.ErrorIs(t, err, broker.ErrNotFound)
	_, err = db.LaunchToken(ctx(), "used-hash")
	require.NoError(t, err, "a consumed launch token stays, for the audit of who registered")
	again, err := db.DeregisterApp(ctx(), a.AppID, later)
	require.NoError(t, err, "deregistering twice succeeds, as upstream")
	require.Equal(t, rev.Seq, again.Seq)
	_, err = db.DeregisterApp(ctx(), "app-none", later)
	require.ErrorIs(t, err, broker.ErrNotFound)
}

func testLaunchTokens(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	lt := &broker.LaunchToken{
		AgentName: "agent", AllowedScope: []string{"read:data:*", "write:data:x"}, MaxTTL: 600, SingleUse: false,
		CreatedAt: now, ExpiresAt: now.Add(30 * time.Second), CreatedBy: "admin",
	}
	require.NoError(t, db.CreateLaunchToken(ctx(), "h1", lt))
	got, err := db.LaunchToken(ctx(), "h1")
	require.NoError(t, err)
	require.Equal(t, lt, got)
	_, err = db.LaunchToken(ctx(), "h2")
	require.ErrorIs(t, err, broker.ErrNotFound)

	require.NoError(t, db.PruneLaunchTokens(ctx(), now.Add(30*time.Second)))
	_, err = db.LaunchToken(ctx(), "h1")
	require.NoError(t, err, "expiring at the bound is kept")
	require.NoError(t, db.PruneLaunchTokens(ctx(), now.Add(31*time.Second)))
	_, err = db.LaunchToken(ctx(), "h1")
	require.ErrorIs(t, err, broker.ErrNotFound)
}

func registration(agentID, consume string) *broker.Registration {
	return &broker.Registration{
		ConsumeLaunchToken: consume,
		Agent: broker.Agent{
			ID: agentID, PublicKey: make([]byte, 32), OrchID: "o", TaskID: "t", Scope: []string{"read:data:x"},
			LaunchToken: consume, RegisteredAt: now,
		},
		Token: broker.TokenRecord{
			JTI: "jti-" + agentID, Subject: agentID, TaskID: "t", OrchID: "o", Scope: []string{"read:data:x"},
			IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute),
		},
	}
}

func testRegister(t *testing.T, h Harness) {
	dbs := handles(t, h, 3)
	db := dbs[0]
	lt := &broker.LaunchToken{AgentName: "a", AllowedScope: []string{"read:data:x"}, MaxTTL: 300, SingleUse: true,
		CreatedAt: now, ExpiresAt: now.Add(time.Minute), CreatedBy: "admin"}
	require.NoError(t, db.CreateLaunchToken(ctx(), "single", lt))

	// Sixteen registrations racing for one single-use launch token, spread
	// over the replicas: exactly one wins, and the losers store nothing.
	var wins atomic.Int32
	race(16, func(i int) {
		err := dbs[i%len(dbs)].Register(ctx(), registration(fmt.Sprintf("spiffe://t/agent/o/t/%d", i), "single"))
		if err == nil {
			wins.Add(1)
		} else {
			assert.ErrorIs(t, err, broker.ErrConsumed)
		}
	})
	require.EqualValues(t, 1, wins.Load())
	got, err := db.LaunchToken(ctx(), "single")
	require.NoError(t, err)
	require.False(t, got.ConsumedAt.IsZero())
	agents := 0
	for i := range 16 {
		ok, err := dbs[1].AgentExists(ctx(), fmt.Sprintf("spiffe://t/agent/o/t/%d", i))
		require.NoError(t, err)
		if ok {
			agents++
		}
		_, err = db.Token(ctx(), fmt.Sprintf("jti-spiffe://t/agent/o/t/%d", i))
		if !ok {
			require.ErrorIs(t, err, broker.ErrNotFound, "a lost race stores no token either")
		}
	}
	require.Equal(t, 1, agents)

	// Without a launch token to consume (multi-use), any number register.
	require.NoError(t, db.Register(ctx(), registration("spiffe://t/agent/o/t/multi-1", "")))
	require.NoError(t, db.Register(ctx(), registration("spiffe://t/agent/o/t/multi-2", "")))
	ok, err := db.AgentExists(ctx(), "spiffe://t/agent/o/t/none")
	require.NoError(t, err)
	require.False(t, ok)
}

func testTokens(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	rec := &broker.TokenRecord{
		JTI: "child", Subject: "spiffe://t/agent/o/t/2", Parent: "parent", TaskID: "t", OrchID: "o",
		Scope: []string{"read:data:x"}, Depth: 2, Root: "spiffe://t/agent/o/t/0",
		IssuedAt: now, ExpiresAt: now.Add(time.Minute),
	}
	require.NoError(t, db.SaveToken(ctx(), rec))
	got, err := db.Token(ctx(), "child")
	require.NoError(t, err)
	require.Equal(t, rec, got)
	_, err = db.Token(ctx(), "none")
	require.ErrorIs(t, err, broker.ErrNotFound)
	require.NoError(t, db.PruneTokens(ctx(), now.Add(time.Minute)))
	_, err = db.Token(ctx(), "child")
	require.NoError(t, err)
	require.NoError(t, db.PruneTokens(ctx(), now.Add(time.Minute+time.Second)))
	_, err = db.Token(ctx(), "child")
	require.ErrorIs(t, err, broker.ErrNotFound)
}

func testNonces(t *testing.T, h Harness) {
	dbs := handles(t, h, 2)
	n, ok := dbs[0].(broker.NonceDB)
	if !ok {
		t.Skip("this database keeps no nonces: the broker holds them in memory")
	}
	n2 := dbs[1].(broker.NonceDB)
	require.NoError(t, n.PutNonce(ctx(), "a", now.Add(30*time.Second)))
	require.NoError(t, n2.ConsumeNonce(ctx(), "a", now), "fetched on one replica, used on another")
	require.ErrorIs(t, n.ConsumeNonce(ctx(), "a", now), broker.ErrConsumed)
	require.ErrorIs(t, n.ConsumeNonce(ctx(), "a", now.Add(time.Hour)), broker.ErrConsumed, "consumed before expired")
	require.ErrorIs(t, n.ConsumeNonce(ctx(), "b", now), broker.ErrNotFound)
	require.NoError(t, n.PutNonce(ctx(), "c", now.Add(30*time.Second)))
	require.ErrorIs(t, n.ConsumeNonce(ctx(), "c", now.Add(31*time.Second)), broker.ErrNotFound, "expired")
	require.NoError(t, n.ConsumeNonce(ctx(), "c", now.Add(30*time.Second)), "valid until its expiry")

	require.NoError(t, n.PutNonce(ctx(), "d", now.Add(30*time.Second)))
	var wins atomic.Int32
	race(16, func(i int) {
		if dbs[i%2].(broker.NonceDB).ConsumeNonce(ctx(), "d", now) == nil {
			wins.Add(1)
		}
	})
	require.EqualValues(t, 1, wins.Load())

	require.NoError(t, n.PutNonce(ctx(), "e", now.Add(30*time.Second)))
	require.NoError(t, n.PruneNonces(ctx(), now.Add(31*time.Second)))
	require.ErrorIs(t, n.ConsumeNonce(ctx(), "e", now), broker.ErrNotFound, "pruned")
}

package broker

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAuditRetention: pruning keeps the rest of the chain verifiable
// through an audit_pruned anchor, and a chain cut without one (or cut
// further than its anchor says) does not verify.
func TestAuditRetention(t *testing.T) {
	clock := newTestClock()
	db, err := openTestDatabase(context.Background(), filepath.Join(t.TempDir(), "broker.db"))
	require.NoError(t, err)
	store, err := NewStore(context.Background(), db, StoreOptions{Now: clock.Now, AuditRetention: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	b, err := New(store, Config{AdminSecret: testAdminHash, Now: clock.Now})
	require.NoError(t, err)
	e := &testEnv{t: t, store: store, broker: b}

	for range 5 {
		e.adminToken() // one admin_auth event each
	}
	old := e.auditSeq()
	clock.Advance(2 * time.Hour)
	e.adminToken()
	e.adminToken()

	store.prune(clock.Now())
	require.Equal(t, 3, e.auditCount(), "two recent events and the anchor")
	anchor := e.lastEvent(EventAuditPruned)
	require.Equal(t, PrunedDetail(eventID(old), ""), anchor.Detail[:len(anchor.Detail)-64], "it names the last pruned event")
	require.NoError(t, e.verifyAudit())
	rec := e.do("GET", "/v1/admin/audit/verify", e.adminToken(), nil)
	require.Equal(t, true, decode(t, rec)["intact"], rec.Body.String())

	// Within the hour nothing is pruned again, and no anchor is added.
	clock.Advance(30 * time.Minute)
	store.prune(clock.Now())
	require.Len(t, e.events(EventAuditPruned), 1)

	// Cutting one event more than the anchor covers breaks the chain.
	_, err = store.db.PruneAudit(context.Background(), old+1)
	require.NoError(t, err)
	var broken *ChainError
	require.True(t, errors.As(e.verifyAudit(), &broken), "an unanchored start must not verify")
	require.Equal(t, eventID(old+2), broken.ID)
}

// TestChainVerifierAnchor: the anchor must name exactly the event before
// the first kept one, with its hash.
func TestChainVerifierAnchor(t *testing.T) {
	chain := make([]Event, 6)
	for i := range chain {
		chain[i] = Event{EventType: EventAdminAuth, Outcome: OutcomeSuccess}
	}
	ChainEvents(chain[:4], AuditHead{Hash: GenesisHash}, time.Unix(1_800_000_000, 0))
	chain[4] = Event{EventType: EventAuditPruned, Outcome: OutcomeSuccess, Detail: PrunedDetail(chain[1].ID, chain[1].Hash)}
	chain[5] = Event{EventType: EventAdminAuth, Outcome: OutcomeSuccess}
	ChainEvents(chain[4:], AuditHead{Seq: 4, Hash: chain[3].Hash}, time.Unix(1_800_000_100, 0))
	require.NoError(t, VerifyChain(chain))
	require.NoError(t, VerifyChain(chain[2:]), "pruned through the anchor's event")
	require.Error(t, VerifyChain(chain[1:]), "the anchor names event 2, but event 1 is kept")
	require.Error(t, VerifyChain(chain[3:]), "event 3 pruned but not anchored")

	forged := append([]Event(nil), chain[2:]...)
	forged[2].Detail = PrunedDetail(chain[1].ID, GenesisHash)
	forged[2].Hash = forged[2].ComputeHash()
	require.Error(t, VerifyChain(forged), "an anchor with the wrong hash anchors nothing")
}

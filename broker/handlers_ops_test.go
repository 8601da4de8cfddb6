package broker

import (
	"crypto/ed25519"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRoute_Status(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	_, tok := e.mkAgent(0, "read:data:x")
	require.NoError(t, e.revoke(LevelTask, "other-task"))

	var st Status
	rec := e.do("GET", "/v1/admin/status", admin, nil)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.NoError(t, DecodeStrict(rec.Body.Bytes(), &st))
	require.Equal(t, "ok", st.Status)
	require.Equal(t, DatabaseInfo{Kind: "sqlite", Location: e.dbPath}, st.Database.DatabaseInfo)
	require.True(t, st.Database.Connected)
	require.Nil(t, st.Database.RevocationsSyncedAgo, "one node: nothing to follow")
	require.Equal(t, []KeyInfo{{KID: e.broker.KeyID(), State: KeyActive, CreatedAt: st.Keys[0].CreatedAt}}, st.Keys)
	require.Equal(t, Stats{Agents: 1, LiveAgents: 1, LiveTokens: 2, Revocations: 1}, st.Stats, "the admin token and the agent's")
	head, err := e.store.db.AuditHead(t.Context())
	require.NoError(t, err)
	require.Equal(t, StatusAudit{Events: head.Seq, HeadID: eventID(head.Seq), HeadHash: head.Hash}, st.Audit)
	_ = tok
	requireScopeError(t, e, "GET", "/v1/admin/status", "admin:audit:*")
}

// TestKeyRotation: a rotation makes a new active key; tokens signed by the
// old one verify until their exp, and the old key retires once every
// token it could have signed has expired (max_ttl), then verifies
// nothing. JWKS follows, a restart sees the same set, and the rotation is
// audited.
func TestKeyRotation(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk), func(c *Config) { c.MaxTTL = time.Hour })
	e.store.keys.now = clk.Now
	admin := e.cachedAdmin()
	_, old := e.mkAgent(3600, "read:data:x")
	oldKID := e.broker.KeyID()
	requireScopeError(t, e, "POST", "/v1/admin/keys/rotate", "admin:revoke:*")

	rec := e.do("POST", "/v1/admin/keys/rotate", admin, nil)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	newKID := decode(t, rec)["kid"].(string)
	require.NotEqual(t, oldKID, newKID)
	require.Equal(t, newKID, e.broker.KeyID())
	ev := e.lastEvent(EventKeyRotated)
	require.Contains(t, ev.Detail, "kid="+newKID+" previous="+oldKID)
	require.Equal(t, OutcomeSuccess, ev.Outcome)

	_, fresh := e.mkAgent(60, "read:data:x")
	require.Equal(t, newKID, headerKID(t, fresh), "new tokens on the new key")
	_, err := e.broker.Verify(t.Context(), old)
	require.NoError(t, err, "tokens of the old key keep working")
	jwks := e.broker.JWKS()
	require.Len(t, jwks.Keys, 2)
	require.Equal(t, newKID, jwks.Keys[0].Kid)

	var keys KeyList
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/keys", admin, nil).Body.Bytes(), &keys))
	require.Equal(t, []string{KeyActive, KeyRetiring}, []string{keys.Keys[0].State, keys.Keys[1].State})
	require.True(t, keys.Keys[1].RetireAt.Equal(clk.Now().Add(time.Hour).UTC()))

	// A restart sees the same set.
	e.restart(withClock(clk), func(c *Config) { c.MaxTTL = time.Hour })
	e.store.keys.now = clk.Now
	require.Equal(t, newKID, e.broker.KeyID())
	_, err = e.broker.Verify(t.Context(), old)
	require.NoError(t, err)

	// An hour later the old key has retired: its tokens (expired by now
	// anyway) and any token it might still sign are refused.
	clk.Advance(time.Hour + time.Second)
	forged := signJWS(ringKeyOf(t, e, oldKID), `{"alg":"EdDSA","typ":"JWT","kid":"`+oldKID+`"}`, payloadAt(clk.Now().Unix(), ""))
	_, err = e.broker.Verify(t.Context(), forged)
	require.ErrorIs(t, err, ErrMalformedToken, "unknown kid")
	require.Len(t, e.broker.JWKS().Keys, 1)
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/keys", e.cachedAdmin(), nil).Body.Bytes(), &keys))
	require.Equal(t, KeyRetired, keys.Keys[1].State)
}

func headerKID(t *testing.T, tok string) string {
	u, err := ParseUnverified(tok)
	require.NoError(t, err)
	return u.Kid
}

// ringKeyOf returns the private key with kid from the store's ring.
func ringKeyOf(t *testing.T, e *testEnv, kid string) ed25519.PrivateKey {
	t.Helper()
	e.store.keys.mu.RLock()
	defer e.store.keys.mu.RUnlock()
	for _, k := range e.store.keys.keys {
		if k.kid == kid {
			return k.Private
		}
	}
	t.Fatalf("no key %s", kid)
	return nil
}

func TestRoute_Agents(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	id1, _ := e.mkAgent(0, "read:data:x")
	id2, tok2 := e.mkAgent(0, "read:data:y")
	require.NoError(t, e.revoke(LevelToken, claimsOf(t, tok2)["jti"].(string)))

	var list AgentList
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/agents", admin, nil).Body.Bytes(), &list))
	require.Equal(t, 1, list.Total, "live agents only, by default")
	require.Equal(t, id1, list.Agents[0].AgentID)
	require.Len(t, list.Agents[0].Tokens, 1)
	require.Equal(t, []string{"read:data:x"}, list.Agents[0].Tokens[0].Scope)
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/agents?live=false&limit=1", admin, nil).Body.Bytes(), &list))
	require.Equal(t, 2, list.Total)
	require.Equal(t, id2, list.Agents[0].AgentID, "newest first")
	require.Empty(t, list.Agents[0].Tokens)
	require.Equal(t, 1, list.Limit)
}

func TestRoute_AuditVerify(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	var v AuditVerification
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/audit/verify", admin, nil).Body.Bytes(), &v))
	require.True(t, v.Intact)
	require.Equal(t, e.auditSeq(), v.Verified)
	_, err := rawDB(t, e.dbPath).Exec(`UPDATE audit_events SET detail = 'forged' WHERE seq = 1`)
	require.NoError(t, err)
	require.NoError(t, DecodeStrict(e.do("GET", "/v1/admin/audit/verify", admin, nil).Body.Bytes(), &v))
	require.False(t, v.Intact)
	require.Equal(t, &ChainError{Index: 0, ID: "evt-000001", Reason: v.Broken.Reason}, v.Broken)
}

// TestRoute_AuditEventsNewestFirst: the product's extensions of the audit
// query, newest first and keyset paging by event ID.
func TestRoute_AuditEventsNewestFirst(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	for range 5 {
		e.broker.audit(t.Context(), Event{EventType: EventTokenRevoked, Detail: "x"})
	}
	ids := func(q string) []string {
		var page AuditPage
		require.NoError(t, DecodeStrict(e.do("GET", "/v1/audit/events?event_type=token_revoked&"+q, admin, nil).Body.Bytes(), &page))
		out := []string{}
		for _, ev := range page.Events {
			out = append(out, ev.ID)
		}
		return out
	}
	all := ids("")
	require.Len(t, all, 5)
	require.Equal(t, []string{all[4], all[3]}, ids("order=newest&limit=2"))
	require.Equal(t, []string{all[2], all[1]}, ids("order=newest&limit=2&before_id="+all[3]))
	require.Equal(t, []string{all[3], all[4]}, ids("after_id="+all[2]))
	require.Equal(t, all, ids("after_id=junk"), "an unparsable ID does not filter, like upstream's bounds")
}

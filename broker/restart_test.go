package broker

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// chainHash is upstream's audit hash, written here independently of ComputeHash:
// lowercase hex SHA-256 of the 13 fields joined by "|".
func chainHash(prev, id, ts, typ, agent, task, orch, detail, resource, outcome string, depth int, chain string, bytes int) string {
	s := prev + "|" + id + "|" + ts + "|" + typ + "|" + agent + "|" + task + "|" + orch + "|" + detail + "|" +
		resource + "|" + outcome + "|" + fmt.Sprint(depth) + "|" + chain + "|" + fmt.Sprint(bytes)
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func allEvents(t *testing.T, s *Store) []Event {
	t.Helper()
	evs, n, err := s.db.QueryAudit(context.Background(), AuditFilter{})
	require.NoError(t, err)
	require.Len(t, evs, n)
	return evs
}

// insertRawEvent writes a chained event straight into the file, as a
// foreign writer or a test of long chains would.
func insertRawEvent(t *testing.T, path string, e *Event) {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, e.Timestamp)
	require.NoError(t, err)
	_, err = rawDB(t, path).Exec(`INSERT INTO audit_events (seq, id, timestamp, ts_unix_nano, event_type, agent_id, task_id, orch_id,
		detail, resource, outcome, deleg_depth, deleg_chain_hash, bytes_transferred, hash, prev_hash)
		VALUES (?,?,?,?,?,?,?,?,?,NULL,NULL,NULL,NULL,NULL,?,?)`,
		e.Seq, e.ID, e.Timestamp, ts.UnixNano(), e.EventType, e.AgentID, e.TaskID, e.OrchID, e.Detail, e.Hash, e.PrevHash)
	require.NoError(t, err)
}

// rawDB opens a second, independent connection to the store's file.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// TestRestart: tokens issued before a restart verify after it, revoked ones
// stay revoked at every level, launch tokens survive, nonces do not, and the
// audit chain verifies end to end and continues from its last hash.
func TestRestart(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	kid := e.broker.KeyID()
	admin := e.adminToken()
	_, live := e.mkAgent(0, "read:data:x")
	_, byJTI := e.mkAgent(0, "read:data:x")
	agentID, byAgent := e.mkAgent(0, "read:data:x")
	byTask := e.issueToken(Claims{Sub: "spiffe://agentwrit.local/agent/o/task-r/01", TaskID: "task-r", Scope: []string{"read:data:x"}}, 300)
	root := "spiffe://agentwrit.local/agent/o/t/root"
	byChain := e.issueToken(Claims{Sub: "spiffe://agentwrit.local/agent/o/t/02", Scope: []string{"read:data:x"},
		DelegationChain: []DelegRecord{{Agent: root, Scope: []string{"read:data:*"}}}}, 300)
	for _, r := range []map[string]string{
		{"level": "token", "target": claimsOf(t, byJTI)["jti"].(string)},
		{"level": "agent", "target": agentID},
		{"level": "task", "target": "task-r"},
		{"level": "chain", "target": root},
	} {
		require.Equal(t, http.StatusOK, e.do("POST", "/v1/revoke", admin, r).Code)
	}
	revoked := []string{byJTI, byAgent, byTask, byChain}
	valid := []string{admin, live}
	lt := e.mkLaunch(map[string]any{"single_use": false})
	oldNonceBody := e.registration(lt)

	before := allEvents(t, e.store)
	require.NotEmpty(t, before)
	require.NoError(t, e.verifyAudit())
	lastHash := before[len(before)-1].Hash

	e.restart()
	require.Equal(t, kid, e.broker.KeyID(), "the signing key survives")
	for _, tok := range valid {
		_, err := e.broker.Verify(ctx, tok)
		require.NoError(t, err)
	}
	for _, tok := range revoked {
		_, err := e.broker.Verify(ctx, tok)
		require.ErrorIs(t, err, ErrRevoked)
	}
	after := allEvents(t, e.store)
	require.Equal(t, before, after, "the chain is unchanged by the restart")
	require.NoError(t, e.verifyAudit())

	// The chain continues from the last hash, the counter from the last id.
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/revoke", admin, map[string]string{"level": "token", "target": "x"}).Code)
	next := allEvents(t, e.store)[len(before)]
	require.Equal(t, lastHash, next.PrevHash)
	require.Equal(t, fmt.Sprintf("evt-%06d", len(before)+1), next.ID)
	require.NoError(t, e.verifyAudit())

	// Nonces are the one thing a restart loses; launch tokens are kept (D9).
	requireProblem(t, e.do("POST", "/v1/register", "", oldNonceBody), http.StatusUnauthorized, "unauthorized", "nonce: nonce not found or expired")
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/register", "", e.registration(lt)).Code)

	// A revocation made after the first restart survives a second one.
	require.NoError(t, e.revoke(LevelToken, claimsOf(t, live)["jti"].(string)))
	e.restart()
	_, err := e.broker.Verify(ctx, live)
	require.ErrorIs(t, err, ErrRevoked)
	require.NoError(t, e.verifyAudit())
}

// TestVerifyAuditDetectsTampering: a single altered, re-hashed, or deleted
// event in the database is reported with its index and id.
func TestVerifyAuditDetectsTampering(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*testEnv, *sql.DB) {
		e := newTestEnv(t)
		for i := range 8 {
			_, err := e.store.audit.append(ctx, Event{EventType: EventTokenRevoked, Detail: fmt.Sprintf("revoked at level=token target=t%d", i), Outcome: OutcomeSuccess})
			require.NoError(t, err)
		}
		require.NoError(t, e.verifyAudit())
		return e, rawDB(t, e.dbPath)
	}
	chainErr := func(t *testing.T, err error) *ChainError {
		t.Helper()
		var ce *ChainError
		require.True(t, errors.As(err, &ce), "want *ChainError, got %v", err)
		return ce
	}

	t.Run("detail", func(t *testing.T) {
		e, db := setup(t)
		_, err := db.Exec(`UPDATE audit_events SET detail = 'revoked at level=token target=nothing' WHERE id = 'evt-000004'`)
		require.NoError(t, err)
		ce := chainErr(t, e.verifyAudit())
		require.Equal(t, 3, ce.Index)
		require.Equal(t, "evt-000004", ce.ID)
		require.Contains(t, ce.Reason, "recomputed")
		require.Contains(t, ce.Error(), "evt-000004")
		require.ErrorAs(t, VerifyChain(allEvents(t, e.store)), &ce)
		require.Equal(t, 3, ce.Index)
	})
	t.Run("other columns", func(t *testing.T) {
		for _, set := range []string{"timestamp = '2020-01-01T00:00:00Z'", "event_type = 'admin_auth'", "outcome = NULL",
			"agent_id = 'x'", "resource = '/v1/x'", "deleg_depth = 1", "bytes_transferred = 7", "hash = prev_hash"} {
			e, db := setup(t)
			_, err := db.Exec(`UPDATE audit_events SET ` + set + ` WHERE id = 'evt-000006'`)
			require.NoError(t, err)
			ce := chainErr(t, e.verifyAudit())
			require.Equal(t, 5, ce.Index, set)
			require.Equal(t, "evt-000006", ce.ID, set)
		}
	})
	t.Run("re-hashed", func(t *testing.T) {
		// The forger recomputes the altered event's own hash: the break
		// shows at the next event, whose prev_hash no longer matches.
		e, db := setup(t)
		ev := allEvents(t, e.store)[2]
		ev.Detail = "forged"
		_, err := db.Exec(`UPDATE audit_events SET detail = ?, hash = ? WHERE id = ?`, ev.Detail, ev.ComputeHash(), ev.ID)
		require.NoError(t, err)
		ce := chainErr(t, e.verifyAudit())
		require.Equal(t, 3, ce.Index)
		require.Equal(t, "evt-000004", ce.ID)
		require.Contains(t, ce.Reason, "prev_hash")
	})
	t.Run("deleted", func(t *testing.T) {
		e, db := setup(t)
		_, err := db.Exec(`DELETE FROM audit_events WHERE id = 'evt-000005'`)
		require.NoError(t, err)
		ce := chainErr(t, e.verifyAudit())
		require.Equal(t, 4, ce.Index)
		require.Equal(t, "evt-000006", ce.ID)
	})
	t.Run("first event", func(t *testing.T) {
		e, db := setup(t)
		_, err := db.Exec(`UPDATE audit_events SET prev_hash = hash WHERE id = 'evt-000001'`)
		require.NoError(t, err)
		ce := chainErr(t, e.verifyAudit())
		require.Equal(t, 0, ce.Index)
		require.Equal(t, "evt-000001", ce.ID)
	})
}

// TestAuditHashVector pins the audit hash byte for byte with digests computed outside
// Go (printf '%s' "…" | sha256sum), and checks stored events against an
// independent recomputation.
func TestAuditHashVector(t *testing.T) {
	e1 := Event{
		PrevHash: GenesisHash, ID: "evt-000001", Timestamp: "2026-01-02T03:04:05.12Z", EventType: EventTokenRevoked,
		AgentID: "spiffe://x", Detail: "revoked at level=token target=abc", Outcome: OutcomeSuccess,
	}
	require.Equal(t, "3930ed71e4192cc996cebe75a9279537a19969b4f41b4704ceb128922b939b82", e1.ComputeHash())
	e2 := Event{
		PrevHash: "ab12", ID: "evt-1000000", Timestamp: "2026-01-02T03:04:05Z", EventType: EventDelegationCreated,
		AgentID: "spiffe://agentwrit.local/agent/o/t/1", TaskID: "t", OrchID: "o",
		Detail:   "delegation from a to b scope=[read:data:x] depth=2",
		Resource: "/v1/delegate", Outcome: OutcomeSuccess, DelegDepth: 2, DelegChainHash: "c0ffee",
	}
	require.Equal(t, "394f83b90b6a244b5d46600c345fbcb6fe58b2216dba637e67a659440c3e7a9c", e2.ComputeHash())
	require.Equal(t, chainHash(e2.PrevHash, e2.ID, e2.Timestamp, e2.EventType, e2.AgentID, e2.TaskID, e2.OrchID, e2.Detail,
		e2.Resource, e2.Outcome, e2.DelegDepth, e2.DelegChainHash, e2.BytesTransferred), e2.ComputeHash())

	// RFC3339Nano in UTC with trailing zeros dropped.
	loc := time.FixedZone("x", 3600)
	require.Equal(t, "2026-01-02T03:04:05.12Z", formatTime(time.Date(2026, 1, 2, 4, 4, 5, 120_000_000, loc)))
	require.Equal(t, "2026-01-02T03:04:05Z", formatTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))
	require.Equal(t, "2026-01-02T03:04:05.000000001Z", formatTime(time.Date(2026, 1, 2, 3, 4, 5, 1, time.UTC)))

	// Every event the broker writes recomputes independently.
	e := newTestEnv(t)
	e.mkAgent(0, "read:data:x")
	prev := GenesisHash
	for i, ev := range allEvents(t, e.store) {
		require.Equal(t, fmt.Sprintf("evt-%06d", i+1), ev.ID)
		require.Equal(t, prev, ev.PrevHash)
		_, err := time.Parse(time.RFC3339Nano, ev.Timestamp)
		require.NoError(t, err)
		require.True(t, strings.HasSuffix(ev.Timestamp, "Z"))
		require.Equal(t, chainHash(ev.PrevHash, ev.ID, ev.Timestamp, ev.EventType, ev.AgentID, ev.TaskID, ev.OrchID, ev.Detail,
			ev.Resource, ev.Outcome, ev.DelegDepth, ev.DelegChainHash, ev.BytesTransferred), ev.Hash)
		prev = ev.Hash
	}
}

// TestAuditForeignChain: a chain written by an independent implementation
// (longer than one VerifyAudit page) is accepted, and the store continues it.
func TestAuditForeignChain(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	require.NoError(t, e.store.Close())
	db := rawDB(t, e.dbPath)
	tx, err := db.Begin()
	require.NoError(t, err)
	prev := GenesisHash
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const n = 2345
	for i := 1; i <= n; i++ {
		id, ts := fmt.Sprintf("evt-%06d", i), base.Add(time.Duration(i)*time.Millisecond).Format(time.RFC3339Nano)
		detail := fmt.Sprintf("revoked at level=task target=t%d", i)
		h := chainHash(prev, id, ts, EventTokenRevoked, "t", "", "", detail, "", OutcomeSuccess, 0, "", 0)
		_, err := tx.Exec(`INSERT INTO audit_events (seq, id, timestamp, ts_unix_nano, event_type, agent_id, detail, outcome, hash, prev_hash)
			VALUES (?,?,?,?,?,?,?,?,?,?)`, i, id, ts, base.Add(time.Duration(i)*time.Millisecond).UnixNano(), EventTokenRevoked, "t", detail, OutcomeSuccess, h, prev)
		require.NoError(t, err)
		prev = h
	}
	require.NoError(t, tx.Commit())

	e.restart()
	require.NoError(t, e.verifyAudit())
	ev, err := e.store.audit.append(ctx, Event{EventType: EventAdminAuth, Detail: "admin authenticated as admin", Outcome: OutcomeSuccess})
	require.NoError(t, err)
	require.Equal(t, prev, ev.PrevHash)
	require.Equal(t, fmt.Sprintf("evt-%06d", n+1), ev.ID)
	require.NoError(t, e.verifyAudit())

	// A break past the first page is still found and located.
	_, err = db.Exec(`UPDATE audit_events SET detail = 'x' WHERE id = 'evt-002001'`)
	require.NoError(t, err)
	var ce *ChainError
	require.ErrorAs(t, e.verifyAudit(), &ce)
	require.Equal(t, 2000, ce.Index)
	require.Equal(t, "evt-002001", ce.ID)
}

// TestSanitizeDetail pins upstream's redaction, quirks included: the text is redacted only
// when the part before the first "=" (or, failing that, the first ": ")
// holds a keyword, and then everything after that separator goes.
func TestSanitizeDetail(t *testing.T) {
	for in, want := range map[string]string{
		"no keywords here":                    "no keywords here",
		"secret=hunter2":                      "secret=***REDACTED***",
		"client_secret=abc more=stuff":        "client_secret=***REDACTED***",
		"PASSWORD=abc":                        "PASSWORD=***REDACTED***",
		"the Private_Key=abc":                 "the Private_Key=***REDACTED***",
		"token_value: abc":                    "token_value: ***REDACTED***",
		"password: a=b":                       "password: a=***REDACTED***", // "=" is tried first
		"client_id=app-1 reason=wrong_secret": "client_id=app-1 reason=wrong_secret",
		"the secret is out":                   "the secret is out",
		"secret:no-space":                     "secret:no-space",
		"x=1 secret: y":                       "x=1 secret: ***REDACTED***", // "=" left side clean, ": " left side not
		"token renewal failed for agent=spiffe://d/agent/o/secret-task/1: boom": "token renewal failed for agent=spiffe://d/agent/o/secret-task/1: ***REDACTED***",
		"revoked at level=task target=password-reset":                           "revoked at level=task target=password-reset",
		"secret":       "secret",
		"":             "",
		"tokenvalue=1": "tokenvalue=1",
	} {
		require.Equal(t, want, sanitizeDetail(in), "%q", in)
	}

	// Sanitizing happens before hashing.
	e := newTestEnv(t)
	ev, err := e.store.audit.append(context.Background(), Event{EventType: EventAppAuthFailed, Detail: "client_secret=abc", Outcome: OutcomeDenied})
	require.NoError(t, err)
	require.Equal(t, "client_secret=***REDACTED***", ev.Detail)
	stored := allEvents(t, e.store)[0]
	require.Equal(t, ev, stored)
	require.Equal(t, chainHash(GenesisHash, ev.ID, ev.Timestamp, ev.EventType, "", "", "", "client_secret=***REDACTED***", "", OutcomeDenied, 0, "", 0), stored.Hash)
}

package broker

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct{ id, event, data string }

// readEvents parses a stream into a channel, closed when it ends.
func readEvents(t *testing.T, resp *http.Response) <-chan sseEvent {
	out := make(chan sseEvent, 1000)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				out <- ev
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return out
}

func nextRevocation(t *testing.T, evs <-chan sseEvent) Revocation {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-evs:
			require.True(t, ok, "stream ended")
			if ev.event != "revocation" {
				continue
			}
			var r Revocation
			require.NoError(t, json.Unmarshal([]byte(ev.data), &r))
			require.Equal(t, ev.id, itoa64(r.Seq))
			return r
		case <-timeout:
			t.Fatal("no revocation event")
		}
	}
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

// TestRevocationFeed: an app whose ceiling holds read:revocations:* reads
// every revocation as it commits, resumes after Last-Event-ID, gets
// heartbeats; nobody else reads it; Close ends the streams.
func TestRevocationFeed(t *testing.T) {
	e := newTestEnv(t)
	srv := httptest.NewServer(e.broker)
	t.Cleanup(srv.Close)
	gw := e.createApp("gateway", []string{FeedScope})
	tok := e.appToken(gw)
	open := func(bearer, lastID string) *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/revocations", nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	require.NoError(t, e.revoke(LevelToken, "before"))
	resp := open(tok, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	evs := readEvents(t, resp)
	first := nextRevocation(t, evs)
	require.Equal(t, "before", first.Target, "the stream starts with what is already revoked")

	// Revocations as they commit, from every kind of write.
	require.NoError(t, e.revoke(LevelAgent, "spiffe://agentwrit.local/agent/o/t/1"))
	r := nextRevocation(t, evs)
	require.Equal(t, Revocation{Seq: r.Seq, Level: LevelAgent, Target: "spiffe://agentwrit.local/agent/o/t/1", RevokedAt: r.RevokedAt}, r)
	_, agentTok := e.mkAgent(0, "read:data:x")
	require.Equal(t, http.StatusNoContent, e.do("POST", "/v1/token/release", agentTok, nil).Code)
	require.Equal(t, claimsOf(t, agentTok)["jti"], nextRevocation(t, evs).Target, "release")

	// Heartbeats carry the last sequence sent.
	deadline := time.After(3 * FeedHeartbeat)
	for hb := false; !hb; {
		select {
		case ev := <-evs:
			if ev.event == "heartbeat" {
				var d FeedHeartbeatData
				require.NoError(t, json.Unmarshal([]byte(ev.data), &d))
				require.Positive(t, d.Seq)
				hb = true
			}
		case <-deadline:
			t.Fatal("no heartbeat")
		}
	}

	// A key rotation is announced, so gateways fetch the key set again.
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/admin/keys/rotate", e.cachedAdmin(), nil).Code)
	deadline = time.After(10 * time.Second)
	for keys := false; !keys; {
		select {
		case ev := <-evs:
			keys = ev.event == "keys"
		case <-deadline:
			t.Fatal("no keys event")
		}
	}

	// Resuming after an ID sends only what follows it.
	resumed := readEvents(t, open(tok, itoa64(first.Seq)))
	require.Equal(t, LevelAgent, nextRevocation(t, resumed).Level)

	// Who may not read it.
	requireProblem(t, e.do("GET", "/v1/revocations", e.cachedAdmin(), nil), http.StatusForbidden, "forbidden", "only an app token may read the revocation feed")
	other := e.createApp("other", []string{"read:data:*"})
	requireProblem(t, e.do("GET", "/v1/revocations", e.appToken(other), nil), http.StatusForbidden, "forbidden",
		"the app's scope ceiling does not include read:revocations:*")
	requireProblem(t, e.do("GET", "/v1/revocations", "", nil), http.StatusUnauthorized, "unauthorized", "missing authorization header")

	// Close ends the streams (a configuration stopping).
	e.broker.Close()
	for range evs {
	}
}

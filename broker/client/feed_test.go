package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// follow reads the feed in the background; its events arrive on the
// channel, and the error that ended the stream on the other.
func follow(c *client.Client, after int64) (events <-chan client.FeedEvent, done <-chan error, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	evs, errc := make(chan client.FeedEvent, 100), make(chan error, 1)
	go func() {
		errc <- c.Revocations(ctx, after, func(ev client.FeedEvent) error { evs <- ev; return nil })
	}()
	return evs, errc, cancel
}

// nextEvent waits for the next event of type typ, skipping others.
func nextEvent(t *testing.T, evs <-chan client.FeedEvent, typ string) client.FeedEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-evs:
			if ev.Type == typ {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event", typ)
		}
	}
}

// TestRevocationsRealBroker: an app with read:revocations:* reads every
// revocation as it commits, heartbeats carrying its position, and a keys
// event on rotation; it resumes after a sequence number; others may not
// read the feed.
func TestRevocationsRealBroker(t *testing.T) {
	ctx := context.Background()
	s := newBroker(t)
	admin := s.Admin(t)
	creds, err := admin.CreateApp(ctx, broker.AppRequest{Name: "gateway", Scopes: []string{broker.FeedScope}})
	require.NoError(t, err)
	app, err := s.Client(t).LoginApp(ctx, creds.ClientID, creds.ClientSecret)
	require.NoError(t, err)

	_, err = admin.Revoke(ctx, broker.LevelToken, "before")
	require.NoError(t, err)
	evs, done, stop := follow(app, 0)
	first := nextEvent(t, evs, client.EventRevocation)
	require.Equal(t, "before", first.Revocation.Target, "the stream starts with what is already revoked")
	require.Equal(t, first.Seq, first.Revocation.Seq)

	_, err = admin.Revoke(ctx, broker.LevelAgent, "spiffe://agentwrit.local/agent/o/t/1")
	require.NoError(t, err)
	second := nextEvent(t, evs, client.EventRevocation)
	require.Equal(t, broker.LevelAgent, second.Revocation.Level)
	require.Greater(t, second.Seq, first.Seq)

	hb := nextEvent(t, evs, client.EventHeartbeat)
	require.Equal(t, second.Seq, hb.Seq, "a heartbeat carries the last sequence number sent")
	require.False(t, hb.Time.IsZero())

	_, err = s.Broker.RotateKey(ctx, "test")
	require.NoError(t, err)
	keys := nextEvent(t, evs, client.EventKeys)
	require.Equal(t, second.Seq, keys.Seq)

	stop()
	require.ErrorIs(t, <-done, context.Canceled)

	// Resuming after the first sends only what follows it.
	evs, done, stop = follow(app, first.Seq)
	require.Equal(t, second.Revocation, nextEvent(t, evs, client.EventRevocation).Revocation)
	stop()
	<-done

	// Who may not read it: the broker's refusal is an *Error.
	err = admin.Revocations(ctx, 0, func(client.FeedEvent) error { return nil })
	require.True(t, client.IsStatus(err, http.StatusForbidden), "%v", err)
	err = s.Client(t).Revocations(ctx, 0, func(client.FeedEvent) error { return nil })
	require.True(t, client.IsStatus(err, http.StatusUnauthorized), "%v", err)
	require.ErrorContains(t, s.Client(t).Revocations(ctx, -1, nil), "negative")
}

// feedServer serves body as a revocation feed and records the
// Last-Event-ID it was asked for.
func feedServer(t *testing.T, contentType, body string) (*client.Client, *string) {
	t.Helper()
	var lastID string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lastID = r.Header.Get("Last-Event-ID")
		w.Header().Set("Content-Type", contentType)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL)
	require.NoError(t, err)
	return c.WithToken("app-token"), &lastID
}

const hbTime = "2025-01-02T03:04:05.123Z"

func revocationEvent(seq int, level, target string) string {
	return fmt.Sprintf("id: %d\nevent: revocation\ndata: {\"seq\":%d,\"level\":%q,\"target\":%q,\"revoked_at\":%q}\n\n", seq, seq, level, target, hbTime)
}

func heartbeatEvent(typ string, seq int) string {
	return fmt.Sprintf("event: %s\ndata: {\"time\":%q,\"seq\":%d}\n\n", typ, hbTime, seq)
}

func resetEvent(after, head int) string {
	return fmt.Sprintf("event: reset\ndata: {\"time\":%q,\"after\":%d,\"head\":%d}\n\n", hbTime, after, head)
}

// TestRevocationsFormat: the Server-Sent Events format as the standard
// allows it (comments, CR and CRLF line ends, a byte order mark, unknown
// fields and events), and the stream's end reported as such.
func TestRevocationsFormat(t *testing.T) {
	body := "\uFEFF: a comment\r\n" +
		strings.ReplaceAll(revocationEvent(5, broker.LevelToken, "jti-5"), "\n", "\r\n") +
		"retry: 1000\nevent: something-new\ndata: {}\n\n" +
		strings.ReplaceAll(revocationEvent(7, broker.LevelTask, "task-7"), "\n", "\r") +
		heartbeatEvent(client.EventHeartbeat, 7) +
		"data: a message without a type\n\n" +
		heartbeatEvent(client.EventKeys, 7) +
		resetEvent(7, 2) + // the broker's database went back: from the first again
		revocationEvent(1, broker.LevelAgent, "agent-1") +
		heartbeatEvent(client.EventHeartbeat, 1) +
		"event: heartbeat\n" // an event cut off by the end of the stream is not dispatched
	c, lastID := feedServer(t, "text/event-stream; charset=utf-8", body)
	var got []client.FeedEvent
	err := c.Revocations(context.Background(), 4, func(ev client.FeedEvent) error { got = append(got, ev); return nil })
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, "4", *lastID, "resumes with Last-Event-ID")
	at, _ := time.Parse(time.RFC3339Nano, hbTime)
	require.Equal(t, []client.FeedEvent{
		{Type: client.EventRevocation, Seq: 5, Revocation: broker.Revocation{Seq: 5, Level: broker.LevelToken, Target: "jti-5", RevokedAt: at}},
		{Type: client.EventRevocation, Seq: 7, Revocation: broker.Revocation{Seq: 7, Level: broker.LevelTask, Target: "task-7", RevokedAt: at}},
		{Type: client.EventHeartbeat, Seq: 7, Time: at},
		{Type: client.EventKeys, Seq: 7, Time: at},
		{Type: client.EventReset, Seq: 0, After: 7, Head: 2, Time: at},
		{Type: client.EventRevocation, Seq: 1, Revocation: broker.Revocation{Seq: 1, Level: broker.LevelAgent, Target: "agent-1", RevokedAt: at}},
		{Type: client.EventHeartbeat, Seq: 1, Time: at},
	}, got)

	stop := errors.New("enough")
	err = c.Revocations(context.Background(), 0, func(client.FeedEvent) error { return stop })
	require.ErrorIs(t, err, stop, "onEvent's error ends the stream")
}

// TestRevocationsMalformed: what cannot be trusted ends the stream with
// ErrMalformedAnswer, never with a skipped or invented revocation.
func TestRevocationsMalformed(t *testing.T) {
	for name, body := range map[string]string{
		"not JSON":               "id: 1\nevent: revocation\ndata: {\"seq\":1,\n\n",
		"duplicate key":          "id: 1\nevent: revocation\ndata: {\"seq\":1,\"level\":\"token\",\"target\":\"a\",\"Target\":\"b\",\"revoked_at\":\"" + hbTime + "\"}\n\n",
		"ID is not the sequence": strings.Replace(revocationEvent(1, broker.LevelToken, "a"), "id: 1", "id: 2", 1),
		"no ID":                  strings.Replace(revocationEvent(1, broker.LevelToken, "a"), "id: 1\n", "", 1),
		"out of order":           revocationEvent(3, broker.LevelToken, "a") + revocationEvent(2, broker.LevelToken, "b"),
		"repeated":               revocationEvent(3, broker.LevelToken, "a") + revocationEvent(3, broker.LevelToken, "a"),
		"unknown level":          revocationEvent(1, "tenant", "a"),
		"no target":              revocationEvent(1, broker.LevelAgent, ""),
		"revocations skipped":    revocationEvent(1, broker.LevelToken, "a") + heartbeatEvent(client.EventHeartbeat, 3),
		"keys ahead":             heartbeatEvent(client.EventKeys, 1),
		"heartbeat time":         "event: heartbeat\ndata: {\"time\":\"yesterday\",\"seq\":0}\n\n",
		"reset from elsewhere":   revocationEvent(3, broker.LevelToken, "a") + resetEvent(5, 1) + revocationEvent(2, broker.LevelToken, "b"),
		"reset head":             resetEvent(0, -1),
		"huge line":              "event: revocation\ndata: " + strings.Repeat("x", client.MaxFeedLine+10) + "\n\n",
		"huge event":             "event: revocation\n" + strings.Repeat("data: "+strings.Repeat("x", 1000)+"\n", 70) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := feedServer(t, "text/event-stream", body)
			var got []client.FeedEvent
			err := c.Revocations(context.Background(), 0, func(ev client.FeedEvent) error { got = append(got, ev); return nil })
			require.ErrorIs(t, err, client.ErrMalformedAnswer)
			for _, ev := range got {
				require.NotEqual(t, "b", ev.Revocation.Target)
			}
		})
	}
	c, _ := feedServer(t, "application/json", `{"revocations":[]}`)
	err := c.Revocations(context.Background(), 0, func(client.FeedEvent) error { return nil })
	require.ErrorIs(t, err, client.ErrMalformedAnswer, "not an event stream")
}

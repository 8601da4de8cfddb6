package client

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRevocationsSilent: a stream that stops sending is given up after
// the idle bound, even though the connection stays open; one that keeps
// sending (comments count) is not.
func TestRevocationsSilent(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "event: heartbeat\ndata: {\"time\":\"2025-01-02T03:04:05Z\",\"seq\":0}\n\n")
		w.(http.Flusher).Flush()
		if strings.HasPrefix(r.URL.Path, "/chatty/") {
			for i := 0; ; i++ {
				select {
				case <-r.Context().Done():
					return
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
					fmt.Fprintf(w, ": still here %d\n", i)
					w.(http.Flusher).Flush()
				}
			}
		}
		select { // then nothing, with the connection open
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) })
	c, err := New(srv.URL, WithHTTPClient(&http.Client{Timeout: 50 * time.Millisecond}))
	require.NoError(t, err)
	beats := 0
	err = c.revocations(context.Background(), 0, 300*time.Millisecond, func(FeedEvent) error { beats++; return nil })
	require.ErrorIs(t, err, ErrFeedSilent)
	require.Equal(t, 1, beats, "the heartbeat was read; the client's 50ms timeout does not cut streams")

	chatty, err := New(srv.URL + "/chatty")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = chatty.revocations(ctx, 0, 300*time.Millisecond, func(FeedEvent) error { return nil })
	require.ErrorIs(t, err, context.DeadlineExceeded, "comments every 20ms keep a stream alive")
	require.NotErrorIs(t, err, ErrFeedSilent)
}

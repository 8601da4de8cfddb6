package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// The revocation feed (GET /v1/revocations, this repository's broker
// only): Server-Sent Events that a gateway verifying tokens itself reads
// to learn every revocation as it commits.

// Event types of the revocation feed, as its "event:" field names them.
const (
	// EventRevocation carries one revocation; its ID is the sequence number.
	EventRevocation = "revocation"
	// EventHeartbeat proves, every broker.FeedHeartbeat, that the stream is
	// alive and the broker's view is fresh.
	EventHeartbeat = "heartbeat"
	// EventKeys says the broker's key set changed: fetch JWKS again.
	EventKeys = "keys"
	// EventReset says the stream's position is in a numbering the
	// broker's database no longer has (it was restored from an older
	// backup; see broker.FeedResetData): the stream starts over, every
	// revocation follows from the first. Keep what you hold (a revocation
	// the restore lost stays in force) and resume from the Seq of the
	// events that follow.
	EventReset = "reset"
)

// FeedIdleTimeout is how long Revocations waits for the next byte of a
// stream before it gives up on it (ErrFeedSilent): three heartbeats.
const FeedIdleTimeout = 3 * broker.FeedHeartbeat

// MaxFeedLine bounds one line, and one event's data, of the feed (64 KiB);
// the broker's events are a few hundred bytes.
const MaxFeedLine = 64 << 10

// ErrFeedSilent is returned by Revocations when the stream sent nothing
// for FeedIdleTimeout: the connection may be dead without having said so.
var ErrFeedSilent = errors.New("revocation feed silent")

// FeedEvent is one event of the revocation feed.
type FeedEvent struct {
	// Type is EventRevocation, EventHeartbeat, EventKeys or EventReset.
	Type string
	// Seq is, for a revocation, its sequence number; for a heartbeat or
	// keys event, the sequence number up to which this stream has sent
	// every revocation (the position it resumed from, if it sent none);
	// for a reset, 0: the position the stream starts over from.
	Seq int64
	// After and Head are, for a reset, the position the stream was at and
	// the broker's newest revocation.
	After, Head int64
	// Revocation is the revocation of an EventRevocation event.
	Revocation broker.Revocation
	// Time is the broker's clock at a heartbeat, keys or reset event.
	Time time.Time
}

// Revocations reads the revocation feed with the client's token (an app
// token whose app's scope ceiling holds broker.FeedScope), starting after
// the revocation with sequence number after (0: from the first), and
// calls onEvent for each revocation, heartbeat, keys and reset event, in
// order.
// Events of other types are skipped. onEvent should return quickly; an
// error from it ends the stream and is returned.
//
// It returns only when the stream ends: ctx ends (ctx.Err()), the broker
// closes it or the connection breaks, nothing arrives for FeedIdleTimeout
// (ErrFeedSilent), or an event cannot be read (ErrMalformedAnswer: not
// strict JSON, a line longer than MaxFeedLine, a revocation out of order
// or with an unknown level, a heartbeat whose sequence number says that
// revocations were skipped). An answer other than 200 is an *Error. The
// caller resumes by calling again with the Seq of the last event it
// handled. The client's http.Client timeout does not apply: a stream
// lives as long as it is healthy.
func (c *Client) Revocations(ctx context.Context, after int64, onEvent func(FeedEvent) error) error {
	return c.revocations(ctx, after, FeedIdleTimeout, onEvent)
}

// feedPath is the feed's route.
const feedPath = "/v1/revocations"

func (c *Client) revocations(ctx context.Context, after int64, idle time.Duration, onEvent func(FeedEvent) error) error {
	if after < 0 {
		return fmt.Errorf("revocations: negative sequence number %d", after)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(idle, func() { cancel(ErrFeedSilent) })
	defer watchdog.Stop()
	err := c.readFeed(ctx, after, func() { watchdog.Reset(idle) }, onEvent)
	if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
		err = cause // the watchdog or the caller ended it: say which
	}
	return fmt.Errorf("revocations: %w", err)
}

// readFeed opens the stream and hands its events to onEvent; alive is
// called whenever a line arrives.
func (c *Client) readFeed(ctx context.Context, after int64, alive func(), onEvent func(FeedEvent) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+feedPath, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	req.Header.Set("User-Agent", c.userAgent)
	if after > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(after, 10))
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	hc := *c.http // the same transport, without the per-call timeout
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return newError(http.MethodGet, feedPath, http.StatusOK, resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return fmt.Errorf("%w: Content-Type %q, not text/event-stream", ErrMalformedAnswer, resp.Header.Get("Content-Type"))
	}
	feed := feedReader{lines: bufio.NewScanner(resp.Body), pos: after}
	feed.lines.Buffer(make([]byte, 0, 4<<10), MaxFeedLine+2) // room for the line terminator
	feed.lines.Split(sseLines)
	for {
		ev, err := feed.next(alive)
		if err != nil {
			return err
		}
		if ev.Type == "" {
			continue // a type this client does not know
		}
		if err := onEvent(ev); err != nil {
			return err
		}
	}
}

// feedReader turns the stream's lines into checked events.
type feedReader struct {
	lines *bufio.Scanner
	pos   int64 // the sequence number of the last revocation read
	first bool  // the byte order mark has been looked for
}

// sseEvent is one dispatched Server-Sent Event, its fields as sent.
type sseEvent struct {
	id, event string
	data      []byte
	hasID     bool
}

// next reads up to the next event of a known type (an empty Type for
// any other), or the error that ends the stream.
func (f *feedReader) next(alive func()) (FeedEvent, error) {
	raw, err := f.event(alive)
	if err != nil {
		return FeedEvent{}, err
	}
	switch raw.event {
	case EventRevocation:
		var r broker.Revocation
		if err := broker.DecodeStrict(raw.data, &r); err != nil {
			return FeedEvent{}, fmt.Errorf("%w: revocation event: %v", ErrMalformedAnswer, err)
		}
		switch {
		case !raw.hasID || raw.id != strconv.FormatInt(r.Seq, 10):
			return FeedEvent{}, fmt.Errorf("%w: revocation event with ID %q for sequence number %d", ErrMalformedAnswer, raw.id, r.Seq)
		case r.Seq <= f.pos:
			return FeedEvent{}, fmt.Errorf("%w: revocation %d after %d: out of order", ErrMalformedAnswer, r.Seq, f.pos)
		case !broker.ValidLevel(r.Level) || r.Target == "":
			return FeedEvent{}, fmt.Errorf("%w: revocation %d: level %q, target %q", ErrMalformedAnswer, r.Seq, r.Level, r.Target)
		}
		f.pos = r.Seq
		return FeedEvent{Type: EventRevocation, Seq: r.Seq, Revocation: r}, nil
	case EventHeartbeat, EventKeys:
		var d broker.FeedHeartbeatData
		if err := broker.DecodeStrict(raw.data, &d); err != nil {
			return FeedEvent{}, fmt.Errorf("%w: %s event: %v", ErrMalformedAnswer, raw.event, err)
		}
		at, err := time.Parse(time.RFC3339Nano, d.Time)
		if err != nil {
			return FeedEvent{}, fmt.Errorf("%w: %s event: time: %v", ErrMalformedAnswer, raw.event, err)
		}
		if d.Seq != f.pos {
			// The broker has sent everything up to d.Seq on this stream;
			// anything else means revocations went missing.
			return FeedEvent{}, fmt.Errorf("%w: %s event at sequence number %d, but the last revocation received is %d",
				ErrMalformedAnswer, raw.event, d.Seq, f.pos)
		}
		return FeedEvent{Type: raw.event, Seq: d.Seq, Time: at}, nil
	case EventReset:
		var d broker.FeedResetData
		if err := broker.DecodeStrict(raw.data, &d); err != nil {
			return FeedEvent{}, fmt.Errorf("%w: reset event: %v", ErrMalformedAnswer, err)
		}
		at, err := time.Parse(time.RFC3339Nano, d.Time)
		if err != nil {
			return FeedEvent{}, fmt.Errorf("%w: reset event: time: %v", ErrMalformedAnswer, err)
		}
		if d.After != f.pos || d.Head < 0 {
			return FeedEvent{}, fmt.Errorf("%w: reset event from %d (head %d), but the last revocation received is %d",
				ErrMalformedAnswer, d.After, d.Head, f.pos)
		}
		f.pos = 0
		return FeedEvent{Type: EventReset, After: d.After, Head: d.Head, Time: at}, nil
	}
	return FeedEvent{}, nil
}

// event reads lines up to the blank line that dispatches an event with
// data, following the Server-Sent Events format: "field: value" lines,
// ":" comments, data lines joined with newlines, unknown fields ignored.
func (f *feedReader) event(alive func()) (sseEvent, error) {
	var ev sseEvent
	for f.lines.Scan() {
		alive()
		line := f.lines.Bytes()
		if !f.first {
			f.first = true
			line = bytes.TrimPrefix(line, []byte("\uFEFF"))
		}
		if len(line) == 0 {
			if ev.data != nil || ev.event != "" {
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.event = string(value)
		case "data":
			if len(ev.data)+len(value)+1 > MaxFeedLine {
				return ev, fmt.Errorf("%w: event data longer than %d bytes", ErrMalformedAnswer, MaxFeedLine)
			}
			if ev.data == nil {
				ev.data = make([]byte, 0, len(value))
			} else {
				ev.data = append(ev.data, '\n')
			}
			ev.data = append(ev.data, value...)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				ev.id, ev.hasID = string(value), true
			}
		}
	}
	if err := f.lines.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return ev, fmt.Errorf("%w: a line longer than %d bytes", ErrMalformedAnswer, MaxFeedLine)
		}
		return ev, err
	}
	return ev, fmt.Errorf("the broker ended the stream: %w", io.EOF)
}

// sseLines splits a stream into lines ended by CRLF, LF or CR.
func sseLines(data []byte, atEOF bool) (int, []byte, error) {
	i := bytes.IndexAny(data, "\r\n")
	switch {
	case i < 0:
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	case data[i] == '\n':
		return i + 1, data[:i], nil
	case i+1 < len(data):
		if data[i+1] == '\n' {
			return i + 2, data[:i], nil
		}
		return i + 1, data[:i], nil
	case atEOF:
		return i + 1, data[:i], nil
	}
	return 0, nil, nil // a CR at the end: is an LF next?
}

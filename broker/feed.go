package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The revocation feed (GET /v1/revocations) streams every revocation, as
// it is committed, to gateways that verify tokens themselves: Server-Sent
// Events, one "revocation" event per revocation with its sequence number
// as the event ID, so a client that reconnects with Last-Event-ID (or
// ?after=<seq>) resumes exactly where it stopped. SSE rather than a long
// poll: one connection carries every change the moment it commits, and
// resuming is part of the protocol. Heartbeats every FeedHeartbeat, sent
// only while this broker's own view is fresh, let a client notice a silent
// break within seconds. A "keys" event says the key set changed (a
// rotation): fetch /.well-known/jwks.json again. A "reset" event says the
// database no longer has the revocation at the stream's position (it was
// restored from an older backup): the stream starts over from the first
// revocation (see FeedResetData).

// FeedScope is the scope an app's ceiling must hold for the app to read
// the feed (exactly, as a granted scope: read:revocations:*).
const FeedScope = "read:revocations:*"

// FeedHeartbeat is how often the feed proves it is alive.
const FeedHeartbeat = 2 * time.Second

// feedRecheck is how often a stream re-checks that its app still may read.
const feedRecheck = 30 * time.Second

// FeedEvent is the data of a "revocation" event.
type FeedEvent = Revocation

// FeedHeartbeatData is the data of a "heartbeat" event: the time, and the
// sequence number of the last revocation sent on this stream.
type FeedHeartbeatData struct {
	Time string `json:"time"`
	Seq  int64  `json:"seq"`
}

// FeedResetData is the data of a "reset" event: the database no longer
// has, at the stream's position After (the client's Last-Event-ID, or the
// last revocation sent since), the revocation that was there. It went
// back in time (restored from an older backup) and numbers new
// revocations again from its own newest one, so resuming after After
// would skip those renumbered below it. Head is the database's newest
// revocation: below After when a client resumes ahead of it, at or above
// it when revocations were made since the restore. The stream starts
// over: every revocation follows, from the first. A client counts from 0
// again and keeps what it holds, so that a revocation the restore lost
// stays in force (fail closed); a client that does not know the event
// refuses what follows as out of order, and fails closed too.
//
// The broker checks the revocation at a position it has sent; of a
// client's resume point it knows only the number, so a client that
// resumes from the revocation before its last one (Last-Event-ID n-1 when
// it holds n), and compares what arrives with what it holds, also finds
// out when the database's new revocations have overtaken its number.
type FeedResetData struct {
	Time  string `json:"time"`
	After int64  `json:"after"`
	Head  int64  `json:"head"`
}

// feedAccess reports why c may not read the feed, or "".
func (b *Broker) feedAccess(ctx context.Context, c *Claims) (string, error) {
	return b.appHolds(ctx, c, FeedScope, "read the revocation feed")
}

// appHolds reports why c may not do what (a gateway's power), or "": only
// the token of an active app whose ceiling holds scope, as such, may.
func (b *Broker) appHolds(ctx context.Context, c *Claims, scope, what string) (string, error) {
	appID, ok := strings.CutPrefix(c.Sub, "app:")
	if !ok {
		return "only an app token may " + what, nil
	}
	app, err := b.store.db.App(ctx, appID)
	switch {
	case errors.Is(err, ErrNotFound) || (err == nil && app.Status != AppActive):
		return "app not found", nil
	case err != nil:
		return "", err
	case !slices.Contains(app.Scopes, scope):
		return "the app's scope ceiling does not include " + scope, nil
	}
	return "", nil
}

// feedStart is where a stream starts: after Last-Event-ID or ?after=.
func feedStart(r *http.Request) int64 {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("after")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

func (b *Broker) handleFeed(w http.ResponseWriter, r *http.Request) {
	c := claimsFrom(r)
	ctx := r.Context()
	if why, err := b.feedAccess(ctx, c); err != nil {
		b.dbFailed(w, r, "app_lookup", err, "failed to open the revocation feed")
		return
	} else if why != "" {
		WriteProblem(w, r, http.StatusForbidden, ErrTypeForbidden, why)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	pos := feedPos{seq: feedStart(r)}
	heartbeat := time.NewTicker(FeedHeartbeat)
	defer heartbeat.Stop()
	recheck := time.Now().Add(feedRecheck)
	expires := time.Unix(c.Exp, 0)
	for backlog := true; ; backlog = false {
		changed, keys := b.store.changes.wait(), b.store.keysChanged.wait()
		if err := b.sendRevocations(ctx, w, c, &pos); err != nil {
			return // the client is gone, or the database is: either way the client resumes
		}
		// A heartbeat right after the backlog tells a new client it is in
		// sync now, instead of a heartbeat interval later.
		if backlog && b.store.fresh() == nil {
			if err := writeEvent(w, "heartbeat", "", FeedHeartbeatData{Time: formatTime(b.now()), Seq: pos.seq}); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-b.done:
			return // this configuration is stopping; the client reconnects to the next
		case <-changed:
		case <-keys:
			if err := writeEvent(w, "keys", "", FeedHeartbeatData{Time: formatTime(b.now()), Seq: pos.seq}); err != nil {
				return
			}
		case now := <-heartbeat.C:
			if b.store.fresh() != nil || !now.Before(expires) || b.store.revocations.Revoked(c) {
				return // stale or no longer allowed: silence tells the client
			}
			if now.After(recheck) {
				recheck = now.Add(feedRecheck)
				if why, err := b.feedAccess(ctx, c); err != nil || why != "" {
					return
				}
			}
			if err := writeEvent(w, "heartbeat", "", FeedHeartbeatData{Time: formatTime(b.now()), Seq: pos.seq}); err != nil {
				return
			}
		}
	}
}

// feedPos is a stream's position: the sequence number of the last
// revocation sent (or the client's resume point), and that revocation as
// the database had it.
type feedPos struct {
	seq  int64
	last Revocation // zero when only the number is known: the client's resume point
}

// sendRevocations writes every revocation after pos and moves pos to the
// last one written. It reads the revocation at pos again first: when the
// database no longer has it there (it was restored from an older backup
// and numbers revocations anew), it writes a "reset" event and every
// revocation from the first. It costs one row more per read, not a query.
func (b *Broker) sendRevocations(ctx context.Context, w http.ResponseWriter, c *Claims, pos *feedPos) error {
	const page = 1000
	for check := pos.seq > 0; ; check = false {
		from := pos.seq
		if check {
			from--
		}
		rs, err := b.store.db.RevocationsSince(ctx, from, page)
		if err != nil {
			return err
		}
		more := len(rs) == page
		if check {
			if len(rs) == 0 || rs[0].Seq != pos.seq || (pos.last.Seq != 0 && !rs[0].Same(pos.last)) {
				if err := b.feedReset(ctx, w, c, pos.seq); err != nil {
					return err
				}
				*pos = feedPos{}
				continue
			}
			pos.last, rs = rs[0], rs[1:]
		}
		for _, r := range rs {
			if err := writeEvent(w, "revocation", strconv.FormatInt(r.Seq, 10), r); err != nil {
				return err
			}
			pos.seq, pos.last = r.Seq, r
		}
		if !more {
			return nil
		}
	}
}

// feedReset tells the client that its stream, at after, starts over.
func (b *Broker) feedReset(ctx context.Context, w http.ResponseWriter, c *Claims, after int64) error {
	head, err := b.store.db.RevocationHead(ctx)
	if err != nil {
		return err
	}
	b.store.log.Warn("agentwrit: a revocation feed stream is at a position the database no longer has, as after a restore from an older backup; sending every revocation again",
		"client", c.Sub, "after", after, "database_seq", head)
	return writeEvent(w, "reset", "", FeedResetData{Time: formatTime(b.now()), After: after, Head: head})
}

// writeEvent writes one Server-Sent Event with JSON data (one line).
func writeEvent(w http.ResponseWriter, event, id string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	if id != "" {
		_, err = fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", id, event, b)
	} else {
		_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	}
	return err
}

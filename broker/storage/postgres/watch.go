package postgres

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// watchPing is how long Watch waits for a notice before it checks that
// its connection still answers: a connection cut without a word (a
// network partition) is noticed within about this, not TCP's minutes.
const watchPing = 15 * time.Second

// Watch implements broker.Database: it LISTENs on a connection of its own,
// outside the pool, and returns when ctx ends, when the DB is closed, or
// when the connection breaks (wrapping broker.ErrUnavailable).
func (d *DB) Watch(ctx context.Context, notify func(broker.Change)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(d.closing, cancel)()
	if d.closed.Load() {
		return d.fail("watch", errors.New("closed"))
	}
	cctx, ccancel := context.WithTimeout(ctx, d.conn.ConnectTimeout)
	conn, err := pgx.ConnectConfig(cctx, d.conn)
	ccancel()
	if err != nil {
		return d.watchEnd(ctx, err)
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Close(cctx) //nolint:errcheck // closing a connection we are done with
		ccancel()
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return d.watchEnd(ctx, err)
	}
	for {
		wctx, wcancel := context.WithTimeout(ctx, watchPing)
		n, err := conn.WaitForNotification(wctx)
		quiet := wctx.Err() != nil
		wcancel()
		switch {
		case err == nil:
			notify(parseChange(n.Payload))
		case ctx.Err() != nil:
			return ctx.Err()
		case quiet && !conn.IsClosed():
			if err := d.ping(ctx, conn); err != nil {
				return d.watchEnd(ctx, err)
			}
		default:
			return d.watchEnd(ctx, err)
		}
	}
}

func (d *DB) ping(ctx context.Context, conn *pgx.Conn) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	return conn.Ping(ctx)
}

// watchEnd is Watch's error: ctx's when it ended, else the broken
// connection's.
func (d *DB) watchEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	err = d.fail("watch", err)
	if !errors.Is(err, broker.ErrUnavailable) {
		// Whatever ended the watch, the caller's answer is to catch up
		// and watch again.
		err = errors.Join(broker.ErrUnavailable, err)
	}
	return err
}

// parseChange reads a notice's payload. One this build does not know (a
// newer replica's) still means "something changed": catch up.
func parseChange(payload string) broker.Change {
	if payload == "keys" {
		return broker.Change{Kind: broker.ChangeKeys}
	}
	c := broker.Change{Kind: broker.ChangeRevocation}
	if s, ok := strings.CutPrefix(payload, "revocation:"); ok {
		c.Seq, _ = strconv.ParseInt(s, 10, 64)
	}
	return c
}

package broker

import (
	"context"
	"sync"
	"time"
)

// auditLog appends to the chain through the Database. An event is stored
// before its append returns; an event that cannot be stored is not chained.
//
// Appends are group-committed: while one batch is being written, later
// appends queue up, and the next writer commits the whole queue in one
// transaction, so a burst of denials costs one commit instead of one each.
// A write that fails fails every append of its batch.
type auditLog struct {
	writeMu sync.Mutex // held by the one appender writing a batch

	mu    sync.Mutex // guards queue
	queue []*auditAppend

	db  AuditDB
	now func() time.Time
}

// auditAppend is one queued event; done and err are set by the writer of
// its batch while it holds writeMu.
type auditAppend struct {
	e    Event
	done bool
	err  error
}

// append queues e, writes the queue unless another appender already did,
// and returns e as stored.
func (l *auditLog) append(ctx context.Context, e Event) (Event, error) {
	a := &auditAppend{e: e}
	l.mu.Lock()
	l.queue = append(l.queue, a)
	l.mu.Unlock()

	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if !a.done { // nobody took it into a batch yet: write the whole queue
		l.mu.Lock()
		batch := l.queue
		l.queue = nil
		l.mu.Unlock()
		events := make([]Event, len(batch))
		for i, b := range batch {
			events[i] = b.e
		}
		// The batch holds other requests' events: one caller giving up
		// must not cancel theirs.
		err := l.db.AppendAudit(context.WithoutCancel(ctx), events, l.now())
		for i, b := range batch {
			b.done, b.err = true, err
			if err == nil {
				b.e = events[i]
			}
		}
	}
	if a.err != nil {
		return Event{}, a.err
	}
	return a.e, nil
}

// audit appends e to the chain. A failed write is logged and counted; the
// request it describes still gets its answer, as upstream does.
func (b *Broker) audit(ctx context.Context, e Event) {
	start := b.now()
	if _, err := b.store.audit.append(ctx, e); err != nil {
		b.obs.DBError("audit_write")
		b.log.Error("audit write failed", "event_type", e.EventType, "error", err)
		return
	}
	b.obs.AuditWrite(b.now().Sub(start))
	b.obs.AuditEvent(e.EventType)
}

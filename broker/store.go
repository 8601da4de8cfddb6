package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of StoreOptions.
const (
	// DefaultMaxStaleness bounds how far behind the database a replica's
	// revocation index may fall before it refuses to verify (shared
	// databases only): a few catch-up intervals, so one slow query is
	// not an outage, and short enough that a replica cut off from the
	// database stops allowing within seconds.
	DefaultMaxStaleness = 5 * time.Second
	// DefaultCatchUpInterval is how often a replica of a shared database
	// reads revocations it may have missed, notifications or not.
	DefaultCatchUpInterval = time.Second
)

// StoreOptions configure a Store.
type StoreOptions struct {
	// MaxStaleness: with a shared database, Verify fails with
	// ErrUnavailable once the revocation index has not been brought up to
	// date for this long. Zero means DefaultMaxStaleness.
	MaxStaleness time.Duration
	// CatchUpInterval: how often a shared database is read for missed
	// revocations. Zero means DefaultCatchUpInterval.
	CatchUpInterval time.Duration
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// UsageRetention is how long scope usage is kept (0: DefaultUsageRetention).
	UsageRetention time.Duration
	// AuditRetention, when positive, prunes audit events older than this,
	// after appending an audit_pruned anchor that keeps the rest of the
	// chain verifiable. Zero keeps the whole chain.
	AuditRetention time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultUsageRetention keeps a month of scope usage; decision counts,
// which feed a one-hour chart, are kept two days.
const (
	DefaultUsageRetention = 30 * 24 * time.Hour
	decisionRetention     = 48 * time.Hour
)

// Store is a Database plus the live state built from it that every Broker
// of this process shares: the revocation index checked on every request,
// the key ring, the audit appender, and the nonces when the database does
// not keep them. During a Caddy reload the new configuration's brokers and
// the old one's use the same Store, so they see the same revocations and
// append to one chain.
//
// With a shared database (PostgreSQL, several replicas) a follower keeps
// the index and the key ring current: it catches up on every notification
// from the database and every CatchUpInterval regardless.
type Store struct {
	db          Database
	info        DatabaseInfo
	nonces      NonceDB
	revocations *RevocationIndex
	keys        *keyRing
	audit       *auditLog
	auditPruned time.Time // last audit prune; the janitor's alone
	denials     *denialLog
	usage       *UsageRecorder
	opt         StoreOptions
	log         *slog.Logger

	changes     broadcast     // closed and renewed whenever revocations may have been added
	keysChanged broadcast     // closed and renewed when the key ring is reloaded
	synced      atomic.Int64  // unix nanoseconds of the last complete catch-up
	catchUp     chan struct{} // wakes the follower; capacity 1
	reloadMu    sync.Mutex    // serializes key-ring reloads

	statsMu   sync.Mutex // guards the cached counts below
	stats     Stats
	statsHead AuditHead
	statsAt   time.Time

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NewStore loads the key ring (creating the first key in an empty
// database) and the revocations, and starts the store's background work;
// Close stops it and closes db.
func NewStore(ctx context.Context, db Database, o StoreOptions) (*Store, error) {
	if o.MaxStaleness <= 0 {
		o.MaxStaleness = DefaultMaxStaleness
	}
	if o.CatchUpInterval <= 0 {
		o.CatchUpInterval = DefaultCatchUpInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.UsageRetention <= 0 {
		o.UsageRetention = DefaultUsageRetention
	}
	s := &Store{
		db: db, info: db.Info(), opt: o, log: o.Logger,
		revocations: NewRevocationIndex(),
		keys:        &keyRing{now: o.Now},
		audit:       &auditLog{db: db, now: o.Now},
		catchUp:     make(chan struct{}, 1),
		stop:        make(chan struct{}),
	}
	s.denials = newDenialLog(s.writeSummary, o.Now)
	s.usage = NewUsageRecorder(UsageOptions{Sink: db, Logger: o.Logger, Now: o.Now})
	if n, ok := db.(NonceDB); ok {
		s.nonces = n
	} else {
		s.nonces = newMemoryNonces(defaultMaxNonces)
	}
	if err := s.keys.loadKeys(ctx, db); err != nil {
		s.usage.Close(ctx)
		return nil, err
	}
	if err := s.catchUpRevocations(ctx); err != nil {
		s.usage.Close(ctx)
		return nil, err
	}
	s.wg.Add(1)
	go s.janitor()
	if s.info.Shared {
		s.wg.Add(2)
		go s.watch()
		go s.follow()
	}
	return s, nil
}

// Database is the store's database.
func (s *Store) Database() Database { return s.db }

// Usage is the recorder of this process's embedded gateways: they count
// into it, and it flushes into the database; a reload loses nothing.
func (s *Store) Usage() *UsageRecorder { return s.usage }

// Info describes the store's database.
func (s *Store) Info() DatabaseInfo { return s.info }

// Close stops the background work and closes the database. It is idempotent.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
		s.denials.flush(true)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		uerr := s.usage.Close(ctx)
		err = errors.Join(uerr, s.db.Close())
	})
	return err
}

// fresh returns ErrUnavailable when the revocation index of a shared
// database is older than the staleness bound: then a revocation made on
// another replica might be missing, and failing closed is the only safe
// answer. It costs an atomic load on the hot path.
func (s *Store) fresh() error {
	if !s.info.Shared {
		return nil
	}
	age := s.syncedAgo()
	if age > s.opt.MaxStaleness {
		return fmt.Errorf("%w: revocations last synchronized %s ago (bound %s)", ErrUnavailable, age.Round(time.Millisecond), s.opt.MaxStaleness)
	}
	return nil
}

// statsMaxAge is how old Stats may answer from its cache.
const statsMaxAge = 5 * time.Second

// Stats are the counts of the database, at most a few seconds old, and
// the audit chain's head: what gauges and status pages show, right after a
// restart or a reload as at any other time.
func (s *Store) Stats(ctx context.Context) (Stats, AuditHead, error) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	now := s.opt.Now()
	if now.Sub(s.statsAt) < statsMaxAge {
		return s.stats, s.statsHead, nil
	}
	st, err := s.db.Stats(ctx, now)
	if err != nil {
		return s.stats, s.statsHead, err
	}
	head, err := s.db.AuditHead(ctx)
	if err != nil {
		return s.stats, s.statsHead, err
	}
	s.stats, s.statsHead, s.statsAt = st, head, now
	return st, head, nil
}

// syncedAgo is the age of the last complete revocation catch-up.
func (s *Store) syncedAgo() time.Duration {
	return s.opt.Now().Sub(time.Unix(0, s.synced.Load()))
}

// revoke records a revocation and makes it effective in this process
// before returning, whatever the follower is doing.
func (s *Store) revoke(ctx context.Context, level, target string, now time.Time) (Revocation, error) {
	r, err := s.db.Revoke(ctx, level, target, now)
	if err != nil {
		return r, err
	}
	s.added(r)
	return r, nil
}

// added makes a revocation committed by this process effective at once,
// and wakes the revocation feed.
func (s *Store) added(r Revocation) {
	s.revocations.Add(r)
	s.changes.notify()
	s.countsChanged()
}

// countsChanged makes the next Stats read the database: what this process
// just wrote shows at once (other replicas' writes within statsMaxAge).
func (s *Store) countsChanged() {
	s.statsMu.Lock()
	s.statsAt = time.Time{}
	s.statsMu.Unlock()
}

// catchUpRevocations applies every revocation after the index's sequence
// number, in pages. It reads from the revocation before, the last one it
// applied, to check that the database still has it there: a database
// restored from an older backup does not (it numbers new revocations
// again from its own newest one), and reading on after the index's number
// would skip those renumbered below it. Then the index is read again from
// the start instead, keeping what it holds (see rewound).
func (s *Store) catchUpRevocations(ctx context.Context) error {
	const page = 1000
	for check := true; ; check = false {
		seq, last := s.revocations.Position()
		from := seq
		if check && seq > 0 {
			from = seq - 1
		}
		rs, err := s.db.RevocationsSince(ctx, from, page)
		if err != nil {
			return fmt.Errorf("load revocations: %w", err)
		}
		more := len(rs) == page
		if from < seq {
			if len(rs) == 0 || !rs[0].Same(last) {
				s.rewound(ctx, seq)
				continue
			}
			rs = rs[1:]
		}
		s.revocations.Apply(rs)
		if len(rs) > 0 {
			s.changes.notify()
		}
		if !more {
			s.synced.Store(s.opt.Now().UnixNano())
			return nil
		}
	}
}

// rewound handles a database that no longer holds the revocation the
// index applied last, at seq: it went back in time. The index is read
// again from the start, as a union with what it holds, so that a
// revocation the restore lost stays in force in this process (fail
// closed).
func (s *Store) rewound(ctx context.Context, seq int64) {
	attrs := []any{"index_seq", seq}
	if head, err := s.db.RevocationHead(ctx); err == nil {
		attrs = append(attrs, "database_seq", head)
	}
	s.log.Warn("agentwrit: the database's revocation sequence went back, as after a restore from an older backup; "+
		"reading every revocation again from the start, and those already in force in this process stay in force", attrs...)
	s.revocations.Rewind()
	s.changes.notify() // the feed's streams check their positions too
}

// reloadKeys re-reads the key ring, after a rotation here or elsewhere.
func (s *Store) reloadKeys(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	stored, err := s.db.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}
	if err := s.keys.load(stored); err != nil {
		return err
	}
	s.keysChanged.notify()
	return nil
}

// watch relays the database's change notices to the follower, and
// reconnects with backoff when the notification channel breaks.
func (s *Store) watch() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-s.stop; cancel() }()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.db.Watch(ctx, func(c Change) {
			backoff = 100 * time.Millisecond
			if c.Kind == ChangeKeys {
				if err := s.reloadKeys(ctx); err != nil {
					s.log.Warn("agentwrit: reloading signing keys failed", "error", err)
				}
				return
			}
			s.wake()
		})
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("agentwrit: database change notifications interrupted; relying on catch-up", "error", err)
		// A notice may have been lost while disconnected.
		s.wake()
		if err := s.reloadKeys(ctx); err != nil {
			s.log.Debug("agentwrit: reloading signing keys failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) wake() {
	select {
	case s.catchUp <- struct{}{}:
	default:
	}
}

// follow catches up on every wake-up and every CatchUpInterval.
func (s *Store) follow() {
	defer s.wg.Done()
	t := time.NewTicker(s.opt.CatchUpInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		case <-s.catchUp:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.MaxStaleness)
		err := s.catchUpRevocations(ctx)
		cancel()
		switch {
		case err != nil && !failing:
			failing = true
			s.log.Warn("agentwrit: cannot read revocations from the database; enforcement fails closed once they are stale",
				"max_staleness", s.opt.MaxStaleness, "error", err)
		case err == nil && failing:
			failing = false
			s.log.Info("agentwrit: revocations synchronized again")
		}
	}
}

// writeSummary appends a folded-denials summary to the chain.
func (s *Store) writeSummary(e Event) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.audit.append(ctx, e); err != nil {
		s.log.Error("agentwrit: audit write failed", "event_type", e.EventType, "error", err)
	}
}

// Housekeeping intervals and what they keep.
const (
	janitorInterval = 10 * time.Second
	// expiredRetention keeps expired launch tokens and token records a
	// day, so "expired" stays distinguishable from "not found".
	expiredRetention = 24 * time.Hour
	// auditPruneInterval spaces audit pruning, so that each anchor event
	// stands for an hour of pruned events, not ten seconds of them.
	auditPruneInterval = time.Hour
)

// janitor prunes what has expired, so neither memory nor the database
// grows without bound.
func (s *Store) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.denials.flush(false)
			s.prune(s.opt.Now())
		}
	}
}

func (s *Store) prune(now time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := errors.Join(
		s.nonces.PruneNonces(ctx, now),
		s.db.PruneLaunchTokens(ctx, now.Add(-expiredRetention)),
		s.db.PruneTokens(ctx, now.Add(-expiredRetention)),
		s.db.PruneUsage(ctx, now.Add(-s.opt.UsageRetention), now.Add(-decisionRetention)),
		s.pruneAudit(ctx, now),
	)
	if err != nil {
		s.log.Warn("agentwrit: pruning expired records failed", "error", err)
	}
}

// pruneAudit applies AuditRetention: it anchors the chain at the newest
// event older than the cutoff, then deletes that event and all before it.
// The anchor is stored first, so a crash between the two steps leaves a
// whole chain with a spare anchor, never an unanchored one.
func (s *Store) pruneAudit(ctx context.Context, now time.Time) error {
	if s.opt.AuditRetention <= 0 || now.Sub(s.auditPruned) < auditPruneInterval {
		return nil
	}
	s.auditPruned = now
	cutoff := now.Add(-s.opt.AuditRetention)
	last, _, err := s.db.QueryAudit(ctx, AuditFilter{Until: &cutoff, NewestFirst: true, Limit: 1})
	if err != nil || len(last) == 0 {
		return err
	}
	e := last[0]
	if _, err := s.audit.append(ctx, Event{
		EventType: EventAuditPruned, Outcome: OutcomeSuccess, Detail: PrunedDetail(e.ID, e.Hash),
	}); err != nil {
		return fmt.Errorf("audit anchor: %w", err)
	}
	n, err := s.db.PruneAudit(ctx, seqOf(e.ID))
	if err != nil {
		return err
	}
	s.log.Info("agentwrit: pruned the audit chain", "through", e.ID, "events", n)
	return nil
}

// broadcast wakes every waiter at once: wait returns a channel that is
// closed at the next notify.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcast) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}

package broker

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// Defaults of UsageOptions.
const (
	// DefaultUsageFlush is how often counts are flushed.
	DefaultUsageFlush = 5 * time.Second
	// DefaultUsageMaxKeys bounds the distinct (token, rule, scope,
	// result) keys counted between two flushes: about 110 bytes each
	// (BenchmarkUsageRecorderMemory), so the default caps the recorder at
	// roughly 11 MiB. Beyond it, decisions are dropped and counted.
	DefaultUsageMaxKeys = 100_000
)

// UsageSink stores what a UsageRecorder flushes: the broker's database for
// an embedded gateway, the broker's usage endpoint for a remote one.
type UsageSink interface {
	AddUsage(ctx context.Context, records []UsageRecord, decisions []DecisionCount) error
}

// UsageOptions configure a UsageRecorder.
type UsageOptions struct {
	Sink      UsageSink
	Flush     time.Duration // 0: DefaultUsageFlush
	MaxKeys   int           // 0: DefaultUsageMaxKeys
	Logger    *slog.Logger
	Now       func() time.Time
	OnFlush   func(records int, err error) // for metrics; may be nil
	OnDropped func(n int64)                // for metrics; may be nil
}

// UsageRecorder counts gateway decisions in memory and flushes them in
// batches. The hot path (Allowed) is a shard lock and a map update keyed
// by pointers the request already holds (the cached claims, the rule), so
// it costs tens of nanoseconds; who the agent is and which granted scope
// covered the request are worked out at flush time.
type UsageRecorder struct {
	shards  [usageShards]usageShard
	perMax  int
	dropped atomic.Int64
	clock   atomic.Int64 // unix seconds, advanced by the flusher

	decMu     sync.Mutex
	decisions map[decisionKey]int64
	allowed   atomic.Int64 // the hot decisions, counted without the lock
	public    atomic.Int64

	pendMu  sync.Mutex
	pending []UsageRecord // failed flushes, retried with the next one

	o    UsageOptions
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// usageShards spreads the recorder's locks; keyed by the last character
// of the jti (random hex), so shards fill evenly.
const usageShards = 16

type usageShard struct {
	mu sync.Mutex
	m  map[usageKey]*usageCount
}

type usageKey struct {
	claims   *Claims
	rule     *scopemap.Rule
	required string
	result   string
}

type usageCount struct {
	n           int64
	first, last int64 // unix seconds
}

type decisionKey struct {
	minute         int64
	result, reason string
}

// NewUsageRecorder starts a recorder; Close flushes what it holds.
func NewUsageRecorder(o UsageOptions) *UsageRecorder {
	if o.Flush <= 0 {
		o.Flush = DefaultUsageFlush
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = DefaultUsageMaxKeys
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &UsageRecorder{o: o, perMax: max(1, o.MaxKeys/usageShards), decisions: map[decisionKey]int64{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for i := range r.shards {
		r.shards[i].m = map[usageKey]*usageCount{}
	}
	r.clock.Store(o.Now().Unix())
	go r.run()
	return r
}

func (r *UsageRecorder) shard(c *Claims) *usageShard {
	n := len(c.Jti)
	if n == 0 {
		return &r.shards[0]
	}
	b := c.Jti[n-1]
	if b >= 'a' {
		b -= 'a' - 10 // hex letters after the ten digits
	}
	return &r.shards[b%usageShards]
}

// Record counts one decision about a verified token: the rule that
// matched and the scopes it required, with result UsageAllowed,
// UsageDenied, UsageWouldAllow or UsageWouldDeny.
func (r *UsageRecorder) Record(c *Claims, rule *scopemap.Rule, required []string, result string) {
	now := r.clock.Load()
	s := r.shard(c)
	s.mu.Lock()
	for _, req := range required {
		k := usageKey{c, rule, req, result}
		if e := s.m[k]; e != nil {
			e.n++
			e.last = now
			continue
		}
		if len(s.m) >= r.perMax {
			r.dropped.Add(1)
			continue
		}
		s.m[k] = &usageCount{n: 1, first: now, last: now}
	}
	s.mu.Unlock()
}

// Decision results and reasons the recorder counts without a lock.
const (
	DecisionAllow = "allow"
	ReasonOK      = "ok"
	ReasonPublic  = "public"
)

// Decision counts one decision of any kind, for the per-minute chart.
func (r *UsageRecorder) Decision(result, reason string) {
	if result == DecisionAllow {
		switch reason {
		case ReasonOK:
			r.allowed.Add(1)
			return
		case ReasonPublic:
			r.public.Add(1)
			return
		}
	}
	k := decisionKey{r.clock.Load() / 60 * 60, result, reason}
	r.decMu.Lock()
	r.decisions[k]++
	r.decMu.Unlock()
}

// Dropped is how many decisions were not counted because the recorder was
// full.
func (r *UsageRecorder) Dropped() int64 { return r.dropped.Load() }

func (r *UsageRecorder) run() {
	defer close(r.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := r.o.Now()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.clock.Store(r.o.Now().Unix())
			if now.Sub(last) >= r.o.Flush {
				last = now
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r.Flush(ctx)
				cancel()
			}
		}
	}
}

// Close stops the flusher and flushes what is left.
func (r *UsageRecorder) Close(ctx context.Context) error {
	var err error
	r.once.Do(func() {
		close(r.stop)
		<-r.done
		err = r.Flush(ctx)
	})
	return err
}

// Flush hands everything counted so far to the sink, aggregated per
// hour, agent, rule, required and granted scope and result. What the sink
// refuses is kept for the next flush (within the recorder's bound).
func (r *UsageRecorder) Flush(ctx context.Context) error {
	agg := map[usageRecordKey]*UsageRecord{}
	rules := map[*scopemap.Rule]string{}
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		m := s.m
		if len(m) == 0 {
			s.mu.Unlock()
			continue // kept, not swapped: reading it unlocked would race Record
		}
		s.m = make(map[usageKey]*usageCount, len(m))
		s.mu.Unlock()
		for k, e := range m {
			rule, ok := rules[k.rule]
			if !ok && k.rule != nil {
				rule = k.rule.String()
				rules[k.rule] = rule
			}
			rec := UsageRecord{
				Hour: time.Unix(e.first, 0).UTC().Truncate(time.Hour), AgentID: k.claims.Sub, TaskID: k.claims.TaskID,
				OrchID: k.claims.OrchID, Rule: rule, Required: k.required, Result: k.result,
			}
			if k.result == UsageAllowed || k.result == UsageWouldAllow {
				rec.Granted = granting(k.claims.Scope, k.required)
			}
			mergeUsage(agg, rec, e.n, e.first, e.last)
		}
	}
	r.pendMu.Lock()
	for _, p := range r.pending {
		mergeUsage(agg, p, p.Count, p.First.Unix(), p.Last.Unix())
	}
	r.pending = nil
	r.pendMu.Unlock()
	records := make([]UsageRecord, 0, len(agg))
	for _, v := range agg {
		records = append(records, *v)
	}
	minute := r.clock.Load() / 60 * 60
	r.decMu.Lock()
	dm := r.decisions
	r.decisions = map[decisionKey]int64{}
	r.decMu.Unlock()
	for reason, n := range map[string]int64{ReasonOK: r.allowed.Swap(0), ReasonPublic: r.public.Swap(0)} {
		if n > 0 {
			dm[decisionKey{minute, DecisionAllow, reason}] += n
		}
	}
	decisions := make([]DecisionCount, 0, len(dm))
	for k, n := range dm {
		decisions = append(decisions, DecisionCount{Minute: time.Unix(k.minute, 0).UTC(), Result: k.result, Reason: k.reason, Count: n})
	}
	if n := r.dropped.Swap(0); n > 0 && r.o.OnDropped != nil {
		r.o.OnDropped(n)
	}
	if len(records) == 0 && len(decisions) == 0 {
		return nil
	}
	err := r.o.Sink.AddUsage(ctx, records, decisions)
	if r.o.OnFlush != nil {
		r.o.OnFlush(len(records), err)
	}
	if err != nil {
		r.o.Logger.Warn("agentwrit: flushing scope usage failed; keeping it for the next flush", "records", len(records), "error", err)
		r.pendMu.Lock()
		if len(r.pending)+len(records) <= r.o.MaxKeys {
			r.pending = append(r.pending, records...)
		} else {
			r.dropped.Add(int64(len(records)))
		}
		r.pendMu.Unlock()
		// Decision counts are for a chart: a lost minute is not kept.
	}
	return err
}

// usageRecordKey is what a UsageRecord is aggregated by.
type usageRecordKey struct {
	hour                                               int64
	agent, task, orch, rule, required, granted, result string
}

// mergeUsage adds n decisions between first and last (unix seconds) to
// the record of rec's key.
func mergeUsage(agg map[usageRecordKey]*UsageRecord, rec UsageRecord, n, first, last int64) {
	k := usageRecordKey{rec.Hour.Unix(), rec.AgentID, rec.TaskID, rec.OrchID, rec.Rule, rec.Required, rec.Granted, rec.Result}
	v := agg[k]
	if v == nil {
		v = &UsageRecord{Hour: rec.Hour, AgentID: rec.AgentID, TaskID: rec.TaskID, OrchID: rec.OrchID, Rule: rec.Rule,
			Required: rec.Required, Granted: rec.Granted, Result: rec.Result,
			First: time.Unix(first, 0).UTC(), Last: time.Unix(last, 0).UTC()}
		agg[k] = v
	}
	v.Count += n
	if f := time.Unix(first, 0).UTC(); f.Before(v.First) {
		v.First = f
	}
	if l := time.Unix(last, 0).UTC(); l.After(v.Last) {
		v.Last = l
	}
}

// granting is the first granted scope that covers required.
func granting(granted []string, required string) string {
	for _, g := range granted {
		if scopemap.Covers([]string{g}, required) {
			return g
		}
	}
	return ""
}

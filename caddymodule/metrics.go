package caddymodule

import (
	"context"
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
)

// register adds c to reg, or returns the collector already registered under
// the same name: Caddy builds a fresh registry per config load, but several
// modules of one config share it.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// collectors are the plugin's counters and histograms. They live as long
// as some module of this process uses them (an entry of a usage pool), not
// as long as one config: Caddy builds a fresh metrics registry per config
// load, and registering the same collectors into each new registry keeps
// the counters counting across a reload, as Prometheus users expect (a
// restart starts them from zero). Gauges are not kept here: they are
// computed from the database at every scrape (watch), so they are right
// after a reload and after a restart alike.
type collectors struct {
	broker  *metrics
	gateway *gatewayMetrics
	remote  *remoteMetrics
	all     []prometheus.Collector
	pooled  bool // from collectorPool (tests make their own)
}

var collectorPool = caddy.NewUsagePool()

const collectorKey = "agentwrit"

func (*collectors) Destruct() error { return nil }

// loadCollectors returns the process's collectors, registered into reg;
// every call must be matched by a release.
func loadCollectors(reg prometheus.Registerer) (*collectors, error) {
	v, _, err := collectorPool.LoadOrNew(collectorKey, func() (caddy.Destructor, error) { return newCollectors(), nil })
	if err != nil {
		return nil, err
	}
	c := v.(*collectors)
	c.pooled = true
	for _, col := range c.all {
		if _, err := register(reg, col); err != nil {
			c.release()
			return nil, err
		}
	}
	return c, nil
}

// release drops one use of the collectors.
func (c *collectors) release() {
	if c != nil && c.pooled {
		_, _ = collectorPool.Delete(collectorKey)
	}
}

func newCollectors() *collectors {
	c := &collectors{}
	add := func(col prometheus.Collector) { c.all = append(c.all, col) }
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		add(v)
		return v
	}
	counter := func(name, help string) prometheus.Counter {
		v := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		add(v)
		return v
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		v := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
		add(v)
		return v
	}
	c.broker = &metrics{
		tokensIssued:  vec("agentwrit_tokens_issued_total", "Tokens issued, by first scope.", "scope"),
		tokensRevoked: vec("agentwrit_tokens_revoked_total", "Revocations, by level.", "level"),
		registrations: vec("agentwrit_registrations_total", "Agent registrations, by status.", "status"),
		adminAuth:     vec("agentwrit_admin_auth_total", "Admin authentications, by status.", "status"),
		auditEvents:   vec("agentwrit_audit_events_total", "Audit events, by type.", "event_type"),
		dbErrors:      vec("agentwrit_db_errors_total", "Database errors, by operation.", "operation"),
		launchTokens:  counter("agentwrit_launch_tokens_created_total", "Launch tokens created."),
		auditWrite: histogram("agentwrit_audit_write_duration_seconds", "Audit event write latency.",
			[]float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1}),
	}
	c.gateway = &gatewayMetrics{decisions: vec("agentwrit_gateway_decisions_total",
		"Enforcement decisions, by result (allow, deny, report) and reason.", "result", "reason")}
	calls := vec("agentwrit_gateway_remote_calls_total",
		"Calls to the remote broker's /v1/token/validate, by outcome (valid, invalid, error, timeout).", "outcome")
	c.remote = &remoteMetrics{
		hits:      counter("agentwrit_gateway_cache_hits_total", "Remote validations answered from the cache (positive or negative entries)."),
		misses:    counter("agentwrit_gateway_cache_misses_total", "Remote validations the cache could not answer."),
		evictions: counter("agentwrit_gateway_cache_evictions_total", "Cache entries dropped to stay within cache_size."),
		staleHits: counter("agentwrit_gateway_cache_stale_hits_total", "Expired positive entries served under stale_if_error while the broker failed."),
		latency: histogram("agentwrit_gateway_remote_call_duration_seconds", "Latency of calls to the remote broker's /v1/token/validate.",
			[]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}),
	}
	for o := range c.remote.calls {
		c.remote.calls[o] = calls.WithLabelValues(remote.Outcome(o).String())
	}
	return c
}

// watch registers, into a config's registry, the gauges computed from the
// store: agents holding a live token, live tokens, stored revocations and
// the audit chain's length.
func (c *collectors) watch(reg prometheus.Registerer, s *broker.Store) error {
	gauge := func(name, help string, f func(broker.Stats, broker.AuditHead) int64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			st, head, _ := s.Stats(ctx) // on error: the last counts known
			return float64(f(st, head))
		})
	}
	var errs []error
	for _, g := range []prometheus.GaugeFunc{
		gauge("agentwrit_active_agents", "Agents holding a live (unexpired, unrevoked) token.",
			func(st broker.Stats, _ broker.AuditHead) int64 { return st.LiveAgents }),
		gauge("agentwrit_live_tokens", "Unexpired, unrevoked tokens the broker issued.",
			func(st broker.Stats, _ broker.AuditHead) int64 { return st.LiveTokens }),
		gauge("agentwrit_revocations", "Stored revocations.",
			func(st broker.Stats, _ broker.AuditHead) int64 { return st.Revocations }),
		gauge("agentwrit_audit_chain_length", "Events in the audit chain.",
			func(_ broker.Stats, h broker.AuditHead) int64 { return h.Seq }),
	} {
		_, err := register(reg, g)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// metrics are the broker's upstream metrics, fed through broker.Observer.
type metrics struct {
	tokensIssued, tokensRevoked, registrations, adminAuth, auditEvents, dbErrors *prometheus.CounterVec
	launchTokens                                                                 prometheus.Counter
	auditWrite                                                                   prometheus.Histogram
}

var _ broker.Observer = (*metrics)(nil)

func status(ok bool) string {
	if ok {
		return "success"
	}
	return "failure"
}

func (m *metrics) TokenIssued(scope string)    { m.tokensIssued.WithLabelValues(scope).Inc() }
func (m *metrics) TokenRevoked(level string)   { m.tokensRevoked.WithLabelValues(level).Inc() }
func (m *metrics) Registration(ok bool)        { m.registrations.WithLabelValues(status(ok)).Inc() }
func (m *metrics) AdminAuth(ok bool)           { m.adminAuth.WithLabelValues(status(ok)).Inc() }
func (m *metrics) LaunchTokenCreated()         { m.launchTokens.Inc() }
func (m *metrics) AuditEvent(eventType string) { m.auditEvents.WithLabelValues(eventType).Inc() }
func (m *metrics) AuditWrite(d time.Duration)  { m.auditWrite.Observe(d.Seconds()) }
func (m *metrics) DBError(operation string)    { m.dbErrors.WithLabelValues(operation).Inc() }

// gatewayMetrics count the enforcement handler's decisions.
type gatewayMetrics struct {
	decisions *prometheus.CounterVec
}

// remoteMetrics instrument remote validators; they implement
// remote.Observer.
type remoteMetrics struct {
	hits, misses, evictions, staleHits prometheus.Counter
	calls                              [remote.NumOutcomes]prometheus.Counter
	latency                            prometheus.Histogram
}

var _ remote.Observer = (*remoteMetrics)(nil)

func (m *remoteMetrics) CacheHit()      { m.hits.Inc() }
func (m *remoteMetrics) CacheMiss()     { m.misses.Inc() }
func (m *remoteMetrics) CacheEviction() { m.evictions.Inc() }
func (m *remoteMetrics) StaleHit()      { m.staleHits.Inc() }

func (m *remoteMetrics) Call(o remote.Outcome, d time.Duration) {
	m.calls[o].Inc()
	m.latency.Observe(d.Seconds())
}

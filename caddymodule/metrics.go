package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
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

// metrics are the broker's upstream metrics (§13 of the contract), fed
// through broker.Observer.
type metrics struct {
	tokensIssued, tokensRevoked, registrations, adminAuth, auditEvents, dbErrors *prometheus.CounterVec
	launchTokens                                                                 prometheus.Counter
	activeAgents                                                                 prometheus.Gauge
	auditWrite                                                                   prometheus.Histogram
}

var _ broker.Observer = (*metrics)(nil)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := new(metrics)
	var errs []error
	vec := func(name, help, label string) *prometheus.CounterVec {
		c, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label}))
		errs = append(errs, err)
		return c
	}
	m.tokensIssued = vec("agentwrit_tokens_issued_total", "Tokens issued, by first scope.", "scope")
	m.tokensRevoked = vec("agentwrit_tokens_revoked_total", "Revocations, by level.", "level")
	m.registrations = vec("agentwrit_registrations_total", "Agent registrations, by status.", "status")
	m.adminAuth = vec("agentwrit_admin_auth_total", "Admin authentications, by status.", "status")
	m.auditEvents = vec("agentwrit_audit_events_total", "Audit events, by type.", "event_type")
	m.dbErrors = vec("agentwrit_db_errors_total", "Database errors, by operation.", "operation")
	var err error
	m.launchTokens, err = register[prometheus.Counter](reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "agentwrit_launch_tokens_created_total", Help: "Launch tokens created."}))
	errs = append(errs, err)
	m.activeAgents, err = register[prometheus.Gauge](reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "agentwrit_active_agents", Help: "Agents registered since start."}))
	errs = append(errs, err)
	m.auditWrite, err = register[prometheus.Histogram](reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "agentwrit_audit_write_duration_seconds", Help: "Audit event write latency.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1}}))
	errs = append(errs, err)
	return m, errors.Join(errs...)
}

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
func (m *metrics) AgentRegistered()            { m.activeAgents.Inc() }
func (m *metrics) AuditEvent(eventType string) { m.auditEvents.WithLabelValues(eventType).Inc() }
func (m *metrics) AuditWrite(d time.Duration)  { m.auditWrite.Observe(d.Seconds()) }
func (m *metrics) DBError(operation string)    { m.dbErrors.WithLabelValues(operation).Inc() }

// gatewayMetrics count the enforcement handler's decisions.
type gatewayMetrics struct {
	decisions *prometheus.CounterVec
}

func newGatewayMetrics(reg prometheus.Registerer) (*gatewayMetrics, error) {
	d, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentwrit_gateway_decisions_total",
		Help: "Enforcement decisions, by result (allow, deny, report) and reason.",
	}, []string{"result", "reason"}))
	return &gatewayMetrics{decisions: d}, err
}

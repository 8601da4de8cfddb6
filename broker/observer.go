package broker

import "time"

// Observer receives the events behind upstream's broker metrics, so
// the embedding program can count them in its own registry (Caddy's) without
// this package importing a metrics library.
type Observer interface {
	TokenIssued(firstScope string) // agentwrit_tokens_issued_total{scope}
	TokenRevoked(level string)     // agentwrit_tokens_revoked_total{level}
	Registration(success bool)     // agentwrit_registrations_total{status}
	AdminAuth(success bool)        // agentwrit_admin_auth_total{status}
	LaunchTokenCreated()           // agentwrit_launch_tokens_created_total
	AuditEvent(eventType string)   // agentwrit_audit_events_total{event_type}
	AuditWrite(d time.Duration)    // agentwrit_audit_write_duration_seconds
	DBError(operation string)      // agentwrit_db_errors_total{operation}
}

type nopObserver struct{}

func (nopObserver) TokenIssued(string)       {}
func (nopObserver) TokenRevoked(string)      {}
func (nopObserver) Registration(bool)        {}
func (nopObserver) AdminAuth(bool)           {}
func (nopObserver) LaunchTokenCreated()      {}
func (nopObserver) AuditEvent(string)        {}
func (nopObserver) AuditWrite(time.Duration) {}
func (nopObserver) DBError(string)           {}

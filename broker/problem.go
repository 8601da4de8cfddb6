package broker

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Error types (the suffix of a problem's type URN, and its error_code).
const (
	ErrTypeInvalidRequest    = "invalid_request"
	ErrTypeInvalidTTL        = "invalid_ttl"
	ErrTypeUnauthorized      = "unauthorized"
	ErrTypeForbidden         = "forbidden"
	ErrTypeInsufficientScope = "insufficient_scope"
	ErrTypeScopeViolation    = "scope_violation"
	ErrTypeNotFound          = "not_found"
	ErrTypeMethodNotAllowed  = "method_not_allowed"
	ErrTypeConflict          = "conflict"
	ErrTypeRateLimited       = "rate_limited"
	ErrTypePayloadTooLarge   = "payload_too_large"
	ErrTypeInternal          = "internal_error"
	ErrTypeUnavailable       = "service_unavailable"
)

// Problem is an RFC 7807 body in AgentWrit's shape and field order.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Instance  string `json:"instance"`
	ErrorCode string `json:"error_code,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Hint      string `json:"hint,omitempty"`
}

// NewProblem builds the problem upstream's ERR(status, errType, detail)
// produces for a request to path.
func NewProblem(status int, errType, detail, path, requestID string) *Problem {
	return &Problem{
		Type: "urn:agentwrit:error:" + errType, Title: http.StatusText(status), Status: status,
		Detail: detail, Instance: path, ErrorCode: errType, RequestID: requestID,
	}
}

// Write sends p as application/problem+json. Headers already set on w (a
// WWW-Authenticate challenge, Retry-After) are kept.
func (p *Problem) Write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// WriteProblem answers r with ERR(status, errType, detail), using the
// request ID the broker's middleware (or the caller) put on the response.
func WriteProblem(w http.ResponseWriter, r *http.Request, status int, errType, detail string) {
	NewProblem(status, errType, detail, r.URL.Path, w.Header().Get(RequestIDHeader)).Write(w)
}

// writeJSON sends v as compact, HTML-escaped JSON plus a newline.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// dbFailed answers a failed database operation: 503 with Retry-After when
// the database cannot be reached (nothing was acknowledged, the client may
// retry), else 500 with detail. Either way the failure is counted as op.
func (b *Broker) dbFailed(w http.ResponseWriter, r *http.Request, op string, err error, detail string) {
	b.obs.DBError(op)
	if errors.Is(err, ErrUnavailable) {
		w.Header().Set("Retry-After", "1")
		WriteProblem(w, r, http.StatusServiceUnavailable, ErrTypeUnavailable, "the broker's database is unavailable; retry shortly")
		return
	}
	b.log.Error("agentwrit: database operation failed", "operation", op, "error", err)
	WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, detail)
}

package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// MaxBodyBytes is the request body limit of every broker route (1 MiB).
const MaxBodyBytes = 1 << 20

// RequestIDHeader is the response header carrying the request ID.
const RequestIDHeader = "X-Request-Id"

// ServeHTTP serves the AgentWrit API and /.well-known/jwks.json.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) { b.handler.ServeHTTP(w, r) }

// routes builds the handler chain in upstream's order: request ID, body
// limit, security headers, then the mux.
func (b *Broker) routes() http.Handler {
	mux := http.NewServeMux()
	known := http.NewServeMux() // the same paths without methods: tells 404 from 405
	seen := map[string]bool{}
	handle := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+path, h)
		if !seen[path] {
			seen[path] = true
			known.HandleFunc(path, http.NotFound)
		}
	}
	handle("GET", "/v1/challenge", b.limited(b.limits.challenge, b.clientIP, b.handleChallenge))
	handle("GET", "/v1/health", b.handleHealth)
	handle("GET", "/v1/metrics", b.handleMetrics)
	handle("POST", "/v1/token/validate", b.handleValidate)
	handle("POST", "/v1/register", b.handleRegister)
	handle("POST", "/v1/token/renew", b.bearer("", b.handleRenew))
	handle("POST", "/v1/delegate", b.bearer("", b.handleDelegate))
	handle("POST", "/v1/token/release", b.bearer("", b.handleRelease))
	handle("POST", "/v1/revoke", b.bearer("admin:revoke:*", b.handleRevoke))
	handle("GET", "/v1/audit/events", b.bearer("admin:audit:*", b.handleAuditEvents))
	handle("POST", "/v1/admin/auth", b.limited(b.limits.credential, b.clientIP, b.handleAdminAuth))
	handle("POST", "/v1/admin/launch-tokens", b.bearer("admin:launch-tokens:*", b.handleLaunchToken))
	handle("POST", "/v1/app/launch-tokens", b.bearer("app:launch-tokens:*", b.handleLaunchToken))
	handle("POST", "/v1/admin/apps", b.bearer("admin:launch-tokens:*", b.handleCreateApp))
	handle("GET", "/v1/admin/apps", b.bearer("admin:launch-tokens:*", b.handleListApps))
	handle("GET", "/v1/admin/apps/{id}", b.bearer("admin:launch-tokens:*", b.handleGetApp))
	handle("PUT", "/v1/admin/apps/{id}", b.bearer("admin:launch-tokens:*", b.handleUpdateApp))
	handle("DELETE", "/v1/admin/apps/{id}", b.bearer("admin:launch-tokens:*", b.handleDeleteApp))
	handle("POST", "/v1/app/auth", b.limited(b.limits.credential, b.clientIP,
		b.limited(b.limits.app, appAuthKey(b.clientIP), b.handleAppAuth)))
	handle("GET", "/.well-known/jwks.json", b.handleJWKS)
	// This product's operator routes.
	handle("GET", "/v1/admin/status", b.bearer("admin:audit:*", b.handleStatus))
	handle("GET", "/v1/admin/keys", b.bearer("admin:audit:*", b.handleKeys))
	handle("POST", "/v1/admin/keys/rotate", b.bearer("admin:revoke:*", b.handleRotateKey))
	handle("GET", "/v1/admin/agents", b.bearer("admin:audit:*", b.handleAgents))
	handle("GET", "/v1/admin/audit/verify", b.bearer("admin:audit:*", b.handleAuditVerify))
	handle("GET", "/v1/revocations", b.bearer("", b.handleFeed))
	handle("POST", "/v1/usage", b.bearer("", b.handleReportUsage))
	handle("GET", "/v1/admin/usage", b.bearer("admin:audit:*", b.handleUsage))

	route := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, p := known.Handler(r); p == "" { // D14: unknown path → problem+json, not text
			WriteProblem(w, r, http.StatusNotFound, ErrTypeNotFound, "no route for "+r.URL.Path)
			return
		}
		if _, p := mux.Handler(r); p == "" {
			// The mux answers a known path's wrong method (405, with
			// Allow) or an unclean path (307): keep its status and
			// headers, but a 405 speaks problem+json (D20).
			w = &problem405{ResponseWriter: w, r: r}
		}
		mux.ServeHTTP(w, r)
	})
	return requestID(bodyLimit(securityHeaders(route)))
}

// problem405 turns the mux's plain-text 405 into problem+json, keeping its
// Allow header.
type problem405 struct {
	http.ResponseWriter
	r    *http.Request
	done bool
}

func (w *problem405) WriteHeader(code int) {
	if code != http.StatusMethodNotAllowed {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.done = true
	WriteProblem(w.ResponseWriter, w.r, code, ErrTypeMethodNotAllowed, "method "+w.r.Method+" is not allowed on "+w.r.URL.Path)
}

func (w *problem405) Write(b []byte) (int, error) {
	if w.done {
		return len(b), nil // the mux's text body, replaced
	}
	return w.ResponseWriter.Write(b)
}

// clientIP is the rate limiters' view of the caller (D11).
func (b *Broker) clientIP(r *http.Request) string { return b.cfg.ClientIP(r) }

// NewRequestID is upstream's request ID: 8 random bytes as 16 lowercase
// hex characters ("unknown" should the system's randomness fail).
func NewRequestID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "unknown"
	}
	return hex.EncodeToString(b[:])
}

// requestID takes the client's X-Request-ID verbatim or makes one, and sets
// it on every response; problem bodies read it back from the response header.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if id == "" {
			id = NewRequestID()
		}
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r)
	})
}

// bodyLimit reads the whole body, up to 1 MiB, before routing. Like
// upstream it sits outside securityHeaders, so its errors carry none.
func bodyLimit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
		if err != nil {
			WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "failed to read request body")
			return
		}
		if len(body) > MaxBodyBytes {
			WriteProblem(w, r, http.StatusRequestEntityTooLarge, ErrTypePayloadTooLarge, "request body must not exceed 1 MB")
			return
		}
		r.Body = &bufferedBody{Reader: bytes.NewReader(body), b: body}
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

// bufferedBody is a request body already read into memory by bodyLimit.
type bufferedBody struct {
	*bytes.Reader
	b []byte
}

func (*bufferedBody) Close() error { return nil }

// requestBody returns the bytes of a body bodyLimit buffered, or reads r.Body.
func requestBody(r *http.Request) []byte {
	if bb, ok := r.Body.(*bufferedBody); ok {
		return bb.b
	}
	b, _ := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes))
	return b
}

var jsonContentType = []string{"application/json"}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Frame-Options", "DENY")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
		}
		next.ServeHTTP(w, r)
	})
}

// decodeJSON reads the first JSON value of the body into v, with
// encoding/json's leniency that upstream clients can observe (unknown
// fields ignored, case-insensitive names, trailing bytes ignored).
func decodeJSON(r *http.Request, v any) bool {
	return json.NewDecoder(r.Body).Decode(v) == nil
}

func badJSON(w http.ResponseWriter, r *http.Request) {
	WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "malformed JSON body")
}

// limited applies a per-key rate limit before anything else, as upstream
// does, so malformed requests count too.
func (b *Broker) limited(l *keyedLimiter, key func(*http.Request) string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !l.allow(key(r), b.now()) {
			w.Header().Set("Retry-After", l.spec.retryAfter)
			WriteProblem(w, r, http.StatusTooManyRequests, ErrTypeRateLimited, "rate limit exceeded, try again later")
			return
		}
		next(w, r)
	}
}

// appAuthKey keys the app-auth limiter on the body's client_id, falling
// back to the client IP, as upstream does.
func appAuthKey(ip func(*http.Request) string) func(*http.Request) string {
	return func(r *http.Request) string {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			ClientID string `json:"client_id"`
		}
		if json.Unmarshal(body, &req) == nil && req.ClientID != "" {
			return "client:" + req.ClientID
		}
		return "ip:" + ip(r)
	}
}

type claimsKey struct{}

// claimsFrom returns the claims bearer() authenticated.
func claimsFrom(r *http.Request) *Claims {
	c, _ := r.Context().Value(claimsKey{}).(*Claims)
	return c
}

// bearer is upstream's bearer middleware plus, when scope is set, RequireScope.
func (b *Broker) bearer(scope string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, ok := b.authenticate(w, r)
		if !ok {
			return
		}
		if scope != "" && !scopemap.Covers(c.Scope, scope) {
			b.audit(r.Context(), Event{
				EventType: EventScopeViolation, AgentID: c.Sub, TaskID: c.TaskID, OrchID: c.OrchID,
				Detail:   "scope_violation | required=" + scope + " | actual=" + strings.Join(c.Scope, ",") + " | path=" + r.URL.Path,
				Resource: r.URL.Path, Outcome: OutcomeDenied,
			})
			WriteProblem(w, r, http.StatusForbidden, ErrTypeInsufficientScope, "token lacks required scope: "+scope)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
	}
}

func (b *Broker) authenticate(w http.ResponseWriter, r *http.Request) (*Claims, bool) {
	path := r.URL.Path
	fail := func(detail, reason string) (*Claims, bool) {
		b.RecordDenial(r.Context(), Denial{
			EventType: EventTokenAuthFailed, Detail: reason + " | path=" + path, Resource: path, Reason: detail, Rule: r.Pattern,
		})
		WriteProblem(w, r, http.StatusUnauthorized, ErrTypeUnauthorized, detail)
		return nil, false
	}
	auth, present := r.Header["Authorization"]
	if !present || len(auth) == 0 || auth[0] == "" {
		return fail("missing authorization header", "missing authorization header")
	}
	tok, ok := strings.CutPrefix(auth[0], "Bearer ")
	if !ok {
		return fail("invalid authorization scheme", "invalid authorization scheme")
	}
	c, err := b.Verify(r.Context(), tok)
	if errors.Is(err, ErrUnavailable) {
		w.Header().Set("Retry-After", "1")
		WriteProblem(w, r, http.StatusServiceUnavailable, ErrTypeUnavailable, "token verification is temporarily unavailable")
		return nil, false
	}
	if err != nil {
		return fail("token verification failed", "token verification failed: "+err.Error())
	}
	if aud := b.cfg.Audience; !c.HasAudience(aud) {
		b.audit(r.Context(), Event{
			EventType: EventTokenAuthFailed, AgentID: c.Sub, TaskID: c.TaskID, OrchID: c.OrchID,
			Detail:   "audience mismatch | expected=" + aud + " | path=" + path,
			Resource: path, Outcome: OutcomeDenied,
		})
		WriteProblem(w, r, http.StatusUnauthorized, ErrTypeUnauthorized, "token audience mismatch")
		return nil, false
	}
	return c, true
}

package client

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrMalformedAnswer is wrapped by the error of a call whose answer had the
// success status but could not be read: not exactly one JSON object, a
// duplicated or case-variant key, a missing or mistyped field, or more
// bytes than the bound. It never means "no" (Validate reports an invalid
// token as Valid false with a nil error).
var ErrMalformedAnswer = errors.New("malformed answer")

// Error is a broker answer with a status other than the route's success
// status. When the body was problem details (application/problem+json,
// as every error of the broker is) their fields are filled in; otherwise
// Body holds the start of the body.
type Error struct {
	Method string // HTTP method of the request
	Path   string // API path of the request, without the base URL's prefix or query
	Status int    // HTTP status of the answer

	// Problem details (RFC 7807, in AgentWrit's shape).
	Type      string // "urn:agentwrit:error:<error_code>"
	Title     string // the status text
	Detail    string // what went wrong
	Instance  string // the path the broker saw
	ErrorCode string // one of the broker.ErrType constants, e.g. "unauthorized"
	RequestID string // the broker's request ID (also taken from X-Request-Id)
	Hint      string // unused by AgentWrit today

	// Body is the start of a body that was not problem details (a proxy's
	// error page, say). It is empty for 2xx answers, whose bodies may hold
	// tokens or secrets.
	Body string

	// RetryAfter is the Retry-After of a 429 or 503, zero when absent.
	RetryAfter time.Duration

	want int // the success status that was expected
}

const (
	maxProblemBytes = 64 << 10 // read at most this much of an error answer
	maxBodyShown    = 256      // keep at most this much of a non-problem body
)

// newError reads an answer with an unexpected status into an *Error.
func newError(method, path string, want int, resp *http.Response) *Error {
	e := &Error{Method: method, Path: path, Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id"), want: want}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return e
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxProblemBytes))
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/problem+json" {
		var p struct {
			Type, Title, Detail, Instance, Hint string
			ErrorCode                           string `json:"error_code"`
			RequestID                           string `json:"request_id"`
		}
		if json.Unmarshal(raw, &p) == nil {
			e.Type, e.Title, e.Detail, e.Instance, e.ErrorCode, e.Hint = p.Type, p.Title, p.Detail, p.Instance, p.ErrorCode, p.Hint
			if p.RequestID != "" {
				e.RequestID = p.RequestID
			}
			return e
		}
	}
	e.Body = bodyStart(raw)
	return e
}

// bodyStart is the first maxBodyShown bytes of b, as valid UTF-8 without
// surrounding space.
func bodyStart(b []byte) string {
	if len(b) > maxBodyShown {
		b = b[:maxBodyShown]
		for len(b) > 0 && !utf8.Valid(b) { // do not cut a character in two
			b = b[:len(b)-1]
		}
	}
	return strings.TrimSpace(strings.ToValidUTF8(string(b), "\uFFFD"))
}

// Error reads like "POST /v1/register: 401 nonce: nonce not found or
// expired (error_code unauthorized) [request_id 0123abcd]".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Method + " " + e.Path + ": " + strconv.Itoa(e.Status))
	switch {
	case e.Detail != "":
		b.WriteString(" " + e.Detail)
	case e.Title != "":
		b.WriteString(" " + e.Title)
	case http.StatusText(e.Status) != "":
		b.WriteString(" " + http.StatusText(e.Status))
	}
	if e.Status >= 200 && e.Status < 300 && e.want != 0 {
		b.WriteString(", expected " + strconv.Itoa(e.want))
	}
	if e.Body != "" {
		b.WriteString(": " + strconv.Quote(e.Body))
	}
	if e.ErrorCode != "" {
		b.WriteString(" (error_code " + e.ErrorCode + ")")
	}
	if e.RequestID != "" {
		b.WriteString(" [request_id " + e.RequestID + "]")
	}
	return b.String()
}

// IsStatus reports whether err is, or wraps, an *Error with the given
// HTTP status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// IsErrorCode reports whether err is, or wraps, an *Error whose problem
// details carry the given error_code (one of the broker.ErrType constants).
func IsErrorCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.ErrorCode == code
}

package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

func TestErrorFromProblem(t *testing.T) {
	c := fake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "from-header")
		w.Header().Set("Retry-After", "60")
		answer(w, http.StatusTooManyRequests, "application/problem+json",
			`{"type":"urn:agentwrit:error:rate_limited","title":"Too Many Requests","status":429,`+
				`"detail":"rate limit exceeded, try again later","instance":"/v1/app/auth",`+
				`"error_code":"rate_limited","request_id":"ab0623a4763bb204","hint":"slow down"}`+"\n")
	})
	_, err := c.AppAuth(context.Background(), "cid", "secret-hunter2")
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, client.Error{
		Method: "POST", Path: "/v1/app/auth", Status: 429,
		Type: "urn:agentwrit:error:rate_limited", Title: "Too Many Requests",
		Detail: "rate limit exceeded, try again later", Instance: "/v1/app/auth",
		ErrorCode: broker.ErrTypeRateLimited, RequestID: "ab0623a4763bb204", Hint: "slow down",
		RetryAfter: time.Minute,
	}, withoutWant(ae))
	assert.Equal(t, "app auth: POST /v1/app/auth: 429 rate limit exceeded, try again later "+
		"(error_code rate_limited) [request_id ab0623a4763bb204]", err.Error())
	assert.True(t, client.IsStatus(err, 429))
	assert.True(t, client.IsErrorCode(err, broker.ErrTypeRateLimited))
	assert.False(t, client.IsStatus(err, 401))
	assert.False(t, client.IsErrorCode(err, broker.ErrTypeUnauthorized))
	assert.False(t, errors.Is(err, client.ErrMalformedAnswer))
}

// withoutWant copies e's exported fields, for comparing.
func withoutWant(e *client.Error) client.Error {
	return client.Error{
		Method: e.Method, Path: e.Path, Status: e.Status, Type: e.Type, Title: e.Title, Detail: e.Detail,
		Instance: e.Instance, ErrorCode: e.ErrorCode, RequestID: e.RequestID, Hint: e.Hint,
		Body: e.Body, RetryAfter: e.RetryAfter,
	}
}

func TestErrorFromOtherBodies(t *testing.T) {
	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		want                    string
	}{
		{"html", "text/html", "<html>\n<h1>Bad Gateway</h1>\n</html>\n", 502,
			`GET /v1/health: 502 Bad Gateway: "<html>\n<h1>Bad Gateway</h1>\n</html>" [request_id rid]`},
		{"mux 404", "text/plain; charset=utf-8", "404 page not found\n", 404,
			`GET /v1/health: 404 Not Found: "404 page not found" [request_id rid]`},
		{"broken problem", "application/problem+json", `{"detail":`, 500,
			`GET /v1/health: 500 Internal Server Error: "{\"detail\":" [request_id rid]`},
		{"no body", "", "", 503, `GET /v1/health: 503 Service Unavailable [request_id rid]`},
		{"odd status", "", "", 599, `GET /v1/health: 599 [request_id rid]`},
		{"bad utf-8", "text/plain", "bad \xff byte", 500,
			"GET /v1/health: 500 Internal Server Error: \"bad \ufffd byte\" [request_id rid]"},
		// A success status other than the route's: the body may hold a
		// token, so it is not kept.
		{"unexpected 2xx", "application/json", `{"access_token":"secret-token"}`, 201,
			`GET /v1/health: 201 Created, expected 200 [request_id rid]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Request-Id", "rid")
				answer(w, tc.status, tc.contentType, tc.body)
			})
			_, err := c.Health(context.Background())
			var ae *client.Error
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, "health: "+tc.want, err.Error())
			assert.Equal(t, tc.status, ae.Status)
			assert.Empty(t, ae.ErrorCode)
		})
	}
}

func TestErrorHelpersOnOtherErrors(t *testing.T) {
	for _, err := range []error{nil, errors.New("x"), fmt.Errorf("op: %w", client.ErrMalformedAnswer)} {
		assert.False(t, client.IsStatus(err, 0))
		assert.False(t, client.IsErrorCode(err, ""))
	}
	wrapped := fmt.Errorf("outer: %w", &client.Error{Status: 404, ErrorCode: "not_found"})
	assert.True(t, client.IsStatus(wrapped, 404))
	assert.True(t, client.IsErrorCode(wrapped, "not_found"))
}

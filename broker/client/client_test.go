package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

func TestNewRefusesBadBaseURLs(t *testing.T) {
	for raw, want := range map[string]string{
		"":                           "scheme must be http or https",
		"broker.example":             "scheme must be http or https",
		"ftp://broker.example":       "scheme must be http or https",
		"mailto:ops@broker.example":  "(not shown)",
		"http:opaque":                "no host",
		"http://":                    "no host",
		"http://:8080":               "no host",
		"http://b.example/?q=1":      "must not have a query",
		"http://b.example/?":         "must not have a query",
		"http://b.example/#top":      "must not have a fragment",
		"http://b.example/#":         "must not have a fragment",
		"http://b.example/v1":        "must not end in /v1",
		"http://b.example/aw/v1/":    "must not end in /v1",
		"http://b.example/%zz":       "invalid URL escape",
		"http://u:hunter2@b.example": "must not contain user information",
		"http://u:hunter2@b.ex/%zz":  "invalid URL escape",
	} {
		_, err := client.New(raw)
		require.Error(t, err, raw)
		assert.ErrorContains(t, err, want, raw)
		assert.True(t, strings.HasPrefix(err.Error(), "client: base URL "), err.Error())
		assert.NotContains(t, err.Error(), "hunter2")
	}
	_, err := client.New("http://b.example", client.WithHTTPClient(nil))
	assert.ErrorContains(t, err, "client: WithHTTPClient: nil *http.Client")
}

func TestBaseURLPrefix(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.RawPath+"|"+r.URL.Path)
		mu.Unlock()
		answer(w, 200, "application/json", `{"status":"ok"}`)
	}))
	t.Cleanup(srv.Close)
	for _, base := range []string{srv.URL, srv.URL + "/", srv.URL + "/aw", srv.URL + "/aw/", srv.URL + "/a%20w/"} {
		_, err := newClient(t, base).Health(context.Background())
		require.NoError(t, err, base)
	}
	assert.Equal(t, []string{"|/v1/health", "|/v1/health", "|/aw/v1/health", "|/aw/v1/health", "|/a w/v1/health"}, paths)

	// A real broker mounted under a prefix.
	tb := newBroker(t)
	mounted := httptest.NewServer(http.StripPrefix("/agentwrit", tb.Broker))
	t.Cleanup(mounted.Close)
	e := &env{c: newClient(t, mounted.URL+"/agentwrit/")}
	var err error
	e.admin, err = e.c.LoginAdmin(context.Background(), testSecret)
	require.NoError(t, err)
	a := e.register(t, "read:data:*")
	v, err := e.c.Validate(context.Background(), a.Token)
	require.NoError(t, err)
	assert.True(t, v.Valid)
}

func TestHeaders(t *testing.T) {
	var mu sync.Mutex
	got := map[string]http.Header{}
	h := func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.URL.Path] = r.Header.Clone()
		mu.Unlock()
		switch r.URL.Path {
		case "/v1/token/release":
			w.WriteHeader(http.StatusNoContent)
		case "/v1/token/validate":
			answer(w, 200, "application/json", `{"valid":false}`)
		default:
			answer(w, 200, "application/json", `{}`)
		}
	}
	ctx := context.Background()
	c := fake(t, h).WithToken("tok-123")
	_, err := c.Challenge(ctx)
	require.NoError(t, err)
	_, err = c.Validate(ctx, "other")
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))

	assert.Empty(t, got["/v1/challenge"].Get("Authorization"), "public routes get no token")
	assert.Empty(t, got["/v1/token/validate"].Get("Authorization"))
	assert.Equal(t, "Bearer tok-123", got["/v1/token/release"].Get("Authorization"))
	assert.Equal(t, "application/json", got["/v1/token/validate"].Get("Content-Type"))
	assert.Empty(t, got["/v1/challenge"].Get("Content-Type"), "no body, no content type")
	assert.Equal(t, "application/json", got["/v1/challenge"].Get("Accept"))
	assert.Equal(t, client.DefaultUserAgent, got["/v1/challenge"].Get("User-Agent"))

	_, err = fake(t, h, client.WithUserAgent("bench/1")).Health(ctx)
	require.NoError(t, err)
	assert.Equal(t, "bench/1", got["/v1/health"].Get("User-Agent"))
	_, err = fake(t, h, client.WithUserAgent("")).Health(ctx)
	require.NoError(t, err)
	assert.Empty(t, got["/v1/health"].Values("User-Agent"))

	// WithToken copies; an empty token sends no header.
	assert.Empty(t, c.WithToken("").Token())
	assert.Equal(t, "tok-123", c.Token())
	require.NoError(t, c.WithToken("").Release(ctx))
	assert.Empty(t, got["/v1/token/release"].Values("Authorization"))
}

// countingTransport counts the requests it carries.
type countingTransport struct {
	mu sync.Mutex
	n  int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func TestWithHTTPClient(t *testing.T) {
	rt := &countingTransport{}
	c := fake(t, func(w http.ResponseWriter, r *http.Request) { answer(w, 200, "application/json", `{}`) },
		client.WithHTTPClient(&http.Client{Transport: rt}))
	_, err := c.Health(context.Background())
	require.NoError(t, err)
	_, err = c.WithToken("t").Health(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, rt.n)
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	c := fake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			answer(w, 200, "application/json", `{"valid":true,"claims":{"sub":"x","jti":"j","exp":9999999999}}`)
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	})
	_, err := c.Validate(context.Background(), "t")
	assert.True(t, client.IsStatus(err, http.StatusTemporaryRedirect), "%v", err)
}

func TestTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	c := newClient(t, srv.URL).WithToken("secret-token-hunter2")
	_, err := c.Renew(context.Background())
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "renew: Post "), err.Error())
	assert.NotContains(t, err.Error(), "hunter2")
	var ae *client.Error
	assert.False(t, errors.As(err, &ae), "no answer is not an *Error")
	assert.False(t, errors.Is(err, client.ErrMalformedAnswer))

	_, err = newClient(t, "http://127.0.0.1:1").WithToken("bad\nhunter2").Renew(context.Background())
	assert.ErrorContains(t, err, "invalid header field value")
	assert.NotContains(t, err.Error(), "hunter2")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = newClient(t, newBroker(t).URL).Health(ctx)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestAnswersAreDecodedStrictly(t *testing.T) {
	for body, want := range map[string]string{
		`{"status":"ok"}`:                 "",
		`{"status":"ok","extra":1}`:       "", // unknown fields: a newer broker
		`{"status":"ok","status":"down"}`: "duplicate",
		`{"status":"ok","Status":"down"}`: "duplicate",
		`{"status":"ok"} {}`:              "trailing",
		`[]`:                              "not a JSON object",
		`{"uptime":"long"}`:               "cannot unmarshal",
		``:                                "EOF",
	} {
		_, err := fake(t, func(w http.ResponseWriter, r *http.Request) { answer(w, 200, "application/json", body) }).Health(context.Background())
		if want == "" {
			assert.NoError(t, err, body)
			continue
		}
		assert.ErrorIs(t, err, client.ErrMalformedAnswer, body)
		assert.ErrorContains(t, err, want, body)
		assert.True(t, strings.HasPrefix(err.Error(), "health: malformed answer: "), err.Error())
	}
}

func TestResponseBounds(t *testing.T) {
	big := func(n int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"events":[],"total":0,"x":"`))
			_, _ = w.Write([]byte(strings.Repeat("a", n)))
			_, _ = w.Write([]byte(`"}`))
		}
	}
	ctx := context.Background()
	_, err := fake(t, big(client.MaxResponseBytes)).Health(ctx)
	assert.ErrorIs(t, err, client.ErrMalformedAnswer)
	assert.ErrorContains(t, err, "answer exceeds 1048576 bytes")
	_, err = fake(t, big(client.MaxResponseBytes)).Validate(ctx, "t")
	assert.ErrorIs(t, err, client.ErrMalformedAnswer)
	_, err = fake(t, big(client.MaxResponseBytes-100)).Health(ctx)
	assert.NoError(t, err, "just under the bound")
	_, err = fake(t, big(2*client.MaxResponseBytes)).AuditEvents(ctx, client.AuditQuery{})
	assert.NoError(t, err, "audit pages may be larger")

	// An error answer is read only in part.
	_, err = fake(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		for range 1 << 10 {
			if _, err := w.Write([]byte(strings.Repeat("e", 10<<10))); err != nil {
				return
			}
		}
	}).Health(ctx)
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Len(t, ae.Body, 256)
}

package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Response size bounds. Broker answers are small; the bounds stop a broken
// or hostile server from making the client read without end.
const (
	// MaxResponseBytes bounds every answer except the lists below (1 MiB).
	MaxResponseBytes = 1 << 20
	// MaxListResponseBytes bounds an audit page (up to 1000 events) and the
	// app list (64 MiB).
	MaxListResponseBytes = 64 << 20
)

// DefaultTimeout bounds one call of a Client made without WithHTTPClient,
// from connecting to reading the last byte.
const DefaultTimeout = 30 * time.Second

// DefaultUserAgent is the User-Agent sent unless WithUserAgent says otherwise.
const DefaultUserAgent = "caddy-agentwrit-client"

// Client calls one AgentWrit broker, optionally with a bearer token. It is
// immutable and safe for concurrent use.
type Client struct {
	base      string // scheme://host[/escaped prefix], no trailing slash
	http      *http.Client
	userAgent string
	token     string
}

// Option configures New.
type Option func(*Client) error

// WithHTTPClient makes the client send its requests through hc, as is:
// its timeout, transport (TLS, proxies) and redirect policy apply.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("WithHTTPClient: nil *http.Client")
		}
		c.http = hc
		return nil
	}
}

// WithUserAgent sets the User-Agent header of every request; an empty
// string sends none.
func WithUserAgent(ua string) Option {
	return func(c *Client) error {
		c.userAgent = ua
		return nil
	}
}

// New returns a client for the broker at baseURL: an http or https URL,
// optionally with a path prefix under which the API is mounted
// ("https://gw.example/agentwrit" calls https://gw.example/agentwrit/v1/...).
// User information, a query, a fragment, or a path ending in /v1 (the
// client adds it) are refused.
//
// Unless WithHTTPClient is given, requests time out after DefaultTimeout
// and redirects are not followed (a redirect is reported as an *Error), so
// an answer always comes from the URL that was asked.
func New(baseURL string, opts ...Option) (*Client, error) {
	base, err := parseBase(baseURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:      base,
		http:      &http.Client{Timeout: DefaultTimeout, CheckRedirect: noRedirects},
		userAgent: DefaultUserAgent,
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	return c, nil
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// parseBase checks a base URL and returns it without a trailing slash.
func parseBase(raw string) (string, error) {
	shown := strconv.Quote(raw)
	if strings.Contains(raw, "@") { // it may hold a password
		shown = "(not shown)"
	}
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("client: base URL %s: %s", shown, why)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // its text repeats the URL
			err = ue.Err
		}
		return "", fmt.Errorf("client: base URL %s: %w", shown, err)
	}
	switch {
	case u.User != nil:
		return bad("must not contain user information")
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("scheme must be http or https")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return bad("no host")
	case u.RawQuery != "" || u.ForceQuery:
		return bad("must not have a query")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return bad("must not have a fragment")
	}
	base := strings.TrimRight(u.String(), "/")
	if strings.HasSuffix(base, "/v1") {
		return bad("must not end in /v1 (the client adds it)")
	}
	return base, nil
}

// WithToken returns a copy of c that sends "Authorization: Bearer <token>"
// on the routes that take a bearer token. An empty token sends none.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.token = token
	return &cp
}

// Token returns the bearer token c sends, or "" when it has none.
func (c *Client) Token() string { return c.token }

// call is one API request.
type call struct {
	op     string     // names the operation in errors
	method string     // HTTP method
	path   string     // escaped API path, from "/v1/" or "/.well-known/"
	query  url.Values // optional
	body   any        // sent as JSON when non-nil
	bearer bool       // send the client's token
	status int        // the route's success status
	limit  int64      // response bound; 0 means MaxResponseBytes
}

// do sends k and decodes the answer into out (when non-nil) with
// broker.DecodeStrict. Every error names k.op.
func (c *Client) do(ctx context.Context, k call, out any) error {
	raw, err := c.roundTrip(ctx, k)
	if err != nil {
		return fmt.Errorf("%s: %w", k.op, err)
	}
	if out == nil {
		return nil
	}
	if err := broker.DecodeStrict(raw, out); err != nil {
		return fmt.Errorf("%s: %w: %v", k.op, ErrMalformedAnswer, err)
	}
	return nil
}

// roundTrip sends k and returns the body of an answer with k.status; any
// other status is an *Error.
func (c *Client) roundTrip(ctx context.Context, k call) ([]byte, error) {
	var body io.Reader
	if k.body != nil {
		b, err := json.Marshal(k.body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	target := c.base + k.path
	if len(k.query) > 0 {
		target += "?" + k.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, k.method, target, body)
	if err != nil {
		return nil, err
	}
	if k.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent) // empty: net/http sends none
	if k.bearer && c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode != k.status {
		return nil, newError(k.method, k.path, k.status, resp)
	}
	limit := k.limit
	if limit == 0 {
		limit = MaxResponseBytes
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", k.method, k.path, err)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%s %s: %w: answer exceeds %d bytes", k.method, k.path, ErrMalformedAnswer, limit)
	}
	return raw, nil
}

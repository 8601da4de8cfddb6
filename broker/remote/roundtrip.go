package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// The one exchange with the broker: POST <URL>/v1/token/validate. Nothing
// else in this package speaks HTTP.

// maxAnswer bounds how much of a validate answer is read.
const maxAnswer = 1 << 20

// newHTTPClient is the client of one Validator: bounded connections, every
// phase under timeout, redirects refused.
func newHTTPClient(timeout time.Duration, tc *tls.Config) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment, // as Go and Caddy's reverse_proxy do; loopback is never proxied
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          MaxConns,
		MaxIdleConnsPerHost:   MaxConns,
		MaxConnsPerHost:       MaxConns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: timeout,
	}
	return &http.Client{Transport: transport, Timeout: timeout, CheckRedirect: noRedirects}
}

// noRedirects: a redirect is not an answer; the 3xx counts as a failure.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// roundTrip asks the broker once whether tok, whose unverified claims are
// sent, is valid. It returns the confirmed claims, errBrokerSaysNo or
// broker.ErrExpired for a definitive no, or another error when there is
// no usable answer (timedOut tells a timeout from the rest).
func (v *Validator) roundTrip(ctx context.Context, tok string, sent *broker.Claims) (*broker.Claims, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	// precheck passed, so tok is base64url and dots: safe in a JSON string.
	body := make([]byte, 0, len(tok)+len(`{"token":""}`))
	body = append(append(append(body, `{"token":"`...), tok...), `"}`...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("broker answered HTTP %d", resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("reading broker answer: %w", err)
	}
	if len(raw) > maxAnswer {
		return nil, errors.New("broker answer too large")
	}
	return parseAnswer(raw, sent, v.now())
}

// timedOut reports whether a roundTrip error is a timeout.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

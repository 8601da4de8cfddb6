package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// One validate call to the broker, through broker/client, behind the
// bounds that keep a flood or a failing broker from taking the gateway
// down with it: the per-client bound, the connection slots, the breaker.

// errBrokerSaysNo is a well-formed "valid":false: the one answer that is
// cached negatively.
var errBrokerSaysNo = fmt.Errorf("%w: rejected by the broker", broker.ErrInvalidToken)

// errForeignClaims: the broker said valid, with claims that are not the
// token's own. Trusting them would let whoever wrote the answer (the
// broker, or a man in the middle of an http:// URL) widen the token.
var errForeignClaims = errors.New("the broker confirmed the token with claims that are not the token's own")

var errNoSlot = fmt.Errorf("%w: every connection to the broker is busy", ErrUnavailable)

// gate admits calls: at most MaxCallsPerClient per client and
// ClientCallRate per second, at most MaxConns in all, none while the
// breaker is open.
type gate struct {
	clients  *clientTable // nil: no per-client bound
	slots    chan struct{}
	slotWait time.Duration // how long a call may wait for a free slot
	breaker  *breaker
}

func newGate(o *Options, timeout time.Duration) *gate {
	return &gate{clients: newClientTable(o.ClientCallRate), slots: make(chan struct{}, MaxConns),
		slotWait: timeout / 4, breaker: newBreaker()}
}

// admission is one admitted call.
type admission struct {
	g   *gate
	key string // the client's, "" when not bounded
}

// enter admits a call for the client at ip, or says why not (an error
// wrapping ErrUnavailable). The waiting for a slot is bounded apart from
// the call's own timeout, so a full pool never eats a call's time.
func (g *gate) enter(ip string, now time.Time) (*admission, error) {
	key, err := g.clients.acquire(ip, now)
	if err != nil {
		return nil, err
	}
	select {
	case g.slots <- struct{}{}:
	default:
		t := time.NewTimer(g.slotWait)
		select {
		case g.slots <- struct{}{}:
			t.Stop()
		case <-t.C:
			g.clients.release(key)
			return nil, errNoSlot
		}
	}
	if !g.breaker.allow(now) {
		<-g.slots
		g.clients.release(key)
		return nil, errBreakerOpen
	}
	return &admission{g: g, key: key}, nil
}

// leave ends the call: failed says whether it counts against the broker.
func (a *admission) leave(failed bool, now time.Time) (opened bool, backoff time.Duration) {
	opened, backoff = a.g.breaker.done(failed, now)
	<-a.g.slots
	a.g.clients.release(a.key)
	return opened, backoff
}

// call asks the broker once, within the bounds, observes the outcome and
// logs when failure starts or ends. It returns the claims, an error
// wrapping broker.ErrInvalidToken for a definitive no (errBrokerSaysNo
// for a well-formed "valid":false), or an error wrapping ErrUnavailable.
func (v *Validator) call(ctx context.Context, ip, tok string, sent *broker.Claims) (*broker.Claims, error) {
	adm, err := v.gate.enter(ip, v.now())
	if err != nil {
		if errors.Is(err, errClientBusy) {
			v.health.ClientLimited()
		}
		return nil, err
	}
	start := time.Now()
	c, err := v.roundTrip(ctx, tok, sent)
	outcome, trips := classify(err)
	if opened, backoff := adm.leave(trips, v.now()); opened {
		v.health.BreakerOpened()
		v.log.Warn("remote broker failing repeatedly: calls suspended; tokens without a usable cached answer are unavailable",
			"broker", v.endpoint, "retry_in", backoff.Round(time.Millisecond).String(), "error", err)
	}
	v.obs.Call(outcome, time.Since(start))
	if outcome >= OutcomeError {
		if errors.Is(err, errForeignClaims) {
			v.logForeign(err)
		} else if !v.failing.Swap(true) {
			v.log.Warn("remote broker validation failing; tokens without a usable cached answer are unavailable",
				"broker", v.endpoint, "error", err)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if v.failing.Swap(false) {
		v.log.Info("remote broker validation recovered", "broker", v.endpoint)
	}
	return c, err
}

// roundTrip is POST /v1/token/validate for tok, whose unverified claims
// are sent. A "valid" answer is taken only with claims equal to the
// token's own, and only until exp.
func (v *Validator) roundTrip(ctx context.Context, tok string, sent *broker.Claims) (*broker.Claims, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	res, err := v.api.Validate(ctx, tok)
	switch {
	case err != nil:
		return nil, err
	case !res.Valid:
		return nil, errBrokerSaysNo
	}
	if field := claimsDiff(reflect.ValueOf(res.Claims).Elem(), reflect.ValueOf(sent).Elem()); field != "" {
		return nil, fmt.Errorf("%w (%s differs)", errForeignClaims, field)
	}
	if v.now().Unix() >= sent.Exp {
		return nil, broker.ErrExpired
	}
	return sent, nil
}

// classify is a call's outcome, and whether it counts against the broker
// for the breaker: a 5xx or 429, a timeout or no connection do; a "no",
// a malformed or foreign answer, another status do not (they are not
// made better by waiting).
func classify(err error) (Outcome, bool) {
	var ae *client.Error
	switch {
	case err == nil:
		return OutcomeValid, false
	case errors.Is(err, broker.ErrInvalidToken):
		return OutcomeInvalid, false
	case timedOut(err):
		return OutcomeTimeout, true
	case errors.As(err, &ae):
		return OutcomeError, ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	case errors.Is(err, client.ErrMalformedAnswer), errors.Is(err, errForeignClaims):
		return OutcomeError, false
	}
	return OutcomeError, true // no connection, TLS failure, reset
}

// timedOut reports whether a call's error is a timeout.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// claimsDiff returns the JSON name of the first field in which the claims
// a and b differ, or "". It walks every field of broker.Claims, so a field
// added there is compared without a change here; a nil and an empty list
// are the same (encoding/json writes neither under omitempty).
func claimsDiff(a, b reflect.Value) string {
	for i := range a.NumField() {
		if !sameValue(a.Field(i), b.Field(i)) {
			name, _, _ := strings.Cut(a.Type().Field(i).Tag.Get("json"), ",")
			return name
		}
	}
	return ""
}

func sameValue(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Struct:
		return claimsDiff(a, b) == ""
	}
	return a.Equal(b)
}

// foreignLogEvery bounds how often a foreign answer is logged: each one is
// a security event, but a broker that lies lies to every request.
const foreignLogEvery = 10 * time.Second

func (v *Validator) logForeign(err error) {
	now := time.Now().UnixNano()
	last := v.foreignLogged.Load()
	if last != 0 && now-last < int64(foreignLogEvery) || !v.foreignLogged.CompareAndSwap(last, now) {
		return
	}
	v.log.Error("remote broker answer refused: it would widen or reattribute the token (the broker is wrong, or something between it and the gateway rewrites answers; use https)",
		"broker", v.endpoint, "error", err)
}

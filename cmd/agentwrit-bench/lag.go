package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"
)

// localLag times, over n tokens, from the return of the call that ends a
// token at the remote broker (a revoke by jti, or every other time the
// agent's own release) to the first request the remote-local gateway
// refuses, and prints p50/p99/max.
func localLag(ctx context.Context, s *setup, t target, n int) error {
	logf("measuring revocation lag at remote-local over %d revocations", n)
	admin, err := s.remoteBroker.admin(ctx)
	if err != nil {
		return err
	}
	hc := newClient(1)
	calls0, err := metric(ctx, t.metrics, "agentwrit_gateway_remote_calls_total")
	if err != nil {
		return err
	}
	lags := make([]time.Duration, 0, n)
	for i := range n {
		a, err := s.remoteBroker.registerOneNew(ctx)
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		lag, err := timeRefusals(ctx, hc, []string{t.url + "1"}, a.Token, func() error {
			if i%2 == 1 {
				return s.remoteBroker.release(ctx, a.Token)
			}
			return s.remoteBroker.revoke(ctx, admin, a.JTI)
		})
		if err != nil {
			return fmt.Errorf("revocation %d: %w", i, err)
		}
		lags = append(lags, lag[0])
	}
	calls1, err := metric(ctx, t.metrics, "agentwrit_gateway_remote_calls_total")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "\nrevocation lag at remote-local (verify local, max_staleness %s), revoke or release return → first 401, %d revocations: p50 %s p99 %s max %s; broker validate calls meanwhile: %.0f\n",
		localStaleness, len(lags), percentile(lags, 0.50).Round(time.Microsecond), percentile(lags, 0.99).Round(time.Microsecond),
		percentile(lags, 1).Round(time.Microsecond), calls1-calls0)
	return nil
}

// timeRefusals checks that every gateway URL allows token, runs end,
// and returns how long after end returned each gateway first refused
// token with 401, polling them side by side. Any answer but 200 or 401
// meanwhile, or no refusal within propagationTimeout, is an error.
func timeRefusals(ctx context.Context, hc *http.Client, urls []string, token string, end func() error) ([]time.Duration, error) {
	for _, u := range urls {
		if st, err := gatewayStatus(ctx, hc, u, token); err != nil || st != http.StatusOK {
			return nil, fmt.Errorf("fresh token at %s: %d %v", u, st, err)
		}
	}
	if err := end(); err != nil {
		return nil, err
	}
	start := time.Now()
	lags := make([]time.Duration, len(urls))
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				st, err := gatewayStatus(ctx, hc, u, token)
				switch {
				case err != nil:
					errs[i] = err
				case st == http.StatusUnauthorized:
					lags[i] = time.Since(start)
				case st != http.StatusOK:
					errs[i] = fmt.Errorf("%s answered %d while waiting for a revocation", u, st)
				case time.Since(start) > propagationTimeout:
					errs[i] = fmt.Errorf("%s did not refuse within %s", u, propagationTimeout)
				default:
					continue
				}
				return
			}
		}()
	}
	wg.Wait()
	return lags, errors.Join(errs...)
}

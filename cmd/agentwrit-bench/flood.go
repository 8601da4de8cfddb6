package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// flood attacks each remote gateway for o.flood: o.floodConns connections
// from 127.0.0.1 send well-formed tokens with random signatures (each
// one uncached), while a client on 127.0.0.2, which is not flooding,
// presents fresh real tokens the gateway has never seen, one at a time.
// It reports whether those got their answer, how fast, and how many
// broker calls the flood caused.
func flood(ctx context.Context, s *setup, o options) error {
	fmt.Printf("\nflood: %d connections of bad-signature tokens for %s from 127.0.0.1; fresh real tokens from 127.0.0.2\n\n", o.floodConns, o.flood)
	// Fresh at each gateway: none has seen them.
	fresh, err := s.remoteBroker.register(ctx, freshTokens, []string{"read:orders:*"})
	if err != nil {
		return err
	}
	// Not remote-nocache: its per-client bound is off for the comparison.
	for _, name := range []string{"remote", "remote-local"} {
		t, ok := s.targets[name]
		if !ok {
			continue
		}
		if err := floodOne(ctx, t, fresh, o); err != nil {
			return fmt.Errorf("flood %s: %w", name, err)
		}
	}
	return nil
}

// freshTokens is how many never-seen tokens the honest client presents
// during one flood.
const freshTokens = 100

func floodOne(ctx context.Context, t target, fresh []agent, o options) error {
	calls0, err := metric(ctx, t.metrics, "agentwrit_gateway_remote_calls_total")
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, o.flood)
	defer cancel()
	attacker := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ // all from 127.0.0.1
		MaxIdleConnsPerHost: o.floodConns, MaxConnsPerHost: o.floodConns,
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}).DialContext}}
	var sent, refused, other atomic.Int64
	var wg sync.WaitGroup
	for range o.floodConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fctx.Err() == nil {
				req, _ := http.NewRequestWithContext(fctx, "GET", t.url+"1", nil)
				req.Header.Set("Authorization", "Bearer "+junkToken(t.tokens[randInt(len(t.tokens))]))
				resp, err := attacker.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				sent.Add(1)
				if resp.StatusCode == http.StatusUnauthorized {
					refused.Add(1)
				} else {
					other.Add(1)
				}
			}
		}()
	}
	honest := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	statuses := map[int]int{}
	var lat []time.Duration
	time.Sleep(o.flood / 10) // let the flood build up first
	every := o.flood * 8 / 10 / freshTokens
	for _, a := range fresh {
		if fctx.Err() != nil {
			break
		}
		start := time.Now()
		st, err := gatewayStatus(ctx, honest, t.url+"1", a.Token)
		if err != nil {
			st = -1 // transport error
		}
		statuses[st]++
		lat = append(lat, time.Since(start))
		time.Sleep(every)
	}
	wg.Wait()
	calls1, err := metric(ctx, t.metrics, "agentwrit_gateway_remote_calls_total")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "%-15s flood %.0f req/s (401: %d, other: %d), broker calls %.0f (the fresh tokens' own included); fresh tokens: %d presented, statuses %v, p50 %s p99 %s max %s\n",
		t.name, float64(sent.Load())/o.flood.Seconds(), refused.Load(), other.Load(), calls1-calls0, len(lat), statuses,
		percentile(lat, 0.50).Round(time.Microsecond), percentile(lat, 0.99).Round(time.Microsecond), percentile(lat, 1).Round(time.Microsecond))
	if other.Load() > 0 {
		return fmt.Errorf("%d bad-signature tokens were not refused with 401", other.Load())
	}
	return nil
}

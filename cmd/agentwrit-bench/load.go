package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// target is one gateway under load.
type target struct {
	name   string
	url    string   // full URL prefix, e.g. http://127.0.0.1:1234/orders/
	tokens []string // cycled through; empty sends no Authorization
	proc   *proc
}

// sample is what one run of load against one target measured.
type sample struct {
	reqs      int
	rps       float64
	p50, p99  time.Duration
	junkP99   time.Duration
	statuses  map[int]int
	transport int // transport-level errors
}

// junkToken is a well-formed token with a random (so invalid) signature:
// it passes every cheap check and costs the gateway a real verification.
func junkToken(valid string) string {
	i := strings.LastIndexByte(valid, '.')
	sig := make([]byte, 64)
	_, _ = rand.Read(sig)
	return valid[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// runLoad drives t with conns keep-alive connections for d after a short
// warm-up. A fraction junk of the requests carries a bad-signature token;
// their latencies are kept apart from the valid ones.
func runLoad(ctx context.Context, t target, conns int, d time.Duration, junk float64) sample {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	type local struct {
		lat, junkLat []time.Duration
		statuses     map[int]int
		errs         int
	}
	locals := make([]local, conns)
	warm := time.Now().Add(500 * time.Millisecond)
	end := warm.Add(d)
	var wg sync.WaitGroup
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			l := &locals[w]
			l.statuses = map[int]int{}
			l.lat = make([]time.Duration, 0, 1<<14)
			junkEvery := 0
			if junk > 0 {
				junkEvery = int(1 / junk)
			}
			for i := 0; ; i++ {
				now := time.Now()
				if now.After(end) || ctx.Err() != nil {
					return
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s%d", t.url, 1+(w+i)%1000), nil)
				isJunk := junkEvery > 0 && i%junkEvery == 0
				if n := len(t.tokens); n > 0 {
					tok := t.tokens[(w+i*conns)%n]
					if isJunk {
						tok = junkToken(tok)
					}
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				resp, err := client.Do(req)
				el := time.Since(now)
				if err != nil {
					if now.After(warm) {
						l.errs++
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if now.Before(warm) {
					continue
				}
				l.statuses[resp.StatusCode]++
				if isJunk {
					l.junkLat = append(l.junkLat, el)
				} else {
					l.lat = append(l.lat, el)
				}
			}
		}(w)
	}
	wg.Wait()
	s := sample{statuses: map[int]int{}}
	var lat, junkLat []time.Duration
	for _, l := range locals {
		lat = append(lat, l.lat...)
		junkLat = append(junkLat, l.junkLat...)
		for k, v := range l.statuses {
			s.statuses[k] += v
		}
		s.transport += l.errs
	}
	s.reqs = len(lat) + len(junkLat)
	s.rps = float64(s.reqs) / d.Seconds()
	s.p50, s.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	s.junkP99 = percentile(junkLat, 0.99)
	return s
}

// randInt is a uniform random int in [0, n).
func randInt(n int) int {
	v, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
	return int(v.Int64())
}

func median[T int | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

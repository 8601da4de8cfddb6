package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is one gateway under load.
type target struct {
	name    string
	url     string   // full URL prefix, e.g. http://127.0.0.1:1234/orders/
	tokens  []string // cycled through; empty sends no Authorization
	proc    *proc
	metrics int            // port of the process's metrics site; 0: none
	client  *http.Client   // keep-alive connections, kept across slices
	junk    float64        // fraction of requests sent with a bad-signature token
	next    *atomic.Uint64 // the next token to send: all of them cycle in turn
}

// newClient is a client with exactly conns keep-alive connections, each
// from an address of its own: connections are agents, which a remote
// gateway's per-client bound counts apart.
func newClient(conns int) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true, DialContext: addressCycler()}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// addressCycler dials each connection from the next of 127.0.0.10 on.
func addressCycler() func(ctx context.Context, network, addr string) (net.Conn, error) {
	var n atomic.Uint32
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		i := n.Add(1)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, byte(i/200), byte(10+i%200))}}
		return d.DialContext(ctx, network, addr)
	}
}

// sample is what load against one target measured in one round.
type sample struct {
	reqs     int
	elapsed  time.Duration // measured time (sum of slices)
	cpu      time.Duration // CPU the gateway process used meanwhile
	lat      []time.Duration
	junkLat  []time.Duration
	statuses map[int]int // of the valid-token requests
	junkOK   int         // junk requests that were not refused: must be 0
	errs     int         // transport-level errors

	rps               float64
	cpuPerReq         time.Duration
	p50, p99, junkP99 time.Duration
}

// add merges another slice of the same round into s.
func (s *sample) add(o sample) {
	if s.statuses == nil {
		s.statuses = map[int]int{}
	}
	s.reqs += o.reqs
	s.elapsed += o.elapsed
	s.cpu += o.cpu
	s.lat = append(s.lat, o.lat...)
	s.junkLat = append(s.junkLat, o.junkLat...)
	for k, v := range o.statuses {
		s.statuses[k] += v
	}
	s.junkOK += o.junkOK
	s.errs += o.errs
}

// finish computes the round's rate and percentiles and drops the raw
// latencies.
func (s *sample) finish() {
	s.rps = float64(s.reqs) / s.elapsed.Seconds()
	if s.reqs > 0 {
		s.cpuPerReq = s.cpu / time.Duration(s.reqs)
	}
	s.p50, s.p99 = percentile(s.lat, 0.50), percentile(s.lat, 0.99)
	s.junkP99 = percentile(s.junkLat, 0.99)
	s.lat, s.junkLat = nil, nil
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

// runLoad drives t with conns concurrent requests for d after a warm-up
// whose requests are not counted. A fraction t.junk of the requests
// carries a bad-signature token; their latencies are kept apart from the
// valid ones. offset varies which paths each slice starts on.
func runLoad(ctx context.Context, t target, conns int, warmup, d time.Duration, offset int) sample {
	type local struct {
		lat, junkLat []time.Duration
		statuses     map[int]int
		junkOK, errs int
	}
	locals := make([]local, conns)
	warm := time.Now().Add(warmup)
	end := warm.Add(d)
	var cpu0 time.Duration
	cpuRead := make(chan struct{})
	go func() {
		time.Sleep(warmup)
		cpu0 = t.proc.cpuTime()
		close(cpuRead)
	}()
	junkEvery := 0
	if t.junk > 0 {
		junkEvery = int(1 / t.junk)
	}
	var wg sync.WaitGroup
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			l := &locals[w]
			l.statuses = map[int]int{}
			for i := offset; ; i++ {
				now := time.Now()
				if now.After(end) || ctx.Err() != nil {
					return
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s%d", t.url, 1+(w+i)%1000), nil)
				isJunk := junkEvery > 0 && i%junkEvery == 0
				if n := uint64(len(t.tokens)); n > 0 {
					tok := t.tokens[t.next.Add(1)%n]
					if isJunk {
						tok = junkToken(tok)
					}
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				resp, err := t.client.Do(req)
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
				if isJunk {
					l.junkLat = append(l.junkLat, el)
					if resp.StatusCode != http.StatusUnauthorized {
						l.junkOK++
					}
				} else {
					l.lat = append(l.lat, el)
					l.statuses[resp.StatusCode]++
				}
			}
		}(w)
	}
	wg.Wait()
	<-cpuRead
	s := sample{statuses: map[int]int{}, elapsed: d, cpu: t.proc.cpuTime() - cpu0}
	for _, l := range locals {
		s.lat = append(s.lat, l.lat...)
		s.junkLat = append(s.junkLat, l.junkLat...)
		for k, v := range l.statuses {
			s.statuses[k] += v
		}
		s.junkOK += l.junkOK
		s.errs += l.errs
	}
	s.reqs = len(s.lat) + len(s.junkLat)
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

// warmTokens sends every token of t once, so the measured rounds see the
// steady state of many live tokens cycling (each already verified once)
// rather than a stream of first sights.
func warmTokens(ctx context.Context, t target, conns int) error {
	var sent atomic.Int64
	n := int64(len(t.tokens))
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= n && ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", t.url+"1", nil)
				req.Header.Set("Authorization", "Bearer "+t.tokens[t.next.Add(1)%uint64(n)])
				resp, err := t.client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("warming %s: status %d", t.name, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

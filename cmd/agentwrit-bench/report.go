package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"text/tabwriter"
	"time"
)

// report prints one line per configuration: medians over rounds, and the
// median of the per-round ratios to plain reverse_proxy.
func report(w io.Writer, names []string, samples map[string][]sample, rss0 map[string]int, s *setup, o options) {
	fmt.Fprintf(w, "\n%d rounds × %v, %d connections, %d tokens per broker, junk %.0f%%; medians over rounds\n\n",
		o.rounds, o.duration, o.conns, o.tokens, o.junk*100)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\treq/s\t× plain\tp50\tp99\tp99 × plain\tjunk p99\tRSS growth\tnon-200\t")
	plain := samples["plain"]
	for _, n := range names {
		ss := samples[n]
		var rps, rr, p99r []float64
		var p50, p99, jp99 []time.Duration
		non200 := 0
		for i, x := range ss {
			rps = append(rps, x.rps)
			p50, p99, jp99 = append(p50, x.p50), append(p99, x.p99), append(jp99, x.junkP99)
			if len(plain) > i && plain[i].rps > 0 {
				rr = append(rr, x.rps/plain[i].rps)
				p99r = append(p99r, float64(x.p99)/float64(plain[i].p99))
			}
			for code, c := range x.statuses {
				if code != http.StatusOK {
					non200 += c
				}
			}
			non200 += x.transport
		}
		ratio, p99ratio := "-", "-"
		if len(rr) > 0 {
			ratio, p99ratio = fmt.Sprintf("%.2f", median(rr)), fmt.Sprintf("%.2f", median(p99r))
		}
		junk := "-"
		if o.junk > 0 {
			junk = median(jp99).Round(time.Microsecond).String()
		}
		growth := s.targets[n].proc.rssKiB() - rss0[n]
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%v\t%v\t%s\t%s\t%d KiB\t%d\t\n", n, median(rps), ratio,
			median(p50).Round(time.Microsecond), median(p99).Round(time.Microsecond), p99ratio, junk, growth, non200)
	}
	tw.Flush()
}

// profileCPU asks p's admin endpoint for a CPU profile covering d and
// returns a func that waits for it and writes it to path.
func profileCPU(ctx context.Context, p *proc, d time.Duration, path string) func() error {
	done := make(chan error, 1)
	go func() {
		url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", p.admin, int(d.Seconds())+1)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	return func() error { return <-done }
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// report prints one line per configuration: medians over rounds, and the
// medians of the per-round ratios to plain reverse_proxy (and, for a
// "+junk" run, of its valid-token p99 to the same gateway without junk).
func report(w io.Writer, names []string, samples map[string][]sample, rss0 map[string]int, s *setup, o options) {
	fmt.Fprintf(w, "\n%d rounds × %v in %v slices, %d connections, %d tokens per broker; medians over rounds\n\n",
		o.rounds, o.duration, o.slice, o.conns, o.tokens)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\treq/s\t× plain\tp50\tp99\tp99 × plain\tp99 × no junk\tjunk p99\tCPU/req\tCPU × plain\tRSS growth\tper token\tfailures\t")
	ratio := func(ss, base []sample, f func(sample) float64) string {
		var r []float64
		for i := range min(len(ss), len(base)) {
			if f(base[i]) > 0 {
				r = append(r, f(ss[i])/f(base[i]))
			}
		}
		if len(r) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", median(r))
	}
	rps := func(x sample) float64 { return x.rps }
	p99 := func(x sample) float64 { return float64(x.p99) }
	cpu := func(x sample) float64 { return float64(x.cpuPerReq) }
	for _, n := range names {
		ss := samples[n]
		var rs []float64
		var p50s, p99s, jp99s, cpus []time.Duration
		failures := 0
		for _, x := range ss {
			rs = append(rs, x.rps)
			p50s, p99s, jp99s = append(p50s, x.p50), append(p99s, x.p99), append(jp99s, x.junkP99)
			cpus = append(cpus, x.cpuPerReq)
			for code, c := range x.statuses {
				if code != http.StatusOK {
					failures += c
				}
			}
			failures += x.errs + x.junkOK
		}
		junkRatio, junkP99 := "-", "-"
		if base, ok := strings.CutSuffix(n, "+junk"); ok {
			junkRatio = ratio(ss, samples[base], p99)
			junkP99 = median(jp99s).Round(time.Microsecond).String()
		}
		growth := s.targets[n].proc.rssKiB() - rss0[n]
		perToken := "-" // meaningful only once the tokens outweigh the GC's noise
		if o.tokens >= 10000 {
			perToken = fmt.Sprintf("%d B", growth*1024/o.tokens)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%v\t%v\t%s\t%s\t%s\t%v\t%s\t%d KiB\t%s\t%d\t\n", n, median(rs), ratio(ss, samples["plain"], rps),
			median(p50s).Round(time.Microsecond), median(p99s).Round(time.Microsecond), ratio(ss, samples["plain"], p99),
			junkRatio, junkP99, median(cpus).Round(time.Microsecond/10), ratio(ss, samples["plain"], cpu), growth, perToken, failures)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nCPU/req: CPU time of the gateway process per request (remote: without its broker's)")
	fmt.Fprintln(w, "failures: valid-token requests not answered 200, transport errors, and junk requests not refused with 401")
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

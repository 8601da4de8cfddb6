package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process: this binary re-executed as Caddy.
type proc struct {
	name           string
	globals, sites string
	admin          int // admin port, for pprof
	cmd            *exec.Cmd
	log            *os.File
}

// procs tracks every child so that any exit path (including Ctrl-C) can
// stop them all.
type procs struct {
	mu   sync.Mutex
	list []*proc
	dir  string
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start writes a Caddyfile (extra global options, then sites) and runs
// `caddy run` on it in its own process group.
func (ps *procs) start(name, globals, sites string) (*proc, error) {
	p := &proc{name: name, globals: globals, sites: sites, admin: freePort()}
	cfgPath := filepath.Join(ps.dir, name+".Caddyfile")
	full := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tlog {\n\t\tlevel ERROR\n\t}\n%s\n}\n%s", p.admin, globals, sites)
	if err := os.WriteFile(cfgPath, []byte(full), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(ps.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	p.log = logf
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(self, "caddy", "run", "--config", cfgPath, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "HOME="+ps.dir, "XDG_DATA_HOME="+filepath.Join(ps.dir, "data-"+name),
		"XDG_CONFIG_HOME="+filepath.Join(ps.dir, "config-"+name))
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	if err := waitAdmin(p.admin, 60*time.Second); err != nil {
		return nil, fmt.Errorf("%s did not come up (see %s): %w", name, logf.Name(), err)
	}
	return p, nil
}

func waitAdmin(port int, d time.Duration) error {
	deadline := time.Now().Add(d)
	url := fmt.Sprintf("http://127.0.0.1:%d/config/", port)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("admin endpoint :%d not answering", port)
}

// stop ends p: SIGTERM to its group, then SIGKILL after a grace period.
func (p *proc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	p.log.Close()
}

// kill ends p at once, as a crash would.
func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Wait()
	p.log.Close()
}

// restart runs p again with the same config and admin port.
func (ps *procs) restart(p *proc) error {
	ps.mu.Lock()
	for i, q := range ps.list {
		if q == p {
			ps.list = append(ps.list[:i], ps.list[i+1:]...)
			break
		}
	}
	ps.mu.Unlock()
	np, err := ps.start(p.name, p.globals, p.sites)
	if err != nil {
		return err
	}
	*p = *np
	return nil
}

func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for _, p := range list {
		p.stop()
	}
}

// rssKiB reads the resident set size of p from /proc.
func (p *proc) rssKiB() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	return 0
}

// goroutines reads the goroutine count from p's pprof endpoint.
func (p *proc) goroutines(ctx context.Context) int {
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", p.admin), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var n int
	_, _ = fmt.Fscanf(resp.Body, "goroutine profile: total %d", &n)
	return n
}

// cpuTime is the CPU time p has used so far (user + system), read from
// /proc at the kernel's clock-tick resolution.
func (p *proc) cpuTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// the 14th and 15th fields of the whole line.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, which Linux fixes at 100 for user space.
const clockTicks = 100

// metric sums the samples of the metric name on the metrics site at port.
func metric(ctx context.Context, port int, name string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", name, err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); ok && rest != "" && (rest[0] == ' ' || rest[0] == '{') {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				return 0, fmt.Errorf("scrape %s: %q: %w", name, line, err)
			}
			sum += v
		}
	}
	return sum, sc.Err()
}

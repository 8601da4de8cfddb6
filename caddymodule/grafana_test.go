package caddymodule_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// dashboardExprs returns every PromQL expression ("expr") anywhere in a
// Grafana dashboard.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var doc any
	require.NoError(t, json.Unmarshal(raw, &doc), "%s is not JSON", path)
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if s, ok := c.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	return exprs
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promOperators = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true}
)

// metricNames extracts the metric names a PromQL expression reads: the
// identifiers left once strings, label matchers, ranges and grouping
// clauses are removed, other than function calls and keywords.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	s := promStrings.ReplaceAllString(expr, " ")
	require.Equal(t, strings.Count(s, "("), strings.Count(s, ")"), "unbalanced parentheses in %q", expr)
	require.Equal(t, strings.Count(s, "{"), strings.Count(s, "}"), "unbalanced braces in %q", expr)
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRanges.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	var names []string
	for _, m := range promIdent.FindAllStringSubmatch(s, -1) {
		if m[1] != "" || promOperators[m[0]] {
			continue // a function call or a keyword
		}
		names = append(names, m[0])
	}
	require.NotEmpty(t, names, "no metric in %q", expr)
	return names
}

// TestGrafanaDashboardMetrics checks that every metric the dashboard
// queries is one a running instance exports, after traffic that touches
// the broker and the gateway.
func TestGrafanaDashboardMetrics(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules)
	id, tok := e.agent("read:orders:1")
	resp, _ := call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/2"), tok, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = call(t, "POST", e.brokerURL("/v1/admin/auth"), "", map[string]string{"secret": "wrong"})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, m := call(t, "POST", e.brokerURL("/v1/revoke"), e.adminToken(), map[string]string{"level": "agent", "target": id})
	require.Equal(t, http.StatusOK, resp.StatusCode, m)

	scrape, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", e.metricPort))
	require.NoError(t, err)
	body, err := io.ReadAll(scrape.Body)
	scrape.Body.Close()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		exported[name] = true
	}

	exprs := dashboardExprs(t, "../docs/grafana-dashboard.json")
	require.NotEmpty(t, exprs)
	used := map[string]bool{}
	for _, expr := range exprs {
		for _, n := range metricNames(t, expr) {
			used[n] = true
			require.True(t, exported[n], "the dashboard queries %s (in %q), which /metrics does not export", n, expr)
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("dashboard metrics, all exported: %s", strings.Join(names, " "))
}

func TestMetricNames(t *testing.T) {
	require.Equal(t, []string{"a_bucket"},
		metricNames(t, `histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y}"}[5m])))`))
	require.Equal(t, []string{"a", "b"}, metricNames(t, `sum(rate(a[1m])) / (sum(rate(b[1m])) or vector(0))`))
}

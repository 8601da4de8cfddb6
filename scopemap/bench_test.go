package scopemap

import (
	"fmt"
	"strings"
	"testing"
)

// benchRules returns n rules spread over n/4 services, four shapes each, the
// way a large API gateway config looks.
func benchRules(n int) []Rule {
	rules := make([]Rule, 0, n)
	for i := 0; len(rules) < n; i++ {
		svc := fmt.Sprintf("svc%d", i)
		for _, r := range []Rule{
			{Methods: []string{"GET"}, Pattern: "/" + svc + "/orders/{id}", Scopes: []string{"read:orders:{id}", "read:" + svc + ":{id}"}},
			{Methods: []string{"POST", "PUT"}, Pattern: "/" + svc + "/orders/{id}", Scopes: []string{"write:orders:{id}"}},
			{Methods: []string{"*"}, Pattern: "/" + svc + "/reports/{path...}", Scopes: []string{"read:reports:*"}},
			{Public: true, Methods: []string{"GET"}, Pattern: "/" + svc + "/healthz"},
		} {
			if len(rules) < n {
				rules = append(rules, r)
			}
		}
	}
	return rules
}

// BenchmarkDecide measures the whole route decision (canonical check, match
// and expansion) for a two-scope templated rule. The cost depends on path
// depth, not on the number of rules: compare rules=1000 with rules=10.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		m, err := Compile(benchRules(n))
		if err != nil {
			b.Fatal(err)
		}
		path := fmt.Sprintf("/svc%d/orders/12345", (n/4)/2)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := m.Decide("GET", path, nil); d.Outcome != Require || len(d.Required) != 2 {
					b.Fatal(d)
				}
			}
		})
	}
}

// BenchmarkDecideStatic measures a hit on a rule without variables in its
// templates: no allocations.
func BenchmarkDecideStatic(b *testing.B) {
	m, err := Compile(benchRules(1000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if d := m.Decide("DELETE", "/svc100/reports/2024/q1", nil); d.Outcome != Require {
			b.Fatal(d)
		}
	}
}

// BenchmarkDecideEncoded is BenchmarkDecide with a percent-encoded value
// longer than the decoding buffer.
func BenchmarkDecideEncoded(b *testing.B) {
	m, err := Compile(benchRules(1000))
	if err != nil {
		b.Fatal(err)
	}
	path := "/svc100/orders/" + strings.Repeat("%7E1234567", 10)
	b.ReportAllocs()
	for b.Loop() {
		if d := m.Decide("GET", path, nil); d.Outcome != Require {
			b.Fatal(d)
		}
	}
}

func BenchmarkCheckCanonical(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckCanonical("/svc100/orders/caf%C3%A9/items/12345"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCovers(b *testing.B) {
	granted := []string{"read:acct:alice", "write:acct:bob", "read:orders:*", "read:reports:*"}
	b.ReportAllocs()
	for b.Loop() {
		if !Covers(granted, "read:reports:q1") {
			b.Fatal("not covered")
		}
	}
}

func BenchmarkCheckScope(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckScope("read:orders:caf%C3%A9-12345"); err != nil {
			b.Fatal(err)
		}
	}
}

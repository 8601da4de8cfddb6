package scopemap

import (
	"fmt"
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

// BenchmarkLookup measures match + expand of a two-scope templated rule. The
// cost depends on path depth, not on the number of rules: compare
// rules=1000 with rules=10.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		m, err := Compile(benchRules(n))
		if err != nil {
			b.Fatal(err)
		}
		path := fmt.Sprintf("/svc%d/orders/12345", (n/4)/2)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				match, found, err := m.Lookup("GET", path, nil)
				if !found || err != nil || len(match.Required) != 2 {
					b.Fatal(match, found, err)
				}
			}
		})
	}
}

// BenchmarkLookupStatic measures a hit on a rule without variables in its
// templates: no allocations.
func BenchmarkLookupStatic(b *testing.B) {
	m, err := Compile(benchRules(1000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, found, err := m.Lookup("DELETE", "/svc100/reports/2024/q1", nil); !found || err != nil {
			b.Fatal(found, err)
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

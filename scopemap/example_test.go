package scopemap_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

func ExampleCompile() {
	lines := []string{
		"require GET /orders/{id} read:orders:{id}",
		"require POST,PUT /orders/{id} write:orders:{id}",
		"require * /reports/{path...} read:reports:*",
		"require POST /transfer/{from}/{to} read:acct:{from} write:acct:{to}",
		"public GET /healthz",
	}
	var rules []scopemap.Rule
	for _, l := range lines {
		r, err := scopemap.ParseRule(strings.Fields(l))
		if err != nil {
			panic(err)
		}
		rules = append(rules, r)
	}
	m, err := scopemap.Compile(rules)
	if err != nil {
		panic(err)
	}

	for _, req := range []struct{ method, path string }{
		{"GET", "/orders/42"},
		{"HEAD", "/orders/42"},
		{"POST", "/transfer/alice/bob"},
		{"DELETE", "/reports/2024/q1"},
		{"GET", "/healthz"},
		{"GET", "/orders/a%3Ab"},
		{"GET", "/nowhere"},
	} {
		match, found, err := m.Lookup(req.method, req.path, nil)
		switch {
		case errors.Is(err, scopemap.ErrBadValue):
			fmt.Println(req.method, req.path, "-> deny (bad value)")
		case !found:
			fmt.Println(req.method, req.path, "-> unmapped")
		case match.Public:
			fmt.Println(req.method, req.path, "-> public")
		default:
			fmt.Println(req.method, req.path, "->", match.Required)
		}
	}

	granted := []string{"read:orders:42", "read:reports:*"}
	fmt.Println(scopemap.Covers(granted, "read:orders:42"), scopemap.Covers(granted, "read:reports:q1"))

	// Output:
	// GET /orders/42 -> [read:orders:42]
	// HEAD /orders/42 -> [read:orders:42]
	// POST /transfer/alice/bob -> [read:acct:alice write:acct:bob]
	// DELETE /reports/2024/q1 -> [read:reports:*]
	// GET /healthz -> public
	// GET /orders/a%3Ab -> deny (bad value)
	// GET /nowhere -> unmapped
	// true true
}

package scopemap_test

import (
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
		{"GET", "/static/..;/orders/43"},
	} {
		d := m.Decide(req.method, req.path, nil)
		switch d.Outcome {
		case scopemap.Require:
			fmt.Println(req.method, req.path, "->", d.Outcome, d.Required)
		default:
			fmt.Println(req.method, req.path, "->", d.Outcome)
		}
	}

	granted := []string{"read:orders:42", "read:reports:*"}
	fmt.Println(scopemap.Covers(granted, "read:orders:42"), scopemap.Covers(granted, "read:reports:q1"))

	// Output:
	// GET /orders/42 -> require [read:orders:42]
	// HEAD /orders/42 -> require [read:orders:42]
	// POST /transfer/alice/bob -> require [read:acct:alice write:acct:bob]
	// DELETE /reports/2024/q1 -> require [read:reports:*]
	// GET /healthz -> public
	// GET /orders/a%3Ab -> bad_value
	// GET /nowhere -> unmapped
	// GET /static/..;/orders/43 -> not_canonical
	// true true
}

func ExampleCheckScope() {
	for _, s := range []string{"read:orders:42", "read:orders:a:b", "read:my orders:1", "read:café:1"} {
		fmt.Println(scopemap.CheckScope(s))
	}
	// Output:
	// <nil>
	// invalid scope "read:orders:a:b": byte 13 is a third ':'; an identifier cannot contain ':'
	// invalid scope "read:my orders:1": byte 7 is a space
	// invalid scope "read:café:1": byte 8 is non-ASCII byte 0xc3
}

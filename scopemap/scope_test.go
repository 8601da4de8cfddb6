package scopemap

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in string
		sc Scope
		ok bool
	}{
		{"read:orders:42", Scope{"read", "orders", "42"}, true},
		{"read:data:a:b", Scope{"read", "data", "a:b"}, true},
		{"*:*:*", Scope{"*", "*", "*"}, true},
		{"read:orders:", Scope{}, false},
		{"read::x", Scope{}, false},
		{":orders:x", Scope{}, false},
		{"read:orders", Scope{}, false},
		{"read", Scope{}, false},
		{"", Scope{}, false},
		{"::", Scope{}, false},
	}
	for _, tc := range tests {
		sc, ok := ParseScope(tc.in)
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.sc, sc, tc.in)
		assert.Equal(t, tc.ok, Valid(tc.in), tc.in)
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		granted  []string
		required string
		want     bool
	}{
		{[]string{"read:orders:42"}, "read:orders:42", true},
		{[]string{"read:orders:*"}, "read:orders:42", true},
		{[]string{"read:orders:*"}, "read:orders:*", true},
		{[]string{"read:orders:42"}, "read:orders:*", false}, // a requested "*" is literal
		{[]string{"read:orders:42"}, "read:orders:43", false},
		{[]string{"read:orders:*"}, "write:orders:42", false},
		{[]string{"read:orders:*"}, "read:invoices:42", false},
		{[]string{"Read:orders:42"}, "read:orders:42", false}, // case-sensitive
		// "*:*:*" covers only scopes whose action and resource are "*".
		{[]string{"*:*:*"}, "read:data:x", false},
		{[]string{"*:*:*"}, "*:*:x", true},
		{[]string{"*:*:*"}, "*:data:x", false},
		{[]string{"read:*:*"}, "read:data:x", false},
		{[]string{"read:orders:4*"}, "read:orders:42", false}, // no prefix globs
		// identifiers with colons, in the granted literal form.
		{[]string{"read:data:a:b"}, "read:data:a:b", true},
		{[]string{"read:data:a:*"}, "read:data:a:b", false},
		{[]string{"read:data:*"}, "read:data:a:b", true},
		{[]string{"read:data:a"}, "read:data:a:b", false},
		// malformed on either side covers nothing.
		{[]string{"read:orders"}, "read:orders:42", false},
		{[]string{"read:orders:*"}, "read:orders:", false},
		{[]string{"read:orders:*"}, "", false},
		{[]string{""}, "", false},
		{nil, "read:orders:42", false},
		{[]string{"bogus", "read:orders:42"}, "read:orders:42", true},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, Covers(tc.granted, tc.required), "%q covers %q", tc.granted, tc.required)
	}
}

func TestSubset(t *testing.T) {
	tests := []struct {
		requested, allowed []string
		want               bool
	}{
		{nil, nil, true}, // an empty request is trivially a subset
		{[]string{}, []string{"read:a:b"}, true},
		{[]string{"read:a:b"}, nil, false},
		{[]string{"read:a:b", "read:a:b"}, []string{"read:a:*"}, true}, // duplicates are fine
		{[]string{"read:a:b", "write:a:b"}, []string{"read:a:*"}, false},
		{[]string{"bogus"}, []string{"bogus"}, false}, // malformed is never covered
		{[]string{"read:data:x"}, []string{"*:*:*"}, false},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, Subset(tc.requested, tc.allowed), "%q ⊆ %q", tc.requested, tc.allowed)
	}
}

func TestCoversAllocatesNothing(t *testing.T) {
	g := []string{"read:a:1", "read:orders:*"}
	assert.Zero(t, testing.AllocsPerRun(100, func() { Covers(g, "read:orders:42") }))
}

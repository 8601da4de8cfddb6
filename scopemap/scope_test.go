package scopemap

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in string
		sc Scope
		ok bool
	}{
		{"read:orders:42", Scope{"read", "orders", "42"}, true},
		{"*:*:*", Scope{"*", "*", "*"}, true},
		{"a:b:c", Scope{"a", "b", "c"}, true},
		{"read:orders/eu:2024-01;v=2", Scope{"read", "orders/eu", "2024-01;v=2"}, true},
		{"!:~:{}", Scope{"!", "~", "{}"}, true},
		{"read:data:a:b", Scope{}, false}, // an identifier cannot contain ':'
		{"read:orders:", Scope{}, false},
		{"read::x", Scope{}, false},
		{":orders:x", Scope{}, false},
		{"read:orders", Scope{}, false},
		{"read", Scope{}, false},
		{"", Scope{}, false},
		{"::", Scope{}, false},
		{"read:orders:4 2", Scope{}, false},
		{"read:orders:café", Scope{}, false},
	}
	for _, tc := range tests {
		sc, ok := ParseScope(tc.in)
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.sc, sc, tc.in)
		assert.Equal(t, tc.ok, Valid(tc.in), tc.in)
		assert.Equal(t, tc.ok, CheckScope(tc.in) == nil, tc.in)
	}
}

func TestCheckScope(t *testing.T) {
	tests := []struct{ in, msg string }{
		{"", `invalid scope "": empty, want action:resource:identifier`},
		{"read", `invalid scope "read": no ':', want action:resource:identifier`},
		{"read:orders", `invalid scope "read:orders": only one ':', want action:resource:identifier`},
		{":orders:1", `invalid scope ":orders:1": empty action at byte 0`},
		{"read::1", `invalid scope "read::1": empty resource at byte 5`},
		{"read:orders:", `invalid scope "read:orders:": empty identifier at byte 12`},
		{"read:orders::", `invalid scope "read:orders::": empty identifier at byte 12`},
		{"read:data:a:b", `invalid scope "read:data:a:b": byte 11 is a third ':'; an identifier cannot contain ':'`},
		{"read:my orders:1", `invalid scope "read:my orders:1": byte 7 is a space`},
		{"read:orders:1\n", `invalid scope "read:orders:1\n": byte 13 is control byte 0x0a`},
		{"read\x00:a:b", `invalid scope "read\x00:a:b": byte 4 is control byte 0x00`},
		{"read:a:b\x7f", `invalid scope "read:a:b\x7f": byte 8 is control byte 0x7f`},
		{"read:a:\tb", `invalid scope "read:a:\tb": byte 7 is control byte 0x09`},
		{"read:café:1", `invalid scope "read:café:1": byte 8 is non-ASCII byte 0xc3`},
		{"read:a:\xff", `invalid scope "read:a:\xff": byte 7 is non-ASCII byte 0xff`},
		{`read:"a":1`, `invalid scope "read:\"a\":1": byte 5 is a double quote`},
		{`read:a\b:1`, `invalid scope "read:a\\b:1": byte 6 is a backslash`},
		{"read:a:" + strings.Repeat("x", 100) + " ", `invalid scope "read:a:` + strings.Repeat("x", 57) + `"...: byte 107 is a space`},
	}
	for _, tc := range tests {
		err := CheckScope(tc.in)
		require.ErrorIs(t, err, ErrInvalidScope, "%q", tc.in)
		assert.EqualError(t, err, tc.msg)
	}
	// Every scope-char, in every part.
	var all []byte
	for c := 0x21; c <= 0x7e; c++ {
		if c != '"' && c != '\\' && c != ':' {
			all = append(all, byte(c))
		}
	}
	assert.Len(t, all, 91)
	assert.NoError(t, CheckScope(string(all)+":"+string(all)+":"+string(all)))
}

func TestCheckScopes(t *testing.T) {
	assert.NoError(t, CheckScopes(nil))
	assert.NoError(t, CheckScopes([]string{"read:a:1", "write:b:*"}))
	err := CheckScopes([]string{"read:a:1", "read:a b:1", "bogus"})
	require.ErrorIs(t, err, ErrInvalidScope)
	assert.Contains(t, err.Error(), `"read:a b:1"`, "the first offending scope")
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
		// outside the grammar on either side: never covers, never covered,
		// not even by itself or by a wildcard.
		{[]string{"read:data:a:b"}, "read:data:a:b", false},
		{[]string{"read:data:*"}, "read:data:a:b", false},
		{[]string{"read:data:a:*"}, "read:data:a:b", false},
		{[]string{"read:data:*:x"}, "read:data:x", false},
		{[]string{"read:da ta:*"}, "read:da ta:x", false},
		{[]string{"read:café:*"}, "read:café:x", false},
		{[]string{"read:data:*\n"}, "read:data:x", false},
		{[]string{"read:data:x "}, "read:data:x", false},
		{[]string{" read:data:x"}, "read:data:x", false},
		// '*' is ordinary inside a part.
		{[]string{"read:data:x*"}, "read:data:x*", true},
		{[]string{"read:data:**"}, "read:data:x", false},
		{[]string{"read:d*:*"}, "read:data:x", false},
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

func TestScopeChecksAllocateNothing(t *testing.T) {
	g := []string{"read:a:1", "read:orders:*"}
	assert.Zero(t, testing.AllocsPerRun(100, func() { Covers(g, "read:orders:42") }))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = CheckScope("read:orders:42") }))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = CheckScopes(g) }))
}

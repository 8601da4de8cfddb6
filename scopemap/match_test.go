package scopemap

import (
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// mustRules parses one rule per line.
func mustRules(t testing.TB, lines ...string) []Rule {
	t.Helper()
	var rules []Rule
	for _, l := range lines {
		r, err := ParseRule(strings.Fields(l))
		require.NoError(t, err, l)
		rules = append(rules, r)
	}
	return rules
}

type decideCase struct {
	method, path string
	rule         string   // String() of the expected rule; "" = none
	required     []string // expected Required
	err          error    // expected sentinel: ErrNotCanonical, ErrBadValue or nil
}

// outcome is the Outcome a case expects.
func (tc decideCase) outcome() Outcome {
	switch {
	case tc.err == ErrNotCanonical:
		return NotCanonical
	case tc.err == ErrBadValue:
		return BadValue
	case tc.rule == "":
		return Unmapped
	case strings.HasPrefix(tc.rule, keywordPublic+" "):
		return Public
	}
	return Require
}

func runDecide(t *testing.T, lines []string, resolve Resolver, cases []decideCase) {
	t.Helper()
	rules := mustRules(t, lines...)
	m, err := Compile(rules)
	require.NoError(t, err)
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			d := m.Decide(tc.method, tc.path, resolve)
			require.Equal(t, tc.outcome(), d.Outcome, "%v", d.Err)
			if tc.err != nil {
				require.ErrorIs(t, d.Err, tc.err)
				assert.Nil(t, d.Required, "an error never carries scopes")
			} else {
				require.NoError(t, d.Err)
			}
			if tc.rule == "" {
				assert.Nil(t, d.Rule)
				return
			}
			require.NotNil(t, d.Rule)
			assert.Equal(t, tc.rule, d.Rule.String())
			if tc.err == nil {
				assert.Equal(t, tc.required, d.Required)
				for _, s := range d.Required {
					assert.NoError(t, CheckScope(s))
				}
			}
			// The linear reference agrees on the rule.
			i, _ := refLookup(rules, tc.method, tc.path)
			require.GreaterOrEqual(t, i, 0)
			assert.Equal(t, tc.rule, rules[i].String(), "reference")
		})
	}
}

func TestDecidePrecedence(t *testing.T) {
	lines := []string{
		"require GET /a/b/c lit:lit:lit",
		"require GET /a/{x}/c lit:param:{x}",
		"require GET /a/b/{y} lit:lit:{y}",
		"require GET /a/{x}/{y} x:{x}:{y}",
		"require GET /a/{rest...} rest:a:{rest}",
		"require GET /{any...} rest:root:{any}",
		"require GET /files file:root:x",
		"require GET /files/{p...} file:rest:{p}",
		"require GET /m/{x} m:get:{x}",
		"require * /m/{x} m:any:{x}",
		"require * /m/lit m:anylit:x",
		"public GET /",
	}
	runDecide(t, lines, nil, []decideCase{
		{"GET", "/a/b/c", lines[0], []string{"lit:lit:lit"}, nil},
		// crossing patterns: the first differing place decides.
		{"GET", "/a/b/d", lines[2], []string{"lit:lit:d"}, nil},
		{"GET", "/a/z/c", lines[1], []string{"lit:param:z"}, nil},
		{"GET", "/a/z/d", lines[3], []string{"x:z:d"}, nil},
		// {name} beats {name...}; {name...} takes the rest, slashes included.
		{"GET", "/a/z", lines[4], []string{"rest:a:z"}, nil},
		{"GET", "/a/z/d/e", lines[4], []string{"rest:a:z/d/e"}, nil},
		{"GET", "/b/c", lines[5], []string{"rest:root:b/c"}, nil},
		// an exact end beats a remainder that would be empty.
		{"GET", "/files", lines[6], []string{"file:root:x"}, nil},
		{"GET", "/files/x/y", lines[7], []string{"file:rest:x/y"}, nil},
		// a method list beats "*" on the same shape...
		{"GET", "/m/1", lines[8], []string{"m:get:1"}, nil},
		{"POST", "/m/1", lines[9], []string{"m:any:1"}, nil},
		// ...but the path decides first.
		{"GET", "/m/lit", lines[10], []string{"m:anylit:x"}, nil},
		// backtracking: /a/b/c exists for GET only; POST falls to nothing.
		{"POST", "/a/b/c", "", nil, nil},
		{"GET", "/", lines[11], nil, nil},
		// literal segments match the decoded segment: every spelling of a
		// name the backend decodes alike hits the same rule.
		{"GET", "/a/%62/%63", lines[0], []string{"lit:lit:lit"}, nil},
		{"GET", "/%66iles", lines[6], []string{"file:root:x"}, nil},
		// literals are case-sensitive.
		{"GET", "/Files", lines[5], []string{"rest:root:Files"}, nil},
	})
}

func TestDecideRemainder(t *testing.T) {
	lines := []string{
		"require * /reports/{path...} read:reports:*",
		"require GET /docs/{rest...} read:docs:{rest}",
		"public OPTIONS /{path...}",
	}
	runDecide(t, lines, nil, []decideCase{
		{"GET", "/reports", lines[0], []string{"read:reports:*"}, nil},
		{"DELETE", "/reports/2024/q1", lines[0], []string{"read:reports:*"}, nil},
		{"GET", "/docs/a/b%2Bc", lines[1], []string{"read:docs:a/b+c"}, nil},
		// a decoded space is no scope-char: deny.
		{"GET", "/docs/a/b%20c", lines[1], nil, ErrBadValue},
		// the rest is empty: the value is empty, deny.
		{"GET", "/docs", lines[1], nil, ErrBadValue},
		{"OPTIONS", "/", lines[2], nil, nil},
		{"OPTIONS", "/x/y/z", lines[2], nil, nil},
		{"GET", "/x", "", nil, nil},
		// not canonical: never matched.
		{"GET", "/reports/", "", nil, ErrNotCanonical},
		{"GET", "/reports/../admin", "", nil, ErrNotCanonical},
		// nor when a matrix parameter hides the dots from a naive check.
		{"GET", "/reports/..;/admin", "", nil, ErrNotCanonical},
		{"OPTIONS", "/x/%2e%2e;jsessionid=1/y", "", nil, ErrNotCanonical},
		{"GET", "/reports/..a;b", lines[0], []string{"read:reports:*"}, nil},
	})
}

func TestDecideMethods(t *testing.T) {
	lines := []string{
		"require GET /a/{x} read:a:{x}",
		"require HEAD /b/{x} head:b:{x}",
		"require GET /b/{x} read:b:{x}",
		"public * /c/{x}",
		"require GET,POST /c/{x} rw:c:{x}",
		"require * /d d:any:x",
		"require GET /d d:get:x",
		"require PURGE /e e:purge:x",
	}
	runDecide(t, lines, nil, []decideCase{
		{"GET", "/a/1", lines[0], []string{"read:a:1"}, nil},
		{"HEAD", "/a/1", lines[0], []string{"read:a:1"}, nil}, // GET serves HEAD
		{"POST", "/a/1", "", nil, nil},
		{"get", "/a/1", "", nil, nil},                         // methods are case-sensitive
		{"HEAD", "/b/1", lines[1], []string{"head:b:1"}, nil}, // unless a HEAD rule exists
		{"GET", "/b/1", lines[2], []string{"read:b:1"}, nil},
		{"GET", "/c/1", lines[4], []string{"rw:c:1"}, nil},
		{"HEAD", "/c/1", lines[4], []string{"rw:c:1"}, nil}, // HEAD via GET beats "*"
		{"DELETE", "/c/1", lines[3], nil, nil},
		{"HEAD", "/d", lines[6], []string{"d:get:x"}, nil},
		{"OPTIONS", "/d", lines[5], []string{"d:any:x"}, nil},
		{"PURGE", "/e", lines[7], []string{"e:purge:x"}, nil},
		{"HEAD", "/e", "", nil, nil},
	})
}

func TestDecideTemplates(t *testing.T) {
	lines := []string{
		"require POST /transfer/{from}/{to} read:acct:{from} write:acct:{to} audit:transfer:{from}-{to}",
		"require GET /t/{tenant}/orders/{id} read:orders:{tenant}/{id} read:tenant:{tenant}",
		"require GET /host/{id} read:{http.request.host}:{id}",
		"require GET /hdr hdr:x:{http.request.header.X-Team}",
		"require GET /missing m:x:{http.vars.nope}",
		"require GET /star/{id} read:star:{id}",
		"require GET /q/{id} q!#$%&'()*+,-./;<=>?@[]^_`|~:x:{id}",
	}
	resolve := func(name string) (string, bool) {
		switch name {
		case "http.request.host":
			return "api.example.com", true
		case "http.request.header.X-Team":
			return "blue", true
		}
		return "", false
	}
	runDecide(t, lines, resolve, []decideCase{
		{"POST", "/transfer/alice/bob", lines[0], []string{"read:acct:alice", "write:acct:bob", "audit:transfer:alice-bob"}, nil},
		{"GET", "/t/acme/orders/7", lines[1], []string{"read:orders:acme/7", "read:tenant:acme"}, nil},
		{"GET", "/host/9", lines[2], []string{"read:api.example.com:9"}, nil},
		{"GET", "/hdr", lines[3], []string{"hdr:x:blue"}, nil},
		{"GET", "/missing", lines[4], nil, ErrBadValue},
		// '*' as a value is a literal identifier: only a granted '*' covers it.
		{"GET", "/star/*", lines[5], []string{"read:star:*"}, nil},
		{"GET", "/star/%2A", lines[5], []string{"read:star:*"}, nil},
		// every scope-char may come from a template or a value.
		{"GET", "/q/!$&'()*+,;=@~", lines[6], []string{"q!#$%&'()*+,-./;<=>?@[]^_`|~:x:!$&'()*+,;=@~"}, nil},
		{"GET", "/q/%22", lines[6], nil, ErrBadValue},
	})

	// A nil resolver never widens: placeholders are unset, so deny.
	m, err := Compile(mustRules(t, lines...))
	require.NoError(t, err)
	d := m.Decide("GET", "/host/9", nil)
	assert.Equal(t, BadValue, d.Outcome)
	assert.ErrorIs(t, d.Err, ErrBadValue)
	assert.Contains(t, d.Err.Error(), "placeholder not set")
}

func TestDecideBadValues(t *testing.T) {
	lines := []string{
		"require GET /o/{id} read:orders:{id}",
		"require GET /p/{id} read:{id}:x",
		"require GET /r/{rest...} read:files:{rest}",
		"require GET /h h:x:{http.x.v}",
		"public GET /o/{id}/public",
	}
	var phValue string
	resolve := func(string) (string, bool) { return phValue, true }
	cases := []struct{ path, ph, msg string }{
		{"/o/a%3Ab", "", "byte 1 is ':'"},           // encoded ':'
		{"/o/a:b", "", "byte 1 is ':'"},             // raw ':'
		{"/p/a%3ab", "", "byte 1 is ':'"},           // ':' in the resource part
		{"/o/%FF", "", "non-ASCII byte 0xff"},       // invalid UTF-8
		{"/o/caf%C3%A9", "", "byte 3 is non-ASCII"}, // valid UTF-8, but not ASCII
		{"/o/%C2%85", "", "non-ASCII"},              // C1 control (NEL)
		{"/o/%C0%AF", "", "non-ASCII"},              // overlong encoding
		{"/o/a%20b", "", "byte 1 is a space"},       // space
		{"/o/%22x", "", "byte 0 is a double quote"}, // quote
		{"/r/a/b%3Ac", "", "byte 3 is ':'"},         // ':' in a remainder
		{"/r", "", "empty"},                         // empty remainder
		{"/h", "", "empty"},                         // empty placeholder
		{"/h", "a:b", "byte 1 is ':'"},              // ':' in a placeholder
		{"/h", "a\nb", "control byte 0x0a"},         // control in a placeholder
		{"/h", "a\x00", "control byte 0x00"},        // NUL in a placeholder
		{"/h", "\xff", "non-ASCII byte 0xff"},       // invalid UTF-8 in a placeholder
		{"/h", "a\u0085b", "non-ASCII byte 0xc2"},   // C1 control in a placeholder
		{"/h", "caf\u00e9", "byte 3 is non-ASCII"},  // non-ASCII in a placeholder
		{"/h", "a b", "byte 1 is a space"},          // space in a placeholder
		{"/h", "a\\b", "byte 1 is a backslash"},     // backslash in a placeholder
		{"/h", `"a"`, "byte 0 is a double quote"},   // quote in a placeholder
		{"/h", "\x7f", "control byte 0x7f"},         // DEL in a placeholder
	}
	m, err := Compile(mustRules(t, lines...))
	require.NoError(t, err)
	for _, tc := range cases {
		phValue = tc.ph
		d := m.Decide("GET", tc.path, resolve)
		assert.Equal(t, BadValue, d.Outcome, "%s %q", tc.path, tc.ph)
		assert.ErrorIs(t, d.Err, ErrBadValue, "%s %q", tc.path, tc.ph)
		assert.ErrorContains(t, d.Err, tc.msg, "%s %q", tc.path, tc.ph)
		assert.Nil(t, d.Required, "%s %q", tc.path, tc.ph)
		assert.NotNil(t, d.Rule)
	}
	// Control bytes in the path are refused before matching (400, not 403).
	for _, p := range []string{"/o/%00", "/o/a%0Ab", "/o/%7f", "/o/a\x01"} {
		d := m.Decide("GET", p, resolve)
		assert.Equal(t, NotCanonical, d.Outcome, p)
		assert.Nil(t, d.Rule, p)
		assert.ErrorIs(t, d.Err, ErrNotCanonical, p)
	}
	// A bad value never falls through to a wider rule.
	m2, err := Compile(mustRules(t,
		"require GET /o/{id} read:orders:{id}",
		"public GET /{any...}",
	))
	require.NoError(t, err)
	d := m2.Decide("GET", "/o/a%3Ab", nil)
	assert.Equal(t, BadValue, d.Outcome)
	assert.Equal(t, "require GET /o/{id} read:orders:{id}", d.Rule.String())
}

func TestCompileConflicts(t *testing.T) {
	tests := []struct {
		a, b string
	}{
		{"require GET /a/{x} r:a:{x}", "public GET /a/{y}"},
		{"require GET,POST /a/b r:a:b", "require PUT,POST /a/b w:a:b"},
		{"require * /a/{x...} r:a:x", "public * /a/{rest...}"},
		{"public GET /", "public GET,HEAD /"},
		{"require GET /a/%62 r:a:b", "require GET /a/b r:a:c"}, // same decoded literal
		{"require HEAD /h r:h:x", "require HEAD /h r:h:y"},
	}
	for _, tc := range tests {
		_, err := Compile(mustRules(t, tc.a, tc.b))
		require.ErrorIs(t, err, ErrConflict, "%s / %s", tc.a, tc.b)
		assert.Contains(t, err.Error(), tc.a)
		assert.Contains(t, err.Error(), tc.b)
	}

	// Not conflicts: one is more specific, or the methods are disjoint.
	ok := [][]string{
		{"require GET /a/{x}/b r:a:{x}", "require GET /a/b/{y} r:b:{y}"},
		{"require GET /a/{x} r:a:{x}", "require * /a/{y} w:a:{y}"},
		{"require GET /a/{x} r:a:{x}", "require POST /a/{y} w:a:{y}"},
		{"require GET /a/{x} r:a:{x}", "require GET /a/{y...} w:a:x"},
		{"require GET /a r:a:x", "require GET /a/{y...} w:a:x"},
		{"require GET /a/{x} r:a:{x}", "require HEAD /a/{y} h:a:{y}"},
		{"require GET /a/{x} r:a:{x}", "require * /a/b w:a:b"},
	}
	for _, pair := range ok {
		_, err := Compile(mustRules(t, pair...))
		assert.NoError(t, err, "%v", pair)
	}
}

func TestCompileInvalid(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		msg  string
	}{
		{"no methods", Rule{Pattern: "/a", Scopes: []string{"a:b:c"}}, "no methods"},
		{"empty method", Rule{Methods: []string{"GET", ""}, Pattern: "/a", Scopes: []string{"a:b:c"}}, "empty method"},
		{"lower-case", Rule{Methods: []string{"get"}, Pattern: "/a", Scopes: []string{"a:b:c"}}, "upper-case"},
		{"star in list", Rule{Methods: []string{"GET", "*"}, Pattern: "/a", Scopes: []string{"a:b:c"}}, "stand alone"},
		{"dup method", Rule{Methods: []string{"GET", "GET"}, Pattern: "/a", Scopes: []string{"a:b:c"}}, "twice"},
		{"public with scopes", Rule{Public: true, Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{"a:b:c"}}, "no scopes"},
		{"require without scopes", Rule{Methods: []string{"GET"}, Pattern: "/a"}, "at least one scope"},
		{"relative pattern", Rule{Methods: []string{"GET"}, Pattern: "a", Scopes: []string{"a:b:c"}}, "start with '/'"},
		{"empty segment", Rule{Methods: []string{"GET"}, Pattern: "/a//b", Scopes: []string{"a:b:c"}}, "empty segment"},
		{"trailing slash", Rule{Methods: []string{"GET"}, Pattern: "/a/", Scopes: []string{"a:b:c"}}, "empty segment"},
		{"dot segment", Rule{Methods: []string{"GET"}, Pattern: "/a/../b", Scopes: []string{"a:b:c"}}, "never match"},
		{"encoded slash", Rule{Methods: []string{"GET"}, Pattern: "/a%2Fb", Scopes: []string{"a:b:c"}}, "never match"},
		{"query", Rule{Methods: []string{"GET"}, Pattern: "/a?b=c", Scopes: []string{"a:b:c"}}, "path only"},
		{"glob", Rule{Methods: []string{"GET"}, Pattern: "/a/*", Scopes: []string{"a:b:c"}}, "not a wildcard"},
		{"partial var", Rule{Methods: []string{"GET"}, Pattern: "/a/{id}.json", Scopes: []string{"a:b:c"}}, "whole segment"},
		{"rest not final", Rule{Methods: []string{"GET"}, Pattern: "/a/{r...}/b", Scopes: []string{"a:b:c"}}, "final segment"},
		{"bad name", Rule{Methods: []string{"GET"}, Pattern: "/a/{1x}", Scopes: []string{"a:b:c"}}, "not an identifier"},
		{"empty name", Rule{Methods: []string{"GET"}, Pattern: "/a/{}", Scopes: []string{"a:b:c"}}, "not an identifier"},
		{"dup name", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}/{x}", Scopes: []string{"a:b:c"}}, "twice"},
		{"unknown var", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{"a:b:{y}"}}, "unknown variable {y}"},
		{"bad template", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{"a:{x}"}}, "not action:resource:identifier"},
		{"empty action", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{":b:{x}"}}, "not action:resource:identifier"},
		{"unbalanced", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{"a:b:{x"}}, "unmatched '{'"},
		{"unbalanced close", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{"a:b:x}"}}, "unmatched '}'"},
		{"rest in template", Rule{Methods: []string{"GET"}, Pattern: "/a/{x...}", Scopes: []string{"a:b:{x...}"}}, "without '...'"},
		{"space in template", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{"a:b:c d"}}, "byte 5 is a space"},
		{"colon in identifier", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{"read:data:a:{x}"}}, "no further ':'"},
		{"colon after variable", Rule{Methods: []string{"GET"}, Pattern: "/a/{x}", Scopes: []string{"read:data:{x}:{x}"}}, "no further ':'"},
		{"non-ASCII in template", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{"read:café:x"}}, "byte 8 is non-ASCII byte 0xc3"},
		{"quote in template", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{`read:"a":x`}}, "byte 5 is a double quote"},
		{"backslash in template", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{`read:a\b:x`}}, "byte 6 is a backslash"},
		{"tab in template", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{"read:a:\tx"}}, "byte 7 is control byte 0x09"},
		{"DEL in placeholder name", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{"read:a:{http.x\x7f}"}}, "control byte 0x7f"},
		{"matrix dot literal", Rule{Methods: []string{"GET"}, Pattern: "/static/..;/a", Scopes: []string{"a:b:c"}}, "dot segment"},
		{"bad placeholder", Rule{Methods: []string{"GET"}, Pattern: "/a", Scopes: []string{"a:b:{.x}"}}, "malformed placeholder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile([]Rule{{Public: true, Methods: []string{"GET"}, Pattern: "/ok"}, tc.rule})
			require.ErrorIs(t, err, ErrInvalidRule)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Contains(t, err.Error(), "rule #2")
			assert.Contains(t, err.Error(), tc.rule.String(), "the error names the rule")
		})
	}
}

func TestCaddyShorthandCollisions(t *testing.T) {
	// What Caddy hands us after rewriting shorthands in the tokens.
	tests := []struct{ pattern, shorthand string }{
		{"/files/{http.request.uri.path.file}", "{file}"},
		{"/d/{http.request.uri.path.dir}", "{dir}"},
		{"/h/{http.request.host}", "{host}"},
		{"/p/{http.request.uri.path}", "{path}"},
		{"/p/{http.request.uri.path.0}", "{path.0}"},
		{"/p/{http.request.header.X-Id}", "{header.X-Id}"},
		{"/p/{http.request.host.labels.1}", "{labels.1}"},
		{"/p/{http.request.uri.query.q}", "{query.q}"},
		{"/p/{http.request.cookie.c}", "{cookie.c}"},
		{"/p/{http.regexp.name.1}", "{re.name.1}"},
		{"/p/{http.regexp...}", "{re...}"},
		{"/p/{http.vars.v}", "{vars.v}"},
		{"/p/{http.vars.client_ip}", "{client_ip}"},
		{"/p/{http.request.tls.client.subject}", "{tls_client_subject}"},
		{"/p/{http.reverse_proxy.upstream.hostport}", "{upstream_hostport}"},
		{"/p/{http.request.uri.path.file.base}", "{file.base}"},
		{"/p/{http.matchers.file.type}", "{file_match.type}"},
		{"/p/{http.error.status_code}", "{err.status_code}"},
		{"/p/{http.request.orig_uri.prefixed_query}", "{orig_?query}"},
	}
	for _, tc := range tests {
		_, err := ParseRule([]string{"require", "GET", tc.pattern, "a:b:c"})
		require.ErrorIs(t, err, ErrInvalidRule, tc.pattern)
		assert.Contains(t, err.Error(), "Caddy's "+tc.shorthand+" shorthand", tc.pattern)
		assert.Contains(t, err.Error(), "{rest...}")
	}
	// A dotted name that is no shorthand is still refused, without guessing.
	_, err := ParseRule([]string{"public", "GET", "/p/{a.b}"})
	require.ErrorIs(t, err, ErrInvalidRule)
	assert.Contains(t, err.Error(), "cannot contain '.'")

	// {path...} survives Caddy's rewriting, but {path} in a template does
	// not: it would silently be the whole request path. Refuse.
	_, err = ParseRule([]string{"require", "GET", "/r/{path...}", "read:r:{http.request.uri.path}"})
	require.ErrorIs(t, err, ErrInvalidRule)
	assert.Contains(t, err.Error(), "Caddy's {path} shorthand")
	// With no such variable, the placeholder is meant and is fine.
	_, err = ParseRule([]string{"require", "GET", "/r/{rest...}", "read:r:{http.request.uri.path}"})
	require.NoError(t, err)
}

func TestParseRule(t *testing.T) {
	r, err := ParseRule([]string{"require", "GET,PUT", "/orders/{id}", "read:orders:{id}", "audit:orders:*"})
	require.NoError(t, err)
	assert.Equal(t, Rule{Methods: []string{"GET", "PUT"}, Pattern: "/orders/{id}", Scopes: []string{"read:orders:{id}", "audit:orders:*"}}, r)
	assert.Equal(t, "require GET,PUT /orders/{id} read:orders:{id} audit:orders:*", r.String())

	r, err = ParseRule([]string{"public", "*", "/healthz"})
	require.NoError(t, err)
	assert.Equal(t, Rule{Public: true, Methods: []string{"*"}, Pattern: "/healthz"}, r)
	assert.Equal(t, "public * /healthz", r.String())

	for _, args := range [][]string{
		nil,
		{"require"},
		{"require", "GET", "/a"},
		{"public", "GET", "/a", "a:b:c"},
		{"allow", "GET", "/a"},
		{"Require", "GET", "/a", "a:b:c"},
		{"require", "GET,", "/a", "a:b:c"},
		{"require", ",GET", "/a", "a:b:c"},
		{"require", "GET", "/a", "a:b"},
	} {
		_, err := ParseRule(args)
		assert.ErrorIs(t, err, ErrInvalidRule, "%q", args)
	}
}

func TestCompileCopiesRules(t *testing.T) {
	rules := mustRules(t, "require GET /a/{x} r:a:{x}")
	m, err := Compile(rules)
	require.NoError(t, err)
	rules[0].Methods[0] = "POST"
	rules[0].Scopes[0] = "w:a:{x}"
	d := m.Decide("GET", "/a/1", nil)
	require.Equal(t, Require, d.Outcome)
	assert.Equal(t, []string{"r:a:1"}, d.Required)
	assert.Equal(t, "require GET /a/{x} r:a:{x}", d.Rule.String())
}

func TestDecideEmptyAndManyVars(t *testing.T) {
	var m *Map
	assert.Equal(t, Decision{Outcome: Unmapped}, m.Decide("GET", "/", nil))
	assert.Equal(t, NotCanonical, m.Decide("GET", "/a/..", nil).Outcome, "a nil Map still checks the path")

	m, err := Compile(nil)
	require.NoError(t, err)
	assert.Equal(t, Decision{Outcome: Unmapped}, m.Decide("GET", "/a", nil))

	// More variables than the on-stack buffer holds.
	var pat, tpl, path strings.Builder
	for i := range 20 {
		pat.WriteString("/{v" + string(rune('a'+i)) + "}")
		tpl.WriteString("{v" + string(rune('a'+i)) + "}")
		path.WriteString("/" + string(rune('a'+i)))
	}
	m, err = Compile([]Rule{{Methods: []string{"GET"}, Pattern: pat.String(), Scopes: []string{"r:x:" + tpl.String()}}})
	require.NoError(t, err)
	d := m.Decide("GET", path.String(), nil)
	require.Equal(t, Require, d.Outcome, "%v", d.Err)
	assert.Equal(t, []string{"r:x:abcdefghijklmnopqrst"}, d.Required)
}

func TestDecideLongEncodedLiteral(t *testing.T) {
	long := strings.Repeat("a", 100)
	m, err := Compile(mustRules(t, "require GET /"+long+" r:long:x", "public GET /{x}"))
	require.NoError(t, err)
	d := m.Decide("GET", "/%61"+long[1:], nil)
	require.Equal(t, Require, d.Outcome)
	assert.Equal(t, []string{"r:long:x"}, d.Required)
}

// Values are decoded a chunk at a time; an escape at any offset, in
// particular across a chunk boundary, decodes whole.
func TestDecideLongEncodedValue(t *testing.T) {
	m, err := Compile(mustRules(t, "require GET /v/{rest...} r:v:{rest}"))
	require.NoError(t, err)
	for n := 0; n < 200; n++ {
		raw := strings.Repeat("a", n) + "%2B%2b" + strings.Repeat("/b%7E", n%7)
		d := m.Decide("GET", "/v/"+raw, nil)
		require.Equal(t, Require, d.Outcome, "%d: %v", n, d.Err)
		want, err := url.PathUnescape(raw)
		require.NoError(t, err)
		assert.Equal(t, []string{"r:v:" + want}, d.Required, n)
	}
	// A bad byte past the first chunk is still found.
	d := m.Decide("GET", "/v/"+strings.Repeat("a", 100)+"%3A", nil)
	assert.Equal(t, BadValue, d.Outcome)
	assert.ErrorContains(t, d.Err, "byte 100 is ':'")
}

func TestDecideAllocations(t *testing.T) {
	m, err := Compile(mustRules(t,
		"require GET /s/{x} r:s:* w:s:*",
		"public GET /p/{x}",
		"require GET /t/{x}/{y...} r:t:{x} w:t:{y} a:{x}:{y}",
	))
	require.NoError(t, err)
	long := "/t/" + strings.Repeat("x%41", 100) + "/" + strings.Repeat("y%42/", 100) + "z"
	for _, tc := range []struct {
		path string
		max  float64
	}{
		{"/s/1", 0}, // static templates: the shared slice
		{"/p/1", 0}, // public
		{"/u", 0},   // unmapped
		{"/t/1/2/3", 2},
		{long, 2}, // long encoded values cost no more
	} {
		allocs := testing.AllocsPerRun(100, func() {
			if d := m.Decide("GET", tc.path, nil); d.Err != nil {
				t.Fatal(d.Err)
			}
		})
		assert.LessOrEqual(t, allocs, tc.max, tc.path)
	}
	allocs := testing.AllocsPerRun(100, func() { _ = CheckCanonical("/a/b%20c/d") })
	assert.Zero(t, allocs)
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{
		NotCanonical: "not_canonical",
		Unmapped:     "unmapped",
		Public:       "public",
		Require:      "require",
		BadValue:     "bad_value",
		Outcome(9):   "Outcome(9)",
	} {
		assert.Equal(t, want, o.String())
	}
	assert.Equal(t, NotCanonical, Decision{}.Outcome, "a zero Decision refuses")
}

// Lookup is Decide in the older shape; each outcome maps as documented.
func TestLookupWrapsDecide(t *testing.T) {
	m, err := Compile(mustRules(t, "require GET /o/{id} read:orders:{id}", "public GET /healthz"))
	require.NoError(t, err)
	tests := []struct {
		path       string
		found, pub bool
		required   []string
		sentinel   error
	}{
		{"/o/1", true, false, []string{"read:orders:1"}, nil},
		{"/healthz", true, true, nil, nil},
		{"/nowhere", false, false, nil, nil},
		{"/o/a%3Ab", true, false, nil, ErrBadValue}, // the rule, no scopes
		{"/o/..", false, false, nil, ErrNotCanonical},
	}
	for _, tc := range tests {
		match, found, err := m.Lookup("GET", tc.path, nil)
		assert.Equal(t, tc.found, found, tc.path)
		assert.Equal(t, tc.pub, match.Public, tc.path)
		assert.Equal(t, tc.required, match.Required, tc.path)
		assert.Equal(t, tc.found, match.Rule != nil, tc.path)
		if tc.sentinel != nil {
			assert.ErrorIs(t, err, tc.sentinel, tc.path)
		} else {
			assert.NoError(t, err, tc.path)
		}
	}
}

// A Map is shared by every request: concurrent decisions, including ones
// that return the shared static slice, must not race (run with -race).
func TestDecideConcurrent(t *testing.T) {
	m, err := Compile(benchRules(100))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				id := strconv.Itoa(g*1000 + i)
				d := m.Decide("GET", "/svc3/orders/"+id, nil)
				if d.Outcome != Require || d.Required[0] != "read:orders:"+id || d.Required[1] != "read:svc3:"+id {
					t.Errorf("templated: %+v", d)
					return
				}
				if d := m.Decide("PUT", "/svc4/reports/"+id, nil); d.Outcome != Require || d.Required[0] != "read:reports:*" {
					t.Errorf("static: %+v", d)
					return
				}
			}
		}()
	}
	wg.Wait()
}

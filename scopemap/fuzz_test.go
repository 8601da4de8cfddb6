package scopemap

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// fuzzBaseRules cover every segment kind, method form and template form, so
// fuzzed paths exercise precedence, backtracking and expansion.
var fuzzBaseRules = []string{
	"require GET /orders/{id} read:orders:{id}",
	"require POST,PUT /orders/{id} write:orders:{id}",
	"require * /reports/{path...} read:reports:*",
	"require POST /transfer/{from}/{to} read:acct:{from} write:acct:{to}",
	"public GET /healthz",
	"public OPTIONS /{path...}",
	"require GET /a/{x}/b r:a:{x}",
	"require GET /a/b/{y} r:b:{y}",
	"require HEAD /a/b/{y} h:b:{y}",
	"require * /a/{x}/{y} any:{x}:{y}-{http.x.v}",
	"require GET /files/{rest...} read:files:{rest} read:host:{http.x.host}",
	"require GET /caf%C3%A9/{id} read:cafe:{id}-{id}",
	"require GET /q/{id} q!#$%&'()*+,-./;<=>?@[]^_`|~:x:{id}",
	"require GET /{seg} read:top:{seg}",
	"require DELETE / del:root:x",
}

func compileFuzzRules(t *testing.T, text string) ([]Rule, *Map) {
	var base, extra []Rule
	for _, l := range fuzzBaseRules {
		r, err := ParseRule(strings.Fields(l))
		if err != nil {
			t.Fatal(err)
		}
		base = append(base, r)
	}
	for _, l := range strings.Split(text, "\n") {
		if r, err := ParseRule(strings.Fields(l)); err == nil && len(extra) < 8 {
			extra = append(extra, r)
		}
	}
	for _, rules := range [][]Rule{append(append([]Rule(nil), base...), extra...), extra, base} {
		if m, err := Compile(rules); err == nil {
			return rules, m
		} else if !errors.Is(err, ErrConflict) && !errors.Is(err, ErrInvalidRule) {
			t.Fatalf("Compile: unexpected error %v", err)
		}
	}
	t.Fatal("base rules do not compile")
	return nil, nil
}

func FuzzMatch(f *testing.F) {
	f.Add("", "GET", "/orders/42", "v")
	f.Add("", "HEAD", "/a/b/c", "v")
	f.Add("", "HEAD", "/a/z/b", "v")
	f.Add("", "PATCH", "/a/%62/%63", "v")
	f.Add("", "GET", "/files", "h")
	f.Add("", "GET", "/files/x/y%3Az", "h")
	f.Add("", "GET", "/caf%c3%a9/%E2%82%AC", "")
	f.Add("", "GET", "/caf%c3%a9/x%20y", "")
	f.Add("", "GET", "/q/%22", "")
	f.Add("", "POST", "/transfer/a%00/b", "")
	f.Add("", "GET", "/%FF", "")
	f.Add("", "DELETE", "/", "")
	f.Add("", "GET", "/orders/..;", "")
	f.Add("", "GET", "/files/a/%2e%2E%3Bjsessionid=1/b", "h")
	f.Add("", "PUT", "/a/b/c", "caf\u00e9")
	f.Add("require GET /x/{a}/{b...} r:{a}:{b}\npublic * /x/y", "GET", "/x/y/z/w", "")
	f.Add("require * /{a}/{b} r:x:{a}{b}{http.x.v}", "PUT", "/p/q", "a:b")
	f.Fuzz(func(t *testing.T, rulesText, method, rawPath, ph string) {
		rules, m := compileFuzzRules(t, rulesText)
		resolve := func(name string) (string, bool) {
			if strings.HasPrefix(name, "http.x.") {
				return ph, true
			}
			return "", false
		}
		d := m.Decide(method, rawPath, resolve)
		if match, found, err := m.Lookup(method, rawPath, resolve); found != (d.Rule != nil) || match.Rule != d.Rule ||
			!reflect.DeepEqual(match.Required, d.Required) || fmt.Sprint(err) != fmt.Sprint(d.Err) || match.Public != (d.Outcome == Public) {
			t.Fatalf("Lookup disagrees with Decide: %+v %v %v, %+v", match, found, err, d)
		}
		if CheckCanonical(rawPath) != nil {
			if d.Outcome != NotCanonical || !errors.Is(d.Err, ErrNotCanonical) || d.Rule != nil || d.Required != nil {
				t.Fatalf("non-canonical %q: %+v", rawPath, d)
			}
			return
		}
		idx, vals := refLookup(rules, method, rawPath)
		if idx < 0 {
			if !reflect.DeepEqual(d, Decision{Outcome: Unmapped}) {
				t.Fatalf("%s %q: reference finds no rule, Decide says %+v", method, rawPath, d)
			}
			return
		}
		if d.Rule == nil || !reflect.DeepEqual(*d.Rule, rules[idx]) {
			t.Fatalf("%s %q: want rule `%s`, got %+v", method, rawPath, rules[idx], d)
		}
		if rules[idx].Public {
			if d.Outcome != Public || d.Required != nil || d.Err != nil {
				t.Fatalf("public rule: %+v", d)
			}
			return
		}
		want, good := refExpand(rules[idx].Scopes, vals, resolve)
		if !good {
			if d.Outcome != BadValue || !errors.Is(d.Err, ErrBadValue) || d.Required != nil {
				t.Fatalf("%s %q: want BadValue (values %q, ph %q), got %+v", method, rawPath, vals, ph, d)
			}
			return
		}
		if d.Outcome != Require || d.Err != nil || !reflect.DeepEqual(d.Required, want) {
			t.Fatalf("%s %q via `%s`: %+v, want Required %q", method, rawPath, rules[idx], d, want)
		}
		for _, s := range d.Required {
			if !Valid(s) || !refScopeRE.MatchString(s) {
				t.Fatalf("required scope %q is not in the grammar", s)
			}
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add("require GET /orders/{id} read:orders:{id}")
	f.Add("require POST,PUT /orders/{id} write:orders:{id}")
	f.Add("require * /reports/{path...} read:reports:*")
	f.Add("require POST /transfer/{from}/{to} read:acct:{from} write:acct:{to}")
	f.Add("public GET /healthz")
	f.Add("public OPTIONS /{path...}")
	f.Add("require GET /files/{http.request.uri.path.file} read:files:x")
	f.Add("require GET /h/{id} read:{http.request.host}:{id}")
	f.Add("require GET /a/%7B/{x} a:b:{x}}")
	f.Add("require GET,get /a a:b:c")
	f.Add("require GET /r/{path...} read:r:{http.request.uri.path}")
	f.Fuzz(func(t *testing.T, line string) {
		r, err := ParseRule(strings.Fields(line))
		if err != nil {
			if !errors.Is(err, ErrInvalidRule) {
				t.Fatalf("ParseRule error %v does not wrap ErrInvalidRule", err)
			}
			return
		}
		// The rendered rule parses back to itself.
		r2, err := ParseRule(strings.Fields(r.String()))
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip of `%s`: %+v, %v", r, r2, err)
		}
		// A parsed rule compiles; the same rule twice always conflicts,
		// and the error names it.
		m, err := Compile([]Rule{r})
		if err != nil {
			t.Fatalf("Compile(`%s`): %v", r, err)
		}
		if _, err := Compile([]Rule{r, r}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), r.String()) {
			t.Fatalf("duplicate `%s`: %v", r, err)
		}
		// Every template is a valid scope for any good values.
		for _, s := range r.Scopes {
			if x := refVarRE.ReplaceAllString(s, "x"); !refScopeRE.MatchString(x) {
				t.Fatalf("template %q accepted but %q is not a valid scope", s, x)
			}
		}
		// Decisions on the pattern itself (a canonical path when the
		// pattern has no variables) never panic, and a static one requires
		// exactly the templates.
		d := m.Decide(r.Methods[0], r.Pattern, func(string) (string, bool) { return "v", true })
		if d.Outcome == Require && !strings.Contains(r.Pattern, "{") && !strings.Contains(strings.Join(r.Scopes, ""), "{") &&
			!reflect.DeepEqual(d.Required, r.Scopes) {
			t.Fatalf("`%s` on its own pattern: %+v", r, d)
		}
	})
}

func FuzzCanonical(f *testing.F) {
	for _, p := range []string{
		"/", "/a/b", "//", "/a/", "/./a", "/a/..", "/%2e%2E", "/.%2e/x", "/a%2Fb", "/a%5cb",
		"/a\\b", "/a%00", "/a\x00", "/a%", "/a%g0", "/caf%C3%A9", "/%252e%252e", "/a;b=c", "", "a",
		"/static/..;/orders/43", "/static/%2e%2e;/orders/43", "/.;x", "/%2e%2E;jsessionid=1", "/.%2e%3bfoo",
		"/..%3B", "/a;b", "/..a;b", "/...;", "/;", "/..%253B",
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := CheckCanonical(p)
		if err != nil && !errors.Is(err, ErrNotCanonical) {
			t.Fatalf("CheckCanonical(%q) = %v: does not wrap ErrNotCanonical", p, err)
		}
		if want := refCanonical(p); (err == nil) != want {
			t.Fatalf("CheckCanonical(%q) = %v, reference says canonical=%v", p, err, want)
		}
		if err != nil {
			return
		}
		if c := path.Clean(p); c != p {
			t.Fatalf("canonical %q changed by path.Clean: %q", p, c)
		}
		if u := strings.ToUpper(p); strings.Contains(u, "%2F") || strings.Contains(u, "%5C") {
			t.Fatalf("canonical %q contains an encoded separator", p)
		}
		d, uerr := url.PathUnescape(p)
		if uerr != nil || strings.ContainsAny(d, "\\\x00") || strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("canonical %q decodes to %q (%v)", p, d, uerr)
		}
		// No segment is a dot segment once a matrix parameter is removed,
		// whether the ';' is raw or encoded and whether the dots are.
		for _, seg := range strings.Split(p[1:], "/") {
			raw, _, _ := strings.Cut(seg, ";")
			dec, _ := url.PathUnescape(seg)
			dec, _, _ = strings.Cut(dec, ";")
			for _, s := range []string{raw, dec} {
				if s == "." || s == ".." {
					t.Fatalf("canonical %q has the dot segment %q (from %q)", p, s, seg)
				}
			}
		}
	})
}

// refCanonical is an independent statement of the canonical-path rules.
func refCanonical(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	if p == "/" {
		return true
	}
	for _, seg := range strings.Split(p[1:], "/") {
		d, err := url.PathUnescape(seg)
		// A servlet container strips ";parameters" before resolving dots.
		base, _, _ := strings.Cut(d, ";")
		if seg == "" || err != nil || base == "." || base == ".." || strings.ContainsAny(seg+d, "/\\") {
			return false
		}
		for i := 0; i < len(seg+d); i++ {
			if c := (seg + d)[i]; c < 0x20 || c == 0x7f {
				return false
			}
		}
	}
	return true
}

func FuzzScopeGrammar(f *testing.F) {
	for _, s := range []string{
		"read:orders:42", "*:*:*", "read:orders:*", "read:data:a:b", "read:orders:", "::", "",
		"read:my orders:1", "read:café:1", "read:a:\x00", "read:a:\x7f", `read:"a":1`, `read:a\b:1`,
		"read:a:b\n", "read:a:\u00a0", "read:a:\u2028", "read:a:\xff", "!:~:{}", "read:orders:4*",
	} {
		f.Add(s, "read:orders:*")
	}
	f.Fuzz(func(t *testing.T, s, g string) {
		err := CheckScope(s)
		ok := refScopeRE.MatchString(s)
		if (err == nil) != ok {
			t.Fatalf("CheckScope(%q) = %v, reference says valid=%v", s, err, ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalidScope) || !strings.HasPrefix(err.Error(), "invalid scope "+quoteTrunc(s)+": ")) {
			t.Fatalf("CheckScope(%q) = %v: does not wrap ErrInvalidScope or does not quote the scope", s, err)
		}
		if Valid(s) != ok || (CheckScopes([]string{"a:b:c", s}) == nil) != ok {
			t.Fatalf("Valid or CheckScopes disagrees with CheckScope on %q", s)
		}
		sc, parsed := ParseScope(s)
		if parsed != ok {
			t.Fatalf("ParseScope(%q) ok=%v, CheckScope says %v", s, parsed, err)
		}
		if !parsed && sc != (Scope{}) {
			t.Fatalf("ParseScope(%q) = %+v with ok=false", s, sc)
		}
		if parsed {
			if parts := strings.Split(s, ":"); len(parts) != 3 || sc != (Scope{parts[0], parts[1], parts[2]}) {
				t.Fatalf("ParseScope(%q) = %+v", s, sc)
			}
			for i := 0; i < len(s); i++ {
				if c := s[i]; c <= ' ' || c >= 0x7f {
					t.Fatalf("accepted %q has byte %#x at %d", s, c, i)
				}
			}
			if strings.ContainsFunc(s, unicode.IsSpace) || strings.ContainsFunc(s, unicode.IsControl) || !utf8.ValidString(s) {
				t.Fatalf("accepted %q has whitespace, a control character or invalid UTF-8", s)
			}
		}
		// Coverage: never through a scope outside the grammar; a scope
		// covers itself iff it is one.
		for _, pair := range [][2]string{{g, s}, {s, g}, {s, s}} {
			if got, want := Covers([]string{pair[0]}, pair[1]), refCovers(pair[0], pair[1]); got != want {
				t.Fatalf("Covers([%q], %q) = %v, reference says %v", pair[0], pair[1], got, want)
			}
		}
		if Subset([]string{s}, []string{s}) != ok {
			t.Fatalf("Subset of %q in itself = %v, want %v", s, !ok, ok)
		}
		if parsed && !Covers([]string{sc.Action + ":" + sc.Resource + ":" + Wildcard}, s) {
			t.Fatalf("the wildcard of %q does not cover it", s)
		}
	})
}

package scopemap

import (
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// This file is a deliberately naive reference implementation of rule
// selection and template expansion: a linear scan over rules with string
// splitting and net/url decoding. Tests and fuzz targets compare the trie
// against it, so the two must be written independently.

// refKinds: at the first differing position the lower kind wins.
const (
	refLit = iota
	refParam
	refEnd
	refRest
)

type refSeg struct {
	kind int
	text string // decoded literal or variable name
}

func refParsePattern(p string) []refSeg {
	var segs []refSeg
	if p != "/" {
		for _, s := range strings.Split(p[1:], "/") {
			switch {
			case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "...}"):
				segs = append(segs, refSeg{refRest, s[1 : len(s)-4]})
			case strings.HasPrefix(s, "{"):
				segs = append(segs, refSeg{refParam, s[1 : len(s)-1]})
			default:
				d, err := url.PathUnescape(s)
				if err != nil {
					panic(err)
				}
				segs = append(segs, refSeg{refLit, d})
			}
		}
	}
	if len(segs) == 0 || segs[len(segs)-1].kind != refRest {
		segs = append(segs, refSeg{kind: refEnd})
	}
	return segs
}

// refMatchPath matches a canonical path against a pattern, returning the
// decoded variable values.
func refMatchPath(segs []refSeg, p string) (map[string]string, bool) {
	var parts []string
	if p != "/" {
		parts = strings.Split(p[1:], "/")
	}
	vals := map[string]string{}
	for i, s := range segs {
		switch s.kind {
		case refEnd:
			return vals, i == len(parts)
		case refRest:
			rest := strings.Join(parts[min(i, len(parts)):], "/")
			d, err := url.PathUnescape(rest)
			if err != nil {
				panic(err)
			}
			vals[s.text] = d
			return vals, true
		}
		if i >= len(parts) {
			return nil, false
		}
		d, err := url.PathUnescape(parts[i])
		if err != nil {
			panic(err)
		}
		if s.kind == refLit && d != s.text {
			return nil, false
		}
		if s.kind == refParam {
			vals[s.text] = d
		}
	}
	panic("unreachable")
}

func refSameShape(a, b []refSeg) bool {
	return slices.EqualFunc(a, b, func(x, y refSeg) bool {
		return x.kind == y.kind && (x.kind != refLit || x.text == y.text)
	})
}

// refMethodRank: 0 listed, 1 HEAD served by a GET rule, 2 "*", -1 no.
func refMethodRank(rules []Rule, i int, method string) int {
	r := rules[i]
	if len(r.Methods) == 1 && r.Methods[0] == "*" {
		return 2
	}
	if slices.Contains(r.Methods, method) {
		return 0
	}
	if method == "HEAD" && slices.Contains(r.Methods, "GET") {
		shape := refParsePattern(r.Pattern)
		for _, o := range rules {
			if slices.Contains(o.Methods, "HEAD") && refSameShape(shape, refParsePattern(o.Pattern)) {
				return -1
			}
		}
		return 1
	}
	return -1
}

// refLookup returns the index of the most specific matching rule, by linear
// scan, and its decoded variable values.
func refLookup(rules []Rule, method, p string) (int, map[string]string) {
	best, bestRank := -1, 0
	var bestShape []refSeg
	var bestVals map[string]string
	for i, r := range rules {
		rank := refMethodRank(rules, i, method)
		if rank < 0 {
			continue
		}
		shape := refParsePattern(r.Pattern)
		vals, ok := refMatchPath(shape, p)
		if !ok {
			continue
		}
		if best >= 0 {
			c := slices.CompareFunc(shape, bestShape, func(x, y refSeg) int { return x.kind - y.kind })
			if c > 0 || (c == 0 && rank >= bestRank) {
				continue
			}
		}
		best, bestRank, bestShape, bestVals = i, rank, shape, vals
	}
	return best, bestVals
}

var refVarRE = regexp.MustCompile(`\{([^{}]*)\}`)

// refExpand expands templates; ok is false if any value is unusable.
func refExpand(tpls []string, vals map[string]string, resolve Resolver) ([]string, bool) {
	var out []string
	good := true
	for _, t := range tpls {
		s := refVarRE.ReplaceAllStringFunc(t, func(m string) string {
			name := m[1 : len(m)-1]
			v, ok := vals[name]
			if strings.Contains(name, ".") {
				v, ok = "", false
				if resolve != nil {
					v, ok = resolve(name)
				}
			}
			if !ok || !refGoodValue(v) {
				good = false
			}
			return v
		})
		out = append(out, s)
	}
	return out, good
}

// refScopeChars is the scope grammar's character set, transcribed from its
// ABNF: %x21 / %x23-39 / %x3B-5B / %x5D-7E.
const refScopeChars = `[!#-9;-\[\]-~]`

var (
	refScopeRE = regexp.MustCompile(`^` + refScopeChars + `+:` + refScopeChars + `+:` + refScopeChars + `+$`)
	refValueRE = regexp.MustCompile(`^` + refScopeChars + `+$`)
)

// refGoodValue: a value substituted into a template is one or more
// scope-chars.
func refGoodValue(v string) bool { return refValueRE.MatchString(v) }

// refCovers is coverage stated naively: both sides in the grammar, same
// action and resource, and the same identifier or a granted "*".
func refCovers(granted, required string) bool {
	if !refScopeRE.MatchString(granted) || !refScopeRE.MatchString(required) {
		return false
	}
	g, r := strings.Split(granted, ":"), strings.Split(required, ":")
	return g[0] == r[0] && g[1] == r[1] && (g[2] == r[2] || g[2] == "*")
}

package scopemap

import (
	"errors"
	"fmt"
	"strings"
)

// segKind is the kind of one pattern segment. The order is the specificity
// order at the first place two patterns differ: a literal beats {name},
// {name} beats {name...}.
type segKind uint8

const (
	segLiteral segKind = iota // matches one segment equal to lit
	segParam                  // {name}: exactly one non-empty segment
	segRest                   // {name...}: the rest, possibly empty; final only
)

// segment is one parsed pattern segment.
type segment struct {
	kind segKind
	lit  string // percent-decoded literal (segLiteral)
	name string // variable name (segParam, segRest)
}

// pattern is a parsed PATTERN. names[i] is the variable bound by the i-th
// variable segment, which is also the index of its value at lookup time.
type pattern struct {
	segs  []segment
	names []string
}

// parsePattern parses a route PATTERN such as "/orders/{id}" or
// "/reports/{path...}".
//
// Literal segments are stored percent-decoded and matched against the
// decoded request segment, so "/%61dmin" hits the same rule as "/admin":
// the backend decodes both to the same name, and matching raw bytes would
// let an encoded spelling slip past a literal rule into a looser one.
func parsePattern(p string) (pattern, error) {
	if p == "" || p[0] != '/' {
		return pattern{}, fmt.Errorf("pattern %q must start with '/'", p)
	}
	if strings.ContainsAny(p, "?#") {
		return pattern{}, fmt.Errorf("pattern %q contains '?' or '#': patterns match the path only", p)
	}
	var pat pattern
	if p == "/" {
		return pat, nil
	}
	raw := strings.Split(p[1:], "/")
	for i, s := range raw {
		seg, err := parseSegment(s, i == len(raw)-1)
		if err != nil {
			return pattern{}, fmt.Errorf("pattern %q, segment %d: %w", p, i+1, err)
		}
		if seg.kind != segLiteral {
			for _, n := range pat.names {
				if n == seg.name {
					return pattern{}, fmt.Errorf("pattern %q: variable {%s} appears twice", p, seg.name)
				}
			}
			pat.names = append(pat.names, seg.name)
		}
		pat.segs = append(pat.segs, seg)
	}
	return pat, nil
}

func parseSegment(s string, last bool) (segment, error) {
	if s == "" {
		return segment{}, errors.New("empty segment ('//' or trailing '/'): such paths are not canonical and never reach matching")
	}
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
		inner := s[1 : len(s)-1]
		if strings.ContainsAny(inner, "{}") {
			return segment{}, fmt.Errorf("%q: nested braces", s)
		}
		// A dot means Caddy rewrote a shorthand, or the name is not an
		// identifier anyway. Either way: reject, and say which shorthand.
		if strings.Contains(strings.TrimSuffix(inner, "..."), ".") {
			if sh := shorthandFor(inner); sh != "" {
				return segment{}, fmt.Errorf("%s is Caddy's %s shorthand, which the Caddyfile rewrites before this rule is read; name the variable something else, e.g. {name} or {rest...}", s, sh)
			}
			return segment{}, fmt.Errorf("%s: a variable name cannot contain '.' (if you wrote a Caddy placeholder shorthand, Caddy rewrote it); use e.g. {name} or {rest...}", s)
		}
		kind := segParam
		name, isRest := strings.CutSuffix(inner, "...")
		if isRest {
			if !last {
				return segment{}, fmt.Errorf("{%s} must be the final segment", inner)
			}
			kind = segRest
		}
		if !isIdent(name) {
			return segment{}, fmt.Errorf("%s: variable name %q is not an identifier ([A-Za-z_][A-Za-z0-9_]*)", s, name)
		}
		return segment{kind: kind, name: name}, nil
	}
	if strings.ContainsAny(s, "{}") {
		return segment{}, fmt.Errorf("%q: a {name} must be a whole segment", s)
	}
	if strings.Contains(s, "*") {
		return segment{}, fmt.Errorf("%q: '*' is not a wildcard in patterns; use {name} for one segment or a final {rest...} for the rest", s)
	}
	if err := checkLiteralSegment(s); err != nil {
		return segment{}, err
	}
	return segment{kind: segLiteral, lit: string(appendUnescaped(nil, s))}, nil
}

// checkLiteralSegment rejects literals no canonical path can contain, so a
// rule that could never match is a load-time error, not a silent gap.
func checkLiteralSegment(s string) error {
	// "/" + s is canonical iff s is a canonical segment.
	if err := CheckCanonical("/" + s); err != nil {
		return fmt.Errorf("literal %q can never match a canonical path: %w", s, err)
	}
	return nil
}

// isIdent reports whether s is a Go-style identifier of ASCII letters,
// digits and '_', not starting with a digit.
func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

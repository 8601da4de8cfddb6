package scopemap

import (
	"fmt"
	"strings"
)

// Rule is one route rule as written by a resource owner: in a Caddyfile
// `require METHODS PATTERN SCOPE...` or `public METHODS PATTERN`. The struct
// is also the JSON form; Compile validates it either way.
type Rule struct {
	// Public rules need no token.
	Public bool `json:"public,omitempty"`
	// Methods are upper-case method names, or ["*"] for any method. A GET
	// rule also serves HEAD unless a HEAD rule exists for the same pattern.
	Methods []string `json:"methods"`
	// Pattern is the path pattern, e.g. "/orders/{id}" or
	// "/reports/{path...}".
	Pattern string `json:"pattern"`
	// Scopes are the scope templates that are all required; empty iff
	// Public.
	Scopes []string `json:"scopes,omitempty"`
}

// Rule keywords in the Caddyfile.
const (
	keywordRequire = "require"
	keywordPublic  = "public"
)

// String renders r as the Caddyfile line it came from, e.g.
// `require GET,POST /orders/{id} read:orders:{id}`, so errors name the rule
// the way its author wrote it.
func (r Rule) String() string {
	var b strings.Builder
	if r.Public {
		b.WriteString(keywordPublic)
	} else {
		b.WriteString(keywordRequire)
	}
	b.WriteByte(' ')
	b.WriteString(strings.Join(r.Methods, ","))
	b.WriteByte(' ')
	b.WriteString(r.Pattern)
	for _, s := range r.Scopes {
		b.WriteByte(' ')
		b.WriteString(s)
	}
	return b.String()
}

// ParseRule parses the Caddyfile tokens of one rule, starting with the
// keyword: ["require", "GET,PUT", "/orders/{id}", "read:orders:{id}", ...] or
// ["public", "GET", "/healthz"]. The rule is fully validated (methods,
// pattern, templates), so mistakes surface at the line that made them;
// conflicts between rules are found by Compile. Errors wrap ErrInvalidRule.
func ParseRule(args []string) (Rule, error) {
	line := strings.Join(args, " ")
	if len(args) == 0 {
		return Rule{}, fmt.Errorf("%w: empty rule", ErrInvalidRule)
	}
	var r Rule
	switch args[0] {
	case keywordRequire:
		if len(args) < 4 {
			return Rule{}, fmt.Errorf("%w: `%s`: want `require METHODS PATTERN SCOPE...` with at least one scope", ErrInvalidRule, line)
		}
		r.Scopes = append([]string(nil), args[3:]...)
	case keywordPublic:
		if len(args) != 3 {
			return Rule{}, fmt.Errorf("%w: `%s`: want `public METHODS PATTERN` (public rules take no scopes)", ErrInvalidRule, line)
		}
		r.Public = true
	default:
		return Rule{}, fmt.Errorf("%w: `%s`: unknown keyword %q, want %q or %q", ErrInvalidRule, line, args[0], keywordRequire, keywordPublic)
	}
	r.Methods = strings.Split(args[1], ",")
	r.Pattern = args[2]
	if _, err := compileRule(&r); err != nil {
		return Rule{}, err
	}
	return r, nil
}

// compiled is a validated rule ready for the matcher.
type compiled struct {
	rule   *Rule
	pat    pattern
	anyM   bool // Methods is ["*"]
	tpls   []template
	static []string // expansion when no template has variables; shared, read-only
}

// compileRule validates r and compiles its pattern and templates. Errors
// wrap ErrInvalidRule and name the rule.
func compileRule(r *Rule) (*compiled, error) {
	fail := func(format string, a ...any) (*compiled, error) {
		return nil, fmt.Errorf("%w: `%s`: %s", ErrInvalidRule, r, fmt.Sprintf(format, a...))
	}
	c := &compiled{rule: r}
	anyM, err := checkMethods(r.Methods)
	if err != nil {
		return fail("%v", err)
	}
	c.anyM = anyM
	if c.pat, err = parsePattern(r.Pattern); err != nil {
		return fail("%v", err)
	}
	switch {
	case r.Public && len(r.Scopes) > 0:
		return fail("a public rule takes no scopes")
	case !r.Public && len(r.Scopes) == 0:
		return fail("a require rule needs at least one scope")
	}
	static := true
	for _, s := range r.Scopes {
		t, err := parseTemplate(s, c.pat.names)
		if err != nil {
			return fail("%v", err)
		}
		static = static && t.static()
		c.tpls = append(c.tpls, t)
	}
	if static && !r.Public {
		c.static = append([]string(nil), r.Scopes...)
	}
	return c, nil
}

// checkMethods validates a METHODS list and reports whether it is "*".
// Methods are case-sensitive: a lower-case "get" would never match, so it is
// rejected as the typo it is.
func checkMethods(ms []string) (anyMethod bool, err error) {
	if len(ms) == 0 {
		return false, fmt.Errorf("no methods")
	}
	if len(ms) == 1 && ms[0] == "*" {
		return true, nil
	}
	for i, m := range ms {
		if m == "" {
			return false, fmt.Errorf("empty method in %q", strings.Join(ms, ","))
		}
		if m == "*" {
			return false, fmt.Errorf("'*' must stand alone, not in a method list")
		}
		for j := 0; j < len(m); j++ {
			if !isMethodByte(m[j]) {
				return false, fmt.Errorf("method %q: methods are upper-case tokens such as GET", m)
			}
		}
		for _, prev := range ms[:i] {
			if prev == m {
				return false, fmt.Errorf("method %s listed twice", m)
			}
		}
	}
	return false, nil
}

// isMethodByte reports whether c may appear in a method: an RFC 9110 token
// character other than a lower-case letter.
func isMethodByte(c byte) bool {
	switch {
	case 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

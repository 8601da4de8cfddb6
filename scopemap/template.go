package scopemap

import (
	"fmt"
	"strings"
)

// partKind is the kind of one piece of a scope template.
type partKind uint8

const (
	partLiteral     partKind = iota // fixed text
	partParam                       // {name}: a path value, percent-decoded
	partPlaceholder                 // {a.b}: resolved through a Resolver
)

// part is one piece of a compiled scope template.
type part struct {
	kind partKind
	text string // literal text, or the placeholder key
	idx  int    // partParam: index of the value in the pattern's names
}

// template is a compiled scope template such as "read:orders:{id}".
type template struct {
	src   string
	parts []part
}

// static reports whether the template has no variables.
func (t *template) static() bool { return len(t.parts) == 1 && t.parts[0].kind == partLiteral }

// parseTemplate compiles src against the variable names of its rule's
// pattern. {name} without a dot must be one of names; {a.b} is a placeholder.
// The result is a scope in the package's grammar for every substitution of
// values that checkValue accepts, which is exactly what expansion allows.
func parseTemplate(src string, names []string) (template, error) {
	t := template{src: src}
	for i := 0; i < len(src); i++ {
		if c := src[i]; !isScopeByte(c) && c != ':' {
			return template{}, fmt.Errorf("scope template %q: byte %d is %s, which no scope may contain", src, i, describeByte(c))
		}
	}
	rest := src
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			t.parts = append(t.parts, part{kind: partLiteral, text: rest})
			break
		}
		if rest[open] == '}' {
			return template{}, fmt.Errorf("scope template %q: unmatched '}'", src)
		}
		if open > 0 {
			t.parts = append(t.parts, part{kind: partLiteral, text: rest[:open]})
		}
		end := strings.IndexAny(rest[open+1:], "{}")
		if end < 0 || rest[open+1+end] != '}' {
			return template{}, fmt.Errorf("scope template %q: unmatched '{'", src)
		}
		name := rest[open+1 : open+1+end]
		p, err := templateVar(name, names)
		if err != nil {
			return template{}, fmt.Errorf("scope template %q: %w", src, err)
		}
		t.parts = append(t.parts, p)
		rest = rest[open+1+end+1:]
	}
	// Substituting "x" is exact: values are scope-chars, so only the
	// template's own colons split it and each variable fills its part.
	if !Valid(t.expandWith("x")) {
		return template{}, fmt.Errorf("scope template %q is not action:resource:identifier: three non-empty parts and no further ':'", src)
	}
	return t, nil
}

func templateVar(name string, names []string) (part, error) {
	if strings.HasSuffix(name, "...") {
		return part{}, fmt.Errorf("{%s}: templates use {name}, without '...'", name)
	}
	if strings.Contains(name, ".") {
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, "..") {
			return part{}, fmt.Errorf("{%s}: malformed placeholder", name)
		}
		// Caddy rewrote a shorthand such as {path}. If the pattern has a
		// variable of that name the operator almost surely meant it, and
		// would silently get the placeholder instead: refuse to guess.
		if sh := shorthandFor(name); sh != "" {
			for _, n := range names {
				if "{"+n+"}" == sh {
					return part{}, fmt.Errorf("{%s} is Caddy's %s shorthand (rewritten before this rule is read), not the pattern's variable %q; rename the variable, e.g. {name} or {rest...}", name, sh, n)
				}
			}
		}
		return part{kind: partPlaceholder, text: name}, nil
	}
	for i, n := range names {
		if n == name {
			return part{kind: partParam, text: name, idx: i}, nil
		}
	}
	if name == "" {
		return part{}, fmt.Errorf("empty {}")
	}
	return part{}, fmt.Errorf("unknown variable {%s}: not in the pattern (placeholders contain a dot, e.g. {http.request.host})", name)
}

// expandWith substitutes v for every variable (used for validation).
func (t *template) expandWith(v string) string {
	var b strings.Builder
	for _, p := range t.parts {
		if p.kind == partLiteral {
			b.WriteString(p.text)
		} else {
			b.WriteString(v)
		}
	}
	return b.String()
}

// checkValue reports why v cannot be substituted into a scope, or "" if it
// can: it must be one or more scope-chars, the character set of the scope
// grammar, so it can neither add a ':' nor smuggle in whitespace, control
// bytes or non-ASCII. "*" stays a literal identifier that only a granted
// "*" covers.
func checkValue(v string) string {
	if v == "" {
		return "empty"
	}
	for i := 0; i < len(v); i++ {
		if !isScopeByte(v[i]) {
			return fmt.Sprintf("byte %d is %s", i, describeByte(v[i]))
		}
	}
	return ""
}

// badValue builds the ErrBadValue error for a variable of a template.
func badValue(t *template, p *part, v, reason string) error {
	return fmt.Errorf("%w: {%s} = %s in %q: %s", ErrBadValue, p.text, quoteTrunc(v), t.src, reason)
}

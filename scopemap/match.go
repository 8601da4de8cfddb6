package scopemap

import (
	"fmt"
	"strings"
)

// Map is a compiled, immutable set of route rules. It is safe for concurrent
// use by any number of goroutines.
//
// Rules are stored in a trie keyed by path segment: each node has literal
// children (by percent-decoded segment), at most one {name} child and at most
// one {name...} child, plus a method table for the rules whose pattern ends
// there. A lookup walks the raw path once, trying literal, then {name}, then
// {name...} at each segment and backtracking on a miss, so the first rule
// found is the most specific one and the cost depends on the path's depth,
// not on the number of rules. Each trie node is visited at most once per
// lookup, because a node's depth fixes the path segment it is compared with.
type Map struct {
	rules   []Rule
	root    *node
	maxVars int // most variables in any one pattern
}

// node is one trie node; see Map.
type node struct {
	lit     map[string]*node
	param   *node
	rest    *node
	methods []methodEntry // explicit methods, plus HEAD served by GET
	anyM    *compiled     // the "*" rule, if any
}

// methodEntry binds one method to the rule that serves it at a node.
type methodEntry struct {
	method string
	c      *compiled
}

// Resolver resolves a placeholder name containing a dot (e.g.
// "http.request.host") to its value. The Caddy handler passes a function
// wrapping its replacer; it may be nil when no template uses placeholders.
type Resolver func(name string) (string, bool)

// Compile validates all rules and builds the matcher. It reports bad
// patterns, bad scope templates, unknown {name} in a template (errors wrap
// ErrInvalidRule), and duplicate or ambiguous rules (errors wrap ErrConflict
// and name both rules).
//
// Specificity, used both to pick a rule and to find conflicts, compares
// patterns segment by segment: at the first place they differ a literal
// beats {name}, {name} beats {name...}, and a pattern that ends beats a
// {name...} that matches the empty rest. Only when the patterns have the same
// shape (same literals and variable positions, whatever the variable names)
// does the method decide: a method list beats "*", and a GET rule serves HEAD
// unless a HEAD rule has that shape. So "/a/b/{y}" beats "/a/{x}/b" on
// "/a/b/b", and "* /a/b" beats "GET /a/{x}" on GET /a/b. Two rules of the
// same shape whose method lists overlap, or both "*", are a conflict; no
// other pair can be ambiguous.
//
// Compile copies rules; later changes to the slice do not affect the Map.
func Compile(rules []Rule) (*Map, error) {
	m := &Map{rules: make([]Rule, len(rules)), root: &node{}}
	for i, r := range rules {
		r.Methods = append([]string(nil), r.Methods...)
		r.Scopes = append([]string(nil), r.Scopes...)
		m.rules[i] = r
	}
	owner := make(map[*compiled]int, len(rules)) // rule index, for conflict messages
	for i := range m.rules {
		c, err := compileRule(&m.rules[i])
		if err != nil {
			return nil, fmt.Errorf("rule #%d: %w", i+1, err)
		}
		owner[c] = i
		m.maxVars = max(m.maxVars, len(c.pat.names))
		if other, method := m.insert(c); other != nil {
			return nil, fmt.Errorf("%w: rule #%d `%s` and rule #%d `%s` both match %s %s and neither is more specific",
				ErrConflict, owner[other]+1, other.rule, i+1, c.rule, method, c.rule.Pattern)
		}
	}
	m.root.serveHEAD()
	return m, nil
}

// insert adds c to the trie. If a rule of the same shape already serves one
// of c's methods, it returns that rule and the method instead.
func (m *Map) insert(c *compiled) (conflict *compiled, method string) {
	n := m.root
	for _, s := range c.pat.segs {
		next := &n.param
		switch s.kind {
		case segLiteral:
			if n.lit == nil {
				n.lit = make(map[string]*node)
			}
			child := n.lit[s.lit]
			if child == nil {
				child = &node{}
				n.lit[s.lit] = child
			}
			n = child
			continue
		case segRest:
			next = &n.rest
		}
		if *next == nil {
			*next = &node{}
		}
		n = *next
	}
	if c.anyM {
		if n.anyM != nil {
			return n.anyM, "*"
		}
		n.anyM = c
		return nil, ""
	}
	for _, meth := range c.rule.Methods {
		for _, e := range n.methods {
			if e.method == meth {
				return e.c, meth
			}
		}
	}
	for _, meth := range c.rule.Methods {
		n.methods = append(n.methods, methodEntry{method: meth, c: c})
	}
	return nil, ""
}

// serveHEAD lets each GET rule serve HEAD at its node unless a HEAD rule is
// there: HEAD is GET without a body, so it needs the same scopes.
func (n *node) serveHEAD() {
	if get := n.find("GET"); get != nil && get != n.anyM && n.explicit("HEAD") == nil {
		n.methods = append(n.methods, methodEntry{method: "HEAD", c: get})
	}
	for _, c := range n.lit {
		c.serveHEAD()
	}
	if n.param != nil {
		n.param.serveHEAD()
	}
	if n.rest != nil {
		n.rest.serveHEAD()
	}
}

// explicit returns the rule listing method at n, or nil.
func (n *node) explicit(method string) *compiled {
	for i := range n.methods {
		if n.methods[i].method == method {
			return n.methods[i].c
		}
	}
	return nil
}

// find returns the rule serving method at n: a listed method first, then "*".
func (n *node) find(method string) *compiled {
	if c := n.explicit(method); c != nil {
		return c
	}
	return n.anyM
}

// span is the [start,end) byte range of a variable's raw value in the path.
type span struct{ start, end int }

// walker holds the state of one lookup.
type walker struct {
	method, path string
	vals         []span // vals[i] is the value of the pattern's i-th variable
}

// walk matches the path from byte pos (the '/' before the next segment, or
// len(path) at the end) against the subtrie n, whose patterns have bound nv
// variables so far. It returns the most specific rule that matches, or nil.
func (w *walker) walk(n *node, pos, nv int) *compiled {
	if pos == len(w.path) {
		if c := n.find(w.method); c != nil {
			return c
		}
		if n.rest != nil {
			if c := n.rest.find(w.method); c != nil {
				w.vals[nv] = span{pos, pos}
				return c
			}
		}
		return nil
	}
	start := pos + 1
	end := len(w.path)
	if i := strings.IndexByte(w.path[start:], '/'); i >= 0 {
		end = start + i
	}
	if n.lit != nil {
		seg := w.path[start:end]
		var child *node
		if strings.IndexByte(seg, '%') < 0 {
			child = n.lit[seg]
		} else {
			var buf [64]byte
			child = n.lit[string(appendUnescaped(buf[:0], seg))]
		}
		if child != nil {
			if c := w.walk(child, end, nv); c != nil {
				return c
			}
		}
	}
	if n.param != nil {
		w.vals[nv] = span{start, end}
		if c := w.walk(n.param, end, nv+1); c != nil {
			return c
		}
	}
	if n.rest != nil {
		if c := n.rest.find(w.method); c != nil {
			w.vals[nv] = span{start, len(w.path)}
			return c
		}
	}
	return nil
}

// lookup finds the most specific rule for method and the canonical rawPath,
// or nil. vals is scratch for the raw values of the rule's variables; the
// returned slice holds them (vals itself unless the rule has more).
func (m *Map) lookup(method, rawPath string, vals []span) (*compiled, []span) {
	if m.maxVars > len(vals) {
		vals = make([]span, m.maxVars)
	}
	w := walker{method: method, path: rawPath, vals: vals}
	pos := 0
	if rawPath == "/" {
		pos = len(rawPath) // "/" has no segments
	}
	return w.walk(m.root, pos, 0), vals
}

// expand returns c's required scopes for the values found in path. All
// scopes are written into one buffer and sliced from it, so a hit costs two
// allocations however many scopes the rule has; static templates cost none.
func (c *compiled) expand(path string, vals []span, resolve Resolver) ([]string, error) {
	if c.rule.Public {
		return nil, nil
	}
	if c.static != nil {
		return c.static, nil
	}
	// Resolve placeholders once, both to size the buffer and to write them.
	var phBuf [8]string
	ph := phBuf[:0]
	size := 0
	for ti := range c.tpls {
		t := &c.tpls[ti]
		for pi := range t.parts {
			switch p := &t.parts[pi]; p.kind {
			case partLiteral:
				size += len(p.text)
			case partParam:
				size += vals[p.idx].end - vals[p.idx].start // decoded is never longer
			case partPlaceholder:
				var v string
				ok := false
				if resolve != nil {
					v, ok = resolve(p.text)
				}
				if !ok {
					return nil, badValue(t, p, v, "placeholder not set")
				}
				if reason := checkValue(v); reason != "" {
					return nil, badValue(t, p, v, reason)
				}
				ph = append(ph, v)
				size += len(v)
			}
		}
	}
	var b strings.Builder
	b.Grow(size)
	out := make([]string, len(c.tpls))
	k := 0
	for ti := range c.tpls {
		t := &c.tpls[ti]
		start := b.Len()
		for pi := range t.parts {
			switch p := &t.parts[pi]; p.kind {
			case partLiteral:
				b.WriteString(p.text)
			case partParam:
				vs := b.Len()
				writeUnescaped(&b, path[vals[p.idx].start:vals[p.idx].end])
				// Bytes already written never change, so this string
				// stays valid as the builder grows.
				v := b.String()[vs:]
				if reason := checkValue(v); reason != "" {
					return nil, badValue(t, p, v, reason)
				}
			case partPlaceholder:
				b.WriteString(ph[k])
				k++
			}
		}
		out[ti] = b.String()[start:]
	}
	return out, nil
}

// writeUnescaped writes the percent-decoded form of the canonical s to b.
// It decodes with appendUnescaped into a stack buffer, a chunk at a time,
// so that there is one decoding loop and a long value costs no allocation.
func writeUnescaped(b *strings.Builder, s string) {
	if strings.IndexByte(s, '%') < 0 {
		b.WriteString(s)
		return
	}
	var buf [64]byte
	for s != "" {
		n := len(s)
		if n > len(buf) {
			n = len(buf)
			// Do not cut an escape in two: end the chunk before a '%'
			// among its last two bytes.
			if i := strings.LastIndexByte(s[n-2:n], '%'); i >= 0 {
				n -= 2 - i
			}
		}
		b.Write(appendUnescaped(buf[:0], s[:n]))
		s = s[n:]
	}
}

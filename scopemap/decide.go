package scopemap

import "strconv"

// Outcome is what a route decision tells the caller to do with a request.
// The zero value is NotCanonical, so a Decision nobody filled in refuses.
type Outcome uint8

const (
	// NotCanonical: the path failed CheckCanonical. Answer 400 before
	// anything else; no rule was looked at.
	NotCanonical Outcome = iota
	// Unmapped: no rule maps the route. The caller applies its own
	// unmapped policy.
	Unmapped
	// Public: the rule needs no token.
	Public
	// Require: the token must cover every scope in Decision.Required.
	Require
	// BadValue: a rule matched but a path value or placeholder cannot form
	// a valid scope. Deny with 403 (after checking the token, so a caller
	// without one still learns it needs one). Never fall back to another
	// rule.
	BadValue
)

var outcomeNames = [...]string{
	NotCanonical: "not_canonical",
	Unmapped:     "unmapped",
	Public:       "public",
	Require:      "require",
	BadValue:     "bad_value",
}

// String returns the outcome's name for logs, metrics and the routes
// command: "not_canonical", "unmapped", "public", "require" or "bad_value".
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Decision is the route decision for one request.
type Decision struct {
	Outcome Outcome
	// Rule is the rule that matched: set for Public, Require and BadValue,
	// nil otherwise. It points into the Map: do not modify it.
	Rule *Rule
	// Required are the expanded required scopes, all of which must be
	// covered: set for Require only. For rules whose templates have no
	// variables the slice is shared between decisions: do not modify it.
	Required []string
	// Err says why, for NotCanonical (it wraps ErrNotCanonical) and for
	// BadValue (it wraps ErrBadValue); nil otherwise.
	Err error
}

// Decide makes the route decision for method and the raw (escaped) request
// path, r.URL.EscapedPath(), in the order the gateway enforces it: the
// canonical check first, then the most specific rule, then the expansion of
// its scope templates. resolve supplies placeholder values; it may be nil,
// and then any template with a placeholder gives BadValue.
//
// {name} values are percent-decoded; a {name...} value is the decoded rest
// of the path, slashes included, and is empty when the rest is. A value
// that would make a required scope malformed gives BadValue: Decide never
// falls back to a less specific rule and never returns a wider scope.
//
// Decide is safe for concurrent use. It allocates nothing for rules
// without variables in their templates, and at most two otherwise.
func (m *Map) Decide(method, rawPath string, resolve Resolver) Decision {
	if err := CheckCanonical(rawPath); err != nil {
		return Decision{Outcome: NotCanonical, Err: err}
	}
	if m == nil || m.root == nil {
		return Decision{Outcome: Unmapped}
	}
	var buf [16]span // no allocation for patterns with up to 16 variables
	c, vals := m.lookup(method, rawPath, buf[:])
	switch {
	case c == nil:
		return Decision{Outcome: Unmapped}
	case c.rule.Public:
		return Decision{Outcome: Public, Rule: c.rule}
	}
	req, err := c.expand(rawPath, vals, resolve)
	if err != nil {
		return Decision{Outcome: BadValue, Rule: c.rule, Err: err}
	}
	return Decision{Outcome: Require, Rule: c.rule, Required: req}
}

// Match is the outcome of a Lookup.
type Match struct {
	// Rule is the rule that matched, nil if none. It points into the Map:
	// do not modify it.
	Rule *Rule
	// Public reports whether the rule is public (no token needed).
	Public bool
	// Required are the expanded required scopes, all of which must be
	// covered; nil for public rules. For rules whose templates have no
	// variables the slice is shared between lookups: do not modify it.
	Required []string
}

// Lookup is Decide in its older form. found is false when no rule maps the
// route or the path is not canonical (then err wraps ErrNotCanonical); a
// rule that matched with a bad value gives found, the Rule without
// Required, and err wrapping ErrBadValue.
//
// Deprecated: use Decide, whose Outcome names every case.
func (m *Map) Lookup(method, rawPath string, resolve Resolver) (match Match, found bool, err error) {
	d := m.Decide(method, rawPath, resolve)
	return Match{Rule: d.Rule, Public: d.Outcome == Public, Required: d.Required}, d.Rule != nil, d.Err
}

// Package scopemap maps HTTP requests (method and path) to the AgentWrit
// scopes they require, and decides whether granted scopes cover them.
//
// It imports neither Caddy nor the broker, so the broker's own subset checks
// and the gateway's route checks share one definition of coverage.
//
// A rule is `require METHODS PATTERN SCOPE...` or `public METHODS PATTERN`
// (ParseRule, or the Rule struct as JSON). Compile validates a rule set and
// builds a Map; Map.Decide checks that a request path is canonical, picks
// the most specific rule and expands its scope templates, and says what the
// caller must do with the request. Matching works on canonical escaped paths
// only, comparing literal segments with the percent-decoded segment so every
// spelling of a name that a backend decodes alike selects the same rule.
package scopemap

import "strings"

// Wildcard is the identifier that, in a granted scope, covers every
// identifier of the same action and resource.
const Wildcard = "*"

// Scope is a parsed "action:resource:identifier" string. The identifier may
// itself contain colons: only the first two separate the parts.
type Scope struct {
	Action, Resource, Identifier string
}

// ParseScope splits s on its first two colons. ok is false when s is
// malformed: fewer than two colons or any empty part.
func ParseScope(s string) (sc Scope, ok bool) {
	a, rest, found := strings.Cut(s, ":")
	if !found || a == "" {
		return Scope{}, false
	}
	r, id, found := strings.Cut(rest, ":")
	if !found || r == "" || id == "" {
		return Scope{}, false
	}
	return Scope{Action: a, Resource: r, Identifier: id}, true
}

// Valid reports whether s is a well-formed scope.
func Valid(s string) bool {
	_, ok := ParseScope(s)
	return ok
}

// covers reports whether the granted scope g covers the parsed required
// scope r: same action and resource, and an equal identifier or a granted
// "*". A malformed granted scope covers nothing.
func covers(g string, r Scope) bool {
	gs, ok := ParseScope(g)
	return ok && gs.Action == r.Action && gs.Resource == r.Resource &&
		(gs.Identifier == Wildcard || gs.Identifier == r.Identifier)
}

// Covers reports whether any scope in granted covers required. This is
// AgentWrit's rule exactly: "*" is a wildcard only as the whole identifier of
// a granted scope, so "*:*:*" covers only scopes whose action and resource
// are literally "*". A malformed required scope is never covered.
func Covers(granted []string, required string) bool {
	r, ok := ParseScope(required) // once, not once per granted scope
	if !ok {
		return false
	}
	for _, g := range granted {
		if covers(g, r) {
			return true
		}
	}
	return false
}

// Subset reports whether every requested scope is covered by allowed. An
// empty request is trivially a subset; a malformed requested scope never is.
func Subset(requested, allowed []string) bool {
	for _, r := range requested {
		if !Covers(allowed, r) {
			return false
		}
	}
	return true
}

// Package scopemap maps HTTP requests (method and path) to the AgentWrit
// scopes they require, and decides whether granted scopes cover them.
//
// It imports neither Caddy nor the broker, so the broker's own subset checks
// and the gateway's route checks share one definition of a scope and of
// coverage.
//
// A rule is `require METHODS PATTERN SCOPE...` or `public METHODS PATTERN`
// (ParseRule, or the Rule struct as JSON). Compile validates a rule set and
// builds a Map; Map.Decide checks that a request path is canonical, picks
// the most specific rule and expands its scope templates, and says what the
// caller must do with the request. Matching works on canonical escaped paths
// only, comparing literal segments with the percent-decoded segment so every
// spelling of a name that a backend decodes alike selects the same rule.
//
// # Scope grammar
//
// A scope is three non-empty parts separated by ':'. In RFC 5234 ABNF:
//
//	scope      = action ":" resource ":" identifier
//	action     = 1*scope-char
//	resource   = 1*scope-char
//	identifier = 1*scope-char
//	scope-char = %x21 / %x23-39 / %x3B-5B / %x5D-7E
//
// scope-char is the character set of an RFC 6749 (section 3.3) scope-token
// without ':', that is every visible ASCII character except '"', '\' and
// ':'. So a scope has exactly two ':' and no part is empty; it contains no
// whitespace, no control bytes, no quote or backslash and no byte outside
// ASCII. Parts compare byte for byte: case matters and nothing is
// normalized.
//
// '*' is an ordinary character. The one wildcard is a granted scope whose
// identifier is exactly "*": it covers every identifier of the same action
// and resource. A "*" anywhere else, including in a required scope or as
// the action or resource, means only itself.
//
// The grammar is the same wherever a scope enters: CheckScope, CheckScopes,
// ParseScope and Valid accept exactly these strings, and Covers and Subset
// treat any other string as covering nothing and covered by nothing. A
// route rule's scope template must be in the grammar once each {name} or
// {placeholder} in it is replaced by one scope-char, or the rule does not
// load; braces always delimit a variable, so a template cannot produce a
// literal '{' or '}'. At request time every path value and placeholder
// value substituted into a template must be one or more scope-chars (so it
// can add no ':'), or the request is denied (BadValue).
package scopemap

import (
	"fmt"
	"strconv"
	"strings"
)

// Wildcard is the identifier that, in a granted scope, covers every
// identifier of the same action and resource.
const Wildcard = "*"

// Scope is a parsed "action:resource:identifier" string.
type Scope struct {
	Action, Resource, Identifier string
}

// isScopeByte reports whether c is a scope-char (see the package
// documentation): visible ASCII other than '"', '\' and ':'. It is the one
// statement of the character set, used for scopes, template literals and
// the values substituted into templates.
func isScopeByte(c byte) bool {
	return '!' <= c && c <= '~' && c != '"' && c != '\\' && c != ':'
}

// scanScope checks s against the grammar in one pass. If s is a scope, bad
// is -1 and sep1, sep2 are the offsets of its two ':'. Otherwise bad is the
// offset of the first byte at which s leaves the grammar, or len(s) if s
// ends too soon, and sep1, sep2 are the separators seen before it (-1 if
// none).
func scanScope(s string) (sep1, sep2, bad int) {
	sep1, sep2 = -1, -1
	start := 0 // first byte of the current part
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != ':' {
			if !isScopeByte(c) {
				return sep1, sep2, i
			}
			continue
		}
		if i == start || sep2 >= 0 {
			return sep1, sep2, i
		}
		if sep1 < 0 {
			sep1 = i
		} else {
			sep2 = i
		}
		start = i + 1
	}
	if sep2 < 0 || start == len(s) {
		return sep1, sep2, len(s)
	}
	return sep1, sep2, -1
}

// CheckScope returns nil if s is a scope (see the package documentation),
// else an error wrapping ErrInvalidScope that quotes s (truncated) and says
// what is wrong and at which byte, counting from 0: for example
// `invalid scope "read:my orders:1": byte 7 is a space`.
func CheckScope(s string) error {
	sep1, sep2, bad := scanScope(s)
	if bad < 0 {
		return nil
	}
	return fmt.Errorf("%w %s: %s", ErrInvalidScope, quoteTrunc(s), scopeFault(s, sep1, sep2, bad))
}

// scopeFault explains a scanScope failure.
func scopeFault(s string, sep1, sep2, bad int) string {
	if s == "" {
		return "empty, want action:resource:identifier"
	}
	seps := 0
	if sep1 >= 0 {
		seps++
	}
	if sep2 >= 0 {
		seps++
	}
	part := [...]string{"action", "resource", "identifier"}[seps]
	switch {
	case bad < len(s) && s[bad] != ':':
		return fmt.Sprintf("byte %d is %s", bad, describeByte(s[bad]))
	case bad == 0 || s[bad-1] == ':':
		return fmt.Sprintf("empty %s at byte %d", part, bad)
	case bad < len(s):
		return fmt.Sprintf("byte %d is a third ':'; an identifier cannot contain ':'", bad)
	case seps == 0:
		return "no ':', want action:resource:identifier"
	default:
		return "only one ':', want action:resource:identifier"
	}
}

// describeByte names a byte that is not a scope-char, for error messages.
func describeByte(c byte) string {
	switch {
	case c == ' ':
		return "a space"
	case c == ':':
		return "':'"
	case c == '"':
		return "a double quote"
	case c == '\\':
		return "a backslash"
	case isControl(c):
		return fmt.Sprintf("control byte 0x%02x", c)
	case c >= 0x80:
		return fmt.Sprintf("non-ASCII byte 0x%02x", c)
	}
	return strconv.QuoteRune(rune(c)) // a scope-char; callers pass the others
}

// quoteTrunc quotes s for an error message, cut to a sane length: scopes
// and values come from requests and must not flood a log.
func quoteTrunc(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}

// CheckScopes checks every scope in list with CheckScope and returns the
// error for the first one outside the grammar, or nil. An empty list is
// fine; whether one is allowed is the caller's business.
func CheckScopes(list []string) error {
	for _, s := range list {
		if err := CheckScope(s); err != nil {
			return err
		}
	}
	return nil
}

// ParseScope splits a scope into its parts. ok is false, and sc zero,
// exactly when CheckScope(s) returns an error.
func ParseScope(s string) (sc Scope, ok bool) {
	sep1, sep2, bad := scanScope(s)
	if bad >= 0 {
		return Scope{}, false
	}
	return Scope{Action: s[:sep1], Resource: s[sep1+1 : sep2], Identifier: s[sep2+1:]}, true
}

// Valid reports whether s is a scope: CheckScope(s) == nil, without
// building the error.
func Valid(s string) bool {
	_, _, bad := scanScope(s)
	return bad < 0
}

// Covers reports whether any scope in granted covers required. This is
// AgentWrit's rule exactly: a granted scope covers a required one if the
// two are equal, or if they have the same action and resource and the
// granted identifier is exactly "*". So "*:*:*" covers only scopes whose
// action and resource are literally "*". A required scope outside the
// grammar is never covered, and a granted one never covers.
func Covers(granted []string, required string) bool {
	r, ok := ParseScope(required) // once, not once per granted scope
	if !ok {
		return false
	}
	// "action:resource:" of required. A granted scope equal to required,
	// or to this prefix plus "*", is in the grammar because required is,
	// so granted scopes need no parsing of their own.
	prefix := required[:len(r.Action)+len(r.Resource)+2]
	for _, g := range granted {
		if g == required || (len(g) == len(prefix)+len(Wildcard) && strings.HasPrefix(g, prefix) && strings.HasSuffix(g, Wildcard)) {
			return true
		}
	}
	return false
}

// Subset reports whether every requested scope is covered by allowed. An
// empty request is trivially a subset; a requested scope outside the
// grammar never is.
func Subset(requested, allowed []string) bool {
	for _, r := range requested {
		if !Covers(allowed, r) {
			return false
		}
	}
	return true
}

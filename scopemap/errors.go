package scopemap

import "errors"

// Sentinel errors. Callers branch on them with errors.Is; the wrapping error
// carries the context (which rule, which byte, which value).
var (
	// ErrNotCanonical means a request path is not in canonical form. The
	// gateway answers 400 before any route lookup, so the gateway and the
	// backend can never disagree on which route a request names.
	ErrNotCanonical = errors.New("path is not canonical")

	// ErrBadValue means a rule matched but a path value or placeholder
	// cannot form a valid scope: it is empty or has a byte that is not a
	// scope-char (':', whitespace, a control byte, non-ASCII, '"' or '\').
	// The request must be denied (403): a bad value never widens a scope
	// and never falls through to another rule.
	ErrBadValue = errors.New("value would make a required scope malformed")

	// ErrInvalidScope means a string is not a scope under the package's
	// grammar (see the package documentation). Returned by CheckScope and
	// CheckScopes; the message quotes the scope and names the byte.
	ErrInvalidScope = errors.New("invalid scope")

	// ErrInvalidRule means a rule is malformed: bad keyword, methods,
	// pattern or scope template. Returned by ParseRule and Compile.
	ErrInvalidRule = errors.New("invalid route rule")

	// ErrConflict means two rules can match the same request and neither
	// is more specific. Returned by Compile; the message names both rules.
	ErrConflict = errors.New("conflicting route rules")
)

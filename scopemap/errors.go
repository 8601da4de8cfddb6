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
	// would make a required scope malformed (empty, ':', control
	// characters, invalid UTF-8). The request must be denied (403): a bad
	// value never widens a scope and never falls through to another rule.
	ErrBadValue = errors.New("value would make a required scope malformed")

	// ErrInvalidRule means a rule is malformed: bad keyword, methods,
	// pattern or scope template. Returned by ParseRule and Compile.
	ErrInvalidRule = errors.New("invalid route rule")

	// ErrConflict means two rules can match the same request and neither
	// is more specific. Returned by Compile; the message names both rules.
	ErrConflict = errors.New("conflicting route rules")
)

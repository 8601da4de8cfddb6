package scopemap

import (
	"fmt"
	"strings"
)

// CheckCanonical returns nil if rawPath is canonical, else an error wrapping
// ErrNotCanonical that says what is wrong and where.
//
// It works on the escaped path (r.URL.EscapedPath()), so what is checked is
// exactly what the backend receives. A canonical path:
//
//   - starts with '/'; "/" itself is canonical;
//   - has no empty segments: no "//" and no trailing '/' (so path.Clean
//     leaves every canonical path unchanged);
//   - has no dot segments, raw or encoded ("." "..", "%2e", ".%2E", ...),
//     also not with a matrix parameter after them ("..;x", ".;",
//     "%2e%2e%3Bjsessionid=1"): servlet containers such as Tomcat drop a
//     segment's ";..." before resolving dot segments, so "/static/..;/admin"
//     reaches them as "/admin";
//   - has no encoded separators (%2F %2f %5C %5c) and no raw '\', which some
//     backends treat as a separator;
//   - has no control bytes (0x00-0x1F, 0x7F), raw or percent-encoded;
//   - has only valid percent-encoding ('%' followed by two hex digits).
//
// Anything else (other percent-encoded bytes, non-ASCII) is left to the
// backend: route matching decodes segments, so every spelling of a name
// matches the same rule.
func CheckCanonical(rawPath string) error {
	if rawPath == "" || rawPath[0] != '/' {
		return notCanonical("does not start with '/'", 0)
	}
	if rawPath == "/" {
		return nil
	}
	segStart := 1
	for i := 1; i <= len(rawPath); i++ {
		if i == len(rawPath) || rawPath[i] == '/' {
			seg := rawPath[segStart:i]
			if seg == "" {
				return notCanonical("empty segment", segStart)
			}
			if isDotSegment(seg) {
				return notCanonical("dot segment", segStart)
			}
			segStart = i + 1
			continue
		}
		switch c := rawPath[i]; {
		case c == '%':
			b, ok := decodePct(rawPath, i)
			if !ok {
				return notCanonical("invalid percent-encoding", i)
			}
			if b == '/' || b == '\\' {
				return notCanonical("encoded path separator", i)
			}
			if isControl(b) {
				return notCanonical("encoded control byte", i)
			}
			i += 2
		case c == '\\':
			return notCanonical("backslash", i)
		case isControl(c):
			return notCanonical("control byte", i)
		}
	}
	return nil
}

func notCanonical(reason string, off int) error {
	return fmt.Errorf("%w: %s at byte %d", ErrNotCanonical, reason, off)
}

// isControl reports whether b is an ASCII control byte.
func isControl(b byte) bool { return b < 0x20 || b == 0x7f }

// isDotSegment reports whether the escaped segment is "." or ".." once
// decoded and stripped of any matrix parameter (the first ';', raw or
// "%3B", and all after it). Backends decode before resolving dot segments,
// so "%2e%2E" counts too, and "..;x" or ".%2e%3bx" count because servlet
// containers strip the parameter first. "a;b" and "..a;b" are names.
func isDotSegment(seg string) bool {
	dots := 0
	for i := 0; i < len(seg) && dots <= 2; i++ {
		c := seg[i]
		if c == '%' {
			b, ok := decodePct(seg, i)
			if !ok {
				return false
			}
			c = b
			i += 2
		}
		switch c {
		case '.':
			dots++
		case ';':
			return dots == 1 || dots == 2
		default:
			return false
		}
	}
	return dots == 1 || dots == 2
}

// decodePct decodes the escape "%XX" starting at s[i] (s[i] == '%').
func decodePct(s string, i int) (byte, bool) {
	if i+2 >= len(s) {
		return 0, false
	}
	hi, ok1 := unhex(s[i+1])
	lo, ok2 := unhex(s[i+2])
	return hi<<4 | lo, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// appendUnescaped appends the percent-decoded form of s to dst. s must have
// valid percent-encoding (it has passed CheckCanonical or pattern parsing).
// It is the package's one decoding loop: matching, pattern parsing and
// template expansion all decode through it.
func appendUnescaped(dst []byte, s string) []byte {
	for {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			return append(dst, s...)
		}
		dst = append(dst, s[:i]...)
		if b, ok := decodePct(s, i); ok {
			dst = append(dst, b)
			s = s[i+3:]
		} else {
			dst = append(dst, '%')
			s = s[i+1:]
		}
	}
}

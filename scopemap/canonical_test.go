package scopemap

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCheckCanonical(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"/", true},
		{"/a", true},
		{"/a/b/c", true},
		{"/a.b/.c/c./...", true},           // dots inside names are fine
		{"/caf%C3%A9/%25/a%20b/%3A", true}, // other encodings are left to the backend
		{"/a:b@c!$&'()*+,;=", true},
		{"/%2e%2e%2e", true}, // "..." is a name, not a dot segment
		// matrix parameters: only a dot segment before the ';' is one.
		{"/a;b", true},
		{"/..a;b", true},
		{"/.a;b", true},
		{"/a.;b", true},
		{"/...;x", true},
		{"/;", true},
		{"/;..", true},
		{"/%3B..", true},
		{"/x/..%253B", true}, // "%3B" after decoding once is no ';'
		{"/static/%2e%2e%2e;/orders/43", true},

		{"", false},
		{"a/b", false},
		{"*", false},
		{"//", false},
		{"//a", false},
		{"/a//b", false},
		{"/a/", false}, // trailing slash is an empty segment
		{"/.", false},
		{"/..", false},
		{"/a/./b", false},
		{"/a/../b", false},
		{"/a/..", false},
		{"/%2e", false},
		{"/%2E%2E/b", false},
		{"/.%2e/b", false},
		{"/a/%2e./b", false},
		// dot segments hidden behind a matrix parameter, which servlet
		// containers strip before resolving dots.
		{"/static/..;/orders/43", false},
		{"/static/%2e%2e;/orders/43", false},
		{"/.;x", false},
		{"/..;", false},
		{"/.;", false},
		{"/a/..;/b", false},
		{"/a/..;a=b;c=d", false},
		{"/%2e%2E;jsessionid=1", false},
		{"/.%2e%3bfoo", false},
		{"/..%3B", false},
		{"/..%3b/x", false},
		{"/%2E%3B", false},
		{"/.;..", false},
		{"/a%2Fb", false},
		{"/a%2fb", false},
		{"/a%5Cb", false},
		{"/a%5cb", false},
		{"/a\\b", false},
		{"/a\x00b", false},
		{"/a\nb", false},
		{"/a\x7f", false},
		{"/a%00b", false},
		{"/a%0a", false},
		{"/a%0D%0A", false},
		{"/a%1F", false},
		{"/a%7F", false},
		{"/a%", false},
		{"/a%2", false},
		{"/a%zz", false},
		{"/a%2g", false},
		{"/%%32%65", false},
	}
	for _, tc := range tests {
		err := CheckCanonical(tc.path)
		if tc.ok {
			assert.NoError(t, err, "%q", tc.path)
		} else {
			assert.ErrorIs(t, err, ErrNotCanonical, "%q", tc.path)
		}
	}
}

func TestCheckCanonicalMessage(t *testing.T) {
	assert.EqualError(t, CheckCanonical("/static/..;/orders/43"), "path is not canonical: dot segment at byte 8")
	assert.EqualError(t, CheckCanonical("/a/%2e%2e%3Bx"), "path is not canonical: dot segment at byte 3")
}

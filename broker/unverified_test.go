package broker

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseUnverified(t *testing.T) {
	e := newTestEnv(t)
	_, tok := e.agent("read:data:x")
	u, err := ParseUnverified(tok)
	require.NoError(t, err)
	require.Equal(t, "EdDSA", u.Alg)
	require.Equal(t, e.broker.KeyID(), u.Kid)
	require.Equal(t, []string{"read:data:x"}, u.Claims.Scope)
	require.Contains(t, string(u.Payload), `"scope":["read:data:x"]`)

	now := e.broker.now().Unix()
	for name, bad := range map[string]string{
		"two parts":      "a.b",
		"too long":       strings.Repeat("a", MaxTokenLength) + ".b.c",
		"short sig":      tok[:strings.LastIndexByte(tok, '.')+1] + "AAAA",
		"duplicate key":  e.forge(e.ourHeader(), payloadAt(now, `"sub":"x"`)),
		"case variant":   e.forge(e.ourHeader(), payloadAt(now, `"Scope":["admin:revoke:*"]`)),
		"header not obj": signJWS(e.broker.signer().key, `[]`, payloadAt(now, "")),
	} {
		_, err := ParseUnverified(bad)
		require.Error(t, err, name)
		require.True(t, errors.Is(err, ErrMalformedToken), "%s: %v", name, err)
	}
}

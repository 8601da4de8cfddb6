package remote

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

func TestParseAnswer(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	sent := &broker.Claims{Sub: "s", Jti: "j", Exp: exp}
	ok := fmt.Sprintf(`{"valid":true,"claims":{"iss":"i","sub":"s","exp":%d,"iat":1,"jti":"j","scope":["a:b:c"],"task_id":"t","orch_id":"o","aud":["x"],"delegation_chain":[{"agent":"a","scope":["a:b:c"],"delegated_at":"2025-01-01T00:00:00Z"}]}}`, exp)
	c, err := parseAnswer([]byte(ok), sent, time.Now())
	require.NoError(t, err)
	require.Equal(t, &broker.Claims{Iss: "i", Sub: "s", Exp: exp, Iat: 1, Jti: "j", Scope: []string{"a:b:c"}, TaskID: "t", OrchID: "o",
		Aud: []string{"x"}, DelegationChain: c.DelegationChain}, c)
	require.Len(t, c.DelegationChain, 1)
	_, err = parseAnswer([]byte(ok), sent, time.Unix(exp, 0))
	require.ErrorIs(t, err, broker.ErrExpired, "exp re-checked after decoding")
	_, err = parseAnswer([]byte(`{"valid":false}`), sent, time.Now())
	require.ErrorIs(t, err, broker.ErrInvalidToken)
	_, err = parseAnswer([]byte(`{"valid":true,"claims":{}}`), sent, time.Now())
	require.Error(t, err)
	require.False(t, errors.Is(err, broker.ErrInvalidToken), "malformed is not a no")

	// encoding/json alone would read both as a yes (the last duplicate
	// wins; "Valid" fills valid): malformed, never an allow, never a no.
	yes := fmt.Sprintf(`"valid":true,"claims":{"sub":"s","jti":"j","exp":%d}`, exp)
	for _, raw := range []string{
		`{"valid":false,` + yes + `}`,
		`{"valid":false,"Valid":true,"claims":{"sub":"s","jti":"j","exp":` + fmt.Sprint(exp) + `}}`,
		`{"valid":false,"valid":true}`,
		`{"valid":false,"Valid":true}`,
		`{` + yes + `,"valid":false}`,
		fmt.Sprintf(`{"valid":true,"claims":{"sub":"s","jti":"j","exp":%d,"Jti":"other"}}`, exp),
	} {
		c, err := parseAnswer([]byte(raw), sent, time.Now())
		require.Error(t, err, raw)
		require.Nil(t, c, raw)
		require.False(t, errors.Is(err, broker.ErrInvalidToken), "malformed is not a no: %s", raw)
		require.ErrorContains(t, err, "malformed broker answer", raw)
	}
}

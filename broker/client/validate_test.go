package client_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

const goodClaims = `{"iss":"i","sub":"spiffe://x/agent/o/t/1","exp":9999999999,"iat":1,"jti":"j1","scope":["read:data:*"]}`

// TestValidateAgainstALyingBroker: a gateway lets requests through on a
// "valid" answer, so anything but a clean yes or a clean no is an error.
func TestValidateAgainstALyingBroker(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       string // "" for a clean answer
	}{
		{"yes", `{"valid":true,"claims":` + goodClaims + `}` + "\n", ""},
		{"no", `{"valid":false,"error":"token is invalid or expired"}` + "\n", ""},
		{"duplicate valid", `{"valid":false,"valid":true,"claims":` + goodClaims + `}`, "duplicate"},
		{"case variant", `{"valid":false,"Valid":true,"claims":` + goodClaims + `}`, "duplicate"},
		{"case variant in claims", `{"valid":true,"claims":{"sub":"a","Sub":"b","jti":"j","exp":9}}`, "duplicate"},
		{"trailing data", `{"valid":false} {"valid":true}`, "trailing"},
		{"trailing garbage", `{"valid":true,"claims":` + goodClaims + `}x`, "trailing"},
		{"two objects", `{"valid":true}{"valid":true}`, "trailing"},
		{"no valid", `{"claims":` + goodClaims + `}`, `no boolean "valid"`},
		{"valid null", `{"valid":null,"claims":` + goodClaims + `}`, `no boolean "valid"`},
		{"valid string", `{"valid":"true","claims":` + goodClaims + `}`, "cannot unmarshal"},
		{"valid number", `{"valid":1,"claims":` + goodClaims + `}`, "cannot unmarshal"},
		{"valid without claims", `{"valid":true}`, "valid without a claims object"},
		{"claims null", `{"valid":true,"claims":null}`, "valid without a claims object"},
		{"claims not an object", `{"valid":true,"claims":"yes"}`, "cannot unmarshal"},
		{"claims without sub", `{"valid":true,"claims":{"jti":"j","exp":9999999999}}`, "claims lack sub, jti or exp"},
		{"claims without exp", `{"valid":true,"claims":{"sub":"s","jti":"j"}}`, "claims lack sub, jti or exp"},
		{"array", `[{"valid":true}]`, "not a JSON object"},
		{"empty", ``, "EOF"},
		{"not JSON", `valid`, "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake(t, func(w http.ResponseWriter, r *http.Request) { answer(w, 200, "application/json", tc.body) })
			res, err := c.Validate(context.Background(), "tok")
			if tc.want != "" {
				require.Error(t, err)
				assert.Nil(t, res)
				assert.ErrorIs(t, err, client.ErrMalformedAnswer)
				assert.ErrorContains(t, err, "validate: malformed answer: ")
				assert.ErrorContains(t, err, tc.want)
				return
			}
			require.NoError(t, err)
			if res.Valid {
				assert.Equal(t, "j1", res.Claims.Jti)
			} else {
				assert.Equal(t, "token is invalid or expired", res.Error)
			}
		})
	}
}

func TestValidateNoDropsClaims(t *testing.T) {
	c := fake(t, func(w http.ResponseWriter, r *http.Request) {
		answer(w, 200, "application/json", `{"valid":false,"claims":`+goodClaims+`}`)
	})
	res, err := c.Validate(context.Background(), "tok")
	require.NoError(t, err)
	assert.False(t, res.Valid)
	assert.Nil(t, res.Claims, "claims of a no must not be usable")
}

func TestValidateErrorStatus(t *testing.T) {
	for _, status := range []int{201, 204, 400, 500, 503} {
		c := fake(t, func(w http.ResponseWriter, r *http.Request) {
			answer(w, status, "application/json", `{"valid":true,"claims":`+goodClaims+`}`)
		})
		res, err := c.Validate(context.Background(), "tok")
		assert.Nil(t, res)
		var ae *client.Error
		require.ErrorAs(t, err, &ae, "status %d", status)
		assert.Equal(t, status, ae.Status)
		assert.False(t, errors.Is(err, client.ErrMalformedAnswer), "an HTTP error is told apart from a malformed answer")
	}
}

func TestValidateAgainstTheBroker(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.register(t, "read:data:*")
	res, err := e.c.Validate(ctx, a.Token)
	require.NoError(t, err)
	require.True(t, res.Valid)
	assert.Equal(t, a.ID, res.Claims.Sub)
	assert.Empty(t, res.Error)

	res, err = e.c.Validate(ctx, a.Token+"x")
	require.NoError(t, err)
	assert.False(t, res.Valid)
	assert.Equal(t, "token is invalid or expired", res.Error)

	_, err = e.c.Validate(ctx, "")
	assert.True(t, client.IsStatus(err, http.StatusBadRequest), "%v", err)
	assert.ErrorContains(t, err, "token field is required")
}

package remote

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// TestLocalSlowLogin: an app login that takes longer than Timeout (a
// bcrypt at cost 12 on a busy broker, or under the race detector) still
// succeeds, for the follower and for the gateway's other calls (usage
// reports), so local mode synchronizes. Bounded by Timeout, every attempt
// was abandoned and the follower never synchronized.
func TestLocalSlowLogin(t *testing.T) {
	const timeout = 300 * time.Millisecond
	srv := brokertest.New(t, brokertest.Options{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/app/auth" {
				time.Sleep(4 * timeout)
			}
			h.ServeHTTP(w, r)
		})
	}})
	id, secret := insertFeedApp(t, srv.Store.Database())
	a := srv.Agent(t, "read:orders:42")
	v, _ := newTestValidator(t, Options{URL: srv.URL, Mode: ModeLocal, ClientID: id, ClientSecret: secret, Timeout: timeout})
	waitSynced(t, v)
	c, err := v.Validate(context.Background(), a.Token)
	requireValid(t, a.Token, c, err)

	_, err = v.API().AppAuth(context.Background(), id, secret)
	require.NoError(t, err, "the gateway's other logins are not bounded by Timeout either")
}

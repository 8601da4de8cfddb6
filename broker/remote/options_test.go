package remote

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestOptions(t *testing.T) {
	v, err := New(Options{URL: "https://broker.example:8443/aw/", CacheTTL: DefaultCacheTTL, NegativeCacheTTL: DefaultNegativeCacheTTL})
	require.NoError(t, err)
	require.Equal(t, "https://broker.example:8443/aw/v1/token/validate", v.endpoint)
	require.Equal(t, DefaultTimeout, v.timeout, "Timeout 0 means the default")
	require.Equal(t, DefaultCacheSize, v.cache.size, "CacheSize 0 means the default")
	require.Equal(t, DefaultCacheTTL, v.cache.ttl)
	require.Equal(t, DefaultNegativeCacheTTL, v.cache.negativeTTL)
	require.NotNil(t, v.cache.negative)
	require.Zero(t, v.cache.staleIfError)
	require.Nil(t, v.http.Transport.(*http.Transport).TLSClientConfig)

	v, err = New(Options{URL: "http://10.0.0.5:8080", CacheTTL: 0, NegativeCacheTTL: time.Second, CacheSize: 7})
	require.NoError(t, err)
	require.Equal(t, "http://10.0.0.5:8080/v1/token/validate", v.endpoint)
	require.Nil(t, v.cache, "CacheTTL 0: no cache at all")

	v, err = New(Options{URL: "http://10.0.0.5:8080", CacheTTL: time.Second, NegativeCacheTTL: 0, CacheSize: 7,
		Timeout: time.Second, StaleIfError: time.Minute})
	require.NoError(t, err)
	require.Equal(t, 7, v.cache.size)
	require.Nil(t, v.cache.negative, "NegativeCacheTTL 0: no negative cache")
	require.Equal(t, time.Second, v.timeout)
	require.Equal(t, time.Minute, v.cache.staleIfError)

	pki := newTestPKI(t)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pki.ServerTLS.ClientCAs}
	v, err = New(Options{URL: "https://127.0.0.1", TLS: tc})
	require.NoError(t, err)
	got := v.http.Transport.(*http.Transport).TLSClientConfig
	require.NotNil(t, got.RootCAs)
	require.NotSame(t, tc, got, "the TLS config is cloned")

	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{}, "url is required"},
		{Options{URL: "broker.example:8080"}, "must start with http:// or https://"},
		{Options{URL: "mailto://x"}, "scheme must be http or https"},
		{Options{URL: "ftp://broker.example"}, "scheme must be http or https"},
		{Options{URL: "http://"}, "no host"},
		{Options{URL: "http://b.example/?x=1"}, "must not have a query"},
		{Options{URL: "http://b.example/?"}, "must not have a query"},
		{Options{URL: "http://b.example/#f"}, "must not have a fragment"},
		{Options{URL: "http://u:p@b.example"}, "credentials"},
		{Options{URL: "http://b.example:99999"}, "port"},
		{Options{URL: "http://b .example"}, "broker url"},
		{Options{URL: "http://b", CacheTTL: -time.Second}, "CacheTTL must not be negative"},
		{Options{URL: "http://b", NegativeCacheTTL: -time.Second}, "NegativeCacheTTL must not be negative"},
		{Options{URL: "http://b", Timeout: -1}, "Timeout must not be negative"},
		{Options{URL: "http://b", StaleIfError: -1}, "StaleIfError must not be negative"},
		{Options{URL: "http://b", CacheSize: -1}, "CacheSize must not be negative"},
		{Options{URL: "http://b", TLS: tc}, "need an https URL"},
		{Options{URL: "http://b/aw/v1"}, "must not end in /v1"},
		{Options{URL: "http://b", ClientID: "id"}, "apply only to local mode"},
		{Options{URL: "http://b", Fallback: true}, "apply only to local mode"},
		{Options{URL: "http://b", MaxStaleness: time.Minute}, "apply only to local mode"},
		{Options{URL: "http://b", Mode: ModeLocal, ClientID: "id"}, "needs an app's ClientID and ClientSecret"},
		{Options{URL: "http://b", Mode: ModeLocal, ClientSecret: "s3cr3t-value"}, "needs an app's ClientID and ClientSecret"},
		{Options{URL: "http://b", Mode: ModeLocal, ClientID: "id", ClientSecret: "s3cr3t-value", MaxStaleness: -1}, "MaxStaleness must not be negative"},
		{Options{URL: "http://b", Mode: ModeLocal, ClientID: "id", ClientSecret: "s3cr3t-value", MaxStaleness: 2 * time.Second}, "must exceed the feed's heartbeat interval"},
		{Options{URL: "http://b", Mode: 7}, "unknown Mode"},
	} {
		_, err := New(c.o)
		require.ErrorContains(t, err, c.want, "%+v", c.o)
		if c.o.ClientSecret != "" {
			require.NotContains(t, err.Error(), c.o.ClientSecret, "no secret in an error")
		}
	}
}

// TestPlainHTTPWarning: a plain http URL to another host is worth a
// warning at load; loopback is not.
func TestPlainHTTPWarning(t *testing.T) {
	for url, warn := range map[string]bool{
		"http://broker.internal:8080": true, "http://10.0.0.5": true, "http://[2001:db8::1]": true,
		"http://127.0.0.1:8080": false, "http://localhost": false, "http://[::1]:9": false, "https://broker.internal": false,
	} {
		var logs strings.Builder
		v, err := New(Options{URL: url, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		require.NoError(t, err)
		v.Close()
		require.Equal(t, warn, strings.Contains(logs.String(), "plain http"), "%s: %s", url, logs.String())
	}
}

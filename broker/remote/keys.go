package remote

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// The broker's key set, as its /.well-known/jwks.json last said, and the
// broker.Verifier over it: the same verification code as the embedded
// broker's, with keys that come from the network.

const (
	// keysMinInterval: a token with an unknown kid asks for the key set
	// again at most this often (a key just added, or junk).
	keysMinInterval = time.Second
	// keysRetry: after a failed fetch, validate mode tries again no sooner.
	keysRetry = 10 * time.Second
	// keysAbsentRecheck: a broker that publishes no keys (404: upstream)
	// is asked again this rarely, in case it was replaced by ours.
	keysAbsentRecheck = 10 * time.Minute
)

var (
	errNoKeys = fmt.Errorf("%w: the broker's keys are not known yet", ErrUnavailable)
	// errKeysStale: a token names a key the gateway does not know, and the
	// key set could not be fetched again to learn whether it exists.
	errKeysStale = fmt.Errorf("%w: the token's key is unknown and the broker's key set could not be refreshed", ErrUnavailable)
)

// keySnapshot is one fetched key set; never modified once stored.
type keySnapshot struct {
	byKid map[string]ed25519.PublicKey
	all   []ed25519.PublicKey // in the JWKS's order: the broker lists the newest first
}

// keyring implements broker.KeySet over the latest snapshot.
type keyring struct {
	fetch     func(context.Context) (*broker.JWKSet, error)
	now       func() time.Time
	cacheSize int // of the Verifier's claims cache; negative: none
	onFetch   func(error)

	set      atomic.Pointer[keySnapshot]
	verifier atomic.Pointer[broker.Verifier]
	group    singleflight.Group

	mu      sync.Mutex
	fetched time.Time // when the last fetch ended
	failed  bool      // it failed
	absent  bool      // it was a 404: the broker publishes no keys
}

func newKeyring(fetch func(context.Context) (*broker.JWKSet, error), now func() time.Time, cacheSize int, onFetch func(error)) *keyring {
	return &keyring{fetch: fetch, now: now, cacheSize: cacheSize, onFetch: onFetch}
}

// Key implements broker.KeySet.
func (k *keyring) Key(kid string) (ed25519.PublicKey, bool) {
	s := k.set.Load()
	if s == nil {
		return nil, false
	}
	pub, ok := s.byKid[kid]
	return pub, ok
}

// Keys implements broker.KeySet. The slice is shared: not to be modified.
func (k *keyring) Keys() []ed25519.PublicKey {
	if s := k.set.Load(); s != nil {
		return s.all
	}
	return nil
}

// refresh fetches the key set (one fetch for concurrent callers). When a
// key has gone (retired), the Verifier is replaced, so that nothing it
// verified under that key is served from its cache.
func (k *keyring) refresh(ctx context.Context) error {
	_, err, _ := k.group.Do("", func() (any, error) {
		set, err := k.fetch(ctx)
		var snap *keySnapshot
		if err == nil {
			snap, err = snapshotOf(set)
		}
		k.mu.Lock()
		k.fetched, k.failed, k.absent = k.now(), err != nil, client.IsStatus(err, http.StatusNotFound)
		k.mu.Unlock()
		k.onFetch(err)
		if err != nil {
			return nil, err
		}
		old := k.set.Swap(snap)
		if old == nil || removed(old, snap) {
			k.verifier.Store(broker.NewVerifier(broker.VerifierOptions{Keys: k, CacheSize: k.cacheSize, Now: k.now}))
		}
		return nil, nil
	})
	return err
}

// removed reports whether a key of old is not in cur.
func removed(old, cur *keySnapshot) bool {
	for kid := range old.byKid {
		if _, ok := cur.byKid[kid]; !ok {
			return true
		}
	}
	return false
}

// snapshotOf checks a JWKS: at least one key, each an Ed25519 key for
// EdDSA signatures whose kid is its RFC 7638 thumbprint (as this
// project's broker names its keys), no kid twice.
func snapshotOf(set *broker.JWKSet) (*keySnapshot, error) {
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("%w: the key set is empty", client.ErrMalformedAnswer)
	}
	s := &keySnapshot{byKid: make(map[string]ed25519.PublicKey, len(set.Keys))}
	for i, j := range set.Keys {
		x, err := base64.RawURLEncoding.Strict().DecodeString(j.X)
		switch {
		case j.Kty != "OKP" || j.Crv != "Ed25519":
			err = fmt.Errorf("kty %q, crv %q: not an Ed25519 key", j.Kty, j.Crv)
		case (j.Alg != "" && j.Alg != "EdDSA") || (j.Use != "" && j.Use != "sig"):
			err = fmt.Errorf("alg %q, use %q: not for EdDSA signatures", j.Alg, j.Use)
		case err == nil && len(x) != ed25519.PublicKeySize:
			err = fmt.Errorf("x is %d bytes", len(x))
		case err == nil && j.Kid != broker.Thumbprint(x):
			err = errors.New("kid is not the key's thumbprint")
		case err == nil && s.byKid[j.Kid] != nil:
			err = errors.New("kid listed twice")
		}
		if err != nil {
			return nil, fmt.Errorf("%w: key %d: %v", client.ErrMalformedAnswer, i, err)
		}
		s.byKid[j.Kid] = x
		s.all = append(s.all, x)
	}
	return s, nil
}

// verify checks tok's signature, header and time claims with the broker's
// keys. A token signed with a key the gateway does not know triggers a
// fetch of the key set, at most every keysMinInterval; when that fetch
// fails the error is errKeysStale (nothing could be decided), otherwise
// the token is refused. The claims are shared: not to be modified. A
// token verified before costs a hash and a map lookup, no allocation.
func (k *keyring) verify(ctx context.Context, tok string) (*broker.Claims, error) {
	ver := k.verifier.Load()
	if ver == nil {
		return nil, errNoKeys
	}
	c, err := ver.Verify(tok)
	if err == nil || !k.unknownKid(tok) {
		return c, err
	}
	k.mu.Lock()
	recent := k.now().Sub(k.fetched) < keysMinInterval
	failed := k.failed
	k.mu.Unlock()
	if recent {
		if failed {
			return nil, errKeysStale
		}
		return nil, err // the key set is current, and the key is not in it
	}
	// Not cancelled with the request: joiners of the fetch share its fate.
	if rerr := k.refresh(context.WithoutCancel(ctx)); rerr != nil {
		return nil, fmt.Errorf("%w: %w", errKeysStale, rerr)
	}
	return k.verifier.Load().Verify(tok)
}

// unknownKid reports whether tok names, in its header, a kid that is not
// in the key set.
func (k *keyring) unknownKid(tok string) bool {
	u, err := broker.ParseUnverified(tok)
	if err != nil || u.Kid == "" {
		return false
	}
	_, ok := k.Key(u.Kid)
	return !ok
}

// usable brings the key set up to date for validate mode, fetching it
// when it is due (the first time, every KeysRefresh, keysRetry after a
// failure, keysAbsentRecheck after a 404), and reports whether tokens can
// be checked against it before a call: false when the broker publishes
// no keys (an upstream broker) or none could be fetched yet.
func (k *keyring) usable(ctx context.Context) bool {
	k.mu.Lock()
	age, failed, absent := k.now().Sub(k.fetched), k.failed, k.absent
	never := k.fetched.IsZero()
	k.mu.Unlock()
	due := never || age >= KeysRefresh || (failed && age >= keysRetry)
	if absent {
		due = age >= keysAbsentRecheck
	}
	if due {
		_ = k.refresh(context.WithoutCancel(ctx)) // a failure leaves the last keys, or none
		k.mu.Lock()
		absent = k.absent
		k.mu.Unlock()
	}
	return !absent && k.verifier.Load() != nil
}

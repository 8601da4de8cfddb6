package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"
)

// KeyInfo describes one key of the set, for the admin API and JWKS.
type KeyInfo struct {
	KID       string    `json:"kid"`
	State     string    `json:"state"` // KeyActive, KeyRetiring or KeyRetired
	CreatedAt time.Time `json:"created_at"`
	// RetireAt is when a retiring key stops verifying; zero for the
	// active key.
	RetireAt time.Time `json:"retire_at,omitzero"`
}

// Key states.
const (
	KeyActive   = "active"   // signs new tokens, verifies
	KeyRetiring = "retiring" // verifies the tokens it signed until RetireAt
	KeyRetired  = "retired"  // past RetireAt: verifies nothing
)

// ringKey is a SigningKey with what is derived from it.
type ringKey struct {
	SigningKey
	kid    string
	pub    ed25519.PublicKey
	signer *signer
}

// keyRing is the key set of the database, as last loaded: one active key
// that signs, and the keys rotated out, which verify until they retire.
// Retirement needs no write: a key whose RetireAt has passed is simply no
// longer offered. It implements KeySet.
type keyRing struct {
	mu     sync.RWMutex
	keys   []*ringKey // oldest first; the last one with a zero RetireAt is active
	active *ringKey
	now    func() time.Time
}

// load replaces the ring with the stored keys.
func (r *keyRing) load(stored []SigningKey) error {
	keys := make([]*ringKey, 0, len(stored))
	var active *ringKey
	for _, k := range stored {
		if len(k.Private) != ed25519.PrivateKeySize {
			return fmt.Errorf("signing key: stored key is %d bytes", len(k.Private))
		}
		rk := &ringKey{SigningKey: k, signer: newSigner(k.Private)}
		rk.pub, rk.kid = rk.signer.pub, rk.signer.kid
		keys = append(keys, rk)
		if k.RetireAt.IsZero() {
			active = rk
		}
	}
	if active == nil {
		return errors.New("signing key: the database holds no active key")
	}
	r.mu.Lock()
	r.keys, r.active = keys, active
	r.mu.Unlock()
	return nil
}

// signer returns the active key's signer.
func (r *keyRing) signer() *signer {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.active.signer
}

// valid reports whether k still verifies at now.
func (k *ringKey) valid(now time.Time) bool { return k.RetireAt.IsZero() || now.Before(k.RetireAt) }

// Key implements KeySet: a key that has not retired.
func (r *keyRing) Key(kid string) (ed25519.PublicKey, bool) {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, k := range r.keys {
		if k.kid == kid && k.valid(now) {
			return k.pub, true
		}
	}
	return nil, false
}

// Keys implements KeySet: every key that has not retired, newest first.
func (r *keyRing) Keys() []ed25519.PublicKey {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []ed25519.PublicKey
	for i := len(r.keys) - 1; i >= 0; i-- {
		if r.keys[i].valid(now) {
			out = append(out, r.keys[i].pub)
		}
	}
	return out
}

// info lists every key with its state, newest first.
func (r *keyRing) info() []KeyInfo {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]KeyInfo, 0, len(r.keys))
	for i := len(r.keys) - 1; i >= 0; i-- {
		k := r.keys[i]
		state := KeyRetiring
		switch {
		case k == r.active:
			state = KeyActive
		case !k.valid(now):
			state = KeyRetired
		}
		out = append(out, KeyInfo{KID: k.kid, State: state, CreatedAt: k.CreatedAt, RetireAt: k.RetireAt})
	}
	return out
}

// jwks is the public key set: every key that has not retired.
func (r *keyRing) jwks() JWKSet {
	set := JWKSet{Keys: []JWK{}}
	for _, pub := range r.Keys() {
		set.Keys = append(set.Keys, jwkOf(pub))
	}
	return set
}

// newSigningKey makes a fresh active key.
func newSigningKey(now time.Time) (SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("signing key: %w", err)
	}
	return SigningKey{Private: priv, CreatedAt: now.UTC()}, nil
}

// loadKeys reads the key set from db, creating the first key if there is
// none (one replica wins; everyone reads the winner's).
func (r *keyRing) loadKeys(ctx context.Context, db KeyDB) error {
	stored, err := db.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}
	if len(stored) == 0 {
		k, err := newSigningKey(r.now())
		if err != nil {
			return err
		}
		if err := db.InitSigningKey(ctx, k); err != nil {
			return fmt.Errorf("signing keys: %w", err)
		}
		if stored, err = db.SigningKeys(ctx); err != nil {
			return fmt.Errorf("signing keys: %w", err)
		}
	}
	return r.load(stored)
}

// staticKeys is the key set of a broker configured with a key file: that
// one key signs and verifies.
type staticKeys struct {
	pub ed25519.PublicKey
	kid string
}

func (s staticKeys) Key(kid string) (ed25519.PublicKey, bool) { return s.pub, kid == s.kid }

func (s staticKeys) Keys() []ed25519.PublicKey { return []ed25519.PublicKey{s.pub} }

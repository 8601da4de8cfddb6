// Package broker is an embedded AgentWrit credential broker: it issues,
// verifies, renews, releases, revokes and delegates short-lived EdDSA JWTs
// for AI agents, keeps apps, launch tokens, agents, revocations and a
// hash-chained audit trail in a Database (SQLite or PostgreSQL, see
// broker/storage), and serves the AgentWrit HTTP API so existing AgentWrit
// clients work against it unchanged.
//
// It does not import Caddy: the caddymodule package wires it into Caddy,
// and anything else can serve it with net/http.
//
// Where it departs from the upstream broker on purpose, a comment names the
// departure (D1, D2, …) as listed, with its reason, in docs/compatibility.md.
package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Broker is one configured broker over a shared Store. It is safe for
// concurrent use. Several Brokers may share a Store (during a reload).
type Broker struct {
	cfg       Config
	store     *Store
	fileKey   *signer // the signing_key file's key, if configured
	verifier  *Verifier
	adminHash []byte
	obs       Observer
	log       *slog.Logger
	now       func() time.Time
	started   time.Time
	limits    *limiters
	handler   http.Handler
	done      chan struct{} // closed by Close: ends the revocation feed's streams
	closeOnce sync.Once
}

// New configures a broker over store. A plaintext admin secret is hashed
// here (bcrypt cost 12, as upstream), so New takes a few hundred
// milliseconds unless the secret is already a hash.
func New(store *Store, cfg Config) (*Broker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hash := []byte(cfg.AdminSecret)
	if !isBcryptHash(cfg.AdminSecret) {
		if hash, err = bcrypt.GenerateFromPassword([]byte(cfg.AdminSecret), bcryptCost); err != nil {
			return nil, fmt.Errorf("hash admin secret: %w", err)
		}
	}
	b := &Broker{
		cfg:       cfg,
		store:     store,
		adminHash: hash,
		obs:       cfg.Observer,
		log:       cfg.Logger,
		now:       cfg.Now,
		started:   cfg.Now(),
		limits:    newLimiters(),
		done:      make(chan struct{}),
	}
	var keys KeySet = store.keys
	if cfg.SigningKey != nil {
		b.fileKey = newSigner(cfg.SigningKey)
		keys = staticKeys{pub: b.fileKey.pub, kid: b.fileKey.kid}
	}
	b.verifier = NewVerifier(VerifierOptions{Keys: keys, Issuer: cfg.Issuer, CacheSize: cfg.VerifyCacheSize, Now: cfg.Now})
	b.handler = b.routes()
	return b, nil
}

// Close ends the broker's long-lived responses (revocation feed streams),
// so the server serving it can shut down; their clients reconnect to
// whatever serves next. The Store is not closed. Close is idempotent.
func (b *Broker) Close() { b.closeOnce.Do(func() { close(b.done) }) }

// Usage is the recorder embedded gateways count scope usage into.
func (b *Broker) Usage() *UsageRecorder { return b.store.usage }

// signer is the key that signs new tokens.
func (b *Broker) signer() *signer {
	if b.fileKey != nil {
		return b.fileKey
	}
	return b.store.keys.signer()
}

// KeyID is the kid of the key that signs new tokens.
func (b *Broker) KeyID() string { return b.signer().kid }

// PublicKey is the public half of the key that signs new tokens.
func (b *Broker) PublicKey() ed25519.PublicKey { return b.signer().pub }

// JWKS is the set of public keys that verify the broker's tokens: every
// key that has not retired.
func (b *Broker) JWKS() JWKSet {
	if b.fileKey != nil {
		return JWKSet{Keys: []JWK{jwkOf(b.fileKey.pub)}}
	}
	return b.store.keys.jwks()
}

// Keys describes the key set, newest first.
func (b *Broker) Keys() []KeyInfo {
	if b.fileKey != nil {
		return []KeyInfo{{KID: b.fileKey.kid, State: KeyActive}}
	}
	return b.store.keys.info()
}

// ErrFileKey is returned by RotateKey when the signing key comes from a
// file, which the broker does not rewrite.
var ErrFileKey = errors.New("the signing key comes from the signing_key file; replace the file to change it")

// retirementAge is how long a rotated-out key keeps verifying: the longest
// a token it signed can live. Without a max_ttl clamp no bound is known,
// so a long one is taken.
func (b *Broker) retirementAge() time.Duration {
	if b.cfg.MaxTTL > 0 {
		return b.cfg.MaxTTL
	}
	return 10 * 365 * 24 * time.Hour
}

// RotateKey makes a new active signing key. The previous one keeps
// verifying the tokens it signed until they have all expired (max_ttl), so
// no issued token stops working before its exp. The rotation is audited.
func (b *Broker) RotateKey(ctx context.Context, by string) (KeyInfo, error) {
	if b.fileKey != nil {
		return KeyInfo{}, ErrFileKey
	}
	now := b.now()
	old := b.store.keys.signer().kid
	k, err := newSigningKey(now)
	if err != nil {
		return KeyInfo{}, err
	}
	retireAt := now.Add(b.retirementAge()).UTC()
	if err := b.store.db.RotateSigningKey(ctx, k, retireAt); err != nil {
		return KeyInfo{}, fmt.Errorf("rotate signing key: %w", err)
	}
	if err := b.store.reloadKeys(ctx); err != nil {
		return KeyInfo{}, err
	}
	kid := Thumbprint(k.Private.Public().(ed25519.PublicKey))
	b.audit(ctx, Event{EventType: EventKeyRotated, Outcome: OutcomeSuccess,
		Detail: fmt.Sprintf("signing key rotated: kid=%s previous=%s previous_retires_at=%s by=%s", kid, old, formatTime(retireAt), by)})
	return KeyInfo{KID: kid, State: KeyActive, CreatedAt: k.CreatedAt}, nil
}

// ttl resolves a token lifetime as upstream does, in whole seconds.
func (b *Broker) ttl(requested int64) int64 {
	if requested <= 0 {
		requested = int64(b.cfg.DefaultTTL / time.Second)
	}
	if maxTTL := int64(b.cfg.MaxTTL / time.Second); maxTTL > 0 && requested > maxTTL {
		requested = maxTTL
	}
	return requested
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// audience is the aud of newly issued admin, app and agent tokens.
func (b *Broker) audience() []string {
	if b.cfg.Audience == "" {
		return nil
	}
	return []string{b.cfg.Audience}
}

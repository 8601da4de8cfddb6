package broker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"
)

const (
	nonceTTL         = 30 * time.Second
	defaultMaxNonces = 100_000
)

var (
	errNonceUnknown  = errors.New("nonce not found or expired")
	errNonceConsumed = errors.New("nonce already consumed")
)

type nonceEntry struct {
	expires  time.Time
	consumed bool
}

// nonceStore holds challenge nonces in memory (they need not survive a
// restart, but live in the Store so they survive a Caddy reload). Unlike
// upstream it is bounded (D10): expired nonces are pruned, and when max are
// outstanding the oldest is dropped. Nonces expire in creation order, so a
// FIFO queue is also the expiry order.
type nonceStore struct {
	mu      sync.Mutex
	max     int
	entries map[string]*nonceEntry
	queue   []string
}

func newNonceStore(max int) *nonceStore {
	return &nonceStore{max: max, entries: make(map[string]*nonceEntry)}
}

// issue returns a fresh nonce: 32 random bytes as 64 lowercase hex chars.
func (s *nonceStore) issue(now time.Time) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	n := hex.EncodeToString(b[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	for len(s.queue) >= s.max {
		s.dropOldestLocked()
	}
	s.entries[n] = &nonceEntry{expires: now.Add(nonceTTL)}
	s.queue = append(s.queue, n)
	return n, nil
}

// consume checks n in upstream's order: unknown, then consumed, then expired.
func (s *nonceStore) consume(n string, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[n]
	switch {
	case !ok:
		return errNonceUnknown
	case e.consumed:
		return errNonceConsumed
	case now.After(e.expires):
		delete(s.entries, n)
		return errNonceUnknown
	}
	e.consumed = true
	return nil
}

func (s *nonceStore) prune(now time.Time) {
	s.mu.Lock()
	s.pruneLocked(now)
	s.mu.Unlock()
}

func (s *nonceStore) pruneLocked(now time.Time) {
	for len(s.queue) > 0 {
		e, ok := s.entries[s.queue[0]]
		if ok && !now.After(e.expires) {
			return
		}
		s.dropOldestLocked()
	}
}

func (s *nonceStore) dropOldestLocked() {
	delete(s.entries, s.queue[0])
	s.queue[0] = ""
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
	}
}

func (s *nonceStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

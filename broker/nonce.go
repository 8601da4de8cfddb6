package broker

import (
	"context"
	"sync"
	"time"
)

const (
	nonceTTL         = 30 * time.Second
	defaultMaxNonces = 100_000
)

type nonceEntry struct {
	expires  time.Time
	consumed bool
}

// memoryNonces is the NonceDB of a database that keeps no nonces (SQLite,
// one node): nonces need not survive a restart, but they live in the
// Store, so they survive a Caddy reload. Unlike upstream it is bounded:
// expired nonces are pruned, and when max are outstanding the oldest is
// dropped. Nonces expire in creation order, so a FIFO queue is also the
// expiry order.
type memoryNonces struct {
	mu      sync.Mutex
	max     int
	entries map[string]*nonceEntry
	queue   []string
}

func newMemoryNonces(max int) *memoryNonces {
	return &memoryNonces{max: max, entries: make(map[string]*nonceEntry)}
}

// PutNonce implements NonceDB.
func (s *memoryNonces) PutNonce(_ context.Context, n string, expires time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(expires.Add(-nonceTTL))
	for len(s.queue) >= s.max {
		s.dropOldestLocked()
	}
	s.entries[n] = &nonceEntry{expires: expires}
	s.queue = append(s.queue, n)
	return nil
}

// ConsumeNonce implements NonceDB, in upstream's order: unknown, then
// consumed, then expired.
func (s *memoryNonces) ConsumeNonce(_ context.Context, n string, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[n]
	switch {
	case !ok:
		return ErrNotFound
	case e.consumed:
		return ErrConsumed
	case now.After(e.expires):
		delete(s.entries, n)
		return ErrNotFound
	}
	e.consumed = true
	return nil
}

// PruneNonces implements NonceDB.
func (s *memoryNonces) PruneNonces(_ context.Context, now time.Time) error {
	s.mu.Lock()
	s.pruneLocked(now)
	s.mu.Unlock()
	return nil
}

func (s *memoryNonces) pruneLocked(now time.Time) {
	for len(s.queue) > 0 {
		e, ok := s.entries[s.queue[0]]
		if ok && !now.After(e.expires) {
			return
		}
		s.dropOldestLocked()
	}
}

func (s *memoryNonces) dropOldestLocked() {
	delete(s.entries, s.queue[0])
	s.queue[0] = ""
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
	}
}

func (s *memoryNonces) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

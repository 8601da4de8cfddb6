package broker

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"time"
)

// Revocation levels, as /v1/revoke spells them.
const (
	LevelToken = "token" // target: a jti
	LevelAgent = "agent" // target: a subject (any sub, including "admin")
	LevelTask  = "task"  // target: a task_id, also for future tokens
	LevelChain = "chain" // target: the root delegator of a delegation chain
)

func validLevel(l string) bool {
	return l == LevelToken || l == LevelAgent || l == LevelTask || l == LevelChain
}

// revocationIndex is the in-memory mirror of the revocations table: one set
// per level, so a check is four map lookups under a read lock.
type revocationIndex struct {
	mu   sync.RWMutex
	sets map[string]map[string]struct{}
}

func newRevocationIndex() *revocationIndex {
	return &revocationIndex{sets: map[string]map[string]struct{}{
		LevelToken: {}, LevelAgent: {}, LevelTask: {}, LevelChain: {},
	}}
}

func (x *revocationIndex) load(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT level, target FROM revocations`)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var level, target string
		if err := rows.Scan(&level, &target); err != nil {
			return fmt.Errorf("load revocations: %w", err)
		}
		x.add(level, target)
	}
	return rows.Err()
}

func (x *revocationIndex) add(level, target string) {
	x.mu.Lock()
	if set, ok := x.sets[level]; ok {
		set[target] = struct{}{}
	}
	x.mu.Unlock()
}

// revoked implements upstream's §7.4: jti, subject, task, or the root of the
// delegation chain. It does not allocate.
func (x *revocationIndex) revoked(c *Claims) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if _, ok := x.sets[LevelToken][c.Jti]; ok {
		return true
	}
	if _, ok := x.sets[LevelAgent][c.Sub]; ok {
		return true
	}
	if c.TaskID != "" {
		if _, ok := x.sets[LevelTask][c.TaskID]; ok {
			return true
		}
	}
	if len(c.DelegationChain) > 0 {
		if _, ok := x.sets[LevelChain][c.DelegationChain[0].Agent]; ok {
			return true
		}
	}
	return false
}

// Revoke records a revocation durably and then in the live index, so that
// once it returns no verification can succeed for the target. Revoking twice
// is not an error.
func (s *Store) Revoke(ctx context.Context, level, target string) error {
	if !validLevel(level) || target == "" {
		return fmt.Errorf("revoke: invalid level %q or empty target", level)
	}
	_, err := s.db.ExecContext(ctx,
		`INSERT OR IGNORE INTO revocations(level, target, revoked_at) VALUES (?, ?, ?)`,
		level, target, time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		return fmt.Errorf("revoke %s %s: %w", level, target, err)
	}
	s.revocations.add(level, target)
	return nil
}

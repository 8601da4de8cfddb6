package broker

import "sync"

// Revocation levels, as /v1/revoke spells them.
const (
	LevelToken = "token" // target: a jti
	LevelAgent = "agent" // target: a subject (any sub, including "admin")
	LevelTask  = "task"  // target: a task_id, also for future tokens
	LevelChain = "chain" // target: the root delegator of a delegation chain
)

// ValidLevel reports whether l is one of the four revocation levels.
func ValidLevel(l string) bool {
	return l == LevelToken || l == LevelAgent || l == LevelTask || l == LevelChain
}

// RevocationIndex is the in-memory set of revocations a verifier checks on
// every request: one set per level, so a check is four map lookups under a
// read lock. The embedded broker keeps it current from its database;
// remote gateways in local mode from the broker's revocation feed.
type RevocationIndex struct {
	mu   sync.RWMutex
	sets [4]map[string]struct{} // by levelIndex
	seq  int64                  // the highest sequence number applied in order
	last Revocation             // the revocation at seq, as applied
}

// NewRevocationIndex returns an empty index.
func NewRevocationIndex() *RevocationIndex {
	x := &RevocationIndex{}
	for i := range x.sets {
		x.sets[i] = map[string]struct{}{}
	}
	return x
}

func levelIndex(level string) int {
	switch level {
	case LevelToken:
		return 0
	case LevelAgent:
		return 1
	case LevelTask:
		return 2
	case LevelChain:
		return 3
	}
	return -1
}

// Add makes r effective at once. It does not move Seq: a revocation
// learned out of order (this replica's own, just committed) must not let a
// follower skip the ones before it.
func (x *RevocationIndex) Add(r Revocation) {
	i := levelIndex(r.Level)
	if i < 0 {
		return
	}
	x.mu.Lock()
	x.sets[i][r.Target] = struct{}{}
	x.mu.Unlock()
}

// Apply adds revocations read in sequence order and advances Seq to the
// last of them.
func (x *RevocationIndex) Apply(rs []Revocation) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range rs {
		if i := levelIndex(r.Level); i >= 0 {
			x.sets[i][r.Target] = struct{}{}
		}
		if r.Seq >= x.seq {
			x.seq, x.last = r.Seq, r
		}
	}
}

// Rewind forgets the position (Seq and Last go back to zero) and keeps
// every revocation held. It is for a source whose sequence went back (a
// database restored from an older backup numbers new revocations again
// from its own newest one, below Seq, or puts others where Last was):
// reading it again from the start picks up the renumbered revocations,
// while those the restore lost stay in force here. Failing closed: a
// revocation, once seen, is never forgotten by a running process.
func (x *RevocationIndex) Rewind() {
	x.mu.Lock()
	x.seq, x.last = 0, Revocation{}
	x.mu.Unlock()
}

// Position is Seq and the revocation applied at it (zero at Seq 0): a
// follower resuming after Seq checks that its source still has that
// revocation there, which a source whose sequence went back does not.
func (x *RevocationIndex) Position() (int64, Revocation) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.seq, x.last
}

// Seq is the sequence number up to which every revocation has been applied.
func (x *RevocationIndex) Seq() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.seq
}

// Len is the number of revoked targets.
func (x *RevocationIndex) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := 0
	for _, s := range x.sets {
		n += len(s)
	}
	return n
}

// Revoked reports whether c is revoked: its jti, its subject, its task,
// or the root of its delegation chain. It does not allocate.
func (x *RevocationIndex) Revoked(c *Claims) bool {
	root := ""
	if len(c.DelegationChain) > 0 {
		root = c.DelegationChain[0].Agent
	}
	return x.revoked(c.Jti, c.Sub, c.TaskID, root)
}

// RecordRevoked is Revoked for a stored token record.
func (x *RevocationIndex) RecordRevoked(r *TokenRecord) bool {
	return x.revoked(r.JTI, r.Subject, r.TaskID, r.Root)
}

func (x *RevocationIndex) revoked(jti, sub, task, root string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if _, ok := x.sets[0][jti]; ok {
		return true
	}
	if _, ok := x.sets[1][sub]; ok {
		return true
	}
	if task != "" {
		if _, ok := x.sets[2][task]; ok {
			return true
		}
	}
	if root != "" {
		if _, ok := x.sets[3][root]; ok {
			return true
		}
	}
	return false
}

// Same reports whether r and o are the same stored revocation: the same
// sequence number for the same target, revoked at the same time.
func (r Revocation) Same(o Revocation) bool {
	return r.Seq == o.Seq && r.Level == o.Level && r.Target == o.Target && r.RevokedAt.Equal(o.RevokedAt)
}

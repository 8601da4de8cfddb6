package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// LaunchToken is the policy an operator or app attaches to a launch token.
type LaunchToken struct {
	AgentName    string
	AllowedScope []string
	MaxTTL       int64
	SingleUse    bool
	CreatedAt    time.Time
	ExpiresAt    time.Time
	ConsumedAt   time.Time // zero while unused
	CreatedBy    string
	AppID        string
}

// Launch-token defaults (upstream's).
const (
	defaultLaunchTTL    = 30
	defaultLaunchMaxTTL = 300
)

// LaunchTokenHash is what a database stores instead of a launch token, so
// a copy of the database hands out no usable launch token.
func LaunchTokenHash(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

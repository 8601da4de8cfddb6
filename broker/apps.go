package broker

import (
	"regexp"
	"strings"
	"time"
)

// App is a registered application, in the shape GET /v1/admin/apps returns.
type App struct {
	AppID     string   `json:"app_id"`
	Name      string   `json:"name"`
	ClientID  string   `json:"client_id"`
	Scopes    []string `json:"scopes"`
	TokenTTL  int64    `json:"token_ttl"`
	Status    string   `json:"status"`
	CreatedAt string   `json:"created_at"` // RFC 3339, UTC, whole seconds
	UpdatedAt string   `json:"updated_at"`

	// SecretHash is the bcrypt hash of the client secret; CreatedBy the
	// subject that registered the app. Neither is ever sent.
	SecretHash string `json:"-"`
	CreatedBy  string `json:"-"`
}

// App statuses.
const (
	AppActive   = "active"
	AppInactive = "inactive"
)

// WholeSeconds renders t as upstream renders app and launch-token times:
// RFC 3339 in UTC, truncated to the second.
func WholeSeconds(t time.Time) string { return t.UTC().Truncate(time.Second).Format(time.RFC3339) }

var appNameRE = regexp.MustCompile(`^[a-z][a-z0-9](?:-?[a-z0-9]+)*$`)

const (
	minAppTokenTTL = 60
	maxAppTokenTTL = 86400
)

// clientIDPrefix is upstream's abbreviation: the first two characters of a
// name without hyphens, else the initials of up to three parts.
func clientIDPrefix(name string) string {
	parts := strings.Split(name, "-")
	if len(parts) == 1 {
		return name[:2]
	}
	var b strings.Builder
	for _, p := range parts[:min(3, len(parts))] {
		b.WriteByte(p[0])
	}
	return b.String()
}

package broker

// The bodies of the AgentWrit HTTP API, in upstream's field order. The
// broker's handlers encode and decode exactly these, and package client
// uses them too, so the two cannot drift apart.

// Challenge is the answer of GET /v1/challenge.
type Challenge struct {
	Nonce     string `json:"nonce"`
	ExpiresIn int    `json:"expires_in"`
}

// Health is the answer of GET /v1/health.
type Health struct {
	Status           string `json:"status"`
	Version          string `json:"version"`
	Uptime           int64  `json:"uptime"`
	DBConnected      bool   `json:"db_connected"`
	AuditEventsCount int64  `json:"audit_events_count"`
}

// ValidateRequest is the body of POST /v1/token/validate.
type ValidateRequest struct {
	Token string `json:"token"`
}

// ValidateResponse is the answer of POST /v1/token/validate: claims when
// valid, a generic error when not.
type ValidateResponse struct {
	Valid  bool    `json:"valid"`
	Claims *Claims `json:"claims,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// RegisterRequest is the body of POST /v1/register. PublicKey and
// Signature are standard, padded base64; the signature is over the
// hex-decoded bytes of Nonce.
type RegisterRequest struct {
	LaunchToken    string   `json:"launch_token"`
	Nonce          string   `json:"nonce"`
	PublicKey      string   `json:"public_key"`
	Signature      string   `json:"signature"`
	OrchID         string   `json:"orch_id"`
	TaskID         string   `json:"task_id"`
	RequestedScope []string `json:"requested_scope"`
}

// RegisterResponse is the answer of POST /v1/register.
type RegisterResponse struct {
	AgentID     string `json:"agent_id"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

// TokenResponse is the answer of POST /v1/token/renew.
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

// AdminAuthRequest is the body of POST /v1/admin/auth.
type AdminAuthRequest struct {
	Secret string `json:"secret"`
}

// AuthResponse is the answer of POST /v1/admin/auth.
type AuthResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	TokenType   string `json:"token_type"`
}

// AppAuthRequest is the body of POST /v1/app/auth.
type AppAuthRequest struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
}

// AppAuthResponse is the answer of POST /v1/app/auth.
type AppAuthResponse struct {
	AccessToken string   `json:"access_token"`
	ExpiresIn   int64    `json:"expires_in"`
	TokenType   string   `json:"token_type"`
	Scopes      []string `json:"scopes"`
}

// DelegateRequest is the body of POST /v1/delegate. TTL ≤ 0 means 60 s.
type DelegateRequest struct {
	DelegateTo string   `json:"delegate_to"`
	Scope      []string `json:"scope"`
	TTL        int64    `json:"ttl,omitempty"`
}

// DelegateResponse is the answer of POST /v1/delegate.
type DelegateResponse struct {
	AccessToken     string        `json:"access_token"`
	ExpiresIn       int64         `json:"expires_in"`
	DelegationChain []DelegRecord `json:"delegation_chain"`
}

// RevokeRequest is the body of POST /v1/revoke; Level is one of the Level
// constants.
type RevokeRequest struct {
	Level  string `json:"level"`
	Target string `json:"target"`
}

// RevokeResponse is the answer of POST /v1/revoke.
type RevokeResponse struct {
	Revoked bool   `json:"revoked"`
	Level   string `json:"level"`
	Target  string `json:"target"`
	Count   int    `json:"count"`
}

// AuditPage is the answer of GET /v1/audit/events. Offset and Limit echo
// the request as upstream does (Limit may exceed the events returned).
type AuditPage struct {
	Events []Event `json:"events"`
	Total  int     `json:"total"`
	Offset int     `json:"offset"`
	Limit  int     `json:"limit"`
}

// LaunchTokenRequest is the body of POST /v1/admin/launch-tokens and
// POST /v1/app/launch-tokens. Zero TTLs mean upstream's defaults (ttl 30 s,
// max_ttl 300 s); a nil SingleUse means true.
type LaunchTokenRequest struct {
	AgentName    string   `json:"agent_name"`
	AllowedScope []string `json:"allowed_scope"`
	MaxTTL       int64    `json:"max_ttl,omitempty"`
	SingleUse    *bool    `json:"single_use,omitempty"`
	TTL          int64    `json:"ttl,omitempty"`
}

// LaunchPolicy is what a launch token allows.
type LaunchPolicy struct {
	AllowedScope []string `json:"allowed_scope"`
	MaxTTL       int64    `json:"max_ttl"`
}

// LaunchTokenResponse is the answer of the launch-token routes.
type LaunchTokenResponse struct {
	LaunchToken string       `json:"launch_token"`
	ExpiresAt   string       `json:"expires_at"`
	Policy      LaunchPolicy `json:"policy"`
}

// AppRequest is the body of POST /v1/admin/apps (all fields) and
// PUT /v1/admin/apps/{id} (Scopes and TokenTTL, either optional).
type AppRequest struct {
	Name     string   `json:"name,omitempty"`
	Scopes   []string `json:"scopes,omitempty"`
	TokenTTL *int64   `json:"token_ttl,omitempty"`
}

// AppCredentials is the answer of POST /v1/admin/apps: the only time the
// client secret is shown. Name and Status are empty, as upstream sends them.
type AppCredentials struct {
	AppID        string   `json:"app_id"`
	Name         string   `json:"name"`
	ClientID     string   `json:"client_id"`
	ClientSecret string   `json:"client_secret"`
	Scopes       []string `json:"scopes"`
	TokenTTL     int64    `json:"token_ttl"`
	Status       string   `json:"status"`
}

// AppList is the answer of GET /v1/admin/apps.
type AppList struct {
	Apps  []*App `json:"apps"`
	Total int    `json:"total"`
}

// AppDeregistration is the answer of DELETE /v1/admin/apps/{id}; upstream
// sends the zero values of the other App fields along.
type AppDeregistration struct {
	AppID          string   `json:"app_id"`
	Name           string   `json:"name"`
	ClientID       string   `json:"client_id"`
	Scopes         []string `json:"scopes"`
	TokenTTL       int64    `json:"token_ttl"`
	Status         string   `json:"status"`
	DeregisteredAt string   `json:"deregistered_at"`
}

// The admin API of this product (not upstream's; docs/api.md lists it).

// KeyList is the answer of GET /v1/admin/keys, newest key first.
type KeyList struct {
	Keys []KeyInfo `json:"keys"`
}

// AgentList is the answer of GET /v1/admin/agents.
type AgentList struct {
	Agents []AgentInfo `json:"agents"`
	Total  int         `json:"total"`
	Offset int         `json:"offset"`
	Limit  int         `json:"limit"`
}

// AgentInfo is a registered agent and its live tokens.
type AgentInfo struct {
	AgentID      string      `json:"agent_id"`
	OrchID       string      `json:"orch_id"`
	TaskID       string      `json:"task_id"`
	AppID        string      `json:"app_id,omitempty"`
	Scope        []string    `json:"scope"`
	RegisteredAt string      `json:"registered_at"`
	Tokens       []TokenInfo `json:"tokens"`
}

// TokenInfo is a live token, never the token itself.
type TokenInfo struct {
	JTI       string   `json:"jti"`
	Scope     []string `json:"scope"`
	TaskID    string   `json:"task_id,omitempty"`
	IssuedAt  string   `json:"issued_at"`
	ExpiresAt string   `json:"expires_at"`
	// Depth, Root and Parent describe a delegated token: hops, the root
	// delegator (the target of a chain revocation), the delegator's jti.
	Depth  int    `json:"delegation_depth"`
	Root   string `json:"chain_root,omitempty"`
	Parent string `json:"parent_jti,omitempty"`
}

// AuditVerification is the answer of GET /v1/admin/audit/verify.
type AuditVerification struct {
	Intact   bool        `json:"intact"`
	Verified int64       `json:"verified"`
	HeadID   string      `json:"head_id,omitempty"`
	HeadHash string      `json:"head_hash"`
	Broken   *ChainError `json:"broken,omitempty"`
}

// Status is the answer of GET /v1/admin/status.
type Status struct {
	// Status is "ok", or "degraded" with Problems saying why.
	Status   string         `json:"status"`
	Problems []string       `json:"problems,omitempty"`
	Version  string         `json:"version"`
	Uptime   int64          `json:"uptime"`
	Database StatusDatabase `json:"database"`
	Keys     []KeyInfo      `json:"keys"`
	Audit    StatusAudit    `json:"audit"`
	Stats
	Gateway StatusGateway `json:"gateway"`
}

// StatusGateway is what the gateways (of every replica, and remote ones
// that report usage) decided, summed per result and reason.
type StatusGateway struct {
	LastMinute []DecisionCount `json:"last_minute"`
	LastHour   []DecisionCount `json:"last_hour"`
	// PerMinute is the last hour minute by minute, for a chart.
	PerMinute []DecisionCount `json:"per_minute"`
}

// StatusDatabase describes the database and, for a fleet, how fresh this
// replica's revocation index is.
type StatusDatabase struct {
	DatabaseInfo
	Connected bool `json:"connected"`
	// RevocationsSyncedAgo is the age in seconds of this replica's last
	// complete revocation catch-up (shared databases only).
	RevocationsSyncedAgo *float64 `json:"revocations_synced_ago,omitempty"`
}

// StatusAudit is the chain's length and head.
type StatusAudit struct {
	Events   int64  `json:"events"`
	HeadID   string `json:"head_id,omitempty"`
	HeadHash string `json:"head_hash"`
}

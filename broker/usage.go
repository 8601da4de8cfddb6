package broker

import "time"

// Scope usage: what the gateway saw agents do with their grants. Gateways
// count every allowed decision (and, in report mode, what would have been
// allowed or denied), plus verified agents' scope denials, and flush the
// counts here in batches; operators read granted against used.

// Usage results.
const (
	UsageAllowed    = "allowed"     // enforced and allowed
	UsageDenied     = "denied"      // a verified agent asked for what it does not hold
	UsageWouldAllow = "would_allow" // report mode: would have been allowed
	UsageWouldDeny  = "would_deny"  // report mode: would have been denied
)

// UsageRecord is a count of gateway decisions for one agent, rule and
// required scope within one hour.
type UsageRecord struct {
	// Hour is the start of the hour the decisions fell in (UTC).
	Hour    time.Time `json:"hour"`
	AgentID string    `json:"agent_id"`
	TaskID  string    `json:"task_id,omitempty"`
	OrchID  string    `json:"orch_id,omitempty"`
	// Rule is the route rule as written; Required the scope it asked
	// for; Granted the agent's scope that covered it ("" when denied).
	Rule     string    `json:"rule"`
	Required string    `json:"required"`
	Granted  string    `json:"granted,omitempty"`
	Result   string    `json:"result"`
	Count    int64     `json:"count"`
	First    time.Time `json:"first"`
	Last     time.Time `json:"last"`
}

// DecisionCount is how many decisions of one result and reason a gateway
// took within one minute.
type DecisionCount struct {
	Minute time.Time `json:"minute,omitzero"`
	Result string    `json:"result"` // allow, deny, report
	Reason string    `json:"reason"`
	Count  int64     `json:"count"`
}

// UsageFilter selects usage records; zero fields do not filter.
type UsageFilter struct {
	AgentID, TaskID, OrchID, AppID, LaunchToken string
	// Scope matches records whose required or granted scope is it.
	Scope        string
	Since, Until time.Time
}

// UsageRow is a usage record summed over the filter's time range, with
// the app and launch token its agent registered with.
type UsageRow struct {
	UsageRecord
	AppID       string `json:"app_id,omitempty"`
	LaunchToken string `json:"launch_token,omitempty"`
}

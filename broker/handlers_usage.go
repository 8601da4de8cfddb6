package broker

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// UsageScope is the scope an app's ceiling must hold for the app's token
// to report a remote gateway's usage (exactly, as a granted scope).
const UsageScope = "write:usage:*"

// UsageBatch is the body of POST /v1/usage.
type UsageBatch struct {
	Records   []UsageRecord   `json:"records"`
	Decisions []DecisionCount `json:"decisions,omitempty"`
}

// maxUsageBatch bounds one batch (the body limit bounds its bytes too).
const maxUsageBatch = 5000

var usageResults = []string{UsageAllowed, UsageDenied, UsageWouldAllow, UsageWouldDeny}

// checkBatch refuses a batch that could not have come from a gateway.
func checkBatch(u *UsageBatch) error {
	if len(u.Records)+len(u.Decisions) > maxUsageBatch {
		return fmt.Errorf("at most %d records and decisions per batch", maxUsageBatch)
	}
	for i := range u.Records {
		r := &u.Records[i]
		switch {
		case r.AgentID == "" || r.Rule == "":
			return fmt.Errorf("record %d: agent_id and rule are required", i)
		case r.Count <= 0:
			return fmt.Errorf("record %d: count must be positive", i)
		case !slices.Contains(usageResults, r.Result):
			return fmt.Errorf("record %d: result must be one of %s", i, strings.Join(usageResults, ", "))
		case r.Last.Before(r.First):
			return fmt.Errorf("record %d: last is before first", i)
		}
		if err := scopemap.CheckScope(r.Required); err != nil {
			return fmt.Errorf("record %d: required: %w", i, err)
		}
		if r.Granted != "" {
			if err := scopemap.CheckScope(r.Granted); err != nil {
				return fmt.Errorf("record %d: granted: %w", i, err)
			}
		}
		r.Hour = r.Hour.UTC().Truncate(time.Hour)
	}
	for i, d := range u.Decisions {
		if d.Result == "" || d.Reason == "" || d.Count <= 0 {
			return fmt.Errorf("decision %d: result, reason and a positive count are required", i)
		}
		u.Decisions[i].Minute = d.Minute.UTC().Truncate(time.Minute)
	}
	return nil
}

// handleReportUsage stores a remote gateway's batch: only the token of an
// active app whose ceiling holds UsageScope may send one.
func (b *Broker) handleReportUsage(w http.ResponseWriter, r *http.Request) {
	if why, err := b.appHolds(r.Context(), claimsFrom(r), UsageScope, "report usage"); err != nil {
		b.dbFailed(w, r, "app_lookup", err, "failed to store usage")
		return
	} else if why != "" {
		WriteProblem(w, r, http.StatusForbidden, ErrTypeForbidden, why)
		return
	}
	var u UsageBatch
	if err := json.Unmarshal(requestBody(r), &u); err != nil {
		badJSON(w, r)
		return
	}
	if err := checkBatch(&u); err != nil {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, err.Error())
		return
	}
	if err := b.store.db.AddUsage(r.Context(), u.Records, u.Decisions); err != nil {
		b.dbFailed(w, r, "usage_add", err, "failed to store usage")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// usageQuery reads the report's query parameters; since and until are
// RFC 3339.
func usageQuery(r *http.Request) (UsageQuery, error) {
	v := r.URL.Query()
	var q UsageQuery
	q.AgentID, q.TaskID, q.OrchID, q.AppID = v.Get("agent_id"), v.Get("task_id"), v.Get("orch_id"), v.Get("app_id")
	q.LaunchToken, q.Scope, q.GroupBy, q.Unused = v.Get("launch_token"), v.Get("scope"), v.Get("group_by"), v.Get("unused") == "true"
	for name, dst := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		if s := v.Get(name); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return q, fmt.Errorf("%s: want an RFC 3339 time", name)
			}
			*dst = t
		}
	}
	switch q.GroupBy {
	case "", UsageByAgent, UsageByApp, UsageByLaunchToken:
	default:
		return q, fmt.Errorf("group_by must be %s, %s or %s", UsageByAgent, UsageByApp, UsageByLaunchToken)
	}
	q.Limit, q.Offset = paging(r)
	return q, nil
}

func (b *Broker) handleUsage(w http.ResponseWriter, r *http.Request) {
	q, err := usageQuery(r)
	if err != nil {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, err.Error())
		return
	}
	rep, err := b.UsageReport(r.Context(), q)
	if err != nil {
		b.dbFailed(w, r, "usage_query", err, "failed to query usage")
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

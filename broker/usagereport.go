package broker

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// SuggestMaxIdentifiers: a wildcard grant used with at most this many
// identifiers is suggested as those identifiers; used with more, the
// wildcard is kept, because listing them would break the agent on the next
// new one, and a wildcard that wide is the grant's evident purpose.
const SuggestMaxIdentifiers = 5

// Usage report groupings.
const (
	UsageByAgent       = "agent"
	UsageByApp         = "app"
	UsageByLaunchToken = "launch_token"
)

// UsageReport is the answer of GET /v1/admin/usage: for each agent (or
// app, or launch-token template), its grants against what the gateway saw
// it use.
type UsageReport struct {
	GroupBy string       `json:"group_by"`
	Since   string       `json:"since,omitempty"`
	Until   string       `json:"until,omitempty"`
	Groups  []UsageGroup `json:"groups"`
	Total   int          `json:"total"`
	Offset  int          `json:"offset"`
	Limit   int          `json:"limit"`
}

// UsageGroup is one agent, app or launch-token template.
type UsageGroup struct {
	Kind string `json:"kind"` // agent, app or launch_token
	ID   string `json:"id"`   // agent ID, app ID, or the launch token's hash
	// Name is the app's or the launch token's agent_name.
	Name   string `json:"name,omitempty"`
	AppID  string `json:"app_id,omitempty"`
	TaskID string `json:"task_id,omitempty"`
	OrchID string `json:"orch_id,omitempty"`
	// Agents is how many agents the group holds (apps, launch tokens).
	Agents int          `json:"agents,omitempty"`
	Grants []GrantUsage `json:"grants"`
	// Suggested is the narrowest grant, in the grants' own shape, that
	// covers everything observed: never-used grants dropped, wildcards
	// narrowed to the identifiers seen (SuggestMaxIdentifiers).
	Suggested []string `json:"suggested"`
	// Denied are scopes a verified agent asked for and does not hold;
	// WouldDeny the same in report mode.
	Denied    []DeniedAsk `json:"denied,omitempty"`
	WouldDeny []DeniedAsk `json:"would_deny,omitempty"`
}

// GrantUsage is one granted scope and its use.
type GrantUsage struct {
	Scope     string `json:"scope"`
	Used      bool   `json:"used"`
	Count     int64  `json:"count"`
	FirstUsed string `json:"first_used,omitempty"`
	LastUsed  string `json:"last_used,omitempty"`
	// Identifiers are the identifiers it covered, at most 20 listed.
	Identifiers []string `json:"identifiers,omitempty"`
	// WouldAllow counts report-mode decisions it would have allowed.
	WouldAllow int64 `json:"would_allow,omitempty"`
}

// DeniedAsk is a scope asked for and refused.
type DeniedAsk struct {
	Required string   `json:"required"`
	Count    int64    `json:"count"`
	LastSeen string   `json:"last_seen"`
	Holds    []string `json:"holds"` // what the agent held instead
}

// UsageQuery is what a usage report is asked for.
type UsageQuery struct {
	UsageFilter
	GroupBy       string // UsageByAgent (default), UsageByApp, UsageByLaunchToken
	Unused        bool   // only groups with a grant never used
	Offset, Limit int
}

// maxListedIdentifiers bounds GrantUsage.Identifiers.
const maxListedIdentifiers = 20

// UsageReport builds the report: the grants of every matching group, from
// the database's agents and apps, against the usage recorded in range.
func (b *Broker) UsageReport(ctx context.Context, q UsageQuery) (*UsageReport, error) {
	if q.GroupBy == "" {
		q.GroupBy = UsageByAgent
	}
	rows, err := b.store.db.QueryUsage(ctx, q.UsageFilter)
	if err != nil {
		return nil, err
	}
	agents, _, err := b.store.db.Agents(ctx, AgentFilter{AppID: q.AppID, TaskID: q.TaskID, OrchID: q.OrchID, Now: b.now()})
	if err != nil {
		return nil, err
	}
	groups := map[string]*usageGroupBuild{}
	var order []string
	group := func(id string, mk func() UsageGroup) *usageGroupBuild {
		g := groups[id]
		if g == nil {
			g = &usageGroupBuild{UsageGroup: mk(), holds: map[string][]string{}}
			groups[id] = g
			order = append(order, id)
		}
		return g
	}
	byAgent := map[string]*AgentView{}
	for i := range agents {
		a := &agents[i]
		if q.AgentID != "" && a.ID != q.AgentID || q.LaunchToken != "" && a.LaunchToken != q.LaunchToken {
			continue
		}
		byAgent[a.ID] = a
		g, grants := b.groupOf(ctx, q.GroupBy, a, group)
		if g == nil {
			continue
		}
		g.Agents++
		g.holds[a.ID] = a.Scope
		for _, s := range grants {
			g.grant(s)
		}
	}
	for _, r := range rows {
		a := byAgent[r.AgentID]
		if a == nil {
			continue // an agent outside the filter, or one the gateway saw but this broker never registered
		}
		g, _ := b.groupOf(ctx, q.GroupBy, a, group)
		if g != nil {
			g.add(r)
		}
	}
	report := &UsageReport{GroupBy: q.GroupBy, Groups: []UsageGroup{}, Offset: q.Offset, Limit: q.Limit}
	if !q.Since.IsZero() {
		report.Since = formatTime(q.Since)
	}
	if !q.Until.IsZero() {
		report.Until = formatTime(q.Until)
	}
	var all []UsageGroup
	for _, id := range order {
		g := groups[id].finish()
		if q.Unused && !slices.ContainsFunc(g.Grants, func(u GrantUsage) bool { return !u.Used }) {
			continue
		}
		all = append(all, g)
	}
	report.Total = len(all)
	lo := min(max(q.Offset, 0), len(all))
	hi := len(all)
	if q.Limit > 0 {
		hi = min(lo+q.Limit, len(all))
	}
	report.Groups = append(report.Groups, all[lo:hi]...)
	return report, nil
}

// groupOf returns the group agent a belongs to and the grants that group
// holds, or nil when a belongs to none (an agent of no app, grouped by app).
func (b *Broker) groupOf(ctx context.Context, by string, a *AgentView, group func(string, func() UsageGroup) *usageGroupBuild) (*usageGroupBuild, []string) {
	switch by {
	case UsageByApp:
		if a.AppID == "" {
			return nil, nil
		}
		g := group(a.AppID, func() UsageGroup {
			ug := UsageGroup{Kind: UsageByApp, ID: a.AppID}
			if app, err := b.store.db.App(ctx, a.AppID); err == nil {
				ug.Name = app.Name
				ug.Grants = grantsOf(app.Scopes)
			}
			return ug
		})
		return g, nil
	case UsageByLaunchToken:
		return group(a.LaunchToken, func() UsageGroup {
			return UsageGroup{Kind: UsageByLaunchToken, ID: a.LaunchToken, Name: a.AgentName, AppID: a.AppID, Grants: grantsOf(a.LaunchScope)}
		}), nil
	}
	return group(a.ID, func() UsageGroup {
		return UsageGroup{Kind: UsageByAgent, ID: a.ID, Name: a.AgentName, AppID: a.AppID, TaskID: a.TaskID, OrchID: a.OrchID}
	}), a.Scope
}

func grantsOf(scopes []string) []GrantUsage {
	out := make([]GrantUsage, len(scopes))
	for i, s := range scopes {
		out[i] = GrantUsage{Scope: s}
	}
	return out
}

// usageGroupBuild accumulates one group.
type usageGroupBuild struct {
	UsageGroup
	ids       map[string]map[string]bool // grant → identifiers seen
	first     map[string]time.Time
	holds     map[string][]string // agent → its scopes
	denied    map[string]*DeniedAsk
	wouldDeny map[string]*DeniedAsk
}

func (g *usageGroupBuild) grant(scope string) {
	if !slices.ContainsFunc(g.Grants, func(u GrantUsage) bool { return u.Scope == scope }) {
		g.Grants = append(g.Grants, GrantUsage{Scope: scope})
	}
}

func (g *usageGroupBuild) add(r UsageRow) {
	switch r.Result {
	case UsageDenied, UsageWouldDeny:
		m := &g.denied
		if r.Result == UsageWouldDeny {
			m = &g.wouldDeny
		}
		if *m == nil {
			*m = map[string]*DeniedAsk{}
		}
		d := (*m)[r.Required]
		if d == nil {
			d = &DeniedAsk{Required: r.Required, Holds: g.holds[r.AgentID]}
			(*m)[r.Required] = d
		}
		d.Count += r.Count
		if last := formatTime(r.Last); last > d.LastSeen {
			d.LastSeen = last
		}
		return
	}
	// Allowed (or would be): credit the grant that covered it; an app's or
	// a template's grants cover what the agent's own grant did.
	i := slices.IndexFunc(g.Grants, func(u GrantUsage) bool { return u.Scope == r.Granted })
	if i < 0 {
		i = slices.IndexFunc(g.Grants, func(u GrantUsage) bool { return scopemap.Covers([]string{u.Scope}, r.Required) })
	}
	if i < 0 {
		g.Grants = append(g.Grants, GrantUsage{Scope: r.Granted})
		i = len(g.Grants) - 1
	}
	u := &g.Grants[i]
	if r.Result == UsageWouldAllow {
		u.WouldAllow += r.Count
		return
	}
	u.Used = true
	u.Count += r.Count
	if g.ids == nil {
		g.ids, g.first = map[string]map[string]bool{}, map[string]time.Time{}
	}
	if g.ids[u.Scope] == nil {
		g.ids[u.Scope] = map[string]bool{}
	}
	if sc, ok := scopemap.ParseScope(r.Required); ok {
		g.ids[u.Scope][sc.Identifier] = true
	}
	if f, ok := g.first[u.Scope]; !ok || r.First.Before(f) {
		g.first[u.Scope] = r.First
		u.FirstUsed = formatTime(r.First)
	}
	if last := formatTime(r.Last); last > u.LastUsed {
		u.LastUsed = last
	}
}

// finish sorts what was seen and computes the suggested grant.
func (g *usageGroupBuild) finish() UsageGroup {
	out := g.UsageGroup
	out.Suggested = []string{}
	for i := range out.Grants {
		u := &out.Grants[i]
		ids := make([]string, 0, len(g.ids[u.Scope]))
		for id := range g.ids[u.Scope] {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		if len(ids) > maxListedIdentifiers {
			u.Identifiers = ids[:maxListedIdentifiers]
		} else if len(ids) > 0 {
			u.Identifiers = ids
		}
		if !u.Used {
			continue
		}
		sc, ok := scopemap.ParseScope(u.Scope)
		if !ok || sc.Identifier != scopemap.Wildcard || len(ids) > SuggestMaxIdentifiers || slices.Contains(ids, scopemap.Wildcard) {
			out.Suggested = append(out.Suggested, u.Scope)
			continue
		}
		for _, id := range ids {
			out.Suggested = append(out.Suggested, sc.Action+":"+sc.Resource+":"+id)
		}
	}
	slices.Sort(out.Suggested)
	out.Suggested = slices.Compact(out.Suggested)
	out.Denied, out.WouldDeny = sortedAsks(g.denied), sortedAsks(g.wouldDeny)
	return out
}

func sortedAsks(m map[string]*DeniedAsk) []DeniedAsk {
	out := make([]DeniedAsk, 0, len(m))
	for _, d := range m {
		out = append(out, *d)
	}
	slices.SortFunc(out, func(a, b DeniedAsk) int { return cmp.Compare(a.Required, b.Required) })
	if len(out) == 0 {
		return nil
	}
	return out
}

package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// The operator routes of this product's broker (not upstream's): status,
// keys, agents, server-side audit verification and scope usage. They need
// an admin token (LoginAdmin).

// Status reads GET /v1/admin/status.
func (c *Client) Status(ctx context.Context) (*broker.Status, error) {
	var out broker.Status
	err := c.do(ctx, call{op: "status", method: http.MethodGet, path: "/v1/admin/status", bearer: true, status: http.StatusOK}, &out)
	return ok(&out, err)
}

// Keys lists the broker's key set, newest first.
func (c *Client) Keys(ctx context.Context) (*broker.KeyList, error) {
	var out broker.KeyList
	err := c.do(ctx, call{op: "keys", method: http.MethodGet, path: "/v1/admin/keys", bearer: true, status: http.StatusOK}, &out)
	return ok(&out, err)
}

// RotateKey makes a new active signing key.
func (c *Client) RotateKey(ctx context.Context) (*broker.KeyInfo, error) {
	var out broker.KeyInfo
	err := c.do(ctx, call{op: "rotate key", method: http.MethodPost, path: "/v1/admin/keys/rotate", bearer: true, status: http.StatusOK}, &out)
	return ok(&out, err)
}

// AgentQuery selects agents; zero fields do not filter.
type AgentQuery struct {
	Query                 string // a substring of the agent ID
	TaskID, OrchID, AppID string
	// All includes agents without a live token.
	All           bool
	Limit, Offset int
}

// Agents lists registered agents with their live tokens, newest first.
func (c *Client) Agents(ctx context.Context, q AgentQuery) (*broker.AgentList, error) {
	v := url.Values{}
	for k, s := range map[string]string{"q": q.Query, "task_id": q.TaskID, "orch_id": q.OrchID, "app_id": q.AppID} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.All {
		v.Set("live", "false")
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Offset > 0 {
		v.Set("offset", strconv.Itoa(q.Offset))
	}
	var out broker.AgentList
	err := c.do(ctx, call{op: "agents", method: http.MethodGet, path: "/v1/admin/agents", query: v, bearer: true,
		status: http.StatusOK, limit: MaxListResponseBytes}, &out)
	return ok(&out, err)
}

// VerifyAudit asks the broker to recompute its audit chain.
func (c *Client) VerifyAudit(ctx context.Context) (*broker.AuditVerification, error) {
	var out broker.AuditVerification
	err := c.do(ctx, call{op: "verify audit", method: http.MethodGet, path: "/v1/admin/audit/verify", bearer: true, status: http.StatusOK}, &out)
	return ok(&out, err)
}

// UsageQuery selects a scope-usage report; zero fields do not filter.
type UsageQuery struct {
	AgentID, TaskID, OrchID, AppID, LaunchToken, Scope string
	Since, Until                                       time.Time
	// GroupBy is broker.UsageByAgent (default), UsageByApp or
	// UsageByLaunchToken.
	GroupBy string
	// Unused keeps only groups with a grant never used.
	Unused        bool
	Limit, Offset int
}

// Usage reads a scope-usage report: grants against what the gateways saw.
func (c *Client) Usage(ctx context.Context, q UsageQuery) (*broker.UsageReport, error) {
	v := url.Values{}
	for k, s := range map[string]string{"agent_id": q.AgentID, "task_id": q.TaskID, "orch_id": q.OrchID, "app_id": q.AppID,
		"launch_token": q.LaunchToken, "scope": q.Scope, "group_by": q.GroupBy} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Unused {
		v.Set("unused", "true")
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Offset > 0 {
		v.Set("offset", strconv.Itoa(q.Offset))
	}
	var out broker.UsageReport
	err := c.do(ctx, call{op: "usage", method: http.MethodGet, path: "/v1/admin/usage", query: v, bearer: true,
		status: http.StatusOK, limit: MaxListResponseBytes}, &out)
	return ok(&out, err)
}

// ReportUsage sends a remote gateway's usage batch (POST /v1/usage), as an
// app whose ceiling holds broker.UsageScope.
func (c *Client) ReportUsage(ctx context.Context, batch broker.UsageBatch) error {
	return c.do(ctx, call{op: "report usage", method: http.MethodPost, path: "/v1/usage", body: batch, bearer: true,
		status: http.StatusNoContent}, nil)
}

package client

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// usageChunk bounds one POST /v1/usage, well inside the broker's limit.
const usageChunk = 1000

// UsageReporter is a broker.UsageSink for a gateway that does not hold the
// broker's database: it sends what its recorder flushes to POST /v1/usage
// as an app whose ceiling holds broker.UsageScope, logging in with the
// app's credentials first and again whenever the app token is refused.
type UsageReporter struct {
	c                      *Client
	clientID, clientSecret string

	mu  sync.Mutex
	app *Client // logged in, or nil
}

// NewUsageReporter reports through c as the app with these credentials.
func NewUsageReporter(c *Client, clientID, clientSecret string) *UsageReporter {
	return &UsageReporter{c: c, clientID: clientID, clientSecret: clientSecret}
}

var _ broker.UsageSink = (*UsageReporter)(nil)

// AddUsage implements broker.UsageSink, in batches of at most 1,000
// entries. On error the recorder keeps what was not acknowledged and
// offers it again with its next flush.
func (u *UsageReporter) AddUsage(ctx context.Context, records []broker.UsageRecord, decisions []broker.DecisionCount) error {
	for len(records) > 0 || len(decisions) > 0 {
		var batch broker.UsageBatch
		n := min(len(records), usageChunk)
		batch.Records, records = records[:n], records[n:]
		m := min(len(decisions), usageChunk-n)
		batch.Decisions, decisions = decisions[:m], decisions[m:]
		if err := u.send(ctx, batch); err != nil {
			return err // names the call already
		}
	}
	return nil
}

func (u *UsageReporter) send(ctx context.Context, batch broker.UsageBatch) error {
	for attempt := 0; ; attempt++ {
		app, err := u.login(ctx)
		if err != nil {
			return err
		}
		err = app.ReportUsage(ctx, batch)
		var pe *Error
		if attempt == 0 && errors.As(err, &pe) && pe.Status == http.StatusUnauthorized {
			u.forget(app) // expired or revoked: log in again, once
			continue
		}
		return err
	}
}

func (u *UsageReporter) login(ctx context.Context) (*Client, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.app != nil {
		return u.app, nil
	}
	app, err := u.c.LoginApp(ctx, u.clientID, u.clientSecret)
	if err != nil {
		return nil, err
	}
	u.app = app
	return app, nil
}

func (u *UsageReporter) forget(app *Client) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.app == app {
		u.app = nil
	}
}

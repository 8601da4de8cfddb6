package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
	"golang.org/x/crypto/bcrypt"
)

// adminScopes are the scopes of every admin token, in upstream's order.
var adminScopes = []string{"admin:launch-tokens:*", "admin:revoke:*", "admin:audit:*"}

// appScopes are the fixed scopes of every app token.
var appScopes = []string{"app:launch-tokens:*", "app:agents:*", "app:audit:read"}

func (b *Broker) handleAdminAuth(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		badJSON(w, r)
		return
	}
	var old struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	if json.Unmarshal(body, &old) == nil && (old.ClientID != "" || old.ClientSecret != "") {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest,
			`Admin auth format changed. Use {"secret": "..."} instead of client_id/client_secret`)
		return
	}
	var req AdminAuthRequest
	if json.Unmarshal(body, &req) != nil { // strict: trailing bytes are an error here
		badJSON(w, r)
		return
	}
	if req.Secret == "" {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "secret is required")
		return
	}
	if bcrypt.CompareHashAndPassword(b.adminHash, []byte(req.Secret)) != nil {
		b.obs.AdminAuth(false)
		b.audit(r.Context(), Event{EventType: EventAdminAuthFailed, Detail: "failed admin authentication attempt", Outcome: OutcomeDenied})
		WriteProblem(w, r, http.StatusUnauthorized, ErrTypeUnauthorized, "invalid credentials")
		return
	}
	b.obs.AdminAuth(true)
	ttl := b.ttl(int64(b.cfg.AdminTokenTTL / time.Second))
	tok, _, err := b.issueRecorded(r.Context(), Claims{Sub: "admin", Aud: b.audience(), Scope: adminScopes}, ttl, "")
	if err != nil {
		b.dbFailed(w, r, "token_record", err, "failed to issue token")
		return
	}
	b.audit(r.Context(), Event{EventType: EventAdminAuth, Detail: "admin authenticated as admin", Outcome: OutcomeSuccess})
	writeJSON(w, http.StatusOK, AuthResponse{tok, ttl, "Bearer"})
}

// handleLaunchToken serves both launch-token routes. Callers with an app
// subject are held to their app's current ceiling; on the app route only an
// active app's own token is accepted (D5).
func (b *Broker) handleLaunchToken(w http.ResponseWriter, r *http.Request) {
	c := claimsFrom(r)
	var req LaunchTokenRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	if scopesRefused(w, r, req.AllowedScope) {
		return
	}
	ctx := r.Context()
	appID, isApp := strings.CutPrefix(c.Sub, "app:")
	if r.URL.Path == "/v1/app/launch-tokens" && !isApp {
		WriteProblem(w, r, http.StatusForbidden, ErrTypeForbidden, "app not found")
		return
	}
	if isApp {
		app, err := b.store.db.App(ctx, appID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			b.dbFailed(w, r, "app_lookup", err, "failed to create launch token")
			return
		}
		if err != nil || app.Status != AppActive {
			WriteProblem(w, r, http.StatusForbidden, ErrTypeForbidden, "app not found")
			return
		}
		if !scopemap.Subset(req.AllowedScope, app.Scopes) {
			b.audit(ctx, Event{
				EventType: EventScopeCeilingExceeded, AgentID: c.Sub,
				Detail:  fmt.Sprintf("app=%s requested=%v ceiling=%v", appID, req.AllowedScope, app.Scopes),
				Outcome: OutcomeDenied,
			})
			WriteProblem(w, r, http.StatusForbidden, ErrTypeForbidden,
				"requested scopes exceed app ceiling; allowed: ["+strings.Join(app.Scopes, " ")+"]")
			return
		}
	} else {
		appID = ""
	}
	deny := func(msg string) {
		b.audit(ctx, Event{
			EventType: EventLaunchTokenDenied, AgentID: c.Sub,
			Detail:  "launch token denied for agent=" + req.AgentName + " by=" + c.Sub + " reason=" + msg,
			Outcome: OutcomeDenied,
		})
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, msg)
	}
	if req.AgentName == "" {
		deny("agent_name is required")
		return
	}
	if len(req.AllowedScope) == 0 {
		deny("allowed_scope must not be empty")
		return
	}
	if req.TTL <= 0 {
		req.TTL = defaultLaunchTTL
	}
	if req.MaxTTL <= 0 {
		req.MaxTTL = defaultLaunchMaxTTL
	}
	now := b.now()
	lt := &LaunchToken{
		AgentName: req.AgentName, AllowedScope: req.AllowedScope, MaxTTL: req.MaxTTL,
		SingleUse: req.SingleUse == nil || *req.SingleUse, CreatedAt: now.UTC(),
		ExpiresAt: now.Add(time.Duration(req.TTL) * time.Second).UTC(), CreatedBy: c.Sub, AppID: appID,
	}
	tok, err := randomHex(32)
	if err != nil {
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "failed to create launch token")
		return
	}
	if err := b.store.db.CreateLaunchToken(ctx, LaunchTokenHash(tok), lt); err != nil {
		b.dbFailed(w, r, "launch_token_create", err, "failed to create launch token")
		return
	}
	detail := fmt.Sprintf("launch token issued for agent=%s scope=%v max_ttl=%d created_by=%s", lt.AgentName, lt.AllowedScope, lt.MaxTTL, lt.CreatedBy)
	if appID != "" {
		detail += " app_id=" + appID
	}
	b.audit(ctx, Event{EventType: EventLaunchTokenIssued, Detail: detail, Outcome: OutcomeSuccess})
	b.obs.LaunchTokenCreated()
	writeJSON(w, http.StatusCreated, LaunchTokenResponse{tok, WholeSeconds(lt.ExpiresAt), LaunchPolicy{lt.AllowedScope, lt.MaxTTL}})
}

// dummySecretHash is compared against when a client_id is unknown, so the
// answer takes as long as for a wrong secret and does not reveal which
// client IDs exist.
var dummySecretHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("caddy-agentwrit timing equalizer"), bcryptCost)
	return h
})

func (b *Broker) handleAppAuth(w http.ResponseWriter, r *http.Request) {
	var req AppAuthRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	if req.ClientID == "" || req.ClientSecret == "" {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "client_id and client_secret are required")
		return
	}
	ctx := r.Context()
	deny := func(reason string) {
		b.audit(ctx, Event{EventType: EventAppAuthFailed, Detail: "client_id=" + req.ClientID + " reason=" + reason, Outcome: OutcomeDenied})
		WriteProblem(w, r, http.StatusUnauthorized, ErrTypeUnauthorized, "Authentication failed")
	}
	app, err := b.store.db.AppByClientID(ctx, req.ClientID)
	switch {
	case errors.Is(err, ErrNotFound):
		_ = bcrypt.CompareHashAndPassword(dummySecretHash(), []byte(req.ClientSecret))
		deny("unknown_client_id")
		return
	case err != nil:
		b.dbFailed(w, r, "app_lookup", err, "authentication error")
		return
	case app.Status != AppActive:
		_ = bcrypt.CompareHashAndPassword(dummySecretHash(), []byte(req.ClientSecret))
		deny("app_inactive")
		return
	}
	if bcrypt.CompareHashAndPassword([]byte(app.SecretHash), []byte(req.ClientSecret)) != nil {
		deny("wrong_secret")
		return
	}
	ttl := b.ttl(app.TokenTTL)
	tok, _, err := b.issueRecorded(ctx, Claims{Sub: "app:" + app.AppID, Aud: b.audience(), Scope: appScopes}, ttl, "")
	if err != nil {
		b.dbFailed(w, r, "token_record", err, "authentication error")
		return
	}
	b.audit(ctx, Event{EventType: EventAppAuthenticated, Detail: "client_id=" + app.ClientID + " app_id=" + app.AppID, Outcome: OutcomeSuccess})
	writeJSON(w, http.StatusOK, AppAuthResponse{tok, ttl, "Bearer", appScopes})
}

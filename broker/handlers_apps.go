package broker

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
	"golang.org/x/crypto/bcrypt"
)

func invalidTTL(w http.ResponseWriter, r *http.Request, ttl int64) {
	WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidTTL,
		fmt.Sprintf("invalid token TTL: must be between %d and %d seconds, got %d", minAppTokenTTL, maxAppTokenTTL, ttl))
}

// scopesRefused answers 400 naming the first scope of list outside the
// scope grammar, and reports whether it did. Every route that takes scopes
// calls it before it changes anything.
func scopesRefused(w http.ResponseWriter, r *http.Request, list []string) bool {
	err := scopemap.CheckScopes(list)
	if err == nil {
		return false
	}
	WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "invalid scope format: use action:resource:identifier: "+err.Error())
	return true
}

func (b *Broker) handleCreateApp(w http.ResponseWriter, r *http.Request) {
	var req AppRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	switch {
	case req.Name == "":
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "name is required")
		return
	case len(req.Scopes) == 0:
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "scopes must not be empty")
		return
	case req.TokenTTL != nil && *req.TokenTTL <= 0:
		invalidTTL(w, r, *req.TokenTTL)
		return
	case len(req.Name) > 64 || !appNameRE.MatchString(req.Name):
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "invalid app name: must be lowercase letters, digits, and hyphens")
		return
	case scopesRefused(w, r, req.Scopes):
		return
	case req.TokenTTL != nil && (*req.TokenTTL < minAppTokenTTL || *req.TokenTTL > maxAppTokenTTL):
		invalidTTL(w, r, *req.TokenTTL)
		return
	}
	ttl := int64(b.cfg.AppTokenTTL / time.Second)
	if req.TokenTTL != nil {
		ttl = *req.TokenTTL
	}
	suffix, err1 := randomHex(3)
	cid, err2 := randomHex(6)
	secret, err3 := randomHex(32)
	if err := errors.Join(err1, err2, err3); err != nil {
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "failed to register app")
		return
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), bcryptCost)
	if err != nil {
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "failed to register app")
		return
	}
	ts := WholeSeconds(b.now())
	app := &App{
		AppID: "app-" + req.Name + "-" + suffix, Name: req.Name, ClientID: clientIDPrefix(req.Name) + "-" + cid,
		Scopes: req.Scopes, TokenTTL: ttl, Status: AppActive, CreatedAt: ts, UpdatedAt: ts,
		SecretHash: string(hash), CreatedBy: claimsFrom(r).Sub,
	}
	if err := b.store.db.InsertApp(r.Context(), app); err != nil {
		if errors.Is(err, ErrConflict) { // D2
			WriteProblem(w, r, http.StatusConflict, ErrTypeConflict, "app name already registered: "+req.Name)
			return
		}
		b.dbFailed(w, r, "app_register", err, "failed to register app")
		return
	}
	b.audit(r.Context(), Event{
		EventType: EventAppRegistered, Outcome: OutcomeSuccess,
		Detail: fmt.Sprintf("app=%s client_id=%s scopes=%v token_ttl=%d", app.Name, app.ClientID, app.Scopes, app.TokenTTL),
	})
	// name and status are empty in upstream's 201 body; clients may rely on it.
	writeJSON(w, http.StatusCreated, AppCredentials{app.AppID, "", app.ClientID, secret, app.Scopes, app.TokenTTL, ""})
}

func (b *Broker) handleListApps(w http.ResponseWriter, r *http.Request) {
	apps, err := b.store.db.Apps(r.Context())
	if err != nil {
		b.dbFailed(w, r, "app_list", err, "failed to list apps")
		return
	}
	writeJSON(w, http.StatusOK, AppList{apps, len(apps)})
}

// appOr404 loads the app named by the {id} path value.
func (b *Broker) appOr404(w http.ResponseWriter, r *http.Request) *App {
	app, err := b.store.db.App(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, ErrNotFound):
		WriteProblem(w, r, http.StatusNotFound, ErrTypeNotFound, "app not found")
		return nil
	case err != nil:
		b.dbFailed(w, r, "app_get", err, "failed to get app")
		return nil
	}
	return app
}

func (b *Broker) handleGetApp(w http.ResponseWriter, r *http.Request) {
	if app := b.appOr404(w, r); app != nil {
		writeJSON(w, http.StatusOK, app)
	}
}

// handleUpdateApp validates everything before changing anything (D8).
func (b *Broker) handleUpdateApp(w http.ResponseWriter, r *http.Request) {
	var req AppRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	if len(req.Scopes) == 0 {
		req.Scopes = nil
	}
	switch {
	case req.Scopes == nil && req.TokenTTL == nil:
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "at least one of scopes or token_ttl must be provided")
		return
	case scopesRefused(w, r, req.Scopes):
		return
	}
	// Upstream's error order: with scopes, an unknown app is reported before
	// a bad TTL; without, the TTL is checked first. Nothing changes until
	// every check has passed.
	var old *App
	if req.Scopes != nil {
		if old = b.appOr404(w, r); old == nil {
			return
		}
	}
	if req.TokenTTL != nil && (*req.TokenTTL < minAppTokenTTL || *req.TokenTTL > maxAppTokenTTL) {
		invalidTTL(w, r, *req.TokenTTL)
		return
	}
	if old == nil {
		if old = b.appOr404(w, r); old == nil {
			return
		}
	}
	if err := b.store.db.UpdateApp(r.Context(), old.AppID, req.Scopes, req.TokenTTL, b.now()); err != nil {
		b.dbFailed(w, r, "app_update", err, "failed to update app")
		return
	}
	by := claimsFrom(r).Sub
	if req.Scopes != nil {
		b.audit(r.Context(), Event{EventType: EventAppUpdated, Outcome: OutcomeSuccess,
			Detail: fmt.Sprintf("app_id=%s scopes=%v updated_by=%s", old.AppID, req.Scopes, by)})
	}
	if req.TokenTTL != nil {
		b.audit(r.Context(), Event{EventType: EventAppUpdated, Outcome: OutcomeSuccess,
			Detail: fmt.Sprintf("app_id=%s token_ttl=%d->%d updated_by=%s", old.AppID, old.TokenTTL, *req.TokenTTL, by)})
	}
	b.handleGetApp(w, r)
}

// handleDeleteApp deactivates the app and takes its powers away (D7): its
// own tokens are revoked by subject and its unused launch tokens dropped.
// Agents it launched keep their tokens until they expire.
func (b *Broker) handleDeleteApp(w http.ResponseWriter, r *http.Request) {
	app := b.appOr404(w, r)
	if app == nil {
		return
	}
	ctx := r.Context()
	now := b.now()
	rev, err := b.store.db.DeregisterApp(ctx, app.AppID, now)
	if err != nil {
		b.dbFailed(w, r, "app_deregister", err, "failed to deregister app")
		return
	}
	b.store.added(rev)
	b.audit(ctx, Event{EventType: EventAppDeregistered, Outcome: OutcomeSuccess,
		Detail: "app_id=" + app.AppID + " name=" + app.Name + " deregistered_by=" + claimsFrom(r).Sub})
	writeJSON(w, http.StatusOK, AppDeregistration{AppID: app.AppID, Status: AppInactive, DeregisteredAt: WholeSeconds(now)})
}

// Package console is the operator console of caddy-agentwrit: a static
// browser application (embedded, no build step, no third-party requests)
// and a net/http handler that serves it at the site root and forwards the
// few broker API routes it calls to a broker, embedded or remote.
//
// The handler knows nothing of Caddy; caddymodule wraps it as the
// agentwrit_console directive.
package console

import (
	"bytes"
	"embed"
	"encoding/json"
	"io/fs"
	"mime"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// Security headers set on every response of the console, API answers
// included. The policy allows nothing but this origin: no inline script or
// style, no framing, no third-party connections.
const (
	ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

// setSecurityHeaders sets the headers every console response carries.
func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// apiRoutes are the broker routes the console calls, by method and path.
// Nothing else is forwarded: the console is no general proxy to the broker.
var apiRoutes = map[string]string{
	"/v1/admin/auth":         http.MethodPost,
	"/v1/admin/status":       http.MethodGet,
	"/v1/admin/agents":       http.MethodGet,
	"/v1/admin/audit/verify": http.MethodGet,
	"/v1/admin/usage":        http.MethodGet,
	"/v1/audit/events":       http.MethodGet,
	"/v1/revoke":             http.MethodPost,
}

// Handler serves the console's assets and forwards its API calls.
type Handler struct {
	api   http.Handler
	files fs.FS
}

// New returns a console that forwards API calls to api, which applies the
// broker's own authorization (the console adds none and removes none: the
// Authorization header goes through as sent).
func New(api http.Handler) *Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has assets/
	}
	return &Handler{api: api, files: sub}
}

// Remote returns a handler forwarding requests to the broker at base (its
// scheme and host; a path prefix is kept in front of the request's path).
func Remote(base *url.URL) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(base)
		},
		ModifyResponse: func(resp *http.Response) error {
			// The remote broker's headers do not weaken the console's.
			setSecurityHeaders(resp.Header)
			resp.Header.Set("Cache-Control", "no-store")
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) {
			problem(w, http.StatusBadGateway, "the broker cannot be reached")
		},
	}
}

// ServeHTTP serves the page, an asset, or an API answer; anything else is 404.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w.Header())
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		h.serveAPI(w, r)
		return
	}
	h.serveAsset(w, r)
}

func (h *Handler) serveAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	method, ok := apiRoutes[r.URL.Path]
	switch {
	case !ok:
		problem(w, http.StatusNotFound, "not a console route")
	case r.Method != method:
		w.Header().Set("Allow", method)
		problem(w, http.StatusMethodNotAllowed, "method not allowed")
	default:
		h.api.ServeHTTP(w, r)
	}
}

func (h *Handler) serveAsset(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == "" {
		name = "index.html"
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// fs.ValidPath refuses "..", empty elements and trailing slashes, so
	// no path climbs out of the embedded tree or lists a directory.
	if !fs.ValidPath(name) {
		http.NotFound(w, r)
		return
	}
	body, err := fs.ReadFile(h.files, name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ctype)
	// Assets change with the binary; revalidate rather than cache stale
	// code next to a new API.
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, startTime, bytes.NewReader(body))
}

// problem writes an RFC 9457 problem answer, like the broker's.
func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail,
	})
}

// startTime is the Last-Modified of every asset: they are fixed at build.
var startTime = time.Now()

package scopemap

import "strings"

// Caddy's Caddyfile adapter rewrites placeholder shorthands in every token
// before a directive's parser sees it (caddyconfig/httpcaddyfile/shorthands.go
// in Caddy v2.11), so a pattern written as "/files/{file}" reaches ParseRule
// as "/files/{http.request.uri.path.file}". These tables map the rewritten
// form back to what the operator typed, for error messages only: we never
// guess what was meant.

// shorthandExact maps a full placeholder key to its shorthand.
var shorthandExact = map[string]string{
	"http.request.host":                              "host",
	"http.request.hostport":                          "hostport",
	"http.request.port":                              "port",
	"http.request.orig_method":                       "orig_method",
	"http.request.orig_uri":                          "orig_uri",
	"http.request.orig_uri.path":                     "orig_path",
	"http.request.orig_uri.path.dir":                 "orig_dir",
	"http.request.orig_uri.path.file":                "orig_file",
	"http.request.orig_uri.query":                    "orig_query",
	"http.request.orig_uri.prefixed_query":           "orig_?query",
	"http.request.method":                            "method",
	"http.request.uri":                               "uri",
	"http.request.uri_escaped":                       "%uri",
	"http.request.uri.path":                          "path",
	"http.request.uri.path_escaped":                  "%path",
	"http.request.uri.path.dir":                      "dir",
	"http.request.uri.path.file":                     "file",
	"http.request.uri.query":                         "query",
	"http.request.uri.query_escaped":                 "%query",
	"http.request.uri.prefixed_query":                "?query",
	"http.request.remote":                            "remote",
	"http.request.remote.host":                       "remote_host",
	"http.request.remote.port":                       "remote_port",
	"http.request.scheme":                            "scheme",
	"http.request.uuid":                              "uuid",
	"http.request.tls.cipher_suite":                  "tls_cipher",
	"http.request.tls.version":                       "tls_version",
	"http.request.tls.client.fingerprint":            "tls_client_fingerprint",
	"http.request.tls.client.issuer":                 "tls_client_issuer",
	"http.request.tls.client.serial":                 "tls_client_serial",
	"http.request.tls.client.subject":                "tls_client_subject",
	"http.request.tls.client.certificate_pem":        "tls_client_certificate_pem",
	"http.request.tls.client.certificate_der_base64": "tls_client_certificate_der_base64",
	"http.reverse_proxy.upstream.hostport":           "upstream_hostport",
	"http.vars.client_ip":                            "client_ip",
}

// shorthandPrefixes maps the expansion of Caddy's regexp shorthands
// ({header.X}, {path.N}, {re.X}, ...) back to their prefix. Longer prefixes
// come first so {file.N} is not reported as {path.file.N}.
var shorthandPrefixes = [...]struct{ full, short string }{
	{"http.request.uri.path.file.", "file."},
	{"http.request.host.labels.", "labels."},
	{"http.request.uri.path.", "path."},
	{"http.request.uri.query.", "query."},
	{"http.request.header.", "header."},
	{"http.request.cookie.", "cookie."},
	{"http.matchers.file.", "file_match."},
	{"http.reverse_proxy.", "rp."},
	{"http.intercept.", "resp."},
	{"http.regexp.", "re."},
	{"http.error.", "err."},
	{"http.vars.", "vars."},
}

// shorthandFor returns the Caddy shorthand (with braces) that Caddy rewrites
// to the placeholder key, or "" if key is not such an expansion.
func shorthandFor(key string) string {
	if s, ok := shorthandExact[key]; ok {
		return "{" + s + "}"
	}
	for _, p := range shorthandPrefixes {
		if rest, ok := strings.CutPrefix(key, p.full); ok {
			return "{" + p.short + rest + "}"
		}
	}
	return ""
}

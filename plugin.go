// Package caddyagentwrit is the import path xcaddy builds with
// (`xcaddy build --with github.com/caddy-agentwrit/caddy-agentwrit`): it
// registers the AgentWrit Caddy modules, which live in caddymodule.
package caddyagentwrit

import _ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"

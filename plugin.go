// Package caddyagentwrit is the import path xcaddy builds with
// (`xcaddy build --with github.com/caddy-agentwrit/caddy-agentwrit`): it
// registers the AgentWrit Caddy modules (package caddymodule) and the
// `caddy agentwrit` command (package caddymodule/cli).
package caddyagentwrit

import (
	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"
	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule/cli"
)

// Command caddy-agentwrit is Caddy with its standard modules and the
// AgentWrit plugin, exactly what `xcaddy build --with` this module produces.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"
	_ "github.com/caddy-agentwrit/caddy-agentwrit/caddymodule/cli"
)

func main() {
	caddycmd.Main()
}

// Build module for the Caddy the router tests run: Caddy's own cmd/caddy main with its standard
// modules, nothing added. See ../build.sh.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}

#!/usr/bin/env bash
# Builds (once per machine) the Caddy 2.11 the `bytes_read` test runs against: Caddy's own main (main.go, the
# standard modules, nothing added) at the version go.mod requires, from the Go module proxy. Debian's
# caddy (2.6.2) logs no `bytes_read` in its access log, so a chunked request counts 0 request bytes
# there; that test wants a newer one (docs/network.md, "Which Caddy").
#
# Built as is: no patch. (Caddy built with Go 1.23 or later closes, unanswered, a request it reads on a
# connection after its old server began shutting down at a configuration load, golang/go#65805; so
# the router tests that count failed requests across reloads run Debian's 2.6.2, built with Go 1.19,
# and only the test of `bytes_read` runs this one: docs/network.md, "Which Caddy".)
#
# The binary goes OUTSIDE the clone, in
#   ${CTRLPLANE_CADDY_CACHE:-/var/cache/ctrlplane/caddy}/<caddy version>/caddy
# and a finished build is reused (a `.complete` stamp names what was built).
# Usage: tools/caddy/build.sh [--print-dir]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module=github.com/caddyserver/caddy/v2
version="$(awk -v m="$module" '($1 == m && $2 ~ /^v/) {print $2} ($1 == "require" && $2 == m) {print $3}' \
  "$here/go.mod" | head -n1)"
if [[ -z "$version" ]]; then
  echo "tools/caddy/build.sh: cannot read Caddy's version from go.mod" >&2
  exit 1
fi
cache="${CTRLPLANE_CADDY_CACHE:-/var/cache/ctrlplane/caddy}/$version"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$cache"; exit 0; fi
stamp="caddy $version"
if [[ -f "$cache/.complete" && "$(cat "$cache/.complete")" == "$stamp" && -x "$cache/caddy" ]]; then
  echo "$stamp already in $cache"
  exit 0
fi
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
mkdir -p "$cache"
rm -f "$cache/.complete"
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath"
# nice: the machine's cores are shared; a build must not starve the test runs of others.
(cd "$here" && nice -n 15 "$go" build -o "$cache/caddy.tmp" .)
mv -f "$cache/caddy.tmp" "$cache/caddy"
echo "$stamp" >"$cache/.complete"
echo "built $stamp into $cache in $(( $(date +%s) - start ))s"

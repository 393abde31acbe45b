#!/usr/bin/env bash
# Builds (once per machine) the Caddy the router tests run against: Caddy's own main (main.go, the
# standard modules, nothing added) at the version go.mod requires, from the Go module proxy. Debian's
# caddy (2.6.2) logs no `bytes_read` in its access log, so a chunked request counts 0 request bytes
# there; the tests want the newer one (docs/network.md, "Which Caddy").
#
# One change to Go's net/http, applied at build time with `go build -overlay` (the machine's Go
# source is not touched): since Go 1.23 (golang/go#65805) a server that has begun shutting down
# closes a connection whose request it reads after that moment, without an answer. Caddy shuts its
# old server down at every configuration load, so a client whose new connection the old server had
# just accepted was "disconnected without a response" (tests/network/test_caddy_reload.py: 54 to 99
# of about 2,000 requests over 120 loads failed; none with the patch). The patch drops that early
# return, as Go did before 1.23 and so as Debian's 2.6.2 (built with Go 1.19) does: the request is
# answered (with `Connection: close`) and Shutdown waits for it. The build fails if the lines it
# removes are not there (a newer Go: look again).
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
stamp="caddy $version, net/http answering requests read during shutdown"
if [[ -f "$cache/.complete" && "$(cat "$cache/.complete")" == "$stamp" && -x "$cache/caddy" ]]; then
  echo "$stamp already in $cache"
  exit 0
fi
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
mkdir -p "$cache"
rm -f "$cache/.complete"
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath"
# net/http's server.go without the early return (see above), handed to go build as an overlay.
goroot="$(cd "$here" && "$go" env GOROOT)"
original="$goroot/src/net/http/server.go"
patched="$cache/net-http-server.go"
awk '
  /^\t\t\tc\.setState\(c\.rwc, StateActive, runHooks\)$/ { active = NR }
  active && NR == active + 2 && /^\t\tif c\.server\.shuttingDown\(\) \{$/ { skip = 3; removed++ }
  skip { skip--; next }
  { print }
  END { if (removed != 1) exit 1 }
' "$original" >"$patched" || {
  echo "tools/caddy/build.sh: $original lacks the shutdown check this build removes" >&2
  exit 1
}
printf '{"Replace": {"%s": "%s"}}\n' "$original" "$patched" >"$cache/overlay.json"
# nice: the machine's cores are shared; a build must not starve the test runs of others.
(cd "$here" && nice -n 15 "$go" build -overlay "$cache/overlay.json" -o "$cache/caddy.tmp" .)
mv -f "$cache/caddy.tmp" "$cache/caddy"
echo "$stamp" >"$cache/.complete"
echo "built $stamp into $cache in $(( $(date +%s) - start ))s"

#!/usr/bin/env bash
# Builds (once per machine) the real Kubernetes control plane the tests run against:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler (module ./kubernetes) and kwok (module ./kwok),
# all from the Go module proxy. Binaries go OUTSIDE the clone, in
#   ${CTRLPLANE_KUBE_CACHE:-/var/cache/ctrlplane/kube}/<kubernetes version>/
# and a finished build is reused (a `.complete` stamp names what was built).
# Usage: tools/kube/build.sh [--print-dir]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kube_version="$(awk '/^require k8s.io\/kubernetes /{print $3}' "$here/kubernetes/go.mod")"
kwok_version="$(awk '/^require sigs.k8s.io\/kwok /{print $3}' "$here/kwok/go.mod")"
cache="${CTRLPLANE_KUBE_CACHE:-/var/cache/ctrlplane/kube}/$kube_version"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$cache"; exit 0; fi
stamp="kubernetes $kube_version kwok $kwok_version"
if [[ -f "$cache/.complete" && "$(cat "$cache/.complete")" == "$stamp" ]]; then
  echo "kube binaries $stamp already in $cache"
  exit 0
fi
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
mkdir -p "$cache"
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath"
# nice: the machine's cores are shared; a build must not starve the test runs of others.
build() { # build <module dir> <package> <binary name> [go build flags...]
  local dir=$1 package=$2 binary=$3
  shift 3
  (cd "$here/$dir" && nice -n 15 "$go" build "$@" -o "$cache/$binary.tmp" "$package") \
    && mv -f "$cache/$binary.tmp" "$cache/$binary"
}
# What /version reports (Kubernetes' own build sets it from git; a module build has no git).
minor="${kube_version#v1.}"; minor="${minor%%.*}"
version_flags="-X k8s.io/component-base/version.gitVersion=$kube_version"
version_flags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
version_flags+=" -X k8s.io/component-base/version.gitTreeState=clean"
build kubernetes go.etcd.io/etcd/server/v3 etcd
for component in kube-apiserver kube-controller-manager kube-scheduler; do
  build kubernetes "k8s.io/kubernetes/cmd/$component" "$component" -ldflags "$version_flags"
done
build kwok sigs.k8s.io/kwok/cmd/kwok kwok
echo "$stamp" > "$cache/.complete"
echo "built $stamp into $cache in $(( $(date +%s) - start ))s"

#!/usr/bin/env bash
# Builds (once per machine) the real Kubernetes control plane the tests run against:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler (module ./kubernetes) and kwok (module ./kwok),
# all from the Go module proxy. Binaries go OUTSIDE the clone, in
#   ${CTRLPLANE_KUBE_CACHE:-/var/cache/ctrlplane/kube}/<kubernetes version>/
# and a finished build is reused (a `.complete` stamp names what was built).
# Usage: tools/kube/build.sh [--print-dir]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
required() { # required <go.mod> <module>: the version the module requires
  awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2} ($1 == "require" && $2 == m) {print $3}' "$1" | head -n1
}
kube_version="$(required "$here/kubernetes/go.mod" k8s.io/kubernetes)"
kwok_version="$(required "$here/kwok/go.mod" sigs.k8s.io/kwok)"
if [[ -z "$kube_version" || -z "$kwok_version" ]]; then
  echo "tools/kube/build.sh: cannot read the versions from the go.mod files" >&2
  exit 1
fi
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

#!/usr/bin/env bash
# Builds upstream Kubernetes' binaries, CoreDNS, ginkgo and our e2e.test at the
# release pinned in go.mod, into a cache folder keyed by that pin and by the
# inputs of this build. A second call with the same inputs builds nothing.
#
#   k8s/build.sh            build (or reuse) and print the folder holding bin/
#
# SWITCHD_CACHE (default /var/cache/switchd) is where the folders live. Go's own
# module and build caches stay where the go command keeps them, so a pin change
# recompiles only what changed.
set -euo pipefail
# go keeps its module and build caches under $HOME; a bare root environment may lack it.
export HOME=${HOME:-/root}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

version=$(sed -n 's/^\(require \)\{0,1\}[[:space:]]*k8s.io\/kubernetes v\([0-9.]*\)$/\2/p' go.mod | head -1)
coredns_version=v1.12.1 # what upstream's cluster/addons/dns/coredns ships with $version
[[ -n $version ]] || { echo "k8s/build.sh: no 'k8s.io/kubernetes vX' requirement in $here/go.mod" >&2; exit 1; }
key=$(cat go.mod go.sum build.sh e2e/*.go | sha256sum | cut -c1-12)
out=${SWITCHD_CACHE:-/var/cache/switchd}/k8s/v$version-$key
if [[ -f $out/complete ]]; then
    echo "$out"
    exit 0
fi

command -v go >/dev/null || { echo "k8s/build.sh: needs the go command (Go >= 1.24)" >&2; exit 1; }
mkdir -p "$out/bin"
start=$(date +%s)
major=${version%%.*}
minor=${version#*.}; minor=${minor%%.*}
commit=$(sed -n 's/^k8s.io\/kubernetes v'"$version"' h1:\(.*\)$/\1/p' go.sum | head -1)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    ldflags+=" -X $pkg.gitCommit=${commit:-unknown}"
done
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

echo "k8s/build.sh: building Kubernetes v$version into $out (cold: about 13 min on 2 cores)" >&2
go build -trimpath -ldflags "$ldflags" -o "$out/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/test/images/agnhost \
    k8s.io/kubernetes/test/images/regression-issue-74839 \
    github.com/onsi/ginkgo/v2/ginkgo
go test -c -trimpath -ldflags "$ldflags" -o "$out/bin/e2e.test" ./e2e
GOBIN="$out/bin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version"

"$out/bin/kubelet" --version >&2
echo "k8s/build.sh: built in $(( $(date +%s) - start )) s" >&2
printf 'kubernetes=v%s\ncoredns=%s\n' "$version" "$coredns_version" > "$out/complete"
echo "$out"

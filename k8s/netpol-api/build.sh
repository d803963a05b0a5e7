#!/usr/bin/env bash
# Builds the ClusterNetworkPolicy conformance suite of the sigs.k8s.io/network-policy-api
# release pinned in go.mod (its `conformance` package, as a test binary), next to that
# release's standard-channel CRD, into a cache folder keyed by the pin and the inputs of
# this build. A second call with the same inputs builds nothing.
#
#   k8s/netpol-api/build.sh      build (or reuse) and print the folder, which holds
#                                cnp-conformance.test, VERSION, and the CRD of both
#                                channels: clusternetworkpolicies.yaml (standard) and
#                                clusternetworkpolicies-experimental.yaml
#
# Two changes to the suite, because this machine's kernel has no SCTP sockets (say so
# wherever its results are quoted, docs/network-policy.md):
#   - its servers for SCTP (`agnhost porter` on SCTP ports) would exit at once and their
#     pods never become Ready, so Setup would fail and no test run: they run
#     `agnhost pause` instead;
#   - each SCTP probe is skipped with the line "SWITCHD-SKIPPED-SCTP-PROBE ..." in the
#     test log, which scripts/cluster.sh e2e-cnp counts; every TCP and UDP probe of the
#     same tests runs unchanged.
# Nothing else differs; the patch below fails loudly if the suite's text has moved.
set -euo pipefail
export HOME=${HOME:-/root}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
command -v go >/dev/null || { echo "k8s/netpol-api/build.sh: needs the go command" >&2; exit 1; }

module=sigs.k8s.io/network-policy-api
version=$(go list -m -f '{{.Version}}' "$module")
key=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-12)
out=${SWITCHD_CACHE:-/var/cache/switchd}/netpol-api/$version-$key
if [[ -f $out/complete ]]; then
    echo "$out"
    exit 0
fi
go mod download "$module"
src_dir=$(go list -m -f '{{.Dir}}' "$module")
start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src_dir" "$tmp/src"
chmod -R u+w "$tmp/src"

python3 - "$tmp/src/conformance" <<'EOF'
import pathlib, sys
root = pathlib.Path(sys.argv[1])

def patch(rel, old, new, count):
    p = root / rel
    text = p.read_text()
    found = text.count(old)
    if found != count:
        sys.exit(f"k8s/netpol-api/build.sh: expected {count} of {old!r} in {rel}, found {found}; "
                 "the pinned suite changed, review the patch")
    p.write_text(text.replace(old, new))

# SCTP servers: four houses with two each, and the host-network centaur's two.
patch("base/manifests.yaml",
      'command: ["/bin/bash", "-c", "/agnhost porter"]',
      'command: ["/agnhost", "pause"]  # switchd: no SCTP sockets on this kernel', 10)
patch("utils/kubernetes/helper.go",
      "timeoutConfig config.TimeoutConfig, shouldConnect bool) {\n",
      "timeoutConfig config.TimeoutConfig, shouldConnect bool) {\n"
      "\tif strings.EqualFold(protocol, \"sctp\") {\n"
      "\t\tt.Logf(\"SWITCHD-SKIPPED-SCTP-PROBE %s/%s -> %s:%d shouldConnect=%v (no SCTP sockets on this kernel)\", "
      "clientNamespace, clientPod, targetHost, targetPort, shouldConnect)\n"
      "\t\treturn\n"
      "\t}\n", 1)
EOF

mkdir -p "$out"
echo "k8s/netpol-api/build.sh: building the $module $version conformance suite into $out" >&2
(cd "$tmp/src" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" \
    go test -c -trimpath -o "$out/cnp-conformance.test" ./conformance)
cp "$tmp/src/config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml" \
    "$out/clusternetworkpolicies.yaml"
cp "$tmp/src/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" \
    "$out/clusternetworkpolicies-experimental.yaml"
echo "$version" > "$out/VERSION"
echo "k8s/netpol-api/build.sh: built in $(( $(date +%s) - start )) s" >&2
touch "$out/complete"
echo "$out"

#!/usr/bin/env bash
# Pod-to-pod TCP throughput across nodes with 1,000 NetworkPolicies in place, next to none,
# in the same run, in the cluster of scripts/cluster.sh (which must be up). iperf3 (one
# stream, -t SECONDS) from a client pod on swk-n2 to a server pod on swk-n1; rounds
# alternate: no policy, then POLICIES policies selecting both pods (each admitting the
# client on the iperf port, plus unrelated peers and ports), removed again.
#
#   scripts/netpol-iperf.sh [ROUNDS] [POLICIES] [SECONDS]     (default 3, 1000, 5)
#
# Builds a small iperf3 image from this machine's iperf3 (scripts/lib/rootfs.sh) and
# imports it on every node. Everything lives in the namespace swk-perf-<pid>, deleted at
# the end, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cluster=$repo/scripts/cluster.sh
STATE=${SWK_STATE:-/var/lib/switchd-cluster}
rounds=${1:-3}
count=${2:-1000}
seconds=${3:-5}
ns=swk-perf-$$
image=swk-iperf3:local
. "$repo/scripts/lib/rootfs.sh"
. "$repo/tests/cluster/lib.sh"

k() { "$cluster" kubectl "$@"; }
tmp=$(mktemp -d /tmp/swk-iperf.XXXXXX)
cleanup() {
    k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
"$cluster" is-up || { echo "the cluster is not up: scripts/cluster.sh up" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "needs iperf3 (apt-get install iperf3)" >&2; exit 1; }

rootfs_add_busybox "$tmp/root"
rootfs_add_binary "$tmp/root" "$(command -v iperf3)"
rootfs_to_image "$tmp/root" "$image" null "$tmp/iperf3.tar" >/dev/null
for n in 1 2 3; do
    nsenter --net="/run/netns/swk-n$n" --mount="$STATE/ns/mnt-$n" --uts="$STATE/ns/uts-$n" -- \
        ctr -n k8s.io images import "$tmp/iperf3.tar" >/dev/null || { echo "importing into swk-n$n failed" >&2; exit 1; }
done

k create namespace "$ns" >/dev/null
pod_json server swk-n1 '{"role": "server"}' 'exec iperf3 -s' | k create -f - >/dev/null
pod_json client swk-n2 '{"role": "client"}' 'exec sleep 100000' | k create -f - >/dev/null
k -n "$ns" wait --for=condition=Ready pod/server pod/client --timeout=120s >/dev/null || { echo "pods did not start" >&2; exit 1; }
server_ip=$(k -n "$ns" get pod server -o jsonpath='{.status.podIP}')

policies() {
    local i
    for ((i = 0; i < count; i++)); do
        cat <<EOF
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "p$i", "namespace": "$ns", "labels": {"swk-perf": "yes"}},
 "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
          "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                                {"ipBlock": {"cidr": "192.168.$((i % 250)).0/24"}}],
                       "ports": [{"port": 5201}, {"port": $((10000 + i))}]}],
          "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "server"}}}],
                      "ports": [{"port": 5201}, {"port": $((20000 + i)), "endPort": $((20100 + i))}]}]}}
---
EOF
    done
}

gbps() {
    k -n "$ns" exec client -- iperf3 -c "$server_ip" -t "$seconds" -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

none=() with=()
for r in $(seq "$rounds"); do
    none+=("$(gbps)")
    policies | k apply -f - >/dev/null
    sleep 5
    with+=("$(gbps)")
    echo "round $r: no policy ${none[-1]} Gb/s, $count policies ${with[-1]} Gb/s" >&2
    k -n "$ns" delete networkpolicy -l swk-perf=yes >/dev/null
    sleep 3
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
echo "iperf3 pod to pod across nodes, 1 stream, ${seconds} s, $rounds rounds: no policy median $(median "${none[@]}") Gb/s (${none[*]}); $count policies median $(median "${with[@]}") Gb/s (${with[*]})"

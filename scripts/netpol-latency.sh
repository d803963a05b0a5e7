#!/usr/bin/env bash
# How long from `kubectl apply` of a NetworkPolicy until it is enforced on every node, in
# the cluster of scripts/cluster.sh (which must be up). The method of perf-tests'
# network-policy-enforcement-latency, in small: target pods on every node sit behind a
# default deny; a client sends a UDP datagram every 10 ms to each, carrying the time it
# was sent (the kernel's uptime, one clock for every node of this machine); each target
# logs what it receives. An allow policy is applied at time T0; the latency to a target
# is the send time of the first datagram that reached it, minus T0.
#
#   scripts/netpol-latency.sh [ROUNDS] [PRESENT]
#
# ROUNDS (default 5) rounds with no other policy, then ROUNDS with PRESENT (default 250)
# unrelated policies in the namespace (every node recompiles them all on each change),
# then ROUNDS in which PRESENT new policies and the allow arrive in one kubectl apply
# (the allow last): the time for that many to converge on every node.
# Prints each round and the median and worst per case. Everything lives in the namespace
# swk-lat-<pid>, deleted at the end, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tests/cluster/lib.sh"
cluster=$repo/scripts/cluster.sh
rounds=${1:-5}
present=${2:-250}
ns=swk-lat-$$
image=registry.k8s.io/e2e-test-images/agnhost:2.56
nodes=(1 2 3)

k() { "$cluster" kubectl "$@"; }
cleanup() { k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1; }
trap cleanup EXIT
"$cluster" is-up || { echo "the cluster is not up: scripts/cluster.sh up" >&2; exit 1; }
uptime_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }

pod() { pod_json "$@"; }
policy() { # NAME SELECTOR-LABEL INGRESS
    cat <<EOF
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "$1", "namespace": "$ns"},
 "spec": {"podSelector": {"matchLabels": {"role": "$2"}}, "policyTypes": ["Ingress"], "ingress": $3}}
EOF
}

k create namespace "$ns" >/dev/null
policy default-deny target '[]' | k apply -f - >/dev/null
for n in "${nodes[@]}"; do
    pod "target-$n" "swk-n$n" '{"role": "target"}' 'touch /tmp/log; nc -lku 9001 >> /tmp/log' | k create -f - >/dev/null
done
k -n "$ns" wait --for=condition=Ready pod -l role=target --timeout=120s >/dev/null || { echo "targets did not start" >&2; exit 1; }
send=""
for n in "${nodes[@]}"; do
    ip=$(k -n "$ns" get pod "target-$n" -o jsonpath='{.status.podIP}')
    send+="(while :; do cut -d' ' -f1 /proc/uptime | tr -d .; sleep 0.01; done | nc -u $ip 9001) & "
done
pod client swk-n1 '{"role": "client"}' "${send}wait" | k create -f - >/dev/null
k -n "$ns" wait --for=condition=Ready pod/client --timeout=120s >/dev/null || { echo "the client did not start" >&2; exit 1; }

# First value (centiseconds of uptime) a target has logged, or nothing yet.
first() { k -n "$ns" exec "target-$1" -- head -1 /tmp/log 2>/dev/null | tr -dc 0-9; }

round() { # [BULK] prints the worst latency of this round over all targets, in ms; with
    # BULK, that many new policies are applied in the same kubectl apply, the allow last
    local bulk=${1:-0} n t0 worst=0 v lat i
    for n in "${nodes[@]}"; do k -n "$ns" exec "target-$n" -- sh -c ': > /tmp/log'; done
    sleep 1
    for n in "${nodes[@]}"; do
        [[ -z $(first "$n") ]] || { echo "target-$n receives while denied" >&2; return 1; }
    done
    t0=$(uptime_ms)
    {
        for ((i = 1; i <= bulk; i++)); do policy "bulk-$i" "bulk-$i" '[{"from": [{"podSelector": {}}]}]'; echo '---'; done
        policy allow target '[{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]'
    } | k apply -f - >/dev/null
    local per=("(kubectl apply returned after $(($(uptime_ms) - t0))ms)")
    for n in "${nodes[@]}"; do
        local end=$((SECONDS + 30))
        v=""
        while [[ -z $v ]] && ((SECONDS < end)); do v=$(first "$n"); [[ -n $v ]] || sleep 0.05; done
        [[ -n $v ]] || { echo "target-$n never admitted the client" >&2; return 1; }
        lat=$((v * 10 - t0))
        ((lat < 0)) && lat=0
        per+=("n$n=${lat}ms")
        ((lat > worst)) && worst=$lat
    done
    k -n "$ns" delete networkpolicy allow >/dev/null
    ((bulk == 0)) || for ((i = 1; i <= bulk; i++)); do echo "bulk-$i"; done | sed 's|^|networkpolicy/|' | xargs "$cluster" kubectl -n "$ns" delete --ignore-not-found >/dev/null
    echo "  ${per[*]}" >&2
    echo "$worst"
}

report() { # CASE VALUES...
    local name=$1
    shift
    local sorted
    sorted=$(printf '%s\n' "$@" | sort -n)
    echo "$name: median $(sed -n "$(((${#} + 1) / 2))p" <<<"$sorted") ms, worst $(tail -1 <<<"$sorted") ms over $# rounds (ms until the last of ${#nodes[@]} nodes enforced)"
}

results=()
echo "1 policy, nothing else present:" >&2
for _ in $(seq "$rounds"); do results+=("$(round)") || exit 1; sleep 2; done
report "allow applied, 1 policy" "${results[@]}"

echo "creating $present unrelated policies" >&2
for i in $(seq "$present"); do policy "other-$i" "other-$i" '[{"from": [{"podSelector": {}}]}]'; echo '---'; done |
    k apply -f - >/dev/null
sleep 10
results=()
echo "with $present policies present:" >&2
for _ in $(seq "$rounds"); do results+=("$(round)") || exit 1; sleep 2; done
report "allow applied, $present policies present" "${results[@]}"

results=()
echo "$present policies applied at once, the allow last:" >&2
for _ in $(seq "$rounds"); do results+=("$(round "$present")") || exit 1; sleep 5; done
report "$present new policies converged" "${results[@]}"

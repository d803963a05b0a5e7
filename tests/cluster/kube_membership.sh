#!/usr/bin/env bash
# switchd's Node watch in the real cluster of scripts/cluster.sh (which must be up):
#   - a Node that gets a pod CIDR becomes a peer of every switchd (and how fast);
#   - a deleted Node's peer is removed everywhere;
#   - with kube-apiserver stopped, node-to-pod traffic across nodes keeps flowing and
#     switchd says the API is unreachable; when it returns, a Node created then is
#     picked up (the watch caught up).
# Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
# The Nodes it creates are named swk-ghost-<pid>-*, and removed again, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$repo/scripts/cluster.sh
STATE=${SWK_STATE:-/var/lib/switchd-cluster}
switchctl=$repo/target/release/switchctl
nodes=(1 2 3)
ghost=swk-ghost-$$
passed=0 failed=0

k() { "$cluster" kubectl "$@"; }
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
peers_of() { "$switchctl" --socket "$STATE/nodes/$1/root/run/switchd/switchd.sock" --json peers; }
status_of() { "$switchctl" --socket "$STATE/nodes/$1/root/run/switchd/switchd.sock" status; }
has_peer() { peers_of "$1" | grep -q "\"name\": *\"$2\""; }
now_ms() { date +%s%3N; }

cleanup() {
    [[ -f $STATE/pids/kube-apiserver ]] && ! kill -0 "$(<"$STATE/pids/kube-apiserver")" 2>/dev/null &&
        "$cluster" apiserver-up >/dev/null 2>&1
    k delete node "$ghost-a" "$ghost-b" --ignore-not-found >/dev/null 2>&1
}
trap cleanup EXIT

"$cluster" is-up || { echo "the cluster is not up: scripts/cluster.sh up" >&2; exit 1; }

# A Node as a kubelet registers it (status included), with its pod CIDR already set, as
# kube-controller-manager would set it a moment later.
ghost_node() { # NAME CIDR IP
    cat <<EOF
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "$1", "labels": {"swk-test": "ghost"}},
 "spec": {"podCIDR": "$2", "podCIDRs": ["$2"],
          "taints": [{"key": "swk-test/ghost", "effect": "NoSchedule"}]},
 "status": {"addresses": [{"type": "InternalIP", "address": "$3"}]}}
EOF
}

# Wait until every switchd has (want=1) or lacks (want=0) peer $1; print the ms it took.
until_everywhere() { # PEER WANT LIMIT_MS
    local start n all
    start=$(now_ms)
    while (($(now_ms) - start < $3)); do
        all=1
        for n in "${nodes[@]}"; do
            if has_peer "$n" "$1"; then [[ $2 == 1 ]] || all=0; else [[ $2 == 0 ]] || all=0; fi
        done
        ((all)) && { echo $(($(now_ms) - start)); return 0; }
        sleep 0.02
    done
    return 1
}

# 1. Join: the Node appears with its pod CIDR.
t0=$(now_ms)
ghost_node "$ghost-a" 10.244.200.0/24 172.30.0.200 | k create -f - >/dev/null
created=$(($(now_ms) - t0))
if ms=$(until_everywhere "$ghost-a" 1 10000); then
    ok "a new Node with a pod CIDR is a peer on all ${#nodes[@]} nodes ${ms} ms after kubectl returned (create took ${created} ms)"
else
    bad "a new Node did not become a peer everywhere within 10 s"
fi
if peers_of 1 | grep -A8 "\"name\": *\"$ghost-a\"" | grep -q '10.244.200.0/24'; then
    ok "its pod CIDR and address come from the Node object"
else
    bad "the peer's pod CIDR is not the Node's"
fi

# 2. Leave: the Node is deleted.
k delete node "$ghost-a" >/dev/null
if ms=$(until_everywhere "$ghost-a" 0 10000); then
    ok "a deleted Node's peer is removed on every node (${ms} ms)"
else
    bad "a deleted Node's peer stayed"
fi

# 3. API server down: forwarding goes on with the last known peers.
pod_ip=$(k -n kube-system get pods -l k8s-app=kube-dns -o jsonpath='{.items[0].status.podIP}')
pod_node=$(k -n kube-system get pods -l k8s-app=kube-dns -o jsonpath='{.items[0].spec.nodeName}')
from=1
[[ $pod_node == swk-n1 ]] && from=2
"$cluster" apiserver-down >/dev/null
if ip netns exec "swk-n$from" ping -c 3 -i 0.2 -W 1 "$pod_ip" >/dev/null; then
    ok "with kube-apiserver stopped, swk-n$from still reaches a pod on $pod_node ($pod_ip) across the tunnel"
else
    bad "with kube-apiserver stopped, swk-n$from cannot reach $pod_ip on $pod_node"
fi
unreachable=0
for _ in $(seq 1 100); do
    status_of "$from" | grep -q 'membership=kubernetes state=unreachable' && { unreachable=1; break; }
    sleep 0.2
done
if ((unreachable)); then
    ok "switchctl status says the API server is unreachable"
else
    bad "switchctl status never said the API server is unreachable: $(status_of "$from" | grep membership)"
fi
if peers_of "$from" | grep -q '"name": *"swk-n'; then
    ok "the peers stay while the API server is away"
else
    bad "peers were dropped while the API server is away"
fi

# 4. It returns: the watch catches up (a Node made now shows up everywhere).
"$cluster" apiserver-up >/dev/null
ghost_node "$ghost-b" 10.244.201.0/24 172.30.0.201 | k create -f - >/dev/null
if ms=$(until_everywhere "$ghost-b" 1 60000); then
    ok "after the API server returns, a new Node is a peer everywhere (${ms} ms)"
else
    bad "after the API server returned, a new Node never became a peer everywhere"
fi
if status_of "$from" | grep -q 'state=watching'; then
    ok "switchctl status says watching again"
else
    bad "switchctl status: $(status_of "$from" | grep membership)"
fi
k delete node "$ghost-b" >/dev/null

echo "$passed passed, $failed failed"
((failed == 0))

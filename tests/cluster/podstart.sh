#!/usr/bin/env bash
# Pod start at scale in the real cluster of scripts/cluster.sh (which must be up): N pods
# (default 110) created on one node at once, timed until all are Running and until all
# answer a ping from another node. The same node then does the same with the reference
# plugins: a conflist of `bridge` + `host-local` (Debian's containernetworking-plugins)
# placed before switchd's in the node's /etc/cni/net.d, on 10.245.N.0/24, with a route to
# that subnet on the pinging node; then it is removed again. Rounds alternate the two.
#
#   tests/cluster/podstart.sh [PODS] [ROUNDS]     (SWK_PODSTART_NODE, _FROM: 1 and 2)
#
# Prints one line per burst and a table of medians; exits non-zero when a burst fails
# (a pod not Running or not reachable within 5 minutes). Everything it creates (namespaces
# swk-ps-<pid>-*, the conflist, the route, the plugin copies) is removed, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$repo/scripts/cluster.sh
STATE=${SWK_STATE:-/var/lib/switchd-cluster}
PODS=${1:-110}
ROUNDS=${2:-3}
NODE=${SWK_PODSTART_NODE:-1}
FROM=${SWK_PODSTART_FROM:-2}
node=swk-n$NODE
node_ip=172.30.0.$((10 + NODE))
bridge_net=10.245.$NODE
netd=$STATE/nodes/$NODE/root/etc/cni/net.d
cnibin=$STATE/nodes/$NODE/root/opt/cni/bin
bridge_conf=$netd/00-swk-podstart-bridge.conflist
bridge_data=$STATE/nodes/$NODE/root/var/lib/cni/swk-podstart
copied=()

k() { "$cluster" kubectl "$@"; }
in_node() { # N COMMAND...
    local n=$1
    shift
    nsenter --net="/run/netns/swk-n$n" --mount="$STATE/ns/mnt-$n" --uts="$STATE/ns/uts-$n" -- "$@"
}
now() { date +%s.%N; }

bridge_off() {
    rm -f "$bridge_conf"
    ip netns exec "swk-n$FROM" ip route del "$bridge_net.0/24" 2>/dev/null
}
cleanup() {
    for ns in $(k get namespaces -o name 2>/dev/null | grep "namespace/swk-ps-$$-"); do
        k delete "$ns" --wait=true --timeout=120s >/dev/null 2>&1
    done
    bridge_off
    for f in "${copied[@]}"; do rm -f "$f"; done
    ip netns exec "$node" ip link del swk-psbr0 2>/dev/null
    rm -rf "$bridge_data"
}
trap cleanup EXIT

bridge_on() {
    for p in bridge host-local loopback; do
        if [[ ! -e $cnibin/$p ]]; then
            cp "/usr/lib/cni/$p" "$cnibin/$p" && copied+=("$cnibin/$p")
        fi
    done
    cat >"$bridge_conf" <<JSON
{"cniVersion": "1.0.0", "name": "swk-podstart-bridge", "plugins": [
  {"type": "bridge", "bridge": "swk-psbr0", "isGateway": true, "ipMasq": false, "mtu": 1450,
   "ipam": {"type": "host-local", "subnet": "$bridge_net.0/24", "dataDir": "/var/lib/cni/swk-podstart",
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
JSON
    ip netns exec "swk-n$FROM" ip route replace "$bridge_net.0/24" via "$node_ip"
    # containerd picks the first conflist once it notices the file.
    sleep 3
}

pods_json() { # NAMESPACE
    local i sep=""
    printf '{"apiVersion": "v1", "kind": "List", "items": ['
    for ((i = 0; i < PODS; i++)); do
        printf '%s{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p%d", "namespace": "%s"},
 "spec": {"nodeName": "%s", "terminationGracePeriodSeconds": 0,
  "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1", "imagePullPolicy": "Never"}]}}' \
            "$sep" "$i" "$1" "$node"
        sep=,
    done
    printf ']}'
}

# One burst: prints "RUNNING_S REACHABLE_S", or fails.
burst() { # PLUGIN ROUND
    local ns=swk-ps-$$-$1-$2 t0 t_run="" t_reach="" deadline ips expect
    k create namespace "$ns" >/dev/null || return 1
    # The namespace's default service account must exist before pods are admitted.
    until k -n "$ns" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
    sleep 2
    t0=$(now)
    pods_json "$ns" | k create -f - >/dev/null || return 1
    deadline=$(($(date +%s) + 300))
    local unreached=""
    while (($(date +%s) < deadline)); do
        ips=$(k -n "$ns" get pods -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.status.podIP}{"\n"}{end}' 2>/dev/null | grep -c .)
        if [[ -z $t_run && $ips -eq $PODS ]]; then
            t_run=$(now)
            unreached=$(k -n "$ns" get pods -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}')
        fi
        if [[ -n $t_run ]]; then
            unreached=$(printf '%s\n' $unreached | xargs -r -P 64 -I{} sh -c \
                "ip netns exec swk-n$FROM ping -c1 -W1 -q {} >/dev/null 2>&1 || echo {}")
            if [[ -z $unreached ]]; then
                t_reach=$(now)
                break
            fi
        else
            sleep 0.25
        fi
    done
    expect=$([[ $1 == bridge ]] && echo "$bridge_net." || echo "10.244.")
    if [[ -z $t_reach ]]; then
        echo "podstart: $1 round $2: not all Running and reachable in 300 s (unreached: ${unreached:-not all Running})" >&2
        return 1
    fi
    if k -n "$ns" get pods -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}' | grep -v "^$expect" | grep -q .; then
        echo "podstart: $1 round $2: pods got addresses outside $expect (wrong plugin?)" >&2
        return 1
    fi
    awk -v a="$t_run" -v b="$t_reach" -v z="$t0" 'BEGIN {printf "%.2f %.2f\n", a - z, b - z}'
    k delete namespace "$ns" --wait=true --timeout=300s >/dev/null
    # The API forgets a pod before its node has torn the sandbox down; wait for the
    # plugin's own DELs, or the next round's conflist would receive them.
    deadline=$(($(date +%s) + 300))
    until [[ $(attached "$1" "$ns") -eq 0 ]]; do
        if (($(date +%s) >= deadline)); then
            echo "podstart: $1 round $2: pods still attached 300 s after their namespace went" >&2
            return 1
        fi
        sleep 0.5
    done
}

# How many of the burst's pods the plugin still holds: switchd's ports of that namespace,
# or host-local's allocations.
attached() { # PLUGIN NAMESPACE
    if [[ $1 == switchd ]]; then
        "$repo/target/release/switchctl" --socket "$STATE/nodes/$NODE/root/run/switchd/switchd.sock" ports |
            grep -c " $2/"
    else
        find "$bridge_data/swk-podstart-bridge" -name "$bridge_net.*" 2>/dev/null | grep -c .
    fi
}

declare -A run reach
for ((r = 1; r <= ROUNDS; r++)); do
    for plugin in switchd bridge; do
        [[ $plugin == bridge ]] && bridge_on
        out=$(burst "$plugin" "$r") || exit 1
        [[ $plugin == bridge ]] && bridge_off && sleep 3
        read -r a b <<<"$out"
        run[$plugin]+="$a "
        reach[$plugin]+="$b "
        printf 'round %d: %-8s %d pods Running after %.1f s, all reachable from swk-n%d after %.1f s\n' \
            "$r" "$plugin" "$PODS" "$a" "$FROM" "$b"
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {m=v[int((NR+1)/2)]; printf "%.1f (%.1f–%.1f)", m, v[1], v[NR]}'; }
echo
echo "$PODS pods on $node at once, $ROUNDS rounds; seconds from create, median (min–max)"
echo
echo "| plugin | all Running | all reachable from swk-n$FROM |"
echo "|---|---|---|"
for plugin in switchd bridge; do
    echo "| $plugin | $(median <<<"${run[$plugin]}") | $(median <<<"${reach[$plugin]}") |"
done

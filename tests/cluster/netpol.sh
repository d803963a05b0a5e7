#!/usr/bin/env bash
# NetworkPolicy in the real cluster of scripts/cluster.sh (which must be up), on
# established flows, where the upstream suite (which only opens new connections) does
# not look:
#   - a long-running TCP stream and a UDP flow from a pod on one node to a pod on another
#     stop once a policy denying them is applied, and resume, on the same connection,
#     when it is deleted;
#   - the same when the client's label that a policy admits is removed and put back;
#   - the denial is explained: `switchctl monitor` names the policy behind the drop,
#     `switchctl trace` names it for the same packet, /metrics counts it;
#   - a restarted switchd (its pod deleted) keeps the flows cut, from its saved policy;
#   - a ClusterNetworkPolicy of the Admin tier denying the client cuts both flows over a
#     NetworkPolicy that admits it (and names its rule in monitor and /metrics); switched
#     to Pass, the NetworkPolicy decides again and the same flows resume.
# Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
# Everything it creates lives in the namespace swk-np-<pid>, or is the ClusterNetworkPolicy
# swk-np-<pid>-admin; both are deleted also on failure. Installs the ClusterNetworkPolicy
# CRD (scripts/cluster.sh cnp-crd) when it is missing.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
. "$repo/tests/cluster/lib.sh"
cluster=$repo/scripts/cluster.sh
STATE=${SWK_STATE:-/var/lib/switchd-cluster}
switchctl=$repo/target/release/switchctl
ns=swk-np-$$
image=registry.k8s.io/e2e-test-images/agnhost:2.56
passed=0 failed=0

k() { "$cluster" kubectl "$@"; }
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
sock() { echo "$STATE/nodes/$1/root/run/switchd/switchd.sock"; }

cnp=$ns-admin
cleanup() {
    k delete clusternetworkpolicy "$cnp" --ignore-not-found >/dev/null 2>&1
    k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
}
trap cleanup EXIT

"$cluster" is-up || { echo "the cluster is not up: scripts/cluster.sh up" >&2; exit 1; }

# The server (node 1) writes the last line number it received, per protocol; the client
# (node 2) sends one numbered line every 20 ms over one TCP connection and as UDP
# datagrams from one socket: one flow each, for the whole test.
pod() { pod_json "$@"; }
k create namespace "$ns" >/dev/null
pod server swk-n1 '{"app": "server"}' \
    'nc -lk 9000 | while read -r l; do echo $l > /tmp/tcp; done & nc -lku 9001 | while read -r l; do echo $l > /tmp/udp; done & wait' |
    k create -f - >/dev/null
k -n "$ns" wait --for=condition=Ready pod/server --timeout=90s >/dev/null || { bad "the server pod did not start"; exit 1; }
server_ip=$(k -n "$ns" get pod server -o jsonpath='{.status.podIP}')
pod client swk-n2 '{"app": "client", "access": "granted"}' \
    "(i=0; while :; do echo \$i; i=\$((i+1)); sleep 0.02; done | nc $server_ip 9000) & (i=0; while :; do echo \$i; i=\$((i+1)); sleep 0.02; done | nc -u $server_ip 9001) & wait" |
    k create -f - >/dev/null
k -n "$ns" wait --for=condition=Ready pod/client --timeout=90s >/dev/null || { bad "the client pod did not start"; exit 1; }

last() { k -n "$ns" exec server -- cat "/tmp/$1" 2>/dev/null || echo -1; }
# Is flow $1 (tcp or udp) moving? Two readings 1.5 s apart.
moving() { local a b; a=$(last "$1"); sleep 1.5; b=$(last "$1"); ((b > a)); }
# Wait up to $2 seconds for flow $1 to move (want=1) or to stand still (want=0).
until_flow() { # FLOW WANT SECONDS
    local end=$((SECONDS + $3))
    while ((SECONDS < end)); do
        if moving "$1"; then [[ $2 == 1 ]] && return 0; else [[ $2 == 0 ]] && return 0; fi
    done
    return 1
}

for f in tcp udp; do
    if until_flow "$f" 1 20; then ok "$f: the flow runs before any policy"; else bad "$f: the flow never started"; fi
done

deny() {
    cat <<EOF
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "$1", "namespace": "$ns"},
 "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
          "ingress": $2}}
EOF
}

# 1. A policy that admits nobody: both established flows stop, and resume when it goes.
t0=$SECONDS
deny deny-all '[]' | k apply -f - >/dev/null
for f in tcp udp; do
    if until_flow "$f" 0 10; then ok "$f: stopped by deny-all (seen still within $((SECONDS - t0)) s of kubectl apply)"; else bad "$f: still flowing 10 s after deny-all"; fi
done
events=$(timeout 3 "$switchctl" --socket "$(sock 1)" monitor --rate 0 2>/dev/null)
if grep -q "policy_denied.*$ns/deny-all" <<<"$events"; then
    ok "switchctl monitor names the policy: $(grep -m1 policy_denied <<<"$events" | cut -c1-200)"
else
    bad "switchctl monitor did not name $ns/deny-all: $(head -3 <<<"$events")"
fi
client_ip=$(k -n "$ns" get pod client -o jsonpath='{.status.podIP}')
trace=$("$switchctl" --socket "$(sock 1)" trace switchd0 "$server_ip" --src "$client_ip" --proto tcp --port 9000 2>&1)
if grep -q "policy_denied" <<<"$trace" && grep -q "$ns/deny-all" <<<"$trace"; then
    ok "switchctl trace names the default deny and the policy behind it"
else
    bad "switchctl trace does not explain the denial: $trace"
fi
metrics=$(nsenter --net=/run/netns/swk-n1 curl -s http://127.0.0.1:9476/metrics 2>/dev/null)
if grep -q "switchd_policy_flows_total{tier=\"NetworkPolicy\",namespace=\"$ns\",policy=\"deny-all\",verdict=\"denied\"} [1-9]" <<<"$metrics"; then
    ok "/metrics counts the denied flows of $ns/deny-all"
else
    bad "/metrics has no denied count for $ns/deny-all: $(grep switchd_policy_flows <<<"$metrics" | head -3)"
fi
# A restarted switchd enforces what it saved before it stopped, before the API's lists
# arrive: the flows stay cut across the restart.
old=$(k -n kube-system get pods -l app=switchd --field-selector spec.nodeName=swk-n1 -o jsonpath='{.items[0].metadata.name}')
k -n kube-system delete pod "$old" --wait=true >/dev/null
k -n kube-system rollout status ds/switchd --timeout=120s >/dev/null
new=$(k -n kube-system get pods -l app=switchd --field-selector spec.nodeName=swk-n1 -o jsonpath='{.items[0].metadata.name}')
if k -n kube-system logs "$new" 2>/dev/null | grep -q "enforcing what was saved before the restart"; then
    ok "the restarted switchd on swk-n1 enforced its saved policy before the API's lists arrived"
else
    bad "the restarted switchd did not start from its saved policy"
fi
for f in tcp udp; do
    if until_flow "$f" 0 5; then ok "$f: still cut after switchd restarted"; else bad "$f: flowing again after switchd restarted"; fi
done
k -n "$ns" delete networkpolicy deny-all >/dev/null
for f in tcp udp; do
    # TCP resumes at its next retransmission (backed off while it was cut).
    if until_flow "$f" 1 30; then ok "$f: the same flow resumes once deny-all is deleted"; else bad "$f: did not resume after deny-all was deleted"; fi
done

# 2. A policy that admits the client by a label: removing the label cuts the flows,
#    putting it back restores them.
deny by-label '[{"from": [{"podSelector": {"matchLabels": {"access": "granted"}}}]}]' | k apply -f - >/dev/null
sleep 2
for f in tcp udp; do
    if moving "$f"; then ok "$f: flows while the client carries access=granted"; else bad "$f: stopped although the client is admitted"; fi
done
k -n "$ns" label pod client access- >/dev/null
for f in tcp udp; do
    if until_flow "$f" 0 10; then ok "$f: stopped once the client lost its label"; else bad "$f: still flowing after the label was removed"; fi
done
k -n "$ns" label pod client access=granted >/dev/null
for f in tcp udp; do
    if until_flow "$f" 1 30; then ok "$f: resumed once the label is back"; else bad "$f: did not resume after the label came back"; fi
done

# 3. The Admin tier over NetworkPolicy: by-label admits the client, a cluster policy's
#    Deny cuts it anyway; turned into Pass, by-label decides again.
"$cluster" cnp-crd >/dev/null || bad "could not install the ClusterNetworkPolicy CRD"
admin() {
    cat <<EOF
{"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
 "metadata": {"name": "$cnp"},
 "spec": {"tier": "Admin", "priority": 10,
          "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "$ns"}},
                               "podSelector": {"matchLabels": {"app": "server"}}}},
          "ingress": [{"name": "no-clients", "action": "$1",
                       "from": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "$ns"}},
                                          "podSelector": {"matchLabels": {"app": "client"}}}}]}]}}
EOF
}
t0=$SECONDS
admin Deny | k apply -f - >/dev/null
for f in tcp udp; do
    if until_flow "$f" 0 10; then ok "$f: stopped by an Admin-tier Deny over the NetworkPolicy that admits it (within $((SECONDS - t0)) s)"; else bad "$f: still flowing 10 s after the Admin-tier Deny"; fi
done
events=$(timeout 3 "$switchctl" --socket "$(sock 1)" monitor --rate 0 2>/dev/null)
if grep -q "policy_denied.*ClusterNetworkPolicy/$cnp (Admin tier, priority 10) ingress rule 0 \"no-clients\" (Deny)" <<<"$events"; then
    ok "switchctl monitor names the cluster policy and its rule"
else
    bad "switchctl monitor did not name $cnp's rule: $(grep -m1 policy_denied <<<"$events" | cut -c1-300)"
fi
metrics=$(nsenter --net=/run/netns/swk-n1 curl -s http://127.0.0.1:9476/metrics 2>/dev/null)
if grep -q "switchd_policy_flows_total{tier=\"Admin\",namespace=\"\",policy=\"$cnp\",verdict=\"denied\"} [1-9]" <<<"$metrics"; then
    ok "/metrics counts the flows $cnp denied"
else
    bad "/metrics has no denied count for $cnp: $(grep switchd_policy_flows <<<"$metrics" | grep -v NetworkPolicy | head -3)"
fi
admin Pass | k apply -f - >/dev/null
for f in tcp udp; do
    if until_flow "$f" 1 30; then ok "$f: resumed once the rule passes to NetworkPolicy, which admits it"; else bad "$f: did not resume after the rule became Pass"; fi
done
k delete clusternetworkpolicy "$cnp" >/dev/null

echo "$passed passed, $failed failed"
((failed == 0))

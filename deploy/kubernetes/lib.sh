#!/bin/sh
# Shared helpers for the switchd container: read Node objects from the Kubernetes API with
# the pod's service account (curl + jq; no kubectl in the image).
set -eu

SA=/var/run/secrets/kubernetes.io/serviceaccount
api_get() {
    curl -fsS --max-time 10 --cacert "$SA/ca.crt" \
        -H "Authorization: Bearer $(cat "$SA/token")" \
        "https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}$1"
}

# The router MAC switchd derives by default from a pod CIDR: 0a:58 + the gateway (.1).
router_mac() {
    net=${1%/*}
    IFS=. read -r a b c d <<EOT
$net
EOT
    printf '0a:58:%02x:%02x:%02x:%02x\n' "$a" "$b" "$c" "$((d + 1))"
}

# Print [[peers]] tables for every node in the NodeList JSON on stdin except $1. A
# dual-stack node (an IPv6 entry in spec.podCIDRs) also gets its pod_cidr_v6.
render_peers() {
    jq -r --arg self "$1" '
      .items[]
      | select(.metadata.name != $self and (.spec.podCIDR // "") != "")
      | [.metadata.name,
         ([.status.addresses[] | select(.type == "InternalIP") | .address][0] // ""),
         ([(.spec.podCIDRs // [.spec.podCIDR])[] | select(contains(":") | not)][0] // .spec.podCIDR),
         ([(.spec.podCIDRs // [])[] | select(contains(":"))][0] // "-")]
      | @tsv' |
    while IFS="$(printf '\t')" read -r name addr cidr cidr6; do
        [ -n "$addr" ] || continue
        printf '[[peers]]\nname = "%s"\naddr = "%s"\npod_cidr = "%s"\n' "$name" "$addr" "$cidr"
        if [ "$cidr6" != "-" ]; then
            printf 'pod_cidr_v6 = "%s"\n' "$cidr6"
        fi
        printf 'mac = "%s"\n\n' "$(router_mac "$cidr")"
    done
}

# The IPv6 entry of a Node's spec.podCIDRs (JSON on stdin), or nothing.
node_pod_cidr_v6() {
    jq -r '[(.spec.podCIDRs // [])[] | select(contains(":"))][0] // empty'
}

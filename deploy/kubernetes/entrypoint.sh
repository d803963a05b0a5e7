#!/bin/sh
# switchd in a DaemonSet pod: write this node's config from its Node object, start switchd,
# and install the CNI conflist only once switchd answers (runtimes use the first conflist
# they find, so an early one would send pods to a daemon that is not there yet).
set -eu
. /usr/local/lib/switchd/lib.sh

: "${NODE_NAME:?set NODE_NAME from spec.nodeName}"
node=$(api_get "/api/v1/nodes/${NODE_NAME}")
pod_cidr=$(printf '%s' "$node" | jq -r '.spec.podCIDR // empty')
underlay=$(printf '%s' "$node" | jq -r '[.status.addresses[] | select(.type == "InternalIP") | .address][0] // empty')
[ -n "$pod_cidr" ] || { echo "node ${NODE_NAME} has no spec.podCIDR: run kube-controller-manager with --allocate-node-cidrs" >&2; exit 1; }
[ -n "$underlay" ] || { echo "node ${NODE_NAME} has no InternalIP address" >&2; exit 1; }

mkdir -p /etc/switchd
cat > /etc/switchd/switchd.toml <<TOML
node_name = "${NODE_NAME}"
pod_cidr = "${pod_cidr}"
cluster_cidr = "${CLUSTER_CIDR:-10.244.0.0/16}"
underlay_addr = "${underlay}"
peers_file = "/etc/switchd/peers.toml"
TOML
api_get /api/v1/nodes | render_peers "$NODE_NAME" > /etc/switchd/peers.toml

/usr/local/bin/switchd --config /etc/switchd/switchd.toml &
pid=$!
trap 'kill -TERM $pid; wait $pid' TERM INT
until switchctl status >/dev/null 2>&1; do
    kill -0 $pid 2>/dev/null || { wait $pid; exit 1; }
    sleep 0.2
done
install -m 0755 /usr/local/bin/switchd-cni /host/opt/cni/bin/switchd-cni.tmp
mv -f /host/opt/cni/bin/switchd-cni.tmp /host/opt/cni/bin/switchd-cni
install -m 0644 /usr/local/share/switchd/10-switchd.conflist /host/etc/cni/net.d/.10-switchd.conflist.tmp
mv -f /host/etc/cni/net.d/.10-switchd.conflist.tmp /host/etc/cni/net.d/10-switchd.conflist
wait $pid

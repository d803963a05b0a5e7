#!/bin/sh
# switchd in a DaemonSet pod: write this node's config, start switchd, and install the CNI
# conflist only once switchd answers (runtimes use the first conflist they find, so an
# early one would send pods to a daemon that is not there yet).
#
# MEMBERSHIP=kubernetes (default, switchd.yaml): switchd reads its pod CIDRs from its own
#   Node and watches every other Node for its peers (the pod's service account; needs
#   HOST_IP from status.hostIP for the tunnel).
# MEMBERSHIP=etcd (switchd-etcd.yaml): switchd leases its subnet and finds its peers in
#   etcd; needs ETCD_ENDPOINTS and HOST_IP, and reads TLS files from ETCD_TLS_DIR
#   (ca.crt, tls.crt, tls.key) when they are there. No Kubernetes API access needed.
#   ENCRYPTION=wireguard encrypts node links (keys travel in the etcd records; the key
#   file lives in the hostPath state directory, so it survives pod restarts), and
#   ENCRYPTION_PLAIN=send|accept steps a running cluster into it (docs/encryption.md).
# CLUSTER_CIDR_V6 (e.g. fd10:244::/48) makes nodes dual-stack (docs/dual-stack.md): in etcd
#   mode each node's /64 follows its leased IPv4 subnet; in kubernetes mode it is the IPv6
#   entry of the Node's spec.podCIDRs (kube-controller-manager --cluster-cidr=v4,v6).
# The conflist chains the reference portmap plugin (hostPort) when the node has it in
# /opt/cni/bin, as kubeadm- and kind-built nodes do, and declares CNI spec CNI_VERSION
# (default 1.0.0: containerd 1.x cannot read 1.1.0 results).
#
#   entrypoint.sh render-config   print the config this pod would use, then exit (tests)
set -eu
if [ -r /usr/local/lib/switchd/lib.sh ]; then
    . /usr/local/lib/switchd/lib.sh
else
    . "$(dirname "$0")/lib.sh"
fi

: "${NODE_NAME:?set NODE_NAME from spec.nodeName}"
CONFIG=${CONFIG:-/etc/switchd/switchd.toml}

etcd_config() {
    : "${ETCD_ENDPOINTS:?set ETCD_ENDPOINTS, e.g. https://10.0.0.5:2379,https://10.0.0.6:2379}"
    : "${HOST_IP:?set HOST_IP from status.hostIP}"
    endpoints=$(printf '%s' "$ETCD_ENDPOINTS" | tr ',' '\n' | sed 's/.*/"&"/' | paste -sd, -)
    cat <<TOML
node_name = "${NODE_NAME}"
cluster_cidr = "${CLUSTER_CIDR:-10.244.0.0/16}"
underlay_addr = "${HOST_IP}"
membership = "etcd"
etcd_endpoints = [${endpoints}]
etcd_prefix = "${ETCD_PREFIX:-/switchd/}"
node_subnet_len = ${NODE_SUBNET_LEN:-24}
encryption = "${ENCRYPTION:-none}"
TOML
    if [ -n "${CLUSTER_CIDR_V6:-}" ]; then
        echo "cluster_cidr_v6 = \"${CLUSTER_CIDR_V6}\""
    fi
    if [ -n "${ENCRYPTION_PLAIN:-}" ]; then
        echo "encryption_plain = \"${ENCRYPTION_PLAIN}\""
    fi
    tls=${ETCD_TLS_DIR:-/etc/switchd/etcd}
    if [ -r "$tls/ca.crt" ]; then
        echo "etcd_ca = \"$tls/ca.crt\""
    fi
    if [ -r "$tls/tls.crt" ] && [ -r "$tls/tls.key" ]; then
        printf 'etcd_cert = "%s"\netcd_key = "%s"\n' "$tls/tls.crt" "$tls/tls.key"
    fi
}

kubernetes_config() {
    : "${HOST_IP:?set HOST_IP from status.hostIP}"
    cat <<TOML
node_name = "${NODE_NAME}"
cluster_cidr = "${CLUSTER_CIDR:-10.244.0.0/16}"
underlay_addr = "${HOST_IP}"
membership = "kubernetes"
TOML
    if [ -n "${CLUSTER_CIDR_V6:-}" ]; then
        echo "cluster_cidr_v6 = \"${CLUSTER_CIDR_V6}\""
    fi
    policy_config
}

# NetworkPolicy (docs/network-policy.md): on unless NETWORK_POLICY=off; SERVICE_CIDRS
# (comma-separated, default 10.96.0.0/12) are the ClusterIP ranges, judged after DNAT.
policy_config() {
    echo "[policy]"
    if [ "${NETWORK_POLICY:-on}" = off ]; then
        echo "enabled = false"
        return
    fi
    printf 'service_cidrs = ["%s"]\n' "$(printf '%s' "${SERVICE_CIDRS:-10.96.0.0/12}" | sed 's/,/", "/g')"
}

case "${MEMBERSHIP:-kubernetes}" in
    etcd) config=$(etcd_config) ;;
    kubernetes) config=$(kubernetes_config) ;;
    *) echo "MEMBERSHIP must be kubernetes or etcd, got ${MEMBERSHIP}" >&2; exit 1 ;;
esac
if [ "${1:-}" = render-config ]; then
    printf '%s\n' "$config"
    exit 0
fi
mkdir -p "$(dirname "$CONFIG")"
printf '%s\n' "$config" > "$CONFIG"

/usr/local/bin/switchd --config "$CONFIG" &
pid=$!
trap 'kill -TERM $pid; wait $pid' TERM INT
until switchctl status >/dev/null 2>&1; do
    kill -0 $pid 2>/dev/null || { wait $pid; exit 1; }
    sleep 0.2
done
# cp + chmod + mv (busybox has no install): the runtime never sees a half-written file.
cp /usr/local/bin/switchd-cni /host/opt/cni/bin/switchd-cni.tmp
chmod 0755 /host/opt/cni/bin/switchd-cni.tmp
mv -f /host/opt/cni/bin/switchd-cni.tmp /host/opt/cni/bin/switchd-cni
conflist=$(conflist_version "${CNI_VERSION:-1.0.0}" < /usr/local/share/switchd/10-switchd.conflist)
if [ -x /host/opt/cni/bin/portmap ]; then
    conflist=$(printf '%s\n' "$conflist" | conflist_with_portmap)
else
    echo "no portmap plugin in the node's /opt/cni/bin: hostPort stays unsupported" >&2
fi
printf '%s\n' "$conflist" > /host/etc/cni/net.d/.10-switchd.conflist.tmp
mv -f /host/etc/cni/net.d/.10-switchd.conflist.tmp /host/etc/cni/net.d/10-switchd.conflist
wait $pid

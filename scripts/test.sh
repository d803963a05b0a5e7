#!/usr/bin/env bash
# Run the whole test suite: unit tests, the netns end-to-end tests (needs root), and a
# one-iteration smoke run of the benchmarks so they never rot. One build profile (release).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the end-to-end tests create network namespaces and TAP devices; run as root (sudo)" >&2
    exit 1
fi
# Everything the tests use, from Debian; installed here when missing, so this one command
# sets up a fresh machine.
PACKAGES="iproute2 iputils-ping ethtool iperf3 systemd jq python3-yaml python3-prometheus-client tcpdump podman runc conmon containernetworking-plugins busybox-static containerd iptables nftables conntrack dnsmasq-base bind9-dnsutils etcd-server etcd-client protobuf-compiler libprotobuf-dev g++ wireguard-go wireguard-tools"
missing=0
for tool in ip ping ethtool bridge iperf3 systemd-analyze jq tcpdump podman runc containerd ctr iptables nft conntrack dnsmasq dig nsenter etcd etcdctl protoc g++ wireguard-go wg; do
    command -v "$tool" >/dev/null || missing=1
done
if [ "$missing" -ne 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $PACKAGES
fi
[ -c /dev/net/tun ] || { echo "scripts/test.sh: /dev/net/tun is missing (modprobe tun)" >&2; exit 1; }

# The e2e tests execute the real binaries, so build them first.
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
cargo bench -p switchd-benches -- --test
# The end-to-end benchmark, once in its short mode, so it keeps working (its figures are
# not checked: times are noisy on shared machines).
target/release/e2e --quick
# The scale harness in its short mode (300 simulated nodes): it asserts that every record
# arrives, restart, join and leave work and pods keep reaching each other.
target/release/scale --quick
# The churn soak in its short mode (200 attach/detach cycles beside a long-lived stream):
# it asserts that no address, port, link, namespace or descriptor leaks.
target/release/soak --quick
# The pod-start burst in its short mode (20 pods at once through switchd-cni and through the
# reference bridge plugin): it asserts every ADD and DEL works and pods reach their gateway.
target/release/podstart --quick
# Every fuzz target for a few seconds (coverage-guided, libFuzzer), so they never rot;
# long runs and their figures: docs/reliability.md.
scripts/fuzz.sh 5
# A real cluster from upstream's binaries (built once per version into a cache, see
# k8s/build.sh), switchd installed by its DaemonSet, and upstream's sig-network
# conformance tests against it (docs/kubernetes.md). A cluster that was already up is
# used and left up; one started here is removed again, also on failure.
# switchd's Node watch is then checked in the same cluster: joins, deletes, and an API
# server that dies and comes back (tests/cluster/kube_membership.sh). Then NetworkPolicy:
# upstream's netpol suite (docs/network-policy.md), the ClusterNetworkPolicy conformance
# profile of the pinned sigs.k8s.io/network-policy-api (k8s/netpol-api/, built once per
# version into /var/cache/switchd/netpol-api/), and established flows cut and resumed by
# policies, labels and the Admin tier (tests/cluster/netpol.sh). Last, 20 pods started on
# one node at once through switchd and through the reference bridge plugin, both Running
# and reachable from another node (tests/cluster/podstart.sh; 110 pods: docs/performance.md).
if ! scripts/cluster.sh is-up; then
    trap 'scripts/cluster.sh down' EXIT
    scripts/cluster.sh up
fi
scripts/cluster.sh e2e-conformance
tests/cluster/kube_membership.sh
scripts/cluster.sh e2e-netpol
scripts/cluster.sh e2e-cnp
tests/cluster/netpol.sh
tests/cluster/podstart.sh 20 1

#!/usr/bin/env bash
# Run the whole test suite: unit tests, the netns end-to-end tests (needs root), and a
# one-iteration smoke run of the benchmarks so they never rot. One build profile (release).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the end-to-end tests create network namespaces and TAP devices; run as root (sudo)" >&2
    exit 1
fi
for tool in ip ping ethtool bridge iperf3 systemd-analyze jq tcpdump podman runc containerd ctr iptables nsenter etcd etcdctl protoc; do
    command -v "$tool" >/dev/null || { echo "scripts/test.sh: '$tool' is missing: apt-get install -y iproute2 iputils-ping ethtool iperf3 systemd jq python3-yaml python3-prometheus-client tcpdump podman runc conmon containernetworking-plugins busybox-static containerd iptables etcd-server etcd-client protobuf-compiler libprotobuf-dev" >&2; exit 1; }
done
[ -c /dev/net/tun ] || { echo "scripts/test.sh: /dev/net/tun is missing (modprobe tun)" >&2; exit 1; }

# The e2e tests execute the real binaries, so build them first.
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
cargo bench -p switchd-benches -- --test
# The end-to-end benchmark, once in its short mode, so it keeps working (its figures are
# not checked: times are noisy on shared machines).
target/release/e2e --quick

#!/usr/bin/env bash
# Single-node demo: install what is needed, build, start switchd in its own network
# namespace (the "node"), attach two pods through switchd-cni exactly as a runtime would,
# and ping between them. Everything stays up so you can look around:
#
#   sudo ip netns exec swdemo-pod-a ping 10.244.1.3
#   sudo target/release/switchctl --socket /run/switchd-demo/switchd.sock ports
#
# `sudo scripts/demo.sh stop` removes it all again.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/run/switchd-demo
NODE=swdemo-node
PODS=(swdemo-pod-a swdemo-pod-b)
BIN=target/release

stop() {
    if [ -f "$DIR/switchd.pid" ]; then kill "$(cat "$DIR/switchd.pid")" 2>/dev/null || true; fi
    for ns in "${PODS[@]}" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$DIR"
}

if [ "${1:-}" = "stop" ]; then stop; echo "demo removed"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: needs root (network namespaces, TAP devices): sudo $0" >&2; exit 1; }

# protoc and the protobuf includes build the etcd client's gRPC code.
if ! command -v ip >/dev/null || ! command -v ping >/dev/null || ! command -v cc >/dev/null \
    || ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
    apt-get update && apt-get install -y --no-install-recommends iproute2 iputils-ping gcc libc6-dev \
        protobuf-compiler libprotobuf-dev
fi
command -v cargo >/dev/null || { echo "demo.sh: cargo is missing; install Rust (rustup) first" >&2; exit 1; }
cargo build --release --workspace --bins

stop
mkdir -p "$DIR"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
cat > "$DIR/switchd.toml" <<TOML
node_name = "demo"
pod_cidr = "10.244.1.0/24"
cluster_cidr = "10.244.0.0/16"
socket = "$DIR/switchd.sock"
state_dir = "$DIR/state"
mtu = 1450
TOML
ip netns exec "$NODE" "$BIN/switchd" --config "$DIR/switchd.toml" >"$DIR/switchd.log" 2>&1 &
echo $! >"$DIR/switchd.pid"
for _ in $(seq 100); do "$BIN/switchctl" --socket "$DIR/switchd.sock" status >/dev/null 2>&1 && break; sleep 0.1; done

CONF="{\"cniVersion\":\"1.1.0\",\"name\":\"demo\",\"type\":\"switchd-cni\",\"socket\":\"$DIR/switchd.sock\"}"
for ns in "${PODS[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    echo "$CONF" | CNI_COMMAND=ADD CNI_CONTAINERID="$ns" CNI_NETNS="/var/run/netns/$ns" CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin "$BIN/switchd-cni"
    echo
done
ip netns exec swdemo-pod-a ping -c 3 10.244.1.3
ip netns exec "$NODE" ping -c 1 10.244.1.2
"$BIN/switchctl" --socket "$DIR/switchd.sock" ports
echo
echo "demo is running (switchd pid $(cat "$DIR/switchd.pid"), log $DIR/switchd.log); remove it with: sudo $0 stop"

#!/usr/bin/env bash
# Build and install switchd on this node: binaries, default config, systemd unit, CNI
# conflist. `deploy/install.sh uninstall` removes them (pods' state dir is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

if [ "${1:-}" = "uninstall" ]; then
    systemctl disable --now switchd 2>/dev/null || true
    rm -f /usr/local/bin/switchd /usr/local/bin/switchctl /opt/cni/bin/switchd-cni \
        /etc/systemd/system/switchd.service /etc/cni/net.d/10-switchd.conflist
    systemctl daemon-reload 2>/dev/null || true
    echo "switchd removed; /etc/switchd and /var/lib/switchd were kept"
    exit 0
fi

# protoc and the protobuf includes build the etcd client's gRPC code.
if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
    apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev
fi
cargo build --release --workspace --bins
install -D -m 0755 target/release/switchd /usr/local/bin/switchd
install -D -m 0755 target/release/switchctl /usr/local/bin/switchctl
install -D -m 0755 target/release/switchd-cni /opt/cni/bin/switchd-cni
[ -f /etc/switchd/switchd.toml ] || install -D -m 0644 deploy/switchd.toml /etc/switchd/switchd.toml
install -D -m 0644 deploy/switchd.service /etc/systemd/system/switchd.service
systemctl daemon-reload
systemctl enable --now switchd
# Runtimes use the first conflist they find: write it only once switchd answers, atomically.
ready=
for _ in $(seq 600); do
    if switchctl status >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "install.sh: switchd did not answer within 60 s, so the CNI conflist was NOT written" >&2
    echo "  (with membership = \"etcd\" it waits for etcd). Look at: journalctl -u switchd; rerun this script once it is up." >&2
    exit 1
fi
mkdir -p /etc/cni/net.d
install -m 0644 deploy/10-switchd.conflist /etc/cni/net.d/.10-switchd.conflist.tmp
mv -f /etc/cni/net.d/.10-switchd.conflist.tmp /etc/cni/net.d/10-switchd.conflist
switchctl status

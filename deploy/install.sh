#!/usr/bin/env bash
# Build and install switchd on this node: binaries, default config, systemd unit, CNI
# conflist, then start it.
#   deploy/install.sh                    build with cargo, install, start
#   deploy/install.sh --prebuilt DIR     install switchd, switchctl, switchd-cni from DIR
#   deploy/install.sh uninstall          stop and remove (config and pods' state are kept)
# SWITCHD_READY_TIMEOUT (seconds, default 60): how long to wait for switchd to answer
# before giving up without writing the conflist.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

if [ "${1:-}" = "uninstall" ]; then
    systemctl disable --now switchd 2>/dev/null || true
    rm -f /usr/local/bin/switchd /usr/local/bin/switchctl /opt/cni/bin/switchd-cni \
        /etc/systemd/system/switchd.service /etc/cni/net.d/10-switchd.conflist
    systemctl daemon-reload 2>/dev/null || true
    # The egress masquerade table switchd installed (absent is fine).
    nft delete table ip switchd 2>/dev/null || true
    # The translated-flow table kept across restarts.
    rm -f /run/switchd/switchd.flows
    echo "switchd removed; /etc/switchd and /var/lib/switchd were kept"
    exit 0
fi

bin=target/release
if [ "${1:-}" = "--prebuilt" ]; then
    bin=${2:?--prebuilt needs the directory holding switchd, switchctl and switchd-cni}
else
    # protoc and the protobuf includes build the etcd client's gRPC code.
    if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
        apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev
    fi
    cargo build --release --workspace --bins
fi
install -D -m 0755 "$bin/switchd" /usr/local/bin/switchd
install -D -m 0755 "$bin/switchctl" /usr/local/bin/switchctl
install -D -m 0755 "$bin/switchd-cni" /opt/cni/bin/switchd-cni
[ -f /etc/switchd/switchd.toml ] || install -D -m 0644 deploy/switchd.toml /etc/switchd/switchd.toml
/usr/local/bin/switchd --check --config /etc/switchd/switchd.toml
install -D -m 0644 deploy/switchd.service /etc/systemd/system/switchd.service
systemctl daemon-reload
systemctl enable switchd
# restart, not start: an upgrade must replace the running binary. Under systemd's fd store
# the pods' TAPs stay open across it (docs/operations.md).
systemctl restart switchd
# Runtimes use the first conflist they find: write it only once switchd answers, atomically.
ready=
for _ in $(seq "$(( ${SWITCHD_READY_TIMEOUT:-60} * 10 ))"); do
    if /usr/local/bin/switchctl status >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "install.sh: switchd did not answer within ${SWITCHD_READY_TIMEOUT:-60} s, so the CNI conflist was NOT written" >&2
    echo "  (with membership = \"etcd\" it waits for etcd). Look at: journalctl -u switchd; rerun this script once it is up." >&2
    exit 1
fi
mkdir -p /etc/cni/net.d
install -m 0644 deploy/10-switchd.conflist /etc/cni/net.d/.10-switchd.conflist.tmp
mv -f /etc/cni/net.d/.10-switchd.conflist.tmp /etc/cni/net.d/10-switchd.conflist
/usr/local/bin/switchctl status

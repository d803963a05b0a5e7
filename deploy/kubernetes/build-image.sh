#!/usr/bin/env bash
# Builds the switchd image without a registry: the release binaries, the entrypoint, a
# busybox for the shell and nft (the egress masquerade), with the shared libraries they
# link, from this machine's files. Writes an archive `ctr -n k8s.io images import` and
# `podman load` take, named switchd:0.1.0 as the DaemonSets expect.
#
#   deploy/kubernetes/build-image.sh OUT.tar     (after cargo build --release)
#
# With a registry, deploy/kubernetes/Dockerfile builds the same image from Debian.
set -euo pipefail
out=${1:?usage: build-image.sh OUT.tar}
repo=$(cd "$(dirname "$0")/../.." && pwd)
image=${SWITCHD_IMAGE:-switchd:0.1.0}
. "$repo/scripts/lib/rootfs.sh"

for b in switchd switchctl switchd-cni; do
    [[ -x $repo/target/release/$b ]] || { echo "build-image.sh: target/release/$b is missing; run cargo build --release -p switchd -p switchd-cni first" >&2; exit 1; }
done
command -v nft >/dev/null || { echo "build-image.sh: needs nft (apt-get install nftables)" >&2; exit 1; }

root=$(mktemp -d /tmp/switchd-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
rootfs_add_busybox "$root"
rootfs_add_binary "$root" "$repo/target/release/switchd" "$repo/target/release/switchctl" \
    "$repo/target/release/switchd-cni" "$(command -v nft)"
mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/switchd" "$root/usr/local/share/switchd"
mv "$root$repo/target/release/"{switchd,switchctl,switchd-cni} "$root/usr/local/bin/" 2>/dev/null ||
    cp "$repo/target/release/"{switchd,switchctl,switchd-cni} "$root/usr/local/bin/"
install -m 0755 "$repo/deploy/kubernetes/entrypoint.sh" "$root/usr/local/bin/entrypoint.sh"
install -m 0644 "$repo/deploy/kubernetes/lib.sh" "$root/usr/local/lib/switchd/lib.sh"
install -m 0644 "$repo/deploy/10-switchd.conflist" "$root/usr/local/share/switchd/10-switchd.conflist"
mkdir -p "$root/tmp" "$root/run" "$root/var/run" "$root/etc"
rootfs_to_image "$root" "$image" '["/usr/local/bin/entrypoint.sh"]' "$out"
echo "build-image.sh: $image -> $out" >&2

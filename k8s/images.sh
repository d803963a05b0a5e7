#!/usr/bin/env bash
# Builds, with no registry and no network, every container image our Kubernetes cluster
# and upstream's sig-network e2e tests pull, each under the exact name the tests ask for
# (test/utils/image/manifest.go of the release in k8s/go.mod), so no KUBE_TEST_REPO_LIST
# remapping is needed. Each image is one layer assembled from files on this Debian host:
# the static Go programs k8s/build.sh made, Debian's static busybox, and Debian programs
# with the libraries they load (scripts/lib/rootfs.sh). Our own code, not upstream's
# Dockerfiles; the contents cover what the tests run inside the containers.
#
#   k8s/images.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds agnhost and coredns (k8s/build.sh's bin/). OUT_DIR receives one .tar per
# image, for `ctr -n k8s.io images import`, and images.txt with "file<TAB>name:tag" lines.
# A second call finds OUT_DIR/complete and does nothing. Runs as root (apt, chroot).
#
# Images (upstream's tag, our contents):
#   registry.k8s.io/pause:3.10.1               k8s/images/pause.c, static. containerd's
#       sandbox_image must name it: containerd 1.6 defaults to pause:3.6.
#   registry.k8s.io/coredns/coredns:v1.12.1    /coredns
#   registry.k8s.io/e2e-test-images/agnhost:2.56
#       /agnhost (also as agnhost-2), /coredns (DNS tests start it from this image), dash
#       as sh, bash, curl, OpenBSD nc, GNU wget, dig, nslookup, host, getent, ip, ss, iperf
#       (2), busybox for the rest (seq date hostname ping dd grep ...), /uploads,
#       /localhost.{crt,key}
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-1     busybox 1.35 (Debian's)
#   registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7  dash, dig, nslookup, host, getent, busybox
#   registry.k8s.io/e2e-test-images/nginx:1.14-4
#       stand-in: busybox httpd serving a page on port 80 (EndpointSlice conformance test
#       "should create Endpoints and EndpointSlices for Pods matching a Service" only needs
#       it running)
#   registry.k8s.io/build-image/distroless-iptables:v0.7.14
#       stand-in: dash, conntrack and busybox, what "KubeProxy should set TCP CLOSE_WAIT timeout"
#       execs in it (sleep, test, which, cat, grep, conntrack -L)
#   registry.k8s.io/e2e-test-images/regression-issue-74839:1.2
#       only when BIN_DIR has that program (k8s.io/kubernetes/test/images/regression-issue-74839)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

if [[ $# -ne 2 ]]; then
    echo "usage: k8s/images.sh BIN_DIR OUT_DIR   (BIN_DIR: the bin/ folder k8s/build.sh prints)" >&2
    exit 2
fi
bin_dir=$(cd "$1" && pwd) || { echo "k8s/images.sh: no folder $1; run k8s/build.sh first" >&2; exit 1; }
out_dir=$2
[[ -f $out_dir/complete ]] && exit 0

[[ $(id -u) -eq 0 ]] || { echo "k8s/images.sh: run as root (it may apt-get install, and it chroots to test the images)" >&2; exit 1; }

# Everything the images are made of, from Debian.
packages=(busybox-static curl netcat-openbsd bind9-dnsutils bind9-host iproute2 libc-bin
    wget iperf conntrack netbase dash coreutils findutils gcc libc6-dev openssl jq)
missing=()
for p in "${packages[@]}"; do
    [[ $(dpkg-query -W -f '${Status}' "$p" 2>/dev/null) == 'install ok installed' ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" ||
        { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } ||
        { echo "k8s/images.sh: could not install ${missing[*]}; install them with apt-get and rerun" >&2; exit 1; }
fi

for b in agnhost coredns; do
    [[ -x $bin_dir/$b ]] || { echo "k8s/images.sh: $bin_dir/$b is missing; run k8s/build.sh first" >&2; exit 1; }
done
for b in "$bin_dir"/agnhost "$bin_dir"/coredns "$bin_dir"/regression-issue-74839; do
    if [[ -e $b ]] && ldd "$b" >/dev/null 2>&1; then
        echo "k8s/images.sh: $b is dynamically linked; build it with CGO_ENABLED=0 (as k8s/build.sh does)" >&2
        exit 1
    fi
done

# shellcheck source=../scripts/lib/rootfs.sh
source "$repo/scripts/lib/rootfs.sh"
start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out_dir"
: > "$tmp/images.txt"

# image FILE NAME:TAG ROOT ENTRYPOINT_JSON [CMD_JSON [USER]]
image() {
    rootfs_to_image "$3" "$2" "$4" "$out_dir/$1" "${5:-null}" "${6:-}"
    printf '%s\t%s\n' "$1" "$2" >> "$tmp/images.txt"
    echo "k8s/images.sh: $2 -> $out_dir/$1 ($(du -h "$out_dir/$1" | cut -f1))" >&2
}

# The shell and the programs that start other programs, for images whose commands must
# find real programs in PATH rather than busybox's applets (see rootfs_add_busybox).
exec_tools=(/usr/bin/dash /usr/bin/timeout /usr/bin/env /usr/bin/xargs /usr/bin/nohup)

# smoke ROOT SCRIPT: runs SCRIPT with the image's own sh and libraries, to prove that
# nothing the programs load was left behind.
smoke() {
    env -i PATH="$ROOTFS_PATH_ENV" chroot "$1" /bin/sh -c "$2" >/dev/null 2>&1 || {
        echo "k8s/images.sh: a program in the image for $1 does not run there:" >&2
        env -i PATH="$ROOTFS_PATH_ENV" chroot "$1" /bin/sh -xc "$2" >&2
        exit 1
    }
}

# pause: the only process of every pod sandbox; runs as nobody like upstream's.
root=$tmp/pause
mkdir -p "$root"
gcc -static -Os -s -Wall -Werror -o "$root/pause" "$here/images/pause.c"
image pause.tar registry.k8s.io/pause:3.10.1 "$root" '["/pause"]' null 65535:65535

root=$tmp/coredns
mkdir -p "$root"
install -m 0755 "$bin_dir/coredns" "$root/coredns"
image coredns.tar registry.k8s.io/coredns/coredns:v1.12.1 "$root" '["/coredns"]'

# agnhost. Tests run its subcommands, and through `kubectl exec ... /bin/sh -c` (or as the
# container command): curl (-g -q -s -i -o -w --connect-timeout --max-time --interface),
# nc (-v -z -t -u -w N -p PORT), wget (-q -O - -T N), dig (+short +search +tcp +notcp
# +noall +answer -x -p @server), nslookup, getent hosts, hostname, ss -ant46, seq, date,
# sleep, dd, test, cat, tail, grep, iperf (performance test), and /coredns.
root=$tmp/agnhost
mkdir -p "$root/etc" "$root/uploads"
# The user and group test/e2e/node's SupplementalGroups test expects in this image.
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' \
    'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' > "$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'user-defined-in-image:x:1000:' \
    'group-defined-in-image:x:50000:user-defined-in-image' > "$root/etc/group"
# Debian's busybox sh would run its own nc and ip instead of the real ones: sh is dash,
# and the programs that start others (timeout, env, xargs, nohup) are the real ones too.
rootfs_add_binary "$root" "${exec_tools[@]}" /usr/bin/bash /usr/bin/curl /usr/bin/nc.openbsd \
    /usr/bin/wget /usr/bin/dig /usr/bin/nslookup /usr/bin/host /usr/bin/getent /usr/bin/ip /usr/bin/ss \
    /usr/bin/iperf
ln -s dash "$root/usr/bin/sh"
ln -s nc.openbsd "$root/usr/bin/nc"
# GNU wget, because Debian's busybox 1.35 wget crashes (SIGSEGV) whenever given -T, which
# the service tests pass; one try per call, like busybox's, instead of wget's twenty.
echo 'tries = 1' > "$root/etc/wgetrc"
rootfs_add_busybox "$root"
install -m 0755 "$bin_dir/agnhost" "$root/agnhost"
ln -s agnhost "$root/agnhost-2"
install -m 0755 "$bin_dir/coredns" "$root/coredns"
# netexec and porter serve TLS with /localhost.crt and /localhost.key (SANs 127.0.0.1, ::1).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
    -subj /CN=localhost -addext 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost' \
    -keyout "$root/localhost.key" -out "$root/localhost.crt" 2>/dev/null
chmod 0644 "$root/localhost.key"
smoke "$root" 'bash --version && curl --version && { nc -h 2>&1 | grep -q OpenBSD; } && dig -v && host -V &&
    ip -V | grep -q iproute2 && ss -V && { iperf -v 2>&1 | grep -q iperf; } && getent passwd user-defined-in-image &&
    timeout 5 nc -h 2>&1 | grep -q OpenBSD && wget --version | grep -q GNU'
image agnhost.tar registry.k8s.io/e2e-test-images/agnhost:2.56 "$root" '["/agnhost"]' '["pause"]'

# busybox: init containers and clients (sh -c 'sleep 15', 'nc boom-server 9000', ...).
root=$tmp/busybox
rootfs_add_busybox "$root"
image busybox.tar registry.k8s.io/e2e-test-images/busybox:1.37.0-1 "$root" null '["sh"]'

# jessie-dnsutils: the DNS tests' second prober runs, under sh -c, a loop of
# `dig +notcp|+tcp +noall +answer +search NAME A|AAAA|SRV|PTR`, `getent hosts NAME`,
# `dig +short`, seq, test, echo, sleep.
root=$tmp/jessie-dnsutils
rootfs_add_binary "$root" "${exec_tools[@]}" /usr/bin/dig /usr/bin/nslookup /usr/bin/host /usr/bin/getent
ln -s dash "$root/usr/bin/sh"
rootfs_add_busybox "$root"
smoke "$root" 'dig -v && host -V && getent passwd root'
image jessie-dnsutils.tar registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7 "$root" null '["sh"]'

# nginx stand-in: a web server on port 80 that stops at once on SIGTERM.
root=$tmp/nginx
rootfs_add_busybox "$root"
mkdir -p "$root/usr/share/nginx/html"
echo '<html><body><h1>Welcome to nginx!</h1></body></html>' > "$root/usr/share/nginx/html/index.html"
image nginx.tar registry.k8s.io/e2e-test-images/nginx:1.14-4 "$root" null \
    '["sh", "-c", "trap \"exit 0\" TERM INT; httpd -f -p 80 -h /usr/share/nginx/html & wait"]'

# distroless-iptables stand-in, for the KubeProxy CLOSE_WAIT test's host-network pod.
root=$tmp/distroless-iptables
rootfs_add_binary "$root" "${exec_tools[@]}" /usr/sbin/conntrack
ln -s dash "$root/usr/bin/sh"
rootfs_add_busybox "$root"
smoke "$root" 'conntrack --version && which conntrack && test -x /bin/sleep'
image distroless-iptables.tar registry.k8s.io/build-image/distroless-iptables:v0.7.14 "$root" null '["sh"]'

if [[ -x $bin_dir/regression-issue-74839 ]]; then
    root=$tmp/regression-issue-74839
    mkdir -p "$root"
    install -m 0755 "$bin_dir/regression-issue-74839" "$root/regression-issue-74839"
    image regression-issue-74839.tar registry.k8s.io/e2e-test-images/regression-issue-74839:1.2 \
        "$root" '["/regression-issue-74839"]'
else
    echo "k8s/images.sh: no $bin_dir/regression-issue-74839, so no image for the conntrack test" \
        "\"proxy implementation should not be vulnerable to the invalid conntrack state bug\"" >&2
fi

mv "$tmp/images.txt" "$out_dir/images.txt"
echo "built by k8s/images.sh in $(( $(date +%s) - start )) s" > "$out_dir/complete"
echo "k8s/images.sh: images in $out_dir (listed in images.txt), $(( $(date +%s) - start )) s" >&2

# shellcheck shell=bash
# Helpers that build a container image from files already on this Debian host, with no
# registry and no base image: fill a root filesystem directory, then write it out as a
# one-layer image archive that `ctr -n k8s.io images import` (containerd >= 1.6) accepts.
#
#   source scripts/lib/rootfs.sh
#   rootfs_add_binary ROOT /usr/bin/curl nc ...   # binary + every library ldd lists + loader
#   rootfs_add_busybox ROOT                       # /bin/busybox and a link per applet
#   rootfs_to_image ROOT NAME:TAG ENTRYPOINT_JSON OUT.tar [CMD_JSON [USER]]
#
# The root filesystem copies Debian's merged-/usr layout (/bin, /sbin, /lib, /lib64 link
# into /usr), so every file keeps the path it has on the host and the loader finds its
# libraries in its built-in search path. ENTRYPOINT_JSON and CMD_JSON are JSON arrays such
# as '["/agnhost"]', or null.
#
# Why not `podman import` + `podman save`: both work on this host, but podman puts a bare
# name such as switchd:0.1.0 under localhost/, which the kubelet (asking for
# docker.io/library/switchd:0.1.0) then never finds; they also leave a copy in podman's
# storage and double the disk traffic. A Docker archive is three small files around one
# tar, so it is written here directly, byte for byte the same on every run of the same
# input (sorted entries, root owner, zero times).

# The PATH an image's processes start with, as in Debian's own base images.
ROOTFS_PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# rootfs_skeleton ROOT: the directories and the few /etc files every image here shares.
# Leaves existing files alone, so callers may write their own /etc/passwd first.
rootfs_skeleton() {
    local root=$1 d
    mkdir -p "$root"/usr/bin "$root"/usr/sbin "$root"/usr/lib "$root"/usr/lib64 \
        "$root"/etc "$root"/root "$root"/tmp "$root"/var/tmp
    chmod 1777 "$root"/tmp "$root"/var/tmp
    for d in bin sbin lib lib64; do
        [[ -e $root/$d || -L $root/$d ]] || ln -s usr/$d "$root/$d"
    done
    [[ -e $root/etc/passwd ]] || printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' > "$root/etc/passwd"
    [[ -e $root/etc/group ]] || printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' > "$root/etc/group"
    # The host's nsswitch.conf names systemd and db modules that are not in the image.
    [[ -e $root/etc/nsswitch.conf ]] || printf '%s\n' 'passwd: files' 'group: files' \
        'shadow: files' 'hosts: files dns' 'networks: files' 'protocols: files' \
        'services: files' 'ethers: files' 'rpc: files' > "$root/etc/nsswitch.conf"
    # Port and protocol names for nc, ss, getent (Debian's netbase package).
    for d in services protocols; do
        [[ -e $root/etc/$d || ! -e /etc/$d ]] || cp /etc/$d "$root/etc/$d"
    done
}

# rootfs_add_binary ROOT PATH...: copies each program (an absolute path, or a name looked
# up in PATH) to the same path under ROOT, with every shared library ldd reports and the
# dynamic loader, each at its host path. Replaces a busybox applet link of the same name.
rootfs_add_binary() {
    local root=$1 bin src lib
    shift
    rootfs_skeleton "$root"
    for bin in "$@"; do
        src=$bin
        [[ $src == /* ]] || src=$(command -v "$bin") || {
            echo "rootfs_add_binary: '$bin' is not installed on this host (apt-get install the package that has it)" >&2
            return 1
        }
        [[ -f $src && -x $src ]] || { echo "rootfs_add_binary: $src is not an executable file" >&2; return 1; }
        _rootfs_copy "$src" "$root"
        # A static program makes ldd fail with "not a dynamic executable": nothing to add.
        for lib in $(ldd "$src" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
            [[ -e $root$lib ]] || _rootfs_copy "$lib" "$root"
        done
        if ldd "$src" 2>/dev/null | grep -q 'not found'; then
            echo "rootfs_add_binary: $src needs a library the host lacks:" >&2
            ldd "$src" | grep 'not found' >&2
            return 1
        fi
    done
}

# _rootfs_copy SRC ROOT: SRC's content (symlinks followed) at the same path under ROOT.
_rootfs_copy() {
    local src=$1 root=$2
    mkdir -p "$root$(dirname "$src")"
    rm -f "$root$src"          # never write through an applet link into busybox
    cp -L --preserve=mode "$src" "$root$src"
}

# rootfs_add_busybox ROOT: Debian's static busybox (package busybox-static) as
# /bin/busybox plus a /bin/NAME link for each applet that no real program already
# provides in /bin or /sbin, so programs added before or after it take precedence.
# Beware: Debian builds busybox to prefer its own applets over PATH whenever it starts a
# command itself, so its sh runs busybox's ip or nc even beside the real ones, and so do
# its timeout, env and xargs. An image with real programs should add /usr/bin/dash
# (and link sh to it) and the exec-ing programs it needs before calling this.
rootfs_add_busybox() {
    local root=$1 applet
    [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || {
        echo "rootfs_add_busybox: /bin/busybox is missing or not static (apt-get install busybox-static)" >&2
        return 1
    }
    rootfs_skeleton "$root"
    _rootfs_copy /bin/busybox "$root"
    for applet in $(/bin/busybox --list); do
        [[ -e $root/usr/bin/$applet || -L $root/usr/bin/$applet || -e $root/usr/sbin/$applet ]] ||
            ln -s busybox "$root/usr/bin/$applet"
    done
}

# rootfs_to_image ROOT NAME:TAG ENTRYPOINT_JSON OUT_TAR [CMD_JSON [USER]]: writes ROOT as
# a one-layer Docker archive (manifest.json, config, layer tar) tagged NAME:TAG.
rootfs_to_image() {
    local root=$1 name=$2 entrypoint=${3:-null} out=$4 cmd=${5:-null} user=${6:-}
    [[ -d $root ]] || { echo "rootfs_to_image: $root is not a directory" >&2; return 1; }
    [[ $name =~ ^[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || {
        echo "rootfs_to_image: '$name' is not a lower-case image name with a :tag" >&2
        return 1
    }
    local j
    for j in "$entrypoint" "$cmd"; do
        jq -e 'type == "array" or . == null' <<<"$j" >/dev/null 2>&1 || {
            echo "rootfs_to_image: '$j' is not a JSON array or null (apt-get install jq if jq is missing)" >&2
            return 1
        }
    done
    [[ $user =~ ^[A-Za-z0-9_:.-]*$ ]] || { echo "rootfs_to_image: bad user '$user'" >&2; return 1; }
    local arch
    arch=$(dpkg --print-architecture) # amd64, arm64: the same words as Go and OCI use

    local work
    work=$(mktemp -d "$(dirname "$out")/.rootfs_to_image.XXXXXX") || return 1
    if ! _rootfs_archive "$root" "$name" "$entrypoint" "$cmd" "$user" "$arch" "$work"; then
        rm -rf "$work"
        echo "rootfs_to_image: could not write the image $name from $root" >&2
        return 1
    fi
    mv "$work/image.tar" "$out" && rm -rf "$work"
}

# _rootfs_archive ROOT NAME ENTRYPOINT CMD USER ARCH WORK: writes WORK/image.tar.
_rootfs_archive() {
    local root=$1 name=$2 entrypoint=$3 cmd=$4 user=$5 arch=$6 work=$7 diff config config_sum
    tar --create --file "$work/layer.tar" --directory "$root" --sort=name --format=gnu \
        --owner=0 --group=0 --numeric-owner --mtime=@0 . || return 1
    diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1) && mv "$work/layer.tar" "$work/$diff.tar" || return 1
    config=$(jq -cn --arg arch "$arch" --arg path "PATH=$ROOTFS_PATH_ENV" --arg user "$user" \
        --argjson ep "$entrypoint" --argjson cmd "$cmd" --arg diff "sha256:$diff" '{
            architecture: $arch, os: "linux", created: "1970-01-01T00:00:00Z",
            config: ({Env: [$path], WorkingDir: "/"}
                + (if $ep then {Entrypoint: $ep} else {} end)
                + (if $cmd then {Cmd: $cmd} else {} end)
                + (if $user != "" then {User: $user} else {} end)),
            rootfs: {type: "layers", diff_ids: [$diff]},
            history: [{created: "1970-01-01T00:00:00Z", created_by: "scripts/lib/rootfs.sh"}]
        }') || return 1
    config_sum=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1) || return 1
    printf '%s' "$config" > "$work/$config_sum.json" || return 1
    jq -cn --arg c "$config_sum.json" --arg n "$name" --arg l "$diff.tar" \
        '[{Config: $c, RepoTags: [$n], Layers: [$l]}]' > "$work/manifest.json" || return 1
    tar --create --file "$work/image.tar" --directory "$work" --owner=0 --group=0 \
        --numeric-owner --mtime=@0 manifest.json "$config_sum.json" "$diff.tar"
}

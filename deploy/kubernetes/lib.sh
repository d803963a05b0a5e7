#!/bin/sh
# Shared helpers for the switchd container (POSIX sh; the image has busybox, no jq).

# The conflist on stdin with the reference portmap plugin chained after switchd-cni, so
# the runtime's hostPort mappings work (`capabilities.portMappings`).
conflist_with_portmap() {
    sed 's|^  \]$|    ,{"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}\n  ]|'
}

# The conflist on stdin declaring CNI spec version $1. containerd before 2.0 (libcni
# before 1.2) refuses results of spec 1.1.0 ("unsupported CNI result version"), so the
# DaemonSet writes 1.0.0 unless CNI_VERSION says otherwise; switchd-cni answers in the
# version the conflist declares.
conflist_version() {
    sed "s|\"cniVersion\": \"[^\"]*\"|\"cniVersion\": \"$1\"|"
}

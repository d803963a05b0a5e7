#!/bin/sh
# Sidecar: keep /etc/switchd/peers.toml equal to the cluster's Node objects (every other
# node's InternalIP and podCIDR) and tell switchd to reload when it changes.
#   peers-sync.sh               loop against the API server
#   peers-sync.sh render SELF   read a NodeList on stdin, print the peers file (for tests)
set -eu
if [ -r /usr/local/lib/switchd/lib.sh ]; then
    . /usr/local/lib/switchd/lib.sh
else
    . "$(dirname "$0")/lib.sh"
fi

if [ "${1:-}" = render ]; then
    render_peers "$2"
    exit 0
fi
: "${NODE_NAME:?set NODE_NAME from spec.nodeName}"
while true; do
    if api_get /api/v1/nodes | render_peers "$NODE_NAME" > /etc/switchd/peers.toml.new; then
        if ! cmp -s /etc/switchd/peers.toml.new /etc/switchd/peers.toml; then
            mv -f /etc/switchd/peers.toml.new /etc/switchd/peers.toml
            switchctl reload || echo "switchctl reload failed; will retry" >&2
        fi
    else
        echo "cannot list nodes; keeping the current peers" >&2
    fi
    sleep "${SYNC_INTERVAL:-10}"
done

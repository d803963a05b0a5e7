# Shared by the scripts that put pods into the cluster of scripts/cluster.sh
# (tests/cluster/*.sh, scripts/netpol-*.sh). Source it; it defines functions only.

# A Pod's JSON: one container running COMMAND under /bin/sh -c, pinned to NODE, in the
# namespace $ns, from IMAGE (default: $image), never pulled (images are imported).
pod_json() { # NAME NODE LABELS-JSON COMMAND [IMAGE]
    cat <<JSON
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "namespace": "$ns", "labels": $3},
 "spec": {"nodeName": "$2", "terminationGracePeriodSeconds": 0,
          "containers": [{"name": "c", "image": "${5:-$image}", "imagePullPolicy": "IfNotPresent",
                          "command": ["/bin/sh", "-c", "$4"]}]}}
JSON
}

#!/usr/bin/env bash
# Same-run A/B of the criterion forwarding benchmarks: the working tree against an earlier
# revision, run alternately round after round on the same machine, so that a change's cost
# is measured against its baseline under the same load (a shared machine drifts by ±10 %
# between runs minutes apart; alternating and taking the minimum and median cancels most
# of it).
#
#   scripts/bench-ab.sh REV [FILTER] [ROUNDS]
#   scripts/bench-ab.sh a784acc 'pod_to_pod/64B_packets|tunnel/(en|de)cap_64B|baseline_copy/64B' 7
#
# REV is built in a temporary git worktree with its own target directory
# (target/bench-ab-base, kept for the next run). baseline_copy is the control: a memcpy that
# no change touches, so its new/old ratio shows the noise of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: scripts/bench-ab.sh REV [FILTER] [ROUNDS]}
filter=${2:-'pod_to_pod/(64|1500)B_packets|tunnel/(en|de)cap_64B|baseline_copy/64B'}
rounds=${3:-5}
top=$(pwd)
work=$(mktemp -d /tmp/switchd-ab.XXXXXX)
cleanup() {
    git -C "$top" worktree remove --force "$work/base" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

executable() { # the forwarding bench binary cargo just built, from its JSON messages
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forwarding" and m.get("executable"):
        print(m["executable"])'
}

git worktree add --detach "$work/base" "$rev" >/dev/null
echo "building $rev ..." >&2
(cd "$work/base" && CARGO_TARGET_DIR="$top/target/bench-ab-base" \
    cargo bench -p switchd-benches --bench forwarding --no-run --message-format=json 2>/dev/null) |
    executable | tail -1 | xargs -I{} cp {} "$work/old"
echo "building the working tree ..." >&2
cargo bench -p switchd-benches --bench forwarding --no-run --message-format=json 2>/dev/null |
    executable | tail -1 | xargs -I{} cp {} "$work/new"

for r in $(seq 1 "$rounds"); do
    echo "round $r of $rounds ..." >&2
    for v in old new; do
        "$work/$v" --bench "$filter" --measurement-time 3 --warm-up-time 1 --noplot 2>/dev/null |
            tr -s ' ' | awk -v v="$v" '
                /^[a-z_]+\/[^ ]*( |$)/ { name = $1 }
                /time: \[/ { if (name != "") { s = $0; sub(/.*time: \[/, "", s); split(s, a, " ");
                    x = a[3]; u = a[4]; if (u == "µs") x *= 1000; if (u == "ms") x *= 1e6;
                    print v, name, x; name = "" } }'
    done
done | python3 -c '
import collections, statistics, sys
d = collections.defaultdict(list)
for line in sys.stdin:
    v, name, x = line.split()
    d[(name, v)].append(float(x))
print("| benchmark (ns per 64-frame batch) | base min | base median | now min | now median | now/base (min) | now/base (median) |")
print("|---|---|---|---|---|---|---|")
for name in sorted({k[0] for k in d}):
    o, n = d.get((name, "old")), d.get((name, "new"))
    if not o or not n:
        where = "the base" if o else "the working tree"
        print(f"| {name} | only in {where} | | | | | |")
        continue
    print(f"| {name} | {min(o):.0f} | {statistics.median(o):.0f} | {min(n):.0f} | {statistics.median(n):.0f} | {min(n)/min(o):.3f} | {statistics.median(n)/statistics.median(o):.3f} |")
'

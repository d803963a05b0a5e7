#!/usr/bin/env bash
# Build the libFuzzer targets in fuzz/ with coverage instrumentation and run each for a
# while. `scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]` (default 10 s, all targets).
#
# The instrumentation is what cargo-fuzz passes (sancov with inline 8-bit counters, PC
# table and compare tracing) on the stable toolchain, without AddressSanitizer: the code
# under test is safe Rust, so what the fuzzer hunts is panics (failed invariants,
# out-of-bounds indexing, overflow: debug assertions and overflow checks are on).
# libFuzzer itself is built by the libfuzzer-sys crate with the system C++ compiler.
# Crashers land in fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/TARGET/ (not
# in git), starting from the seeds in fuzz/seeds/TARGET/. Each target's executions and
# coverage are printed at the end, and in target/fuzz-stats.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(forward tunnel segment control cni config membership policy)
host="$(rustc -vV | sed -n 's/^host: //p')"
sancov="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# --target keeps the instrumentation off build scripts and proc macros; RUSTFLAGS only
# for this build (the seeds come from the normal build).
RUSTFLAGS="$sancov" cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" \
    --target-dir fuzz/target --bins
cargo run --release -p switchd --example fuzz_seeds -- fuzz/seeds
: > target/fuzz-stats.txt
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="target/fuzz-$t.log"
    if ! "fuzz/target/$host/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" -timeout=10 -rss_limit_mb=2048 \
        "fuzz/corpus/$t" "fuzz/seeds/$t" > "$log" 2>&1; then
        tail -40 "$log" >&2
        echo "scripts/fuzz.sh: $t found a crash; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(ls "fuzz/corpus/$t" | wc -l)
    printf '%-8s %12s execs  cov %6s  features %6s  corpus %5s  (%s s)\n' "$t" "$execs" "$cov" "$ft" "$corpus" "$seconds" | tee -a target/fuzz-stats.txt
done

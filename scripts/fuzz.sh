#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ and runs each for a bounded time; fails on any crash,
# panic, timeout or out-of-memory. Usage:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, every target)
#
# It builds the targets the way `cargo fuzz build --sanitizer none --debug-assertions`
# does (the same RUSTFLAGS, release, one target triple so that build scripts are not
# instrumented), so it needs neither cargo-fuzz nor a nightly toolchain: libFuzzer comes
# from the libfuzzer-sys crate. Each target starts from its committed seeds in
# fuzz/corpus/<target>/ and the regression inputs in fuzz/regressions/<target>/; what
# it discovers goes to a scratch corpus under target/fuzz/, never into the repository.
# A crashing input is saved to fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ with the fix, so `cargo test` replays it for good.
#
# FUZZ_JOBS=N runs N targets at a time (default 1; CI machines have 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
shift || true
all_targets=(peer_frame handshake cluster_file http_request persist_records)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")

# SanitizerCoverage for libFuzzer's feedback, comparisons traced, `cfg(fuzzing)`: the
# flags of `cargo fuzz build --sanitizer none`. scripts/fuzz-rustc.sh adds them to
# meshkv's own crates only, and fuzz/Cargo.toml turns meshkv's debug assertions and
# overflow checks on, so dependencies compile as in `cargo build --release` and are
# reused from it (CI builds that first); `cargo fuzz` instruments everything.
export FUZZ_RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing"

started=$(date +%s)
RUSTC_WRAPPER="$PWD/scripts/fuzz-rustc.sh" CARGO_TARGET_DIR="$PWD/target" \
    cargo build --release --locked --manifest-path fuzz/Cargo.toml --bins
echo "fuzz targets built in $(($(date +%s) - started)) s"

bin_dir="target/release"
scratch="target/fuzz"
run_one() {
    local target="$1" work="$scratch/corpus/$1" artifacts="fuzz/artifacts/$1/"
    local seeds=("fuzz/corpus/$target")
    [ -d "fuzz/regressions/$target" ] && seeds+=("fuzz/regressions/$target")
    mkdir -p "$work" "$artifacts"
    # -timeout: an input that takes 10 s is a hang (every deadline in the targets is
    # far longer than the work). -rss_limit_mb: a parser that allocates what a length
    # field claims shows up here. Output goes to a log; its tail is shown on failure.
    if "$bin_dir/$target" "$work" "${seeds[@]}" \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts" -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        printf '%-14s ok: %s executions in %s s\n' "$target" \
            "$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")" \
            "$seconds"
    else
        echo "$target FAILED; the input is in $artifacts; log tail:" >&2
        tail -n 40 "$scratch/$target.log" >&2
        return 1
    fi
}

failed=0
jobs="${FUZZ_JOBS:-1}"
pids=()
for target in "${targets[@]}"; do
    run_one "$target" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
echo "fuzzing done in $(($(date +%s) - started)) s"
exit "$failed"

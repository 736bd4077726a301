#!/usr/bin/env bash
# Runs every `meshkv test` suite at reduced sizes against a real 4-node cluster, with
# real nftables partitions, then the narrated partition-heal demo once. Each suite runs
# under the default --expect ap (meshkv's promises; docs/testing.md lists every check)
# and its exit status carries its checks (0: they hold):
#   consistency       zero violations, stale reads or lost writes on a healthy cluster
#   failure           the same, zero failed requests to the live nodes, and the killed
#                     node reads its own writes as soon as it answers again
#   partition         the partition took effect (command status, /v1/cluster views),
#                     both sides accepted their write, convergence after the heal, the
#                     later write wins on every node (divergence is a figure)
#   stress-partition  a clean phase before the partition, every request served, then
#                     convergence and every key's last acknowledged write on every node
#                     (violations while partitioned and just after are reported)
#   throughput        no request failed
# Needs root and nft. Used by .ci/run; usable by hand. JSON results go to the run dir.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
export MESHKV_BIN=$PWD/target/release/meshkv
export MESHKV_RUN_DIR=${MESHKV_RUN_DIR:-$(mktemp -d /tmp/meshkv-ci.XXXXXX)}
cluster=$MESHKV_RUN_DIR/cluster.toml
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT

scripts/cluster.sh up 4
run() {
    local suite=$1
    shift
    echo
    echo "--- meshkv test $suite $*"
    "$MESHKV_BIN" test "$suite" --cluster "$cluster" --json "$MESHKV_RUN_DIR/$suite.json" "$@"
}
run consistency --rounds 100
run failure --rounds 150
run partition
run stress-partition --rounds 200
run throughput --ops 300
scripts/cluster.sh down

echo
echo "--- scripts/partition-heal-demo.sh"
DEMO_PAUSE=0 scripts/partition-heal-demo.sh
echo
echo "every suite passed its checks; results in $MESHKV_RUN_DIR"

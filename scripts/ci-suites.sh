#!/usr/bin/env bash
# Runs every `meshkv test` suite at reduced sizes against a real 4-node cluster, with
# real nftables partitions, then the narrated partition-heal demo once. Each suite's
# exit status carries its checks (0: they hold):
#   consistency       zero violations on a healthy cluster
#   failure           zero violations, zero failed requests to the live nodes
#   partition         divergence during the partition, convergence after the heal,
#                     the later write wins on every node
#   stress-partition  convergence after the heal, the final value of every key is its
#                     last acknowledged write on every node (violations during the
#                     partition are reported, not failed)
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

# shellcheck shell=bash
# Shared by cluster.sh, nemesis.sh and partition-heal-demo.sh (sourced, not run).
#
# Owns: the run directory layout, reading the cluster file, starting one node, waiting
# for a node's /health, and one-sentence errors.
#
# Run directory (${MESHKV_RUN_DIR:-/tmp/meshkv-run}):
#   cluster.toml   the cluster file every node was started with
#   bin            absolute path of the meshkv binary the nodes run
#   ID.pid         PID of node ID (removed by `cluster.sh down`)
#   ID.log         its stdout and stderr (appended on restart)

shopt -s inherit_errexit # a failing $(...) stops the script too
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
RUN_DIR=${MESHKV_RUN_DIR:-/tmp/meshkv-run}
RUN_CLUSTER_FILE=$RUN_DIR/cluster.toml
# The file the IPs and addresses are read from (the suites pass theirs).
CLUSTER_FILE=${MESHKV_CLUSTER:-$RUN_CLUSTER_FILE}
NFT_TABLE=meshkv_nemesis
PROG=$(basename "$0")

die() {
    echo "$PROG: $*" >&2
    exit 1
}

usage() {
    echo "$USAGE" >&2
    exit 2
}

say() {
    echo "$PROG: $*" >&2
}

# The meshkv binary: $MESHKV_BIN, else target/release/meshkv from here or the repository.
resolve_bin() {
    local bin=${MESHKV_BIN:-target/release/meshkv}
    if [[ $bin != /* && ! -x $bin && -x $REPO_DIR/$bin ]]; then
        bin=$REPO_DIR/$bin
    fi
    [[ -x $bin ]] || die "the meshkv binary $bin is missing; build it with 'cargo build --release' or set MESHKV_BIN."
    echo "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
}

# Prints "id http peer" for every [[nodes]] entry of the cluster file $1 (default: CLUSTER_FILE).
nodes_of() {
    local file=${1:-$CLUSTER_FILE}
    [[ -f $file ]] || die "there is no cluster file at $file; start a cluster with 'scripts/cluster.sh up N'."
    awk '
        function val(line) { sub(/^[^=]*=[[:space:]]*"/, "", line); sub(/".*/, "", line); return line }
        function flush() { if (id != "") print id, http, peer; id = ""; http = ""; peer = "" }
        /^[[:space:]]*\[\[nodes\]\]/ { flush(); in_nodes = 1; next }
        /^[[:space:]]*\[/ { flush(); in_nodes = 0; next }
        in_nodes && /^[[:space:]]*id[[:space:]]*=/ { id = val($0) }
        in_nodes && /^[[:space:]]*http[[:space:]]*=/ { http = val($0) }
        in_nodes && /^[[:space:]]*peer[[:space:]]*=/ { peer = val($0) }
        END { flush() }
    ' "$file"
}

# The "id http peer" line of node $1.
node_line() {
    local line
    line=$(nodes_of "${2:-$CLUSTER_FILE}" | awk -v id="$1" '$1 == id')
    [[ -n $line ]] || die "node $1 is not in ${2:-$CLUSTER_FILE}."
    echo "$line"
}

# HTTP address of node $1 (from the run directory's cluster file).
node_http() {
    node_line "$1" "$RUN_CLUSTER_FILE" | awk '{print $2}'
}

# PID of node $1 if its process is alive and is a meshkv node, else nothing.
node_pid() {
    local pidfile=$RUN_DIR/$1.pid pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ -r /proc/$pid/cmdline ]] || return 0
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
    if [[ $cmdline == *"serve --cluster $RUN_CLUSTER_FILE --node $1 "* ]]; then
        echo "$pid"
    fi
}

# Process state letter of PID $1 (R, S, T = stopped, Z...).
pid_state() {
    awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true
}

# Starts node $1 in the background with the run directory's cluster file and binary.
start_node() {
    local id=$1 bin
    bin=$(cat "$RUN_DIR/bin" 2>/dev/null) || die "no binary recorded in $RUN_DIR/bin; start the cluster with 'scripts/cluster.sh up N'."
    [[ -x $bin ]] || die "the recorded binary $bin is missing."
    echo "--- $(date '+%F %T') starting $id" >>"$RUN_DIR/$id.log"
    # setsid: the node survives the shell that started it and its Ctrl-C.
    setsid "$bin" serve --cluster "$RUN_CLUSTER_FILE" --node "$id" \
        </dev/null >>"$RUN_DIR/$id.log" 2>&1 &
    echo $! >"$RUN_DIR/$id.pid"
}

# Waits (at most $2 seconds, default 10) until node $1 answers /health with "ok".
wait_healthy() {
    local id=$1 seconds=${2:-10} http pid tries
    http=$(node_http "$id")
    tries=$((seconds * 10))
    for ((i = 0; i < tries; i++)); do
        if [[ $(curl -s -m 1 "http://$http/health" 2>/dev/null) == ok ]]; then
            return 0
        fi
        pid=$(node_pid "$id")
        if [[ -z $pid ]]; then
            die "node $id exited before serving: $(tail -n 1 "$RUN_DIR/$id.log" 2>/dev/null)"
        fi
        sleep 0.1
    done
    die "node $id did not answer http://$http/health within $seconds s; see $RUN_DIR/$id.log."
}

need_root_and_nft() {
    [[ $(id -u) -eq 0 ]] || die "$1 needs root (nftables); run it with sudo."
    command -v nft >/dev/null 2>&1 || die "$1 needs nftables, but the nft command is not installed."
}

nft_table_exists() {
    nft list table inet "$NFT_TABLE" >/dev/null 2>&1
}

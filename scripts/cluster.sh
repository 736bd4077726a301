#!/usr/bin/env bash
# Starts, stops and shows a local meshkv cluster on 127.0.0.11.. (one IP per node, so
# that scripts/nemesis.sh can partition them with nftables).
#
#   scripts/cluster.sh up N     write the cluster file for N nodes (n1..nN, http
#                               127.0.0.1X:700X, peer 127.0.0.1X:710X), start them, wait
#                               for /health, print the cluster file's path on stdout
#   scripts/cluster.sh down     stop every node (SIGTERM, SIGKILL after 5 s) and remove
#                               the meshkv_nemesis nftables table
#   scripts/cluster.sh status   each node's pid, whether it is alive, its /v1/convergence
#
# Environment: MESHKV_RUN_DIR (default /tmp/meshkv-run), MESHKV_BIN (default
# target/release/meshkv), MESHKV_TOKENS_FILE (for `up`: a client tokens file, which the
# cluster file then names in client_tokens_file; `status` sends $MESHKV_TOKEN if set).
set -euo pipefail
USAGE="usage: scripts/cluster.sh up N | down | status   (N from 1 to 9)"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# This script always works on the run directory's own cluster file.
CLUSTER_FILE=$RUN_CLUSTER_FILE

running_nodes() {
    local id
    [[ -f $RUN_CLUSTER_FILE ]] || return 0
    while read -r id _; do
        if [[ -n $(node_pid "$id") ]]; then echo "$id"; fi
    done < <(nodes_of "$RUN_CLUSTER_FILE")
}

up() {
    local count=$1 bin id ip http peer
    [[ $count =~ ^[1-9]$ ]] || usage
    bin=$(resolve_bin)
    if [[ -n $(running_nodes) ]]; then
        die "a cluster is already running in $RUN_DIR ($(running_nodes | tr '\n' ' ')); stop it with 'scripts/cluster.sh down'."
    fi
    mkdir -p "$RUN_DIR"
    : >"$RUN_CLUSTER_FILE.tmp"
    if [[ -n ${MESHKV_TOKENS_FILE:-} ]]; then
        [[ -f $MESHKV_TOKENS_FILE ]] || die "there is no tokens file at $MESHKV_TOKENS_FILE."
        printf 'client_tokens_file = "%s"\n\n' "$(cd "$(dirname "$MESHKV_TOKENS_FILE")" && pwd)/$(basename "$MESHKV_TOKENS_FILE")" >>"$RUN_CLUSTER_FILE.tmp"
    fi
    for ((i = 1; i <= count; i++)); do
        ip=127.0.0.$((10 + i))
        http=$ip:$((7000 + i))
        peer=$ip:$((7100 + i))
        if curl -s -m 1 "http://$http/health" >/dev/null 2>&1; then
            rm -f "$RUN_CLUSTER_FILE.tmp"
            die "something already answers on http://$http; stop it before starting a cluster."
        fi
        printf '[[nodes]]\nid = "n%d"\nhttp = "%s"\npeer = "%s"\n\n' "$i" "$http" "$peer" >>"$RUN_CLUSTER_FILE.tmp"
    done
    mv "$RUN_CLUSTER_FILE.tmp" "$RUN_CLUSTER_FILE"
    echo "$bin" >"$RUN_DIR/bin"
    rm -f "$RUN_DIR"/*.pid
    # If a node fails to start, stop the ones already started.
    trap 'say "startup failed; stopping the nodes it started"; down >/dev/null 2>&1 || true' EXIT
    while read -r id http _; do
        start_node "$id"
        say "started $id (pid $(cat "$RUN_DIR/$id.pid"), http://$http, log $RUN_DIR/$id.log)"
    done < <(nodes_of)
    while read -r id _; do
        wait_healthy "$id" 10
    done < <(nodes_of)
    trap - EXIT
    say "$count nodes answer /health; cluster file:"
    echo "$RUN_CLUSTER_FILE"
}

down() {
    local id pid pids=() stopped=0
    if [[ -f $RUN_CLUSTER_FILE ]]; then
        while read -r id _; do
            pid=$(node_pid "$id")
            if [[ -n $pid ]]; then
                kill -CONT "$pid" 2>/dev/null || true # a paused node cannot handle SIGTERM
                kill -TERM "$pid" 2>/dev/null || true
                pids+=("$pid")
            fi
            rm -f "$RUN_DIR/$id.pid"
        done < <(nodes_of "$RUN_CLUSTER_FILE")
    fi
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 50; i++)); do
            [[ -d /proc/$pid && $(pid_state "$pid") != Z ]] || break
            sleep 0.1
        done
        if [[ -d /proc/$pid && $(pid_state "$pid") != Z ]]; then
            say "pid $pid did not stop within 5 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        stopped=$((stopped + 1))
    done
    if [[ $(id -u) -eq 0 ]] && command -v nft >/dev/null 2>&1 && nft_table_exists; then
        nft delete table inet "$NFT_TABLE"
        say "removed the nftables table inet $NFT_TABLE"
    fi
    say "stopped $stopped nodes (logs kept in $RUN_DIR)"
}

status() {
    local id http pid state convergence
    [[ -f $RUN_CLUSTER_FILE ]] || die "no cluster in $RUN_DIR; start one with 'scripts/cluster.sh up N'."
    printf '%-4s %-8s %-8s %-22s %s\n' node pid state http convergence
    while read -r id http _; do
        pid=$(node_pid "$id")
        if [[ -z $pid ]]; then
            state=dead
        elif [[ $(pid_state "$pid") == T ]]; then
            state=paused
        else
            state=alive
        fi
        convergence=$(curl -s -m 1 ${MESHKV_TOKEN:+-H "Authorization: Bearer $MESHKV_TOKEN"} "http://$http/v1/convergence" 2>/dev/null) || convergence=unreachable
        printf '%-4s %-8s %-8s %-22s %s\n' "$id" "${pid:--}" "$state" "$http" "${convergence:-unreachable}"
    done < <(nodes_of "$RUN_CLUSTER_FILE")
    if [[ $(id -u) -eq 0 ]] && command -v nft >/dev/null 2>&1 && nft_table_exists; then
        echo "partition in force (nftables table inet $NFT_TABLE):"
        nft list table inet "$NFT_TABLE" | grep -E 'saddr' | sed 's/^[[:space:]]*/  /'
    fi
}

case ${1:-} in
up)
    [[ $# -eq 2 ]] || usage
    up "$2"
    ;;
down)
    [[ $# -eq 1 ]] || usage
    down
    ;;
status)
    [[ $# -eq 1 ]] || usage
    status
    ;;
*) usage ;;
esac

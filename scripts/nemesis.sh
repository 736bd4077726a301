#!/usr/bin/env bash
# Fault injection for a cluster started by scripts/cluster.sh (and the default fault
# commands of `meshkv test`).
#
#   scripts/nemesis.sh kill NODE        SIGKILL the node
#   scripts/nemesis.sh restart NODE     start it again (same arguments and log), wait for /health
#   scripts/nemesis.sh pause NODE       SIGSTOP
#   scripts/nemesis.sh resume NODE      SIGCONT
#   scripts/nemesis.sh partition "n1,n2|n3,n4"
#                                       drop every packet between the groups' IPs, both
#                                       ways (nftables table inet meshkv_nemesis, input
#                                       hook); client traffic from 127.0.0.1 is untouched;
#                                       replaces any previous partition
#   scripts/nemesis.sh heal             remove the table
#
# PID files come from ${MESHKV_RUN_DIR:-/tmp/meshkv-run}; node IPs from the cluster file
# ${MESHKV_CLUSTER:-$MESHKV_RUN_DIR/cluster.toml}. Partitions need root and nft.
set -euo pipefail
USAGE='usage: scripts/nemesis.sh kill|restart|pause|resume NODE | partition "n1,n2|n3,n4" | heal'
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

running_pid() {
    local pid
    node_line "$1" "$RUN_CLUSTER_FILE" >/dev/null
    pid=$(node_pid "$1")
    [[ -n $pid ]] || die "node $1 is not running (no live process in $RUN_DIR/$1.pid)."
    echo "$pid"
}

kill_node() {
    local pid
    pid=$(running_pid "$1")
    kill -KILL "$pid"
    for ((i = 0; i < 50; i++)); do
        [[ -d /proc/$pid && $(pid_state "$pid") != Z ]] || break
        sleep 0.1
    done
    say "killed $1 (pid $pid)"
}

restart_node() {
    local pid
    node_line "$1" "$RUN_CLUSTER_FILE" >/dev/null
    pid=$(node_pid "$1")
    [[ -z $pid ]] || die "node $1 is still running (pid $pid); kill it first."
    start_node "$1"
    wait_healthy "$1" 10
    say "restarted $1 (pid $(cat "$RUN_DIR/$1.pid"))"
}

signal_node() {
    local pid
    pid=$(running_pid "$2")
    kill "-$1" "$pid"
    say "sent SIG$1 to $2 (pid $pid)"
}

# The IP of node $1's peer address (IPv4 only).
peer_ip() {
    local peer ip
    peer=$(node_line "$1" | awk '{print $3}')
    [[ -n $peer ]] || die "node $1 has no peer address in $CLUSTER_FILE; nemesis.sh cuts node-to-node traffic by peer IP, so pass your own --partition-cmd/--heal-cmd for this store."
    ip=${peer%:*}
    [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "node $1's peer address $peer is not IPv4; nemesis.sh partitions IPv4 addresses only."
    echo "$ip"
}

partition() {
    local spec=$1 group id ip rules="" seen=" " all_ips=" "
    local -a groups sets=()
    need_root_and_nft "partition"
    [[ $spec == *"|"* ]] || die "a partition needs at least two groups separated by '|', like \"n1,n2|n3,n4\"."
    IFS='|' read -r -a groups <<<"$spec"
    for group in "${groups[@]}"; do
        [[ -n $group ]] || die "empty group in \"$spec\"."
        local ips=""
        IFS=',' read -r -a members <<<"$group"
        for id in "${members[@]}"; do
            [[ $id =~ ^[a-z0-9_-]{1,32}$ ]] || die "\"$id\" is not a node id."
            [[ $seen != *" $id "* ]] || die "node $id appears in two groups."
            seen+="$id "
            ip=$(peer_ip "$id")
            [[ $all_ips != *" $ip "* ]] || die "two nodes share the IP $ip, so nftables cannot separate them."
            all_ips+="$ip "
            ips+="${ips:+, }$ip"
        done
        sets+=("$ips")
    done
    for ((a = 0; a < ${#sets[@]}; a++)); do
        for ((b = 0; b < ${#sets[@]}; b++)); do
            if ((a != b)); then
                rules+="        ip saddr { ${sets[a]} } ip daddr { ${sets[b]} } drop"$'\n'
            fi
        done
    done
    # One transaction: create (if absent), delete, and define the table again.
    nft -f - <<EOF
table inet $NFT_TABLE
delete table inet $NFT_TABLE
table inet $NFT_TABLE {
    chain input {
        type filter hook input priority -10; policy accept;
$rules    }
}
EOF
    say "partitioned $spec"
}

heal() {
    need_root_and_nft "heal"
    if nft_table_exists; then
        nft delete table inet "$NFT_TABLE"
        say "healed (removed table inet $NFT_TABLE)"
    else
        say "nothing to heal (no table inet $NFT_TABLE)"
    fi
}

case ${1:-} in
kill | restart | pause | resume)
    [[ $# -eq 2 ]] || usage
    case $1 in
    kill) kill_node "$2" ;;
    restart) restart_node "$2" ;;
    pause) signal_node STOP "$2" ;;
    resume) signal_node CONT "$2" ;;
    esac
    ;;
partition)
    [[ $# -eq 2 ]] || usage
    partition "$2"
    ;;
heal)
    [[ $# -eq 1 ]] || usage
    heal
    ;;
*) usage ;;
esac

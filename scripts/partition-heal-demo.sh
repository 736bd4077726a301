#!/usr/bin/env bash
# A narrated demonstration of a partition and its healing, for a person watching:
#
#   1. start 4 nodes (scripts/cluster.sh up 4)
#   2. write a few keys and show that every node agrees (meshkv check)
#   3. cut the cluster in two, {n1,n2} | {n3,n4} (scripts/nemesis.sh partition)
#   4. write different values for the same keys on both sides, the n3/n4 side later
#   5. show that the digests differ and what each side answers
#   6. heal, time how long until `meshkv check` reports convergence
#   7. show which write won on every node: the later one
#
# Everything it started (nodes, nftables table) is stopped on exit. Exit status: 0 when
# the cluster converged and the later write won everywhere, 1 otherwise, 2 on bad usage.
# Needs root (nftables). Environment: MESHKV_BIN, MESHKV_RUN_DIR, DEMO_PAUSE (seconds
# between steps, default 1).
set -euo pipefail
USAGE="usage: sudo scripts/partition-heal-demo.sh   (no arguments; DEMO_PAUSE=0 to go fast)"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -eq 0 ]] || usage
PAUSE=${DEMO_PAUSE:-1}
[[ $PAUSE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "DEMO_PAUSE must be a number of seconds."

BIN=$(resolve_bin)
need_root_and_nft "the partition-heal demo"

STARTED=0
PARTITIONED=0
# shellcheck disable=SC2317  # invoked by the EXIT/INT/TERM trap below
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((PARTITIONED)); then
        "$SCRIPT_DIR/nemesis.sh" heal >/dev/null 2>&1 || true
    fi
    if ((STARTED)); then
        echo
        echo "Cleaning up: stopping the nodes and removing the nftables table."
        "$SCRIPT_DIR/cluster.sh" down 2>&1 | sed 's/^/  /' || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STEP=0
step() {
    STEP=$((STEP + 1))
    sleep "$PAUSE"
    printf '\n\033[1m== Step %d: %s\033[0m\n' "$STEP" "$1"
}
narrate() { printf '%s\n' "$*"; }
# Shows a command, then runs it (its output indented).
show() {
    local arg line=""
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=,@+-]+$ ]]; then line+=" $arg"; else line+=" '$arg'"; fi
    done
    printf '  $%s\n' "$line"
    "$@" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

HTTP=()
IDS=()
digest_of() {
    curl -s -m 2 "http://$1/v1/convergence" | grep -o '"digest":"[^"]*"' | cut -d'"' -f4 || true
}
show_digests() {
    local i
    for i in "${!IDS[@]}"; do
        printf '    %s  digest %s\n' "${IDS[i]}" "$(digest_of "${HTTP[i]}")"
    done
}
value_on() {
    "$BIN" get "$2" --node "http://$1" 2>/dev/null || echo "(absent or unreachable)"
}

KEYS=(color shape size)
LEFT_VALUES=(red circle small)
RIGHT_VALUES=(blue square large)

# ---------------------------------------------------------------------------
step "start a cluster of 4 nodes"
narrate "Each node gets its own loopback IP (127.0.0.11 to 127.0.0.14), so that nftables"
narrate "can cut the links between them while this script, on 127.0.0.1, still reaches all."
FILE=$("$SCRIPT_DIR/cluster.sh" up 4)
STARTED=1
narrate "Cluster file: $FILE"
while read -r id http _; do
    IDS+=("$id")
    HTTP+=("$http")
done < <(nodes_of "$FILE")
sed 's/^/    /' "$FILE" | grep -v '^ *$'

# ---------------------------------------------------------------------------
step "write some keys through n1 and check that every node agrees"
for k in "${!KEYS[@]}"; do
    show "$BIN" put "${KEYS[k]}" "initial-${KEYS[k]}" --node "http://${HTTP[0]}"
done
narrate "meshkv check asks every node for the digest of its whole state:"
show "$BIN" check --cluster "$FILE" --wait 10s || die "the fresh cluster did not converge."
show_digests

# ---------------------------------------------------------------------------
step "partition the cluster: {n1,n2} | {n3,n4}"
narrate "Packets between the two groups' IPs are now dropped in both directions."
PARTITIONED=1
show "$SCRIPT_DIR/nemesis.sh" partition "n1,n2|n3,n4"
show nft list table inet "$NFT_TABLE"

# ---------------------------------------------------------------------------
step "write different values for the same keys on each side (the n3/n4 side later)"
for k in "${!KEYS[@]}"; do
    show "$BIN" put "${KEYS[k]}" "${LEFT_VALUES[k]}" --node "http://${HTTP[0]}"
done
narrate "(waiting a second, so that the other side's writes are clearly later)"
sleep 1
for k in "${!KEYS[@]}"; do
    show "$BIN" put "${KEYS[k]}" "${RIGHT_VALUES[k]}" --node "http://${HTTP[2]}"
done

# ---------------------------------------------------------------------------
step "the two sides now disagree"
sleep 1
narrate "Digests (n1 = n2, n3 = n4, but the two pairs differ):"
show_digests
narrate "What each node answers:"
for k in "${!KEYS[@]}"; do
    printf '    %-6s' "${KEYS[k]}"
    for i in "${!IDS[@]}"; do
        printf '  %s=%-8s' "${IDS[i]}" "$(value_on "${HTTP[i]}" "${KEYS[k]}")"
    done
    echo
done
narrate "meshkv check without waiting reports the disagreement (exit status 1):"
if show "$BIN" check --cluster "$FILE"; then
    die "the sides did not diverge: the partition had no effect."
fi

# ---------------------------------------------------------------------------
step "heal the partition and time the convergence"
show "$SCRIPT_DIR/nemesis.sh" heal
PARTITIONED=0
HEALED=$(now_ms)
narrate "Anti-entropy now repairs both sides without any client traffic."
if show "$BIN" check --cluster "$FILE" --wait 30s; then
    CONVERGED=1
else
    CONVERGED=0
fi
ELAPSED=$(($(now_ms) - HEALED))
if ((CONVERGED)); then
    narrate "Converged ${ELAPSED} ms after the heal."
else
    narrate "NOT converged ${ELAPSED} ms after the heal."
fi
show_digests

# ---------------------------------------------------------------------------
step "which write won on every node?"
LATER_WON=1
for k in "${!KEYS[@]}"; do
    printf '    %-6s' "${KEYS[k]}"
    for i in "${!IDS[@]}"; do
        value=$(value_on "${HTTP[i]}" "${KEYS[k]}")
        printf '  %s=%-8s' "${IDS[i]}" "$value"
        [[ $value == "${RIGHT_VALUES[k]}" ]] || LATER_WON=0
    done
    echo "   (later write: ${RIGHT_VALUES[k]})"
done

echo
if ((CONVERGED && LATER_WON)); then
    narrate "RESULT: every node converged ${ELAPSED} ms after the heal, and the later write (the n3/n4 side's) won everywhere."
    exit 0
fi
((CONVERGED)) || narrate "RESULT: the cluster did not converge within 30 s of the heal."
((LATER_WON)) || narrate "RESULT: the later write did not win on every node."
exit 1

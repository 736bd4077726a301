#!/usr/bin/env bash
# bench/session.sh - the cost of a Meshkv-Session token on the hot path. Four nodes
# (all on CPU $SERVER_CPU), wrk (CPU $CLIENT_CPU, 64 connections, 100-byte values, keys
# k1..k1000) against n1 at ?consistency=one, rows interleaved, ROUNDS rounds:
#   get, put                 no token
#   get-token, put-token     a token of 4 origins (the session wrote once on every node
#                            before the keys were written): settled by n1's own register
#   get-token-fetch          a token whose n2..n4 bounds are newer than every key's
#                            register on n1: every read asks the peers (the slow path)
#
#   cargo build --release && bash bench/session.sh [BIN]
# Compare the ratios within a round; quote the median of the rounds.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(readlink -f "${1:-target/release/meshkv}")
DUR=${DUR:-5}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
NET=${NET:-127.0.0.6}
WORK=$(mktemp -d /tmp/meshkv-session.XXXXXX)
PIDS=()
for i in 1 2 3 4; do
  printf '[[nodes]]\nid = "n%s"\nhttp = "%s%s:746%s"\npeer = "%s%s:756%s"\n' \
    "$i" "$NET" "$i" "$i" "$NET" "$i" "$i" >>"$WORK/cluster.toml"
done
cleanup() { for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
for i in 1 2 3 4; do
  taskset -c "$SERVER_CPU" "$BIN" serve --cluster "$WORK/cluster.toml" --node "n$i" \
    >"$WORK/n$i.log" 2>&1 & PIDS+=($!)
done
url() { echo "http://${NET}$1:746$1"; }
for i in 1 2 3 4; do
  for _ in $(seq 100); do curl -sf "$(url "$i")/health" >/dev/null && break; sleep 0.1; done
done
# put NODE KEY [TOKEN]: prints the answer's token.
put() { curl -s -D - -o /dev/null -X PUT --data x ${3:+-H "Meshkv-Session: $3"} \
  "$(url "$1")/v1/kv/$2" | tr -d '\r' | awk -F': ' 'tolower($1)=="meshkv-session" {print $2}'; }
T=""
for i in 2 3 4 1; do T=$(put "$i" "seed$i" "$T"); done
EARLY=$T
VALUE=$(head -c 100 /dev/zero | tr '\0' v)
for k in $(seq 1000); do curl -s -X PUT --data "$VALUE" "$(url 1)/v1/kv/k$k" >/dev/null; done
echo "4-node token ($(printf %s "$EARLY" | wc -c) bytes): $EARLY"
run() { # tag op token
  KV_OP=$2 KV_SESSION=$3 KV_TAG=$1 KV_QUERY=consistency=one taskset -c "$CLIENT_CPU" \
    wrk -t1 -c64 -d"${DUR}s" -s "$HERE/kv.lua" "$(url 1)" | grep '^ANCHOR'
}
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  # Newer than every key's register on n1 (the put rows of the last round rewrote them).
  LATE=$EARLY; for i in 2 3 4; do LATE=$(put "$i" "late$i" "$LATE"); done
  run get get ""; run get-token get "$EARLY"; run get-token-fetch get "$LATE"
  run put put ""; run put-token put "$EARLY"
done

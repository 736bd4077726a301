#!/usr/bin/env bash
# bench/memory.sh - resident memory per key of one node holding KEYS keys (DESIGN.md §10).
#
#   cargo build --release && cargo build --release --example load && bash bench/memory.sh [BIN]
#
# Starts one node on ${NET}61:7461 (memory-only; DURABLE=1 gives it a fresh --data-dir),
# writes keys k1..kKEYS once each with VALUE-byte values through the HTTP API
# (examples/load.rs, 64 concurrent writers), reads every 1000th key back, and reads the
# node's VmRSS. Durable: then stops the node cleanly, restarts it on the same directory
# and reads VmRSS again (the state rebuilt from the log alone).
# Prints bytes per key (whole resident set / keys, and the same less an empty node's) and
# the ratio to key + value + version (counted as 16 bytes: wall_ms, logical, node).
set -uo pipefail
BIN=$(readlink -f "${1:-target/release/meshkv}")
LOAD=$(readlink -f "${LOAD:-target/release/examples/load}")
KEYS=${KEYS:-1000000}
VALUE=${VALUE:-100}
NET=${NET:-127.0.0.1}
ADDR=${NET}61:7461
WORK=$(mktemp -d /tmp/meshkv-memory.XXXXXX)
PID=
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
stop() { local i; [[ -n $PID ]] || return 0; kill -TERM "$PID" 2>/dev/null
  for i in $(seq 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && kill -KILL "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=; }
trap 'stop; rm -rf "$WORK"' EXIT; trap 'exit 130' INT TERM
[[ -x $BIN ]] || die "no binary $BIN"
[[ -x $LOAD ]] || die "no $LOAD (cargo build --release --example load)"
printf '[[nodes]]\nid = "n1"\nhttp = "%s"\npeer = "%s61:7561"\n' "$ADDR" "$NET" >"$WORK/c.toml"
extra=(); [[ -n ${DURABLE:-} ]] && extra=(--data-dir "$WORK/data")
start() { "$BIN" serve --cluster "$WORK/c.toml" --node n1 "${extra[@]}" >>"$WORK/node.log" 2>&1 & PID=$!
  local i; for i in $(seq 600); do curl -fs -o /dev/null "http://$ADDR/health" && return 0; sleep 0.1; done
  die "node did not start: $(tail -5 "$WORK/node.log")"; }
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$PID/status"; }
# Mean key length of k1..kKEYS, and the figure per key.
KEYLEN=$(awk -v n="$KEYS" 'BEGIN { s = 0; for (d = 1; 10 ^ (d - 1) <= n; d++) {
  lo = 10 ^ (d - 1); hi = (10 ^ d - 1 < n) ? 10 ^ d - 1 : n; s += (hi - lo + 1) * (d + 1) }
  printf "%.2f", s / n }')
report() { local what=$1 rss=$2 base=$3
  awk -v w="$what" -v r="$rss" -v b="$base" -v n="$KEYS" -v k="$KEYLEN" -v v="$VALUE" 'BEGIN {
    kvv = k + v + 16
    printf "%-28s %7.1f MB resident  %5.0f B/key (%.2fx key+value+version)  net of empty node %5.0f B/key (%.2fx)\n",
      w, r / 1e6, r / n, r / n / kvv, (r - b) / n, (r - b) / n / kvv }'; }

start
EMPTY=$(rss)
log "empty node: $((EMPTY / 1024)) KiB resident; loading $KEYS keys of $VALUE bytes"
"$LOAD" "http://$ADDR" "$KEYS" "$VALUE" 64 k || die "load failed"
for ((i = 1000; i <= KEYS; i += 1000)); do echo "url = \"http://$ADDR/v1/kv/k$i\""; echo "output = /dev/null"; done \
  >"$WORK/reads.curl"
curl -s -K "$WORK/reads.curl" || die "reads failed"
sleep 1
LOADED=$(rss)
echo "## one node, $KEYS keys (mean key $KEYLEN B), $VALUE-byte values${DURABLE:+, durable}; bin $BIN"
report "after the load" "$LOADED" "$EMPTY"
if [[ -n ${DURABLE:-} ]]; then
  stop
  start
  report "after a restart" "$(rss)" "$EMPTY"
fi

#!/usr/bin/env bash
# bench/perf.sh - meshkv beside the HTTP ceiling (bench/ceiling: bare axum with the same
# /v1/kv/{key} routes and no store), in one run: a store on this HTTP stack cannot beat
# the ceiling, so the ratio to it shows what meshkv's own code costs.
#
#   cargo build --release && bash bench/perf.sh [BIN]   (default BIN: target/release/meshkv)
#
# NET=127.0.0.1 (default) puts the ceiling on ${NET}31:7990 and node i on ${NET}4i:740i
# (peer port 750i); pick another NET if something else uses those addresses.
# Needs: wrk, curl, taskset, bc (apt-get install -y wrk curl bc), cargo. About 3 minutes.
# The host is noisy: read the ratio columns, not req/s, and take the median of 3 runs.
#
# Rows (servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU, 100-byte values, keys k1..k1000):
#   ceiling-get-1/2     bare axum GET at the start and the end (noise band)
#   ceiling-put         bare axum PUT
#   ceiling3-get/put    three bare axum processes on the server core, load spread over
#                       them (wrk -t3 -c63, as the 3-node rows): the floor of their p99
#   m1-put, m1-get      meshkv, one node
#   m3-put-live         meshkv, 3 nodes on one core, writes spread over the 3 (default consistency)
#   m3-put-one          same, ?consistency=one
#   m3-get              3 nodes, reads spread
#   m3-get-quorum       3 nodes, ?consistency=quorum reads
# DURABLE=1 gives every node a fresh --data-dir (default fsync policy); DUR=seconds per run (8).
# TOKENS=1 adds m1t-put, m1t-get: one node with client tokens on, every request carrying
# a write token (API.md §3.6), and a line with their ratios to m1-put, m1-get.
# srv CPU us/req sums every server process of the row. For the 3-node write rows the
# peer traffic (bytes and frames sent, from /metrics) is divided by the acked writes.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(readlink -f "${1:-target/release/meshkv}")
DUR=${DUR:-8}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
NET=${NET:-127.0.0.1}
WORK=$(mktemp -d /tmp/meshkv-perf.XXXXXX)
LUA=$HERE/kv.lua
RES=$WORK/results.tsv
PIDS=()
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
cleanup() { local p; for p in "${PIDS[@]}"; do stop_pid "$p"; done; PIDS=(); rm -rf "$WORK"/data-*; }
trap cleanup EXIT; trap 'exit 130' INT TERM
peer_sent() { local a v; for a in "$@"; do   # bytes and frames sent to peers, summed over nodes
  v=$(curl -s "http://$a/metrics" | awk '/^meshkv_peer_(bytes|frames)_total\{/ && /direction="sent"/ {
      if ($1 ~ /bytes/) b += $2; else f += $2 } END { printf "%d %d", b, f }'); echo "$v"; done |
  awk '{b += $1; f += $2} END {printf "%d %d", b, f}'; }
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RES"; }
run_wrk() {  # run_wrk NAME OP URL THREADS CONNS ADDRS QUERY
  local name=$1 op=$2 url=$3 t=$4 c=$5 addrs=${6:-} q=${7:-} line c0 c1 t0 t1
  log "wrk $name ($op${q:+?$q}, -t$t -c$c -d${DUR}s)"
  c0=$(srv_ticks); t0=$(date +%s%N)
  KV_OP=$op KV_TAG=$name KV_ADDRS=$addrs KV_QUERY=$q KV_KEYS=1000 KV_VALUE=100 \
    taskset -c "$CLIENT_CPU" timeout $((DUR + 30)) wrk -t"$t" -c"$c" -d"${DUR}s" --latency -s "$LUA" "$url" \
    >"$WORK/$name.wrk.txt" 2>&1
  t1=$(date +%s%N); c1=$(srv_ticks)
  line=$(grep '^ANCHOR' "$WORK/$name.wrk.txt" | tail -1)
  [[ -n $line ]] || { log "  no result"; record "$name" 0 0 0 FAILED 0 0 0 0; return; }
  local rps p50 p99 err nreq
  rps=$(sed -E 's/.* rps=([0-9]+).*/\1/' <<<"$line"); p50=$(sed -E 's/.* p50_us=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line"); err=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
  nreq=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$line")
  local cpu; cpu=$(awk -v dc=$((c1 - c0)) -v dt=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$nreq" \
    'BEGIN { c = dc / hz; printf "%.2f %.1f", c / (dt / 1e9), (n > 0 ? c * 1e6 / n : 0) }')
  LAST_NREQ=$nreq
  log "  $rps req/s p50 ${p50}us p99 ${p99}us errors $err cores/us-per-req $cpu"
  # shellcheck disable=SC2086 # $cpu is two fields
  record "$name" "$rps" "$p50" "$p99" "$err" $cpu 0 0
}
[[ -x $BIN ]] || die "no binary $BIN"
CEIL_TARGET=${TMPDIR:-/tmp}/meshkv-perf-ceiling
cargo build --release --quiet --manifest-path "$HERE/ceiling/Cargo.toml" --target-dir "$CEIL_TARGET" || die "ceiling build failed"
CEIL=$CEIL_TARGET/release/ceiling
: >"$RES"

start_bg ceiling "$SERVER_CPU" "$CEIL" "${NET}31:7990"; CEIL_PID=$LAST_PID
wait_http "http://${NET}31:7990/v1/kv/probe" || die "ceiling did not start"
SRV_PIDS=("$CEIL_PID")
KV_OP="get" taskset -c "$CLIENT_CPU" timeout 20 wrk -t1 -c"$CONNS" -d2s -s "$LUA" "http://${NET}31:7990/" >/dev/null 2>&1
run_wrk ceiling-get-1 get "http://${NET}31:7990/" 1 "$CONNS"
run_wrk ceiling-put put "http://${NET}31:7990/" 1 "$CONNS"

# The same three-process shape as the 3-node rows, with no store: three ceilings share
# the server core and the load is spread over them. What this costs (the tail latency
# of three busy processes taking turns on one core) bounds the 3-node rows too.
CEIL3_PIDS=(); CEIL3_ADDRS=""
for i in 2 3 4; do
  start_bg "ceiling3-$i" "$SERVER_CPU" "$CEIL" "${NET}3$i:799$i"; CEIL3_PIDS+=("$LAST_PID")
  CEIL3_ADDRS+="${CEIL3_ADDRS:+,}${NET}3$i:799$i"
  wait_http "http://${NET}3$i:799$i/v1/kv/probe" || die "ceiling $i did not start"
done
SRV_PIDS=("${CEIL3_PIDS[@]}")
run_wrk ceiling3-get get "http://${NET}32:7992/" 3 63 "$CEIL3_ADDRS"
run_wrk ceiling3-put put "http://${NET}32:7992/" 3 63 "$CEIL3_ADDRS"
for p in "${CEIL3_PIDS[@]}"; do stop_pid "$p"; done
SRV_PIDS=("$CEIL_PID")

cluster_file() {  # cluster_file N FILE
  local n=$1 f=$2 i; : >"$f"
  [[ -n ${TOKENS_FILE:-} ]] && printf 'client_tokens_file = "%s"\n\n' "$TOKENS_FILE" >>"$f"
  for i in $(seq "$n"); do printf '[[nodes]]\nid = "n%d"\nhttp = "%s4%d:74%02d"\npeer = "%s4%d:75%02d"\n\n' \
    "$i" "$NET" "$i" "$i" "$NET" "$i" "$i" >>"$f"; done; }
start_cluster() {  # start_cluster N ; sets NODE_PIDS, ADDRS
  local n=$1 i; cluster_file "$n" "$WORK/c$n.toml"; NODE_PIDS=(); ADDRS=""
  for i in $(seq "$n"); do
    extra=(); [[ -n ${DURABLE:-} ]] && extra=(--data-dir "$WORK/data-m$n-n$i")
    start_bg "m$n-n$i" "$SERVER_CPU" "$BIN" serve --cluster "$WORK/c$n.toml" --node "n$i" "${extra[@]}"
    NODE_PIDS+=("$LAST_PID"); ADDRS+="${ADDRS:+,}${NET}4$i:74$(printf %02d "$i")"; done
  for i in $(seq "$n"); do wait_http "http://${NET}4$i:74$(printf %02d "$i")/health" || die "node n$i not healthy"; done
  SRV_PIDS=("${NODE_PIDS[@]}"); }
stop_cluster() { local p; for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done; }

start_cluster 1
KV_OP="put" taskset -c "$CLIENT_CPU" timeout 20 wrk -t1 -c"$CONNS" -d2s -s "$LUA" "http://${NET}41:7401/" >/dev/null 2>&1
run_wrk m1-put put "http://${NET}41:7401/" 1 "$CONNS"
run_wrk m1-get get "http://${NET}41:7401/" 1 "$CONNS"
RSS1=$(awk '/VmRSS/{print $2}' /proc/"${NODE_PIDS[0]}"/status)
stop_cluster

if [[ -n ${TOKENS:-} ]]; then
  TOKENS_FILE=$WORK/tokens
  KV_TOKEN=write-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077 && printf 'read read-%s\nwrite %s\nadmin admin-%s\n' "$KV_TOKEN" "$KV_TOKEN" "$KV_TOKEN" >"$TOKENS_FILE")
  export KV_TOKEN
  start_cluster 1
  KV_OP="put" taskset -c "$CLIENT_CPU" timeout 20 wrk -t1 -c"$CONNS" -d2s -s "$LUA" "http://${NET}41:7401/" >/dev/null 2>&1
  run_wrk m1t-put put "http://${NET}41:7401/" 1 "$CONNS"
  run_wrk m1t-get get "http://${NET}41:7401/" 1 "$CONNS"
  stop_cluster
  unset KV_TOKEN TOKENS_FILE
fi

start_cluster 3
IFS=, read -r -a A <<<"$ADDRS"
KV_OP="put" KV_ADDRS=$ADDRS taskset -c "$CLIENT_CPU" timeout 20 wrk -t3 -c63 -d2s -s "$LUA" "http://${NET}41:7401/" >/dev/null 2>&1
sleep 1
for q in "" consistency=one; do
  read -r b0 f0 <<<"$(peer_sent "${A[@]}")"
  name=m3-put-live; [[ -n $q ]] && name=m3-put-one
  run_wrk "$name" put "http://${NET}41:7401/" 3 63 "$ADDRS" "$q"
  sleep 1
  read -r b1 f1 <<<"$(peer_sent "${A[@]}")"
  n=$(( LAST_NREQ > 0 ? LAST_NREQ : 1 ))
  # fill the last row's peer-traffic columns
  awk -F'\t' -v OFS='\t' -v b=$(( (b1 - b0) / n )) -v f="$(awk -v f=$((f1 - f0)) -v n="$n" 'BEGIN{printf "%.2f", f/n}')" \
    'NR == L { $8 = b; $9 = f } { print }' L="$(wc -l <"$RES")" "$RES" >"$RES.tmp" && mv "$RES.tmp" "$RES"
  log "  peer traffic per acked write (all peers): $(tail -1 "$RES" | cut -f8) bytes, $(tail -1 "$RES" | cut -f9) frames"
done
run_wrk m3-get get "http://${NET}41:7401/" 3 63 "$ADDRS"
run_wrk m3-get-quorum get "http://${NET}41:7401/" 3 63 "$ADDRS" consistency=quorum
read -r bi0 _ <<<"$(peer_sent "${A[@]}")"; sleep 10; read -r bi1 _ <<<"$(peer_sent "${A[@]}")"
IDLE=$(( (bi1 - bi0) / 30 ))
RSS3=$(for p in "${NODE_PIDS[@]}"; do awk '/VmRSS/{print $2}' /proc/"$p"/status; done | paste -sd+ | bc)
stop_cluster

SRV_PIDS=("$CEIL_PID")
run_wrk ceiling-get-2 get "http://${NET}31:7990/" 1 "$CONNS"

{
  echo "## meshkv vs ceiling $(date -u +%FT%TZ)  (bin: $BIN${DURABLE:+, durable}, ${DUR}s runs, servers CPU $SERVER_CPU, wrk CPU $CLIENT_CPU)"
  echo "- idle peer traffic, 3 nodes x 1000 keys: $IDLE bytes/s per node; RSS 1 node $((RSS1 / 1024)) MiB after its runs, 3 nodes $((RSS3 / 1024)) MiB total"
  echo
  awk -F'\t' '{ name[NR]=$1; rps[NR]=$2; p50[NR]=$3; p99[NR]=$4; err[NR]=$5; cores[NR]=$6; us[NR]=$7; b[NR]=$8; f[NR]=$9; idx[$1]=NR }
    END {
      g1 = rps[idx["ceiling-get-1"]]; g2 = rps[idx["ceiling-get-2"]]; gref = (g1 + g2) / 2; pref = rps[idx["ceiling-put"]]
      ug = (us[idx["ceiling-get-1"]] + us[idx["ceiling-get-2"]]) / 2; up = us[idx["ceiling-put"]]
      if ("m1t-get" in idx) {
        printf "- client tokens on / off, one node: GET req/s x%.3f, CPU us/req x%.3f; PUT req/s x%.3f, CPU us/req x%.3f\n\n", \
          rps[idx["m1t-get"]] / rps[idx["m1-get"]], us[idx["m1t-get"]] / us[idx["m1-get"]], \
          rps[idx["m1t-put"]] / rps[idx["m1-put"]], us[idx["m1t-put"]] / us[idx["m1-put"]]
      }
      printf "| row | req/s | p50 ms | p99 ms | errors | srv cores | srv CPU us/req | req/s / ceiling | CPU x ceiling | peer B/write | peer frames/write |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
      for (i = 1; i <= NR; i++) {
        w = (name[i] ~ /put/); r = w ? pref : gref; u = w ? up : ug
        printf "| %s | %d | %.2f | %.2f | %s | %.2f | %.1f | %.3f | %.2f | %s | %s |\n", name[i], rps[i], p50[i]/1000, p99[i]/1000, err[i], cores[i], us[i], rps[i]/r, us[i]/u, b[i], f[i]
      }
    }' "$RES"
} | tee "${OUT:-${TMPDIR:-/tmp}/meshkv-bench-last.md}"

#!/usr/bin/env bash
# bench/tls.sh - what TLS costs: the same rows with TLS off and on, in one run, as ratios
# (on / off), the median of ROUNDS rounds (default 3; each round runs every row off and
# on back to back, so both see the same host noise; the order alternates by round).
#
#   cargo build --release && bash bench/tls.sh [BIN]   (default BIN: target/release/meshkv)
#
# Rows (servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU, 64 connections, 100-byte
# values, keys k1..k1000, bench/kv.lua as bench/perf.sh uses it):
#   m1-put, m1-get   one node
#   m3-put-live      3 nodes on one core, writes spread over the 3 (default consistency:
#                    each write waits for its push to the live peers, over mutual TLS)
# TLS on: the cluster file has tls_ca_file and each node's certificate and key
# (`meshkv gen-certs`, throwaway ECDSA P-256); wrk speaks HTTPS (it verifies nothing,
# which costs the client side nothing). wrk keeps its connections open, so the rows
# measure the encryption of requests and replies, not handshakes.
# NET=127.0.0.1 puts node i on ${NET}6i:76<i> (peer 77<i>). Needs: wrk (with TLS, as
# Debian's), curl, taskset. About 2.5 minutes with the defaults (DUR=6 s per row).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(readlink -f "${1:-target/release/meshkv}")
DUR=${DUR:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
NET=${NET:-127.0.0.1}
WORK=$(mktemp -d /tmp/meshkv-tls-bench.XXXXXX)
LUA=$HERE/kv.lua
RES=$WORK/results.tsv
PIDS=()
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
cleanup() { local p; for p in "${PIDS[@]}"; do stop_pid "$p"; done; PIDS=(); rm -rf "$WORK"; }
trap cleanup EXIT; trap 'exit 130' INT TERM

# run_wrk ROUND MODE NAME OP URL THREADS CONNS ADDRS: one row, appended to $RES as
# "round mode name rps us_per_req p99_us errors".
run_wrk() {
  local round=$1 mode=$2 name=$3 op=$4 url=$5 t=$6 c=$7 addrs=${8:-} line c0 c1
  c0=$(srv_ticks)
  KV_OP=$op KV_TAG=$name KV_ADDRS=$addrs KV_KEYS=1000 KV_VALUE=100 \
    taskset -c "$CLIENT_CPU" timeout $((DUR + 30)) wrk -t"$t" -c"$c" -d"${DUR}s" --latency -s "$LUA" "$url" \
    >"$WORK/$name-$mode-$round.wrk.txt" 2>&1
  c1=$(srv_ticks)
  line=$(grep '^ANCHOR' "$WORK/$name-$mode-$round.wrk.txt" | tail -1)
  [[ -n $line ]] || die "wrk $name ($mode) gave no result: $(tail -3 "$WORK/$name-$mode-$round.wrk.txt")"
  local rps p99 err nreq us
  rps=$(sed -E 's/.* rps=([0-9]+).*/\1/' <<<"$line"); p99=$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line")
  err=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line"); nreq=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$line")
  us=$(awk -v dc=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$nreq" 'BEGIN { printf "%.1f", (n > 0 ? dc / hz * 1e6 / n : 0) }')
  log "  round $round $mode $name: $rps req/s, srv CPU $us us/req, p99 ${p99}us, errors $err"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$name" "$rps" "$us" "$p99" "$err" >>"$RES"
}

# cluster_file N MODE FILE: N nodes; with MODE=tls, the TLS keys and fresh material.
cluster_file() {
  local n=$1 mode=$2 f=$3 i; : >"$f"
  [[ $mode == tls ]] && printf 'tls_ca_file = "tls/ca.pem"\n\n' >>"$f"
  for i in $(seq "$n"); do
    printf '[[nodes]]\nid = "n%d"\nhttp = "%s6%d:76%02d"\npeer = "%s6%d:77%02d"\n' \
      "$i" "$NET" "$i" "$i" "$NET" "$i" "$i" >>"$f"
    [[ $mode == tls ]] && printf 'tls_cert_file = "tls/n%d.pem"\ntls_key_file = "tls/n%d.key"\n' "$i" "$i" >>"$f"
    echo >>"$f"
  done
  if [[ $mode == tls ]]; then "$BIN" gen-certs --cluster "$f" >/dev/null || die "gen-certs failed"; fi
}
url_of() { local mode=$1 i=$2 scheme=http; [[ $mode == tls ]] && scheme=https
  echo "$scheme://${NET}6$i:76$(printf %02d "$i")"; }
start_cluster() {  # start_cluster N MODE ; sets NODE_PIDS, ADDRS
  local n=$1 mode=$2 i f=$WORK/c$1-$2.toml curl_ca=(); cluster_file "$n" "$mode" "$f"; NODE_PIDS=(); ADDRS=""
  [[ $mode == tls ]] && curl_ca=(--cacert "$WORK/tls/ca.pem")
  for i in $(seq "$n"); do
    start_bg "m$n-$mode-n$i" "$SERVER_CPU" "$BIN" serve --cluster "$f" --node "n$i"
    NODE_PIDS+=("$LAST_PID"); ADDRS+="${ADDRS:+,}${NET}6$i:76$(printf %02d "$i")"; done
  for i in $(seq "$n"); do
    local ok=""
    for _ in $(seq 150); do
      curl -fs "${curl_ca[@]}" -o /dev/null "$(url_of "$mode" "$i")/health" && { ok=1; break; }
      sleep 0.1
    done
    [[ -n $ok ]] || die "node n$i ($mode) not healthy: $(tail -3 "$WORK/m$n-$mode-n$i.log")"
  done
  SRV_PIDS=("${NODE_PIDS[@]}"); }
stop_cluster() { local p; for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done; }

[[ -x $BIN ]] || die "no binary $BIN"
command -v wrk >/dev/null || die "wrk is missing (apt-get install -y wrk)"
: >"$RES"
for round in $(seq "$ROUNDS"); do
  # Odd rounds run TLS off first, even rounds on first: neither always gets the
  # quieter half of a round.
  modes="plain tls"; (( round % 2 == 0 )) && modes="tls plain"
  for mode in $modes; do
    log "round $round, TLS $([[ $mode == tls ]] && echo on || echo off)"
    start_cluster 1 "$mode"
    url=$(url_of "$mode" 1)/
    KV_OP=put taskset -c "$CLIENT_CPU" timeout 20 wrk -t1 -c"$CONNS" -d2s -s "$LUA" "$url" >/dev/null 2>&1
    run_wrk "$round" "$mode" m1-put put "$url" 1 "$CONNS"
    run_wrk "$round" "$mode" m1-get get "$url" 1 "$CONNS"
    stop_cluster
    start_cluster 3 "$mode"
    url=$(url_of "$mode" 1)/
    KV_OP=put KV_ADDRS=$ADDRS taskset -c "$CLIENT_CPU" timeout 20 wrk -t3 -c63 -d2s -s "$LUA" "$url" >/dev/null 2>&1
    run_wrk "$round" "$mode" m3-put-live put "$url" 3 63 "$ADDRS"
    stop_cluster
  done
done

{
  echo "## TLS on / off $(date -u +%FT%TZ)  (bin: $BIN, ${DUR}s rows, $ROUNDS rounds, servers CPU $SERVER_CPU, wrk CPU $CLIENT_CPU)"
  echo
  echo "| row | req/s off | req/s on | req/s on/off | srv CPU us/req off | on | CPU on/off | p99 ms off | on |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  # Per row: the median over rounds of each figure and of each round's ratio.
  awk -F'\t' '
    function median(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { key = $1 SUBSEP $3; rps[key, $2] = $4; us[key, $2] = $5; p99[key, $2] = $6
      if (!($3 in seen)) { seen[$3] = 1; order[++rows] = $3 } rounds[$1] = 1 }
    END {
      for (r = 1; r <= rows; r++) {
        name = order[r]; ro = ""; rn = ""; rr = ""; uo = ""; un = ""; ur = ""; po = ""; pn = ""
        for (round in rounds) {
          key = round SUBSEP name
          ro = ro " " rps[key, "plain"]; rn = rn " " rps[key, "tls"]; rr = rr " " rps[key, "tls"] / rps[key, "plain"]
          uo = uo " " us[key, "plain"]; un = un " " us[key, "tls"]; ur = ur " " us[key, "tls"] / us[key, "plain"]
          po = po " " p99[key, "plain"]; pn = pn " " p99[key, "tls"]
        }
        printf "| %s | %d | %d | %.2f | %.1f | %.1f | %.2f | %.2f | %.2f |\n", name, median(ro), median(rn), median(rr),
          median(uo), median(un), median(ur), median(po) / 1000, median(pn) / 1000
      }
    }' "$RES"
} | tee "${OUT:-${TMPDIR:-/tmp}/meshkv-tls-bench-last.md}"

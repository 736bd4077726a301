# bench/lib.sh - helpers shared by bench/perf.sh and bench/tls.sh (sourced, not run).
# The caller sets WORK (a scratch directory) and PIDS=() before starting anything, and
# SRV_PIDS to the server processes whose CPU time srv_ticks sums.
# shellcheck shell=bash
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
# start_bg NAME CPU CMD...: runs CMD pinned to CPU, output in $WORK/NAME.log; sets LAST_PID.
start_bg() { local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 & LAST_PID=$!; PIDS+=("$LAST_PID"); }
# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() { local pid=$1 i; kill -0 "$pid" 2>/dev/null || return 0; kill -TERM "$pid" 2>/dev/null
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return 0; }
# wait_http URL: up to 15 s for URL to answer 2xx.
wait_http() { local i; for i in $(seq 150); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
CLK_TCK=$(getconf CLK_TCK); SRV_PIDS=()
# srv_ticks: user + system clock ticks of every process in SRV_PIDS.
srv_ticks() { local pid t=0 v; for pid in "${SRV_PIDS[@]}"; do
  v=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}'); t=$((t + ${v:-0})); done; echo "$t"; }

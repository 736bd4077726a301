#!/usr/bin/env bash
# Tests the dashboard in a real browser: starts a 3-node cluster on 127.0.0.41-43 (its
# own addresses, so it runs beside other tests and the demo), and chromedriver with
# headless Chromium; scripts/dashboard_test.py then loads n1's page, waits until it
# shows the 3 nodes alive and converged, writes a key through the page's form and finds
# it in the page's change stream. This script then reads the key back from n3 with curl.
# The screenshot goes to target/dashboard.png. Every process is stopped by its PID on
# exit, whatever happens.
#
# Needs: chromium and chromium-driver (Debian packages), python3, curl.
# Environment: MESHKV_BIN (default: target/debug/meshkv, built here), DASHBOARD_PORT
# (client port of n1, default 7341; n2 and n3 use the next ones, peers +100),
# DASHBOARD_TOKENS=1 (client tokens on: the page gets an admin token through its token
# field, and every call it makes, the cross-node ones and the watch stream included,
# must carry it).
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=$(basename "$0")
die() {
    echo "$PROG: $*" >&2
    exit 1
}

for tool in chromium chromedriver python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install chromium chromium-driver python3 curl)."
done
if [[ -z ${MESHKV_BIN:-} ]]; then
    cargo build --quiet
    MESHKV_BIN=target/debug/meshkv
fi
[[ -x $MESHKV_BIN ]] || die "the meshkv binary $MESHKV_BIN is missing."

port=${DASHBOARD_PORT:-7341}
dir=$(mktemp -d /tmp/meshkv-dashboard.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

# The cluster file; every address must be free.
: >"$dir/cluster.toml"
auth=()
if [[ ${DASHBOARD_TOKENS:-0} == 1 ]]; then
    token=admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077 && echo "admin $token" >"$dir/tokens")
    echo 'client_tokens_file = "tokens"' >>"$dir/cluster.toml"
    auth=(-H "Authorization: Bearer $token")
    # The browser test reads it from its environment, not from its arguments.
    export MESHKV_TOKEN=$token
fi
for i in 1 2 3; do
    http=127.0.0.4$i:$((port + i - 1))
    peer=127.0.0.4$i:$((port + 99 + i))
    for address in "$http" "$peer"; do
        if (exec 3<>"/dev/tcp/${address%:*}/${address#*:}") 2>/dev/null; then
            die "$address is taken; set DASHBOARD_PORT to another port."
        fi
    done
    printf '[[nodes]]\nid = "n%s"\nhttp = "%s"\npeer = "%s"\n\n' "$i" "$http" "$peer" >>"$dir/cluster.toml"
done

for i in 1 2 3; do
    "$MESHKV_BIN" serve --cluster "$dir/cluster.toml" --node "n$i" >"$dir/n$i.log" 2>&1 &
    pids+=("$!")
done
for i in 1 2 3; do
    url=http://127.0.0.4$i:$((port + i - 1))
    for ((try = 0; try < 100; try++)); do
        [[ $(curl -s -m 1 "$url/health" 2>/dev/null) == ok ]] && break
        sleep 0.1
    done
    [[ $(curl -s -m 1 "$url/health" 2>/dev/null) == ok ]] ||
        die "n$i did not become healthy at $url: $(tail -n 3 "$dir/n$i.log")"
done
echo "$PROG: 3 nodes serving on 127.0.0.41-43${token:+, client tokens on}"
# A few keys for the page's key browser to list.
for pair in users/ada=Lovelace users/grace=Hopper config/replicas=3; do
    curl -s -m 5 -o /dev/null "${auth[@]}" -X PUT --data "${pair#*=}" "http://127.0.0.42:$((port + 1))/v1/kv/${pair%%=*}"
done

driver_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromedriver --port="$driver_port" >"$dir/chromedriver.log" 2>&1 &
pids+=("$!")
for ((try = 0; try < 100; try++)); do
    curl -s -m 1 "http://127.0.0.1:$driver_port/status" 2>/dev/null | grep -q '"ready": *true' && break
    sleep 0.1
done

mkdir -p target
key=dashboard/greeting
value="hello from the browser"
if ! python3 scripts/dashboard_test.py "http://127.0.0.1:$driver_port" \
    "http://127.0.0.41:$port/" 3 "$key" "$value" target/dashboard.png; then
    tail -n 20 "$dir/chromedriver.log" >&2 || true
    die "the browser checks failed (screenshot: target/dashboard.png)."
fi

# The write made through n1's page is on n3.
n3=http://127.0.0.43:$((port + 2))
got=$(curl -s -m 5 "${auth[@]}" "$n3/v1/kv/$key")
[[ $got == "$value" ]] || die "n3 holds \"$got\" under $key, not \"$value\"."
echo "$PROG: n3 serves the value written through the page"
echo "$PROG: passed"

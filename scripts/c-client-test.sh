#!/usr/bin/env bash
# Tests libkv739, the course's C client library (clients/libkv739), end to end: its
# Rust unit tests, then the README's C example and the C program
# clients/libkv739/tests/kv739_test.c, compiled with gcc against include/kv739.h and
# linked to libkv739.so, run against a real 3-node cluster (scripts/cluster.sh). The program talks to n1 first and, partway through,
# kills it (scripts/nemesis.sh kill n1, run with system()); every call must carry on
# through n2 or n3. The cluster is always torn down; the script exits with the C
# program's status.
# Then, against a fresh 3-node cluster with client tokens on, the C program
# clients/libkv739/tests/kv739_auth.c: 401 without a token, 403 for a read token's put
# (nothing written), a write token writes and a read token reads (kv739_set_token and
# MESHKV_TOKEN).
#
# Environment: MESHKV_RUN_DIR (default: a new temporary directory), KV739_PUTS (default
# 300 puts, each followed by a get), KV739_KILL_AFTER (default 100 puts).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- cargo test --release -p kv739"
cargo test --release --quiet -p kv739
cargo build --release --quiet
cargo build --release --quiet -p kv739
build_dir=$PWD/target/release
export MESHKV_BIN=$build_dir/meshkv
export MESHKV_RUN_DIR=${MESHKV_RUN_DIR:-$(mktemp -d /tmp/meshkv-cclient.XXXXXX)}
# shellcheck source=scripts/common.sh
source scripts/common.sh

# Compiles C file $1 into $2 against the header, linked to the library.
compile() {
    echo "--- gcc $1 -lkv739"
    gcc -std=c11 -Wall -Wextra -Werror -pedantic -O2 -I clients/libkv739/include "$1" -o "$2" \
        -L "$build_dir" -lkv739 -Wl,-rpath,"$build_dir"
}
program=$MESHKV_RUN_DIR/kv739_test
compile clients/libkv739/tests/kv739_test.c "$program"
auth_program=$MESHKV_RUN_DIR/kv739_auth
compile clients/libkv739/tests/kv739_auth.c "$auth_program"
# The README's example, as printed there (it talks to 127.0.0.11:7001..7003, the
# addresses cluster.sh gives a 3-node cluster).
example=$MESHKV_RUN_DIR/hello
awk '/^## C client/ { section = 1 } section && /^```c$/ { code = 1; next }
    code && /^```$/ { exit } code { print }' README.md >"$example.c"
compile "$example.c" "$example"

trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh up 3 >/dev/null

echo "--- the README's example, twice"
first=$("$example")
second=$("$example")
if [[ $first != "greeting = hello" || $second != $'was: hello\ngreeting = hello' ]]; then
    die "the README's example printed \"$first\", then \"$second\"."
fi
printf '%s\n' "$second"
ids=()
servers=()
while read -r id http _; do
    ids+=("$id")
    servers+=("$http")
done < <(nodes_of "$RUN_CLUSTER_FILE")
kill_command=$(printf '%q ' "$PWD/scripts/nemesis.sh" kill "${ids[0]}")

echo "--- kv739_test against ${servers[*]}, killing ${ids[0]} partway"
status=0
"$program" "${KV739_PUTS:-300}" "${KV739_KILL_AFTER:-100}" "$kill_command" "${servers[@]}" ||
    status=$?
[[ $status -eq 0 ]] || exit "$status"

echo "--- kv739_auth against a 3-node cluster with client tokens on"
scripts/cluster.sh down >/dev/null 2>&1
random() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
read_token=read-$(random)
write_token=write-$(random)
(umask 077 && printf 'read %s\nwrite %s\n' "$read_token" "$write_token" >"$MESHKV_RUN_DIR/tokens")
MESHKV_TOKENS_FILE=$MESHKV_RUN_DIR/tokens scripts/cluster.sh up 3 >/dev/null
KV739_READ_TOKEN=$read_token KV739_WRITE_TOKEN=$write_token "$auth_program" "${servers[@]}" ||
    status=$?
exit "$status"

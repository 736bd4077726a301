#!/bin/sh
# RUSTC_WRAPPER of scripts/fuzz.sh: adds libFuzzer's coverage instrumentation to
# meshkv's own crates only (the library and the fuzz targets). Dependencies compile as
# in a plain release build, so the build reuses what `cargo build --release` left.
rustc="$1"
shift
case " $* " in
*" --crate-name meshkv "* | *" --crate-name meshkv_fuzz "* | *" --crate-name peer_frame "* | \
    *" --crate-name handshake "* | *" --crate-name cluster_file "* | *" --crate-name http_request "* | \
    *" --crate-name persist_records "*)
    # shellcheck disable=SC2086 # FUZZ_RUSTFLAGS is a list of flags
    exec "$rustc" "$@" $FUZZ_RUSTFLAGS
    ;;
esac
exec "$rustc" "$@"

//! The frame codec on arbitrary bytes, with and without a secret (see `meshkv::fuzz_checks::peer_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshkv::fuzz_checks::peer_frame(data));

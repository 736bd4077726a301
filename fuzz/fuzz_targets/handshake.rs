//! A peer connection's bytes, acceptor and initiator side (see `meshkv::fuzz_checks::handshake`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshkv::fuzz_checks::handshake(data));

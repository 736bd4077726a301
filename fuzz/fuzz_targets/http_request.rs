//! The HTTP router on arbitrary requests, in memory (see `meshkv::fuzz_checks::http_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshkv::fuzz_checks::http_request(data));

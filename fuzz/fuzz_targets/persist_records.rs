//! The data directory's record reader on arbitrary bytes (see
//! `meshkv::fuzz_checks::persist_records`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshkv::fuzz_checks::persist_records(data));

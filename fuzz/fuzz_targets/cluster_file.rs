//! `ClusterConfig::parse` on arbitrary text (see `meshkv::fuzz_checks::cluster_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshkv::fuzz_checks::cluster_file(data));

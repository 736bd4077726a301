//! libkv739: the course's key-value client library (`kv739_init`, `kv739_get`,
//! `kv739_put`, `kv739_shutdown`; C header `include/kv739.h`) on top of meshkv's HTTP
//! API (API.md §3), so the original assignment's test programs link against meshkv.
//!
//! Map, bottom-up:
//! - [`protocol`]: the course's limits and meshkv's API as pure functions (key and
//!   server-list checks, key paths, PUT replies, failover order).
//! - [`client`]: [`Client`], blocking HTTP with short timeouts and round-robin
//!   failover; carries the session token and the access token.
//! - `ffi`: the C entry points over one global `Client` behind a mutex; the only
//!   module with unsafe code, each block with its `// SAFETY:` argument.
//!
//! Built as `cdylib` (`target/release/libkv739.so`) and `rlib` (tests, Rust callers).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
#[allow(unsafe_code)]
mod ffi;
pub mod protocol;

pub use client::{Client, ClientError, Token};
pub use ffi::{
    kv739_current_server, kv739_get, kv739_init, kv739_put, kv739_set_token, kv739_shutdown,
};
pub use protocol::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

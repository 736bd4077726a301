//! The black-box tools: everything in the binary that is a *client* of a cluster.
//!
//! Owns: the HTTP [`client`], the `status`/`check` views ([`inspect`]), the test
//! [`suites`] of `meshkv test`, the local cluster of `meshkv demo` ([`demo`]) and the
//! throwaway TLS material of `meshkv demo --secure` ([`certs`]).
//! Knows nothing of: the server's internals. These modules speak only the public HTTP
//! API (and read the cluster file through `config`), so they work against any store
//! that serves it; `tests/layering.rs` keeps it so.

pub mod certs;
pub mod client;
pub mod demo;
pub mod inspect;
pub mod suites;

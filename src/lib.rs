//! meshkv: a multi-master, eventually consistent key-value store.
//!
//! Every node accepts reads and writes; a write is stamped by the node's hybrid logical
//! clock and kept in a map of last-writer-wins registers. Nodes push writes to their
//! peers at once and repair whatever was missed with digest-driven anti-entropy.
//!
//! Modules, bottom-up (a module uses only modules above it in this list, and
//! `metrics` from anywhere):
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | 0 core | [`clock`] | hybrid logical clock, versions, node ids |
//! | 0 core | [`store`] | LWW registers, the map, its digest, input limits |
//! | 0 core | [`session`] | session tokens: what a client has seen, per origin node |
//! | 0 core | [`auth`] | client tokens: roles, the tokens file's format, constant-time lookup |
//! | 1 mechanism | [`membership`] | failure detector (pure state machine) |
//! | 1 mechanism | [`wire`] | protocol messages and authenticated frames |
//! | 1 mechanism | [`metrics`] | counters and the Prometheus registry |
//! | 1 mechanism | [`persist`] | the data directory: append-only log, group commit, recovery, compaction, HLC lease |
//! | 1 mechanism | [`skew`] | clock offsets to the peers, self-fencing, commit-wait bounds |
//! | 2 transport | [`transport`] | the network seam: dial, listen; TCP in production |
//! | 2 transport | [`peer`] | links from the node's own IP, handshakes, request/reply |
//! | 2 transport | [`tls`] | certificates and keys from PEM files; the HTTPS and mutual-TLS handshakes |
//! | 3 service | [`replication`] | consistency levels, push, anti-entropy |
//! | 4 edge | [`api`] | the client HTTP API |
//! | 5 assembly | [`config`], [`node`] | the cluster file; spawning and shutdown of a node |
//! | 5 assembly | `fuzz_checks` (hidden) | the bodies of the fuzz targets, replayed by `cargo test` |
//! | 6 tools | [`tools`] | HTTP client, `status`/`check`, the test suites: public API only |
//! | 7 entry | [`cli`] | the `meshkv` command line |

pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod persist;
pub mod replication;
pub mod session;
pub mod skew;
pub mod store;
pub mod tls;
pub mod tools;
pub mod transport;
pub mod wire;

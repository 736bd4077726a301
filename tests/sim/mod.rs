//! A deterministic simulation of real meshkv nodes under randomized faults (see
//! `tests/simulation.rs` for the invariants and how to run it).
//!
//! | module | owns |
//! | --- | --- |
//! | `plan` | what a seed draws: cluster size, workload shape, the fault schedule |
//! | `clock`, `net`, `disk` | the node's seams in simulation: time with offset and drift; turmoil TCP with resets; a disk whose synced records survive a crash |
//! | `http` | an HTTP/1.1 client over turmoil TCP |
//! | `workload` | the clients, and the checker that waits for convergence |
//! | `history` | what the clients did and saw |
//! | `observe` | every node's state, seen from outside the network |
//! | `check` | the invariants |
//! | `run` | one seed, start to finish |

pub mod check;
pub mod clock;
pub mod disk;
pub mod history;
pub mod http;
pub mod net;
pub mod observe;
pub mod plan;
pub mod run;
pub mod workload;

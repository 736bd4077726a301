//! What each engine needs to serve the node: durable writes of `(key, version+value)`
//! and a full scan at restart. The meshkv adapter is thin (the journal is built for
//! this); redb and fjall need a group-commit thread in front of them.

pub mod fjall;
pub mod group_commit;
pub mod meshkv;
pub mod redb;

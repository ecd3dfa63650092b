//! Pure logic of audit_log, with no PostgreSQL dependency.
//!
//! The extension and the `audit-log` CLI both call this crate, so the canonical
//! encoding (docs/FORMAT.md) has exactly one implementation. Nothing here
//! that walks user JSON recurses: every walk keeps its own stack on the heap,
//! so a value nested a million deep costs memory, never a thread's stack.
//!
//! - [`encoding`]: the canonical byte encoding of events, links and JSON values;
//! - [`hash`]: the domain-separated SHA-256 hashes of events and links;
//! - [`jsonb`]: PostgreSQL's binary jsonb read into that encoding;
//! - [`json_text`]: JSON text (as `jsonb_out` prints it) read into that encoding;
//! - [`merkle`]: RFC 9162 Merkle trees, inclusion and consistency proofs;
//! - [`tree`]: a chain's Merkle tree, its tiles, event and consistency proofs;
//! - [`parallel`]: an order-keeping parallel map, to verify on several cores;
//! - [`ranges`]: a set of integers kept as ranges (the extension's command ids);
//! - [`verify`]: chain, link and checkpoint verification over streams;
//! - [`time`]: the fixed UTC timestamp representation.

// No unsafe code: what verifies the log must be memory-safe by construction.
#![forbid(unsafe_code)]

pub mod encoding;
pub mod hash;
pub mod json_text;
pub mod jsonb;
pub mod merkle;
pub mod model;
pub mod parallel;
pub mod ranges;
pub mod record;
pub mod time;
pub mod tree;
pub mod verify;

pub use hash::{event_hash, link_hash, Hash, ZERO_HASH};
pub use model::{ChainHead, Checkpoint, Event, Link, TreeHead};
pub use verify::{Problem, ProblemKind, Verdict};

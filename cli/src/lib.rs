//! The `audit-log` tool: export, offline verification, signed checkpoints,
//! a witness and a live feed. Encoding and verification come from `audit_log_core`, the
//! same code the extension runs.

#![forbid(unsafe_code)]

pub mod binary;
pub mod error;
pub mod export;
pub mod format;
pub mod prove;
pub mod report;
pub mod siem;
pub mod sign;
pub mod tail;
pub mod verify_file;
pub mod witness;

//! audit_log: tamper-evident, hash-chained audit trails for PostgreSQL.
//!
//! Data flow: `capture` (row and statement triggers) hashes each change into
//! the transaction's own chain (`txstate`); at pre-commit `chain` links the
//! transaction into one of K chains and `store` writes its record. The SQL
//! API: `api` (enable, disable and the schema functions, acting on tables
//! through `triggers`), `proof` (verify, checkpoint), `history`,
//! `retention`; `records` reads the log back. `ddl_guard` keeps auditing on.
//! The encoding and verification live in the pure crate `audit_log_core`.

// Every unsafe block says why it is sound (a `// SAFETY:` comment above it).
#![deny(clippy::undocumented_unsafe_blocks)]
// SQL functions return Result<T, ErrorReport> (see errors.rs): pgrx
// raises an ErrorReport with its own SQLSTATE, and no other error type.
// It is large, and returned once per call.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry};

mod api;
mod capture;
mod catalog;
mod chain;
mod collect;
mod ddl_drop;
mod ddl_effects;
mod ddl_guard;
mod ddl_parse;
mod errors;
mod fmgr;
mod heads;
mod history;
mod jsonb;
mod locks;
mod options;
mod pgcompat;
mod proof;
mod records;
mod relstate;
mod rendering;
mod repair;
mod retention;
mod rowenc;
mod scan;
mod store;
mod tree;
mod tree_scan;
mod triggers;
mod txstate;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx appends a Rust backtrace to the DETAIL of any error that passes
    // through Rust code whenever RUST_BACKTRACE is set in the server's
    // environment. Clients must never see one: RUST_LIB_BACKTRACE takes
    // precedence for std's Backtrace::capture. This runs before any thread
    // of ours exists, and the variable is read once per process.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    ensure_settings();
    heads::request();
    txstate::register_callbacks();
    capture::register_callbacks();
    chain::register_callbacks();
    catalog::register_callbacks();
    ddl_guard::register_callbacks();
}

thread_local! {
    static SETTINGS_DEFINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Define audit_log's settings, once, unless the backend is in parallel
/// mode: the library can first load while a parallel query runs (in its
/// workers, or in the session for the events view's functions), and
/// defining a setting then re-applies what ALTER DATABASE or ALTER ROLE
/// set for it, which PostgreSQL refuses in parallel mode with a WARNING to
/// the client. Parallel workers never need them; the session defines them
/// when it first reads one (every reader calls this first). A reader in
/// parallel mode before that gets the built-in default (none reads one
/// there today).
pub(crate) fn ensure_settings() {
    if SETTINGS_DEFINED.get() {
        return;
    }
    // SAFETY: reads backend state: the worker number (-1 outside parallel
    // workers) and whether a parallel operation is under way.
    if unsafe { pg_sys::ParallelWorkerNumber >= 0 || pg_sys::IsInParallelMode() } {
        return;
    }
    SETTINGS_DEFINED.set(true);
    define_settings();
}

fn define_settings() {
    GucRegistry::define_int_guc(
        c"audit_log.chains",
        c"Number of commit chains (K) that transactions are linked into.",
        c"Set it at least to the number of sessions that commit audited changes at once: each commit holds one chain's lock from pre-commit to the end of commit, WAL flush included.",
        &chain::CHAINS,
        1,
        1024,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audit_log.verify_threads",
        c"Worker threads that verify() uses to read and hash events; 0 hashes in the session's own thread.",
        c"-1, the default, uses one thread per CPU, at most 8. The threads only hash; all reading stays in the session.",
        &records::VERIFY_THREADS,
        -1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audit_log.integration_scan_leaves",
        c"Smallest backlog of Merkle leaves that checkpoint() integrates by one sequential scan of audit_log.records.",
        c"Smaller backlogs, or backlogs under an eighth of the records, are read through the primary key, chain by chain. -1 never scans.",
        &tree_scan::SCAN_MIN_LEAVES,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"audit_log.context",
        c"Application context recorded with each audited change, as JSON: the end user behind a pool, a request id.",
        c"Set it per transaction (SET LOCAL, or audit_log.set_context(jsonb)) or per session. It is stored in audit_log.events.context and covered by the event hash. Malformed JSON makes audited changes fail.",
        &capture::CONTEXT,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

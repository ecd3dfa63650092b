//! The SQL API of proof: verify(), verify(checkpoint) and checkpoint(), and
//! the alert a failed verification raises. The verification itself is in
//! `records` (reading) and the core crate (checking).

use audit_log_core::model::{ChainHead, Checkpoint, CHECKPOINT_FORMAT};
use audit_log_core::time::{format_rfc3339, from_pg_timestamp};
use audit_log_core::verify::{ProblemKind, Verdict};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::json;

use crate::catalog;
use crate::errors::AuditError;
use crate::records::{hash_of, run_verify};
use crate::scan::{select_at, SnapshotGuard, Val};
use pgrx::pg_sys::panic::ErrorReport;

pub(crate) type VerifyRow = (bool, i64, Option<i64>, Option<String>);

/// The channel that hears about failed verifications.
pub const ALERT_CHANNEL: &str = "audit_log_alert";

/// A failed verification is also a WARNING, and a notification on
/// `audit_log_alert` (sent at commit, as NOTIFY is; not on a standby, where
/// there is no NOTIFY), so that monitoring can hook in.
fn alert(v: &Verdict, problem: &str, checkpoint: bool) {
    pgrx::warning!("audit_log.verify() failed: {problem}");
    // SAFETY: a read of recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let mut payload = json!({
        "database": catalog::database_name(),
        "first_bad_event": v.first().and_then(|p| p.event_id),
        "kind": v.first().map(|p| p.kind.as_str()),
        "problems": v.problem_count,
        "against_checkpoint": checkpoint,
        "problem": problem,
    });
    // NOTIFY payloads must stay under 8000 bytes.
    let mut text = payload.to_string();
    if text.len() > 7000 {
        payload["problem"] = json!(problem.chars().take(1000).collect::<String>());
        text = payload.to_string();
    }
    // SAFETY: pg_notify(text, text) with two non-null text datums.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[ALERT_CHANNEL.into_datum(), text.as_str().into_datum()],
        );
    }
}

pub(crate) fn verdict_row(v: Verdict, checkpoint: bool) -> TableIterator<'static, VerifyRow> {
    let first = v.first().cloned();
    let problem = first.as_ref().map(|p| {
        if v.problem_count > 1 {
            format!("{p} (and {} more problem(s))", v.problem_count - 1)
        } else {
            p.to_string()
        }
    });
    if let Some(p) = &problem {
        alert(&v, p, checkpoint);
    }
    TableIterator::once((
        v.ok(),
        v.events_checked,
        first.and_then(|p| p.event_id),
        problem,
    ))
}

/// Recompute every event hash and link; report the first bad event.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."verify"()
RETURNS TABLE ("ok" boolean, "events_checked" bigint, "first_bad_event" bigint, "problem" text)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.verify() IS 'Recompute every event hash and link of the log; ok, or the first bad event and what is wrong with it. A failure also raises a WARNING and notifies audit_log_alert. Requires audit_log_auditor.';
"#)]
// The SQL signature, spelled out for pgrx.
#[allow(clippy::type_complexity)]
fn verify_all() -> Result<
    TableIterator<
        'static,
        (
            name!(ok, bool),
            name!(events_checked, i64),
            name!(first_bad_event, Option<i64>),
            name!(problem, Option<String>),
        ),
    >,
    ErrorReport,
> {
    Ok(verdict_row(run_verify(None)?, false))
}

/// As verify(), and also prove that the log extends `checkpoint`. The
/// checkpoint arrives as binary jsonb and is read through its text, so a
/// hostile value (any depth, any size) gets a clear error, not a panic.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."verify"("checkpoint" jsonb)
RETURNS TABLE ("ok" boolean, "events_checked" bigint, "first_bad_event" bigint, "problem" text)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.verify(jsonb) IS 'As verify(), and also prove that the log extends a checkpoint returned earlier by audit_log.checkpoint(). Requires audit_log_auditor.';
"#)]
// The SQL signature, spelled out for pgrx.
#[allow(clippy::type_complexity)]
fn verify_against(
    checkpoint: Option<&[u8]>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(ok, bool),
            name!(events_checked, i64),
            name!(first_bad_event, Option<i64>),
            name!(problem, Option<String>),
        ),
    >,
    ErrorReport,
> {
    let cp = parse_checkpoint(checkpoint)?;
    Ok(verdict_row(verify_checkpoint(&cp)?, true))
}

/// The log, and that it extends `cp`: its heads, and (format v2) its
/// trees, recomputed from the records.
pub(crate) fn verify_checkpoint(cp: &Checkpoint) -> Result<Verdict, AuditError> {
    let mut v = run_verify(Some(cp))?;
    if !cp.trees.is_empty() {
        for (_, why) in catalog::pinned(|| crate::tree::check_trees(cp))? {
            v.push(ProblemKind::ChainRewritten, None, why);
        }
    }
    Ok(v)
}

/// A checkpoint argument, read through its text, so a hostile value (any
/// depth, any size) gets a clear error, not a panic.
pub(crate) fn parse_checkpoint(checkpoint: Option<&[u8]>) -> Result<Checkpoint, AuditError> {
    let payload = checkpoint.ok_or(AuditError::NullArgument("checkpoint"))?;
    let text = crate::jsonb::payload_to_text(payload);
    // serde_json refuses nesting past 128 levels; a checkpoint has 3.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| AuditError::BadCheckpoint(e.to_string()))?;
    Checkpoint::parse(&value).map_err(|e| AuditError::BadCheckpoint(e.to_string()))
}

/// Every chain head, to be kept outside the database.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."checkpoint"() RETURNS jsonb
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.checkpoint() IS 'Every chain''s head (seq, link hash, last event) and Merkle tree (size, root), to keep outside the database: audit_log.verify(checkpoint) or audit_log.consistency(checkpoint) later proves that the log extends it, and audit_log.prove(event, checkpoint) that it holds an event. Requires audit_log_auditor.';
"#)]
fn checkpoint() -> Result<JsonB, ErrorReport> {
    let cp = take_checkpoint()?;
    Ok(checkpoint_json(&cp)?)
}

/// checkpoint(): committed prepared transactions linked, tiles integrated,
/// and every chain's head and tree.
pub(crate) fn take_checkpoint() -> Result<Checkpoint, AuditError> {
    // EXECUTE granted outside the role still gets the role's hint, not a
    // bare "permission denied for table records".
    if !catalog::current_user_has(c"audit_log_auditor") {
        return Err(AuditError::NotAuditor {
            action: "take a checkpoint".into(),
        });
    }
    // A checkpoint reaches its caller before the caller's transaction ends,
    // and that transaction can still roll back (a pipeline, a DO block, a
    // row streamed before a later one fails): a checkpoint must never name
    // a link it made itself. So it is taken before this call links, and if
    // earlier work of this transaction may have linked, it sees only what
    // has committed. (Read before this call takes any of the log's locks.)
    let earlier = CHECKPOINT_WORK.get();
    // No purge runs while the heads and trees are read.
    crate::retention::lock_purge_shared();
    // (The locks this call takes mark the transaction themselves:
    // LogLock::acquire.)
    let writes = crate::tree::can_write();
    // New records join the trees' tiles here, off the commit path.
    catalog::pinned(crate::tree::integrate_all)?;
    let snapshot = if earlier {
        SnapshotGuard::committed()
    } else {
        SnapshotGuard::fresh()
    };
    // SAFETY: a plain read of the cluster's identity.
    let sysid = unsafe { pg_sys::GetSystemIdentifier() };
    let mut cp = checkpoint_at(
        snapshot.0,
        Some(catalog::database_name()),
        Some(sysid.to_string()),
    )?;
    cp.trees = catalog::pinned(|| crate::tree::trees(&cp.chains, snapshot.0))?;
    // Then committed prepared transactions join the chains, for the next
    // checkpoint to cover; not on a standby or in a read-only transaction,
    // nor in a transaction block, where an auditor's open transaction would
    // hold the linkers' lock. Never waiting for another linker.
    // SAFETY: reads the transaction's block state.
    if writes && !unsafe { pg_sys::IsTransactionBlock() } {
        crate::chain::link_prepared(&catalog::lookup()?, false)?;
    } else if writes {
        // An auditor whose client opens a block for every statement would
        // otherwise never learn why its checkpoints leave them out.
        let n = crate::chain::committed_prepared(&catalog::lookup()?)?;
        if n > 0 {
            pgrx::notice!(
                "audit_log: {n} committed prepared transaction(s) are in no chain yet, so no checkpoint covers them: checkpoint() in a transaction block links none; checkpoint() outside a transaction block links them, and so do audited commits"
            );
        }
    }
    Ok(cp)
}

thread_local! {
    /// This transaction did the log's own work: called checkpoint() where
    /// it may write (it may have linked records it has not committed), or
    /// took one of the log's own locks (locks::LogLock: the purge lock, a
    /// chain's tiles, the linkers', and at commit a chain's), which a
    /// prepared transaction would keep. Cleared when the transaction ends.
    static CHECKPOINT_WORK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This transaction took one of the log's own locks, or linked.
pub(crate) fn note_log_work() {
    CHECKPOINT_WORK.set(true);
}

/// The transaction ends: see CHECKPOINT_WORK.
pub(crate) fn at_xact_end() {
    CHECKPOINT_WORK.set(false);
}

/// PREPARE TRANSACTION of a transaction that did the log's own work is
/// refused: prepared, it would keep the log's locks and any links it made
/// for as long as it stays prepared.
pub(crate) fn may_prepare() -> Result<(), AuditError> {
    if CHECKPOINT_WORK.get() {
        return Err(AuditError::PrepareAfterCheckpoint);
    }
    Ok(())
}

pub(crate) fn checkpoint_json(cp: &Checkpoint) -> Result<JsonB, AuditError> {
    let value = serde_json::to_value(cp).map_err(|e| AuditError::Internal(e.to_string()))?;
    Ok(JsonB(value))
}

/// Every chain's last record (chain_id, seq, link_hash, last_event), by a
/// skip scan of the primary key: one index probe per chain, not a scan of
/// the log (which took 140 ms at 100,000 records).
pub(crate) fn heads_sql(schema: &str) -> String {
    format!(
        "WITH RECURSIVE c AS (
           (SELECT chain_id FROM {schema}.records ORDER BY chain_id LIMIT 1)
           UNION ALL
           SELECT (SELECT r.chain_id FROM {schema}.records r WHERE r.chain_id > c.chain_id
                    ORDER BY r.chain_id LIMIT 1)
             FROM c WHERE c.chain_id IS NOT NULL)
         SELECT h.chain_id, h.seq, h.link_hash, h.last_event
           FROM c, LATERAL (SELECT r.chain_id, r.seq, r.link_hash, r.last_event FROM {schema}.records r
                             WHERE r.chain_id = c.chain_id ORDER BY r.seq DESC LIMIT 1) h
          ORDER BY h.chain_id"
    )
}

/// The checkpoint of the log being read (audit_log's own, or a collected
/// source's): every chain's last record. No trees: only the own log keeps
/// tiles, and [`take_checkpoint`] adds them.
pub(crate) fn checkpoint_of(
    database: Option<String>,
    system_identifier: Option<String>,
) -> Result<Checkpoint, AuditError> {
    let snapshot = SnapshotGuard::fresh();
    checkpoint_at(snapshot.0, database, system_identifier)
}

/// [`checkpoint_of`] under `snap`.
fn checkpoint_at(
    snap: pg_sys::Snapshot,
    database: Option<String>,
    system_identifier: Option<String>,
) -> Result<Checkpoint, AuditError> {
    let rows = select_at(snap, &heads_sql(&catalog::log_schema_sql()), &[])?;
    let chains = rows
        .iter()
        .map(|r| ChainHead {
            chain: r.first().and_then(Val::int).unwrap_or(-1) as i32,
            seq: r.get(1).and_then(Val::int).unwrap_or(0),
            link_hash: hash_of(r.get(2).and_then(Val::bytes)),
            last_event: r.get(3).and_then(Val::int).unwrap_or(0),
        })
        .collect();
    // SAFETY: a plain read of the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let cp = Checkpoint {
        format: CHECKPOINT_FORMAT.into(),
        database,
        system_identifier,
        taken_at: Some(format_rfc3339(from_pg_timestamp(now))),
        chains,
        trees: Vec::new(),
    };
    Ok(cp)
}

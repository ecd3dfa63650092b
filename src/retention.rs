//! Retention that stays verifiable. `set_retention` sets the minimum age of
//! anything purged (raised by an admin, lowered only by a superuser).
//! `purge` removes whole transactions, from the oldest end of each chain
//! only, never a chain's newest link, and leaves an anchor per chain: the
//! seq, hash and last event of the last link it removed. `verify()` starts
//! each chain from its anchor. Both are recorded as events, so the anchors
//! are themselves in the chain.
//!
//! The rows go by direct heap deletes, as the rows came by direct inserts:
//! the append-only guard triggers stay on for everyone else.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::capture;
use crate::catalog::require_admin;
use crate::catalog::{self, Oids};
use crate::errors::{optional_row, AuditError};
use crate::store::delete_where;
use crate::triggers::internal_ddl;
use pgrx::pg_sys::panic::ErrorReport;

/// Set the minimum age of what purge() may remove.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."set_retention"("min_age" interval) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.set_retention(interval) IS 'Minimum age of events that audit_log.purge() may remove. Raised by audit_log_admin; lowered only by a superuser. Recorded as an event.';
"#)]
fn set_retention(min_age: Option<pgrx::datum::Interval>) -> Result<(), ErrorReport> {
    // Cutoffs are computed in UTC, whatever the session's TimeZone.
    Ok(crate::catalog::pinned(|| set_retention_impl(min_age))?)
}

/// The longest retention accepted. Longer ones are typos, and push the
/// cutoff (now minus the retention) out of PostgreSQL's timestamp range.
const MAX_RETENTION_YEARS: i32 = 200;

/// A retention is a plain span of time: every part (months, days, time) at
/// least zero, so that `now() - retention` is never later than now, and at
/// most MAX_RETENTION_YEARS. Intervals such as '-1000 years 362521 days'
/// compare as long but cut off in the future.
fn check_retention(i: &pgrx::datum::Interval) -> Result<(), AuditError> {
    if i.months() < 0 || i.days() < 0 || i.micros() < 0 {
        return Err(AuditError::Invalid(format!(
            "set_retention: every part of the retention must be zero or positive \
             (months {}, days {}, microseconds {})",
            i.months(),
            i.days(),
            i.micros()
        )));
    }
    // Months, plus days and time at their shortest (a month of 31 days).
    let months =
        i64::from(i.months()) + i64::from(i.days()) / 31 + i.micros() / (31 * 86_400 * 1_000_000);
    if months > i64::from(MAX_RETENTION_YEARS) * 12 {
        return Err(AuditError::Invalid(format!(
            "set_retention: a retention longer than {MAX_RETENTION_YEARS} years is not supported"
        )));
    }
    Ok(())
}

fn set_retention_impl(min_age: Option<pgrx::datum::Interval>) -> Result<(), AuditError> {
    let min_age = min_age.ok_or(AuditError::NullArgument("min_age"))?;
    require_admin("set the retention")?;
    check_retention(&min_age)?;
    // Lower means an earlier purge: compare the cutoffs the two retentions
    // give now, not the intervals (interval ordering takes 30-day months).
    let (lower, old) = Spi::get_two_with_args::<bool, String>(
        "SELECT now() - $1 > now() - r.min_age, r.min_age::text
           FROM (SELECT NULL::interval AS min_age UNION ALL SELECT min_age FROM audit_log.retention) r
          ORDER BY r.min_age IS NULL LIMIT 1",
        &[min_age.into()],
    )?;
    // No retention yet means purge() can remove nothing: any first
    // retention is a lowering from forever, so a superuser sets it.
    // SAFETY: a catalog check on the current user.
    let su = unsafe { pg_sys::superuser() };
    if old.is_none() && !su {
        return Err(AuditError::NotSuperuser {
            action: "set the first retention".into(),
            why: "without one purge() removes nothing, and any retention lets it remove history",
        });
    }
    if lower == Some(true) && !su {
        return Err(AuditError::NotSuperuser {
            action: format!(
                "lower the retention below {}",
                old.clone().unwrap_or_default()
            ),
            why: "a shorter retention lets purge() remove history sooner",
        });
    }
    let new = internal_ddl(|| {
        Spi::get_one_with_args::<String>(
            "INSERT INTO audit_log.retention (id, min_age) VALUES (true, $1)
             ON CONFLICT (id) DO UPDATE SET min_age = excluded.min_age, set_at = now(), set_by = session_user
             RETURNING min_age::text",
            &[min_age.into()],
        )
        .map_err(AuditError::from)
    })?;
    capture::record_config(
        "audit_log",
        "retention",
        "RETENTION",
        json!({"old": old, "new": new}),
    )
}

/// One link to purge: where it is, and what it anchors.
struct Expired {
    chain_id: i32,
    seq: i64,
    /// The transaction's first event: the key of its segments.
    first_event: i64,
    link_hash: Vec<u8>,
    last_event: i64,
    event_count: i64,
}

/// Remove whole transactions committed before `older_than` from the oldest
/// end of each chain.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."purge"("older_than" timestamptz)
RETURNS TABLE ("transactions" bigint, "events" bigint)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.purge(timestamptz) IS 'Remove whole transactions committed before older_than (and older than the retention) from the oldest end of each chain, keeping an anchor so that verify() still passes. Recorded as an event. Requires audit_log_admin.';
"#)]
fn purge(
    older_than: Option<pgrx::datum::TimestampWithTimeZone>,
) -> Result<TableIterator<'static, (name!(transactions, i64), name!(events, i64))>, ErrorReport> {
    Ok(TableIterator::once(crate::catalog::pinned(|| {
        purge_impl(older_than)
    })?))
}

fn purge_impl(
    older_than: Option<pgrx::datum::TimestampWithTimeZone>,
) -> Result<(i64, i64), AuditError> {
    let older_than = older_than.ok_or(AuditError::NullArgument("older_than"))?;
    require_admin("purge the audit log")?;
    // purge() deletes what its snapshot sees, after taking the purge lock: a
    // transaction snapshot older than that lock could see rows another
    // purge has just deleted.
    // SAFETY: a read of the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(AuditError::ReadCommittedOnly("purge()"));
    }
    let (retention, too_young) = optional_row(Spi::get_two_with_args::<String, bool>(
        "SELECT min_age::text, $1 > pg_catalog.clock_timestamp() - min_age FROM audit_log.retention",
        &[older_than.into()],
    ))?
    .ok_or(AuditError::NoRetention)?;
    let retention = retention.ok_or(AuditError::NoRetention)?;
    if too_young == Some(true) {
        return Err(AuditError::Invalid(format!(
            "purge: older_than is younger than the retention ({retention}); nothing younger may be purged"
        )));
    }
    lock_purge();
    // An anchor that no PURGE event records was put there by hand (a chain
    // truncated to look purged): a purge must not launder it by recording it.
    // Read as the extension's owner: an admin need not be an auditor.
    let claimed = crate::catalog::as_owner(claimed_anchors)?;
    if let Some(a) = anchors()?.into_iter().find(|a| {
        !claimed
            .iter()
            .any(|c| c.chain == a.chain && c.seq == a.seq && c.link_hash == a.link_hash)
    }) {
        return Err(AuditError::Invalid(format!(
            "purge: the anchor of chain {} (seq {}) is not recorded by any PURGE event; \
             run audit_log.verify() and restore the log before purging",
            a.chain, a.seq
        )));
    }
    let oids = catalog::lookup()?;
    // Per chain, the expired prefix; never a chain's newest link.
    let expired = catalog::as_owner(|| {
        Spi::connect(|c| -> Result<Vec<Expired>, AuditError> {
            let t = c.select(
                "SELECT chain_id, seq, first_event, link_hash, last_event, event_count FROM (
                   SELECT l.chain_id, l.seq, l.first_event, l.link_hash, l.last_event, l.event_count,
                          bool_and(l.committed_at < $1) OVER w AS old_prefix,
                          max(l.seq) OVER (PARTITION BY l.chain_id) AS head
                     FROM audit_log.records l
                   WINDOW w AS (PARTITION BY l.chain_id ORDER BY l.seq)) x
                  WHERE old_prefix AND seq < head ORDER BY chain_id, seq",
                None,
                &[older_than.into()],
            )?;
            let mut out = Vec::new();
            for r in t {
                out.push(Expired {
                    chain_id: r.get(1)?.unwrap_or(0),
                    seq: r.get(2)?.unwrap_or(0),
                    first_event: r.get(3)?.unwrap_or(0),
                    link_hash: r.get(4)?.unwrap_or_default(),
                    last_event: r.get(5)?.unwrap_or(0),
                    event_count: r.get(6)?.unwrap_or(0),
                });
            }
            Ok(out)
        })
    })?;
    if expired.is_empty() {
        return Ok((0, 0));
    }
    // The trees keep what the records held: every tile up to the new
    // anchor, and the leaves of the tile it cuts through, before the
    // records go. A chain purged before tiles were kept has no tree.
    for (i, e) in expired.iter().enumerate() {
        if catalog::has_tiles() && expired.get(i + 1).is_none_or(|n| n.chain_id != e.chain_id) {
            let upto = e.seq.max(0) as u64;
            match catalog::pinned(|| crate::tree::integrate(e.chain_id, upto, Some(upto), true)) {
                Ok(_) | Err(AuditError::TreeUnavailable { .. }) => {}
                Err(err) => return Err(err),
            }
        }
    }
    let mut events = 0i64;
    for e in &expired {
        events += e.event_count;
        delete_where(
            oids.segments,
            oids.segments_pkey,
            &[(1, pg_sys::F_INT8EQ, pg_sys::Datum::from(e.first_event))],
        )?;
        delete_record(&oids, e.chain_id, e.seq)?;
    }
    // The last purged link of each chain becomes its anchor.
    let mut anchors = Vec::new();
    for (i, e) in expired.iter().enumerate() {
        if expired.get(i + 1).is_none_or(|n| n.chain_id != e.chain_id) {
            anchors.push(e);
        }
    }
    internal_ddl(|| {
        for a in &anchors {
            Spi::run_with_args(
                "INSERT INTO audit_log.anchors (chain_id, seq, link_hash, last_event)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (chain_id) DO UPDATE SET seq = excluded.seq, link_hash = excluded.link_hash,
                        last_event = excluded.last_event, purged_at = now()",
                &[a.chain_id.into(), a.seq.into(), a.link_hash.clone().into(), a.last_event.into()],
            )?;
        }
        Ok(())
    })?;
    // Every anchor, not only those this purge moved: verify() requires each
    // anchor to be recorded by a PURGE event, and this event may outlive
    // the earlier ones (a later purge can remove their transactions).
    let anchor_json: Vec<_> = crate::retention::anchors()?
        .iter()
        .map(|a| json!({"chain": a.chain, "seq": a.seq, "link_hash": hex::encode(a.link_hash), "last_event": a.last_event}))
        .collect();
    let transactions = expired.len() as i64;
    let older_text = Spi::get_one_with_args::<String>("SELECT $1::text", &[older_than.into()])?
        .unwrap_or_default();
    capture::record_config(
        "audit_log",
        "purge",
        "PURGE",
        json!({"older_than": older_text, "retention": retention, "transactions": transactions,
               "events": events, "anchors": anchor_json}),
    )?;
    Ok((transactions, events))
}

/// One purge at a time per database: the tag is like the chain locks', with
/// a field4 no SQL function produces.
pub(crate) fn lock_purge() {
    purge_lock(pg_sys::ExclusiveLock);
}

/// Readers of the trees (checkpoint(), prove(), consistency(),
/// verify(checkpoint)) hold the purge lock shared, so that a purge does not
/// remove records between their reads; not on a standby, which runs none.
pub fn lock_purge_shared() {
    // SAFETY: a read of recovery state.
    if unsafe { !pg_sys::RecoveryInProgress() } {
        purge_lock(pg_sys::ShareLock);
    }
}

fn purge_lock(mode: u32) {
    crate::locks::LogLock::Purge.acquire(mode, true);
}

fn delete_record(oids: &Oids, chain: i32, seq: i64) -> Result<(), AuditError> {
    delete_where(
        oids.records,
        oids.records_pkey,
        &[
            (1, pg_sys::F_INT4EQ, pg_sys::Datum::from(chain)),
            (2, pg_sys::F_INT8EQ, pg_sys::Datum::from(seq)),
        ],
    )
    .map(|_| ())
}

/// The anchors that the log's PURGE events record (the events' integrity is
/// verified with every other event).
pub fn claimed_anchors() -> Result<Vec<audit_log_core::ChainHead>, AuditError> {
    // A 0.2.0 schema (the library updated, ALTER EXTENSION not yet run) has
    // 0.2.0's record_events(), without the tx_id: its log is version 1.
    let record_events = if crate::catalog::schema_reads_packed() {
        "audit_log.record_events(r.first_event, r.tx_id::text::bigint, r.segments, r.payload)"
    } else {
        "audit_log.record_events(r.first_event, r.segments, r.payload)"
    };
    Spi::connect(|c| {
        let t = c.select(
            &format!("SELECT (a->>'chain')::int, (a->>'seq')::int8, a->>'link_hash', (a->>'last_event')::int8
               FROM (SELECT e.* FROM {}.records r
                      CROSS JOIN LATERAL {record_events} e
                     -- Only the records that can hold a PURGE event are unpacked.
                     WHERE r.segments > 0 OR pg_catalog.position(r.payload, '\\x055055524745'::pg_catalog.bytea) > 0) x,
                    LATERAL (SELECT x.op, x.table_schema,
                                    audit_log.canonical_json_text(x.new_row)::pg_catalog.jsonb AS new_row) e,
                    LATERAL pg_catalog.jsonb_array_elements(
                        CASE WHEN pg_catalog.jsonb_typeof(e.new_row->'anchors') = 'array'
                             THEN e.new_row->'anchors' ELSE '[]'::pg_catalog.jsonb END) a
              WHERE e.op = 'PURGE' AND e.table_schema = 'audit_log'
                AND a->>'chain' ~ '^-?[0-9]{{1,9}}$' AND a->>'seq' ~ '^[0-9]{{1,18}}$'
                AND a->>'last_event' ~ '^-?[0-9]{{1,18}}$'", crate::catalog::log_schema_sql()),
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in t {
            let hash: String = r.get(3)?.unwrap_or_default();
            let Ok(bytes) = hex::decode(&hash) else {
                continue;
            };
            let Ok(link_hash) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                continue;
            };
            out.push(audit_log_core::ChainHead {
                chain: r.get(1)?.unwrap_or(-1),
                seq: r.get(2)?.unwrap_or(0),
                link_hash,
                last_event: r.get(4)?.unwrap_or(0),
            });
        }
        Ok(out)
    })
}

/// The anchors verify() starts the chains from.
pub fn anchors() -> Result<Vec<audit_log_core::ChainHead>, AuditError> {
    Spi::connect(|c| {
        let t = c.select(
            &format!(
                "SELECT chain_id, seq, link_hash, last_event FROM {}.anchors ORDER BY chain_id",
                crate::catalog::log_schema_sql()
            ),
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in t {
            let h: Vec<u8> = r.get(3)?.unwrap_or_default();
            out.push(audit_log_core::ChainHead {
                chain: r.get(1)?.unwrap_or(0),
                seq: r.get(2)?.unwrap_or(0),
                link_hash: h.as_slice().try_into().unwrap_or([0xFF; 32]),
                last_event: r.get(4)?.unwrap_or(0),
            });
        }
        Ok(out)
    })
}

//! A row's history: its events, found through `events.row_key` (the row's
//! primary key as JSON text, written at capture) rather than by scanning the
//! log. `audit_log.history()` itself is SQL (sql/finalize.sql); this gives it
//! the key text, computed exactly as capture computes it, and
//! `index_history()`, which files a table's earlier events the same way.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::capture::primary_key_names;
use crate::errors::AuditError;
use pgrx::pg_sys::panic::ErrorReport;

/// The row_key that capture stores for a row of `target` with this key, or
/// NULL when the key's members are not exactly the primary key's columns
/// (history() then searches the table's events by content instead).
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."row_key_of"("target" regclass, "key" jsonb) RETURNS bigint
STABLE PARALLEL SAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.row_key_of(regclass, jsonb) IS 'The events.row_key that audit_log.history() looks a row up by; NULL if the key is not the table''s primary key.';
"#)]
///
/// `key` is the jsonb's binary form (the bytes after its varlena header),
/// read by the same `key_text` that capture uses, so the two always agree.
fn row_key_of(target: Option<pg_sys::Oid>, key: Option<&[u8]>) -> Result<Option<i64>, ErrorReport> {
    use audit_log_core::jsonb::{key_text, object_len};
    let target = target.ok_or(AuditError::NullArgument("target"))?;
    let key = key.ok_or(AuditError::NullArgument("key"))?;
    let bad = |e: audit_log_core::jsonb::Malformed| AuditError::Internal(e.to_string());
    Ok(key_hash(target, |names| {
        // Exactly the key's columns: as many members, and each of them present.
        if object_len(key).map_err(bad)? != Some(names.len()) {
            return Ok(None);
        }
        key_text(key, names).map_err(bad)
    })?)
}

/// The row_key of a whole row of `target` in the canonical encoding (an
/// event's old or new row, as audit_log.record_events() gives it), under
/// the table's current primary key and name, with the members it lacks
/// taken from `rest` (the new row, for an old row recorded with
/// changed_only); NULL if neither holds a key column.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."row_key_in"("target" regclass, "row" bytea, "rest" bytea) RETURNS bigint
STABLE PARALLEL SAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.row_key_in(regclass, bytea, bytea) IS 'The events.row_key of a row of a table (in the canonical encoding; members it lacks taken from rest) under the table''s current primary key; NULL if it lacks a key column. Used by audit_log.index_history().';
"#)]
fn row_key_in(
    target: Option<pg_sys::Oid>,
    row: Option<&[u8]>,
    rest: Option<&[u8]>,
) -> Result<Option<i64>, ErrorReport> {
    let (Some(target), Some(row)) = (target, row) else {
        return Ok(None);
    };
    Ok(key_hash(target, |names| {
        audit_log_core::encoding::decode::key_text(row, rest, names)
            .map_err(|e| AuditError::Internal(format!("a stored row: {e}")))
    })?)
}

/// The key hash for `target` of the key text `text` makes from its primary
/// key's column names. `None` when the table has no usable primary key or
/// `text` gives none.
fn key_hash(
    target: pg_sys::Oid,
    text: impl FnOnce(&[String]) -> Result<Option<String>, AuditError>,
) -> Result<Option<i64>, AuditError> {
    // SAFETY: try_relation_open returns NULL for a missing relation; the
    // lock is the one any SELECT takes.
    let (names, schema, table) = unsafe {
        let rel = pg_sys::try_relation_open(target, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return Err(AuditError::NoSuchRelation(target.to_u32()));
        }
        let names = primary_key_names(rel);
        // Owned: the relation is closed below.
        let rel_names = crate::capture::relation_names(rel);
        let table = rel_names.name().into_owned();
        let schema = rel_names.schema.to_string();
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        (names, schema, table)
    };
    let Some(names) = names else {
        return Ok(None);
    };
    Ok(text(&names)?.map(|t| audit_log_core::jsonb::row_key_hash(&schema, &table, &t)))
}

/// Index a table's earlier events for history(), and clear its marks.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."index_history"("target" regclass) RETURNS bigint
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.index_history(regclass) IS 'File every recorded change of a table enabled with history => true (every partition of its partitioned table) in audit_log.row_keys under its current primary key, and clear audited_tables.history_since, so that audit_log.history() finds them through the index. Reads the whole log once; recorded as an INDEX_HISTORY event. Returns the number of entries added. Requires audit_log_admin.';
"#)]
///
/// The whole partition tree the table belongs to is indexed, since a mark
/// on a partitioned table covers all its partitions. Events under earlier
/// names of a table are left out, as history() leaves them out.
fn index_history(target: Option<pg_sys::Oid>) -> Result<i64, ErrorReport> {
    let target = target.ok_or(AuditError::NullArgument("target"))?;
    crate::catalog::require_admin("index history")?;
    // Each statement below reads the log as committed when it starts.
    // SAFETY: a read of the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(AuditError::ReadCommittedOnly("index_history()").into());
    }
    // This transaction's own changes are not in the log yet: the scan
    // would miss them, and a mark made by its own DDL would be cleared.
    // Its own INDEX_HISTORY events (several tables indexed in one
    // transaction) are the exception.
    let captured = crate::txstate::captured();
    if captured.is_some_and(|(_, n, _)| n > 0)
        && captured.map(|(tx, _, last)| (tx, last)) != OWN_EVENTS.get()
    {
        return Err(AuditError::EventsPending("index_history()").into());
    }
    let t = crate::triggers::describe(target)?;
    let tree = lock_tree(target)?;
    // Changes this statement made before calling it (a data-modifying
    // WITH) are captured only at its end: the same check, for them.
    let pending = |oid: pg_sys::Oid| {
        // SAFETY: reads this backend's queue of after-trigger events.
        unsafe { pg_sys::AfterTriggerPendingOnRel(oid) }
    };
    if tree.iter().copied().any(pending) {
        return Err(AuditError::EventsPending("index_history()").into());
    }
    // The marks to clear, locked: a concurrent mark (DDL, enable(), an
    // ATTACH) either came first and is seen, or waits and is kept.
    let marks = crate::triggers::internal_ddl(|| {
        Spi::connect_mut(|c| {
            let mut out = Vec::new();
            for r in c.update(
                "SELECT a.relid::oid, a.history_since FROM audit_log.audited_tables a
                  WHERE a.relid = ANY ($1) ORDER BY a.relid FOR UPDATE",
                None,
                &[tree.clone().into()],
            )? {
                if let Some(oid) = r.get::<pg_sys::Oid>(1)? {
                    out.push((oid, r.get::<i64>(2)?));
                }
            }
            Ok::<_, AuditError>(out)
        })
    })?;
    let leaves = history_tables(&tree)?;
    if leaves.is_empty() {
        return Err(AuditError::NoHistory(t.qualified).into());
    }
    wait_for_writers(&tree);
    let oids = crate::catalog::lookup()?;
    let added = crate::triggers::internal_ddl(|| {
        // Committed prepared transactions join the records the scan reads.
        crate::chain::link_prepared(&oids, true)?;
        let added = crate::errors::optional_row(Spi::get_one_with_args::<i64>(
            INDEX_LEAVES,
            &[
                leaves.iter().map(|l| l.0).collect::<Vec<_>>().into(),
                leaves
                    .iter()
                    .map(|l| l.1.clone())
                    .collect::<Vec<_>>()
                    .into(),
                leaves
                    .iter()
                    .map(|l| l.2.clone())
                    .collect::<Vec<_>>()
                    .into(),
            ],
        ))?
        .flatten()
        .unwrap_or(0);
        let marked: Vec<pg_sys::Oid> = marks.iter().map(|m| m.0).collect();
        Spi::run_with_args(
            "UPDATE audit_log.audited_tables SET history_since = NULL WHERE relid = ANY ($1)",
            &[marked.into()],
        )?;
        Ok(added)
    })?;
    let root = crate::triggers::describe(tree[0])?;
    let cleared: Vec<_> = marks
        .iter()
        .filter_map(|&(oid, since)| {
            let since = since?;
            let name = crate::triggers::describe(oid).map(|d| d.qualified).ok()?;
            Some(serde_json::json!({"table": name, "history_since": since}))
        })
        .collect();
    crate::capture::record_config(
        &root.schema,
        &root.name,
        "INDEX_HISTORY",
        serde_json::json!({
            "table": root.qualified,
            "tables": leaves.iter().map(|l| &l.3).collect::<Vec<_>>(),
            "marks_cleared": cleared,
            "entries_added": added,
        }),
    )?;
    OWN_EVENTS.set(crate::txstate::captured().map(|(tx, _, last)| (tx, last)));
    Ok(added)
}

thread_local! {
    /// The transaction and the id of the event index_history() recorded
    /// last: if no event was captured after it (even one rolled back with
    /// it), another call in the same transaction may go on.
    static OWN_EVENTS: std::cell::Cell<Option<(u64, i64)>> = const { std::cell::Cell::new(None) };
}

/// The partition tree `table` belongs to, root first, each table locked
/// SHARE UPDATE EXCLUSIVE until the transaction ends: writes go on, while
/// DDL, ATTACH and DETACH wait, so the tree and its keys stay as listed.
fn lock_tree(table: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>, AuditError> {
    let lock = |oid: pg_sys::Oid| {
        // SAFETY: a lock on a relation by OID, released at the end of the
        // transaction; one dropped meanwhile is not listed again.
        unsafe {
            pg_sys::LockRelationOid(oid, pg_sys::ShareUpdateExclusiveLock as pg_sys::LOCKMODE)
        }
    };
    // The root first (listing the tree locks the partitions), as DDL on
    // a partitioned table locks it.
    let root = crate::catalog::oids(
        "SELECT coalesce(pg_catalog.pg_partition_root($1), $1)::oid",
        table,
    )?;
    root.iter().copied().for_each(lock);
    let list = || {
        crate::catalog::oids(
            "SELECT t.relid::oid FROM (
                 SELECT r.relid, r.level FROM pg_catalog.pg_partition_tree(
                        coalesce(pg_catalog.pg_partition_root($1), $1)) r
                 UNION ALL SELECT $1, 0 WHERE pg_catalog.pg_partition_root($1) IS NULL) t
              ORDER BY t.level, t.relid",
            table,
        )
    };
    // A partition attached while the tree was being locked makes another
    // round; the tree cannot change once all of it is locked.
    let mut tree = list()?;
    for _ in 0..8 {
        tree.iter().copied().for_each(lock);
        let again = list()?;
        if again == tree {
            return Ok(tree);
        }
        tree = again;
    }
    Err(AuditError::TargetChanged(format!(
        "the partition tree of relation {} kept changing",
        table.to_u32()
    )))
}

/// The tables of `tree` that capture files under a key: plain tables with
/// history => true on them or on an ancestor; with schema, name and the
/// name as regclass prints it.
type Leaf = (pg_sys::Oid, String, String, String);

fn history_tables(tree: &[pg_sys::Oid]) -> Result<Vec<Leaf>, AuditError> {
    crate::triggers::internal_ddl(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.oid::regclass::text
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = ANY ($1) AND c.relkind = 'r'
                    AND EXISTS (SELECT FROM audit_log.audited_tables a
                                 WHERE (a.relid = c.oid OR a.relid IN (
                                        SELECT p.relid FROM pg_catalog.pg_partition_ancestors(c.oid) p))
                                   AND coalesce((a.options->>'history')::boolean, false))
                  ORDER BY c.oid",
                None,
                &[tree.to_vec().into()],
            )? {
                if let (Some(oid), Some(schema), Some(name), Some(qualified)) = (
                    r.get::<pg_sys::Oid>(1)?,
                    r.get::<String>(2)?,
                    r.get::<String>(3)?,
                    r.get::<String>(4)?,
                ) {
                    out.push((oid, schema, name, qualified));
                }
            }
            Ok(out)
        })
    })
}

/// Wait, as CREATE INDEX CONCURRENTLY does, for every transaction that
/// writes to these tables now (a lock that conflicts with SHARE), prepared
/// ones included: clearing a mark must not drop a change recorded below it
/// without an entry and not yet committed (one begun before an ALTER
/// EXTENSION UPDATE, say). lock_timeout and statement_timeout bound it.
fn wait_for_writers(tree: &[pg_sys::Oid]) {
    for &oid in tree {
        let tag = pg_sys::LOCKTAG {
            // SAFETY: MyDatabaseId is set in any backend that runs a transaction.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: oid.to_u32(),
            locktag_field3: 0,
            locktag_field4: 0,
            locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
            locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
        };
        // SAFETY: waits on the holders' virtual transaction locks; an
        // error (a timeout, a cancel) is raised as a PostgreSQL error.
        unsafe { pg_sys::WaitForLockers(tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false) };
    }
}

/// The leaves' row events, each filed under the key of its old row (an
/// UPDATE's unchanged key columns from its new row, for changed_only) and
/// of its new row (the same key once), unless already filed so. One pass over
/// the log for all of them.
const INDEX_LEAVES: &str = "
WITH leaves AS (
    -- unnest of several arrays exists only in FROM, unqualified.
    SELECT * FROM unnest($1::oid[], $2::text[], $3::text[]) AS l(relid, nspname, relname)
), found AS (
    SELECT DISTINCT k.row_key, r.first_event, e.tx_seq
      FROM audit_log.records r
     CROSS JOIN LATERAL audit_log.record_events(r.first_event, r.tx_id::text::bigint, r.segments, r.payload) e
      JOIN leaves l ON l.nspname = e.table_schema AND l.relname = e.table_name
     CROSS JOIN LATERAL (VALUES (e.old_row, e.new_row), (e.new_row, NULL)) v(encoded, rest)
     CROSS JOIN LATERAL (SELECT audit_log.row_key_in(l.relid::regclass, v.encoded, v.rest) AS row_key) k
     WHERE e.op IN ('INSERT', 'UPDATE', 'DELETE')
       AND k.row_key IS NOT NULL
), added AS (
    INSERT INTO audit_log.row_keys (row_key, first_event, tx_seq)
    SELECT f.row_key, f.first_event, f.tx_seq FROM found f
     WHERE NOT EXISTS (SELECT FROM audit_log.row_keys x
                        WHERE x.row_key = f.row_key AND x.first_event = f.first_event
                          AND x.tx_seq = f.tx_seq)
    RETURNING 1
)
SELECT pg_catalog.count(*) FROM added";

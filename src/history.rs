//! A row's history: its events, found through `events.row_key` (the row's
//! primary key as JSON text, written at capture) rather than by scanning the
//! log. `audit_log.history()` itself is SQL (sql/finalize.sql); this gives it
//! the key text, computed exactly as capture computes it.

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
    use audit_log_core::jsonb::{key_text, object_len, row_key_hash};
    let target = target.ok_or(AuditError::NullArgument("target"))?;
    let key = key.ok_or(AuditError::NullArgument("key"))?;
    // SAFETY: try_relation_open returns NULL for a missing relation; the
    // lock is the one any SELECT takes.
    let (names, schema, table) = unsafe {
        let rel = pg_sys::try_relation_open(target, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return Err(AuditError::NoSuchRelation(target.to_u32()).into());
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
    let bad = |e: audit_log_core::jsonb::Malformed| AuditError::Internal(e.to_string());
    // Exactly the key's columns: as many members, and each of them present.
    if object_len(key).map_err(bad)? != Some(names.len()) {
        return Ok(None);
    }
    Ok(key_text(key, &names)
        .map_err(bad)?
        .map(|text| row_key_hash(&schema, &table, &text)))
}

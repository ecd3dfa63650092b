//! A row's history: its events, found through `events.row_key` (the row's
//! primary key as JSON text, written at capture) rather than by scanning the
//! log. `audit_log.history()` itself is SQL (sql/finalize.sql); this gives it
//! the key text, computed exactly as capture computes it.

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::capture::primary_key_names;
use crate::errors::{AuditError, OrRaise};

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
fn row_key_of(target: Option<pg_sys::Oid>, key: Option<JsonB>) -> Option<i64> {
    row_key_impl(target, key).or_raise()
}

fn row_key_impl(target: Option<pg_sys::Oid>, key: Option<JsonB>) -> Result<Option<i64>, AuditError> {
    let target = target.ok_or(AuditError::NullArgument("target"))?;
    let Value::Object(key) = key.ok_or(AuditError::NullArgument("key"))?.0 else {
        return Ok(None);
    };
    // SAFETY: try_relation_open returns NULL for a missing relation; the
    // lock is the one any SELECT takes.
    let (names, schema, table) = unsafe {
        let rel = pg_sys::try_relation_open(target, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return Err(AuditError::NoSuchRelation(target.to_u32()));
        }
        let names = primary_key_names(rel);
        let (schema, table) = crate::capture::relation_names(rel);
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        (names, schema, table)
    };
    let Some(mut names) = names else {
        return Ok(None);
    };
    names.sort_unstable();
    let mut given: Vec<&String> = key.keys().collect();
    given.sort_unstable();
    if given.len() != names.len() || given.iter().zip(&names).any(|(g, n)| *g != n) {
        return Ok(None);
    }
    // The same text audit_log_core::jsonb::key_text writes at capture:
    // members in byte order of their names, compact, numbers as stored.
    let mut out = String::from("{");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let text = |v: &Value| serde_json::to_string(v).map_err(|e| AuditError::Internal(e.to_string()));
        out.push_str(&text(&Value::String(n.clone()))?);
        out.push(':');
        out.push_str(&text(&key[n.as_str()])?);
    }
    out.push('}');
    Ok(Some(audit_log_core::jsonb::row_key_hash(&schema, &table, &out)))
}

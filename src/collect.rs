//! Central collection: a collector database receives the logs of other
//! databases by logical replication and keeps each source's log in a schema
//! of its own (`audit_log_source_<name>`), laid out as audit_log's own
//! records, segments and anchors, so the same verification reads it. The
//! routing of replicated rows into those schemas is SQL (sql/finalize.sql,
//! `audit_log.collect_route()`); this module verifies a collected log and
//! takes its checkpoint.

use std::ffi::CString;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::catalog;
use crate::errors::AuditError;
use crate::proof::{
    checkpoint_json, checkpoint_of, parse_checkpoint, verdict_row, verify_checkpoint,
};
use crate::records::run_verify;

/// The schema holding a registered source's log.
fn source_schema(source: Option<&str>) -> Result<CString, AuditError> {
    let name = source.ok_or(AuditError::NullArgument("source"))?;
    if !catalog::current_user_has(c"audit_log_auditor") {
        return Err(AuditError::NotAuditor {
            action: format!("read the collected log of {name:?}"),
        });
    }
    // The schema must be the one audit_log.collect() made: one of that name
    // made later, by anyone, is not this source's log.
    let ours = catalog::pinned(|| {
        crate::errors::optional_row(Spi::get_one_with_args::<bool>(
            "SELECT s.schema_oid IS NOT DISTINCT FROM
                    (SELECT n.oid FROM pg_catalog.pg_namespace n
                      WHERE n.nspname = 'audit_log_source_' || s.name)
               FROM audit_log.sources s WHERE s.name = $1",
            &[name.into()],
        ))
    })?
    .flatten();
    match ours {
        Some(true) => {}
        Some(false) => {
            return Err(AuditError::NotInstalled(format!(
                "schema audit_log_source_{name} is not the one audit_log.collect() made for this source"
            )))
        }
        None => {
            return Err(AuditError::UnknownSource(
                name.chars().take(64).collect::<String>(),
            ))
        }
    }
    CString::new(format!("audit_log_source_{name}"))
        .map_err(|_| AuditError::UnknownSource(name.to_string()))
}

/// verify() over a collected source's log.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."verify_source"("source" text)
RETURNS TABLE ("ok" boolean, "events_checked" bigint, "first_bad_event" bigint, "problem" text)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.verify_source(text) IS 'As verify(), over the log of a source this database collects by logical replication (audit_log.collect()). Requires audit_log_auditor.';
"#)]
// The SQL signature, spelled out for pgrx.
#[allow(clippy::type_complexity)]
fn verify_source(
    source: Option<&str>,
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
    let schema = source_schema(source)?;
    let v = catalog::with_log_schema(&schema, || run_verify(None))?;
    Ok(verdict_row(v, false))
}

/// verify(checkpoint) over a collected source's log: a checkpoint taken at
/// the source proves the collector's copy extends what the source had.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."verify_source"("source" text, "checkpoint" jsonb)
RETURNS TABLE ("ok" boolean, "events_checked" bigint, "first_bad_event" bigint, "problem" text)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.verify_source(text, jsonb) IS 'As verify(checkpoint), over the log of a source this database collects: a checkpoint taken at the source proves the collected copy extends it. Requires audit_log_auditor.';
"#)]
// The SQL signature, spelled out for pgrx.
#[allow(clippy::type_complexity)]
fn verify_source_against(
    source: Option<&str>,
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
    let schema = source_schema(source)?;
    let cp = parse_checkpoint(checkpoint)?;
    let v = catalog::with_log_schema(&schema, || verify_checkpoint(&cp))?;
    Ok(verdict_row(v, true))
}

/// The checkpoint of a collected source's log, as the collector holds it.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."source_checkpoint"("source" text) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.source_checkpoint(text) IS 'Every chain head of the log of a source this database collects, as a checkpoint; its database field is the source''s name. Requires audit_log_auditor.';
"#)]
fn source_checkpoint(source: Option<&str>) -> Result<JsonB, ErrorReport> {
    let schema = source_schema(source)?;
    let name = source.map(str::to_string);
    Ok(catalog::with_log_schema(&schema, || {
        checkpoint_of(name, None).and_then(|cp| checkpoint_json(&cp))
    })?)
}

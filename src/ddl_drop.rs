//! The DDL guard's sql_drop event trigger: a dropped audited table is
//! recorded (and leaves audited_tables); dropping a capture trigger is
//! refused, but for a partition being detached, whose clone PostgreSQL
//! drops itself; a column dropped by another command's CASCADE is recorded.

use std::collections::{BTreeMap, BTreeSet};

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::capture;
use crate::ddl_effects::superuser;
use crate::errors::AuditError;
use crate::relstate;
use crate::triggers::{internal_ddl, ROW_TRIGGER, STMT_TRIGGER};

/// sql_drop: what the command dropped.
/// `detaching`: the partitions the command detaches (the DDL guard knows),
/// whose cloned row trigger PostgreSQL drops itself.
pub(crate) fn on_drop(tag: &str, detaching: &[pg_sys::Oid]) -> Result<(), AuditError> {
    crate::catalog::pinned(|| judge_drop(tag, detaching))
}

pub(crate) fn judge_drop(tag: &str, detaching: &[pg_sys::Oid]) -> Result<(), AuditError> {
    if crate::catalog::schema_oid().is_none() {
        return Ok(());
    }
    // Tables dropped, capture triggers dropped (schema, table, trigger), and
    // columns dropped (by a CASCADE from a type, domain or function).
    type Columns = BTreeMap<(String, String), Vec<String>>;
    let (tables, triggers, columns) = Spi::connect(|c| {
        let mut tables: BTreeMap<(String, String), pg_sys::Oid> = BTreeMap::new();
        let mut triggers: Vec<(String, String, String)> = Vec::new();
        let mut columns: Columns = BTreeMap::new();
        let t = c.select(
            "SELECT object_type, objid, address_names
               FROM pg_catalog.pg_event_trigger_dropped_objects()
              WHERE object_type IN ('table', 'foreign table', 'trigger', 'table column')",
            None,
            &[],
        )?;
        for r in t {
            let kind: String = r.get(1)?.unwrap_or_default();
            let objid: Option<pg_sys::Oid> = r.get(2)?;
            let names: Vec<Option<String>> = r.get(3)?.unwrap_or_default();
            let names: Vec<String> = names.into_iter().map(Option::unwrap_or_default).collect();
            match (kind.as_str(), names.as_slice()) {
                ("trigger", [s, t, name]) if name == ROW_TRIGGER || name == STMT_TRIGGER => {
                    triggers.push((s.clone(), t.clone(), name.clone()));
                }
                ("table" | "foreign table", [s, t]) => {
                    tables.insert((s.clone(), t.clone()), objid.unwrap_or(pg_sys::InvalidOid));
                }
                ("table column", [s, t, col]) => {
                    columns
                        .entry((s.clone(), t.clone()))
                        .or_default()
                        .push(col.clone());
                }
                _ => {}
            }
        }
        Ok::<_, AuditError>((tables, triggers, columns))
    })?;
    // ALTER TABLE ... DROP COLUMN is recorded at ddl_command_end, with the
    // columns before and after; a column dropped by another command's
    // CASCADE is recorded here, on each audited table that lost one.
    if tag != "ALTER TABLE" {
        for ((schema, table), cols) in &columns {
            if tables.contains_key(&(schema.clone(), table.clone())) {
                continue;
            }
            let audited = relstate::relation_by_name(schema, table)
                .and_then(relstate::rel_state)
                .is_some_and(|s| s.audited());
            if audited {
                capture::record_config(
                    schema,
                    table,
                    "DDL",
                    json!({"command": tag, "dropped_columns": cols}),
                )?;
            }
        }
    }
    let mut recorded = BTreeSet::new();
    for (schema, table, _) in &triggers {
        let key = (schema.clone(), table.clone());
        if !recorded.insert(key.clone()) {
            continue;
        }
        let quoted = relstate::qualified(schema, table);
        if let Some(&oid) = tables.get(&key) {
            capture::record_config(
                schema,
                table,
                "DROP",
                json!({"command": tag, "table": quoted}),
            )?;
            internal_ddl(|| {
                Spi::run_with_args(
                    "DELETE FROM audit_log.audited_tables WHERE relid = $1",
                    &[oid.into()],
                )?;
                Ok(())
            })?;
            continue;
        }
        let still_there = relstate::states(detaching.iter().copied())
            .values()
            .any(|s| s.schema == *schema && s.name == *table);
        if still_there {
            continue; // DETACH PARTITION drops the clone; ddl_command_end re-audits
        }
        if !superuser() {
            return Err(AuditError::AuditTriggerChanged {
                action: tag.to_string(),
                table: format!("{schema}.{table}"),
            });
        }
        capture::record_config(
            schema,
            table,
            "DDL",
            json!({"command": tag, "table": quoted, "capture_triggers_changed_by_superuser": true}),
        )?;
    }
    Ok(())
}

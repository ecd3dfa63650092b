//! The DDL guard: two event triggers. At ddl_command_start they note which
//! tables are fully audited and what shape each has; at ddl_command_end they
//! compare. For anyone but a superuser, switching a capture trigger off
//! (disable, drop, ENABLE REPLICA, ...) or DDL on the audit schema is an
//! error, which undoes the command. What is allowed is recorded as an event:
//! a dropped audited table, a renamed one, a column change, a superuser's
//! change to the triggers or to the audit schema. New partitions of an
//! audited table get their statement trigger here.
//!
//! State is compared, not commands parsed, so no spelling of a command slips by.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::api::{self, internal_ddl, ROW_TRIGGER};
use crate::capture;
use crate::errors::{AuditError, OrRaise};

#[derive(Clone, Debug, PartialEq)]
struct RelState {
    schema: String,
    name: String,
    columns: String,
    is_partition: bool,
    row_on: bool,
    stmt_on: bool,
    has_row: bool,
}

impl RelState {
    fn fully_audited(&self) -> bool {
        self.row_on && self.stmt_on
    }
}

type Snapshot = BTreeMap<u32, RelState>;

thread_local! {
    static STARTS: RefCell<Vec<Snapshot>> = const { RefCell::new(Vec::new()) };
}

const STATE_QUERY: &str = "
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relispartition,
       coalesce((SELECT string_agg(pg_catalog.quote_ident(a.attname) || ' ' ||
                                   pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''),
       bool_or(p.proname = 'capture_row' AND t.tgenabled = 'A' AND t.tgname = 'audit_log_capture_row'),
       bool_or(p.proname = 'capture_stmt' AND t.tgenabled = 'A' AND t.tgname = 'audit_log_capture_stmt'),
       bool_or(p.proname = 'capture_row')
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'audit_log')
   AND p.proname IN ('capture_row', 'capture_stmt')
 GROUP BY c.oid, n.nspname, c.relname, c.relispartition";

fn snapshot() -> Result<Snapshot, AuditError> {
    Spi::connect(|c| {
        let mut out = Snapshot::new();
        for r in c.select(STATE_QUERY, None, &[])? {
            let oid = r.get::<i64>(1)?.unwrap_or(0) as u32;
            out.insert(
                oid,
                RelState {
                    schema: r.get(2)?.unwrap_or_default(),
                    name: r.get(3)?.unwrap_or_default(),
                    is_partition: r.get(4)?.unwrap_or(false),
                    columns: r.get(5)?.unwrap_or_default(),
                    row_on: r.get(6)?.unwrap_or(false),
                    stmt_on: r.get(7)?.unwrap_or(false),
                    has_row: r.get(8)?.unwrap_or(false),
                },
            );
        }
        Ok(out)
    })
}

fn relation_exists(oid: u32) -> Result<bool, AuditError> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = $1::int8::oid)",
        &[i64::from(oid).into()],
    )?
    .unwrap_or(false))
}

fn quoted(s: &RelState) -> String {
    format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Objects in the audit schema touched by this command (outside extension scripts).
fn audit_schema_objects() -> Result<Vec<String>, AuditError> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        let t = c.select(
            "SELECT coalesce(object_identity, object_type) FROM pg_catalog.pg_event_trigger_ddl_commands()
              WHERE schema_name = 'audit_log' AND NOT in_extension",
            None,
            &[],
        )?;
        for r in t {
            out.extend(r.get::<String>(1)?);
        }
        Ok(out)
    })
}

unsafe fn event_trigger_data(
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<&'static pg_sys::EventTriggerData> {
    // SAFETY (caller): fcinfo comes from the function manager.
    unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_EventTriggerData {
            return None;
        }
        Some(&*(ctx as *const pg_sys::EventTriggerData))
    }
}

fn not_event_trigger() -> AuditError {
    AuditError::Internal("this function can only be called as an event trigger".into())
}

fn on_start() -> Result<(), AuditError> {
    let snap = snapshot()?;
    STARTS.with_borrow_mut(|s| s.push(snap));
    Ok(())
}

fn on_end(tag: &str) -> Result<(), AuditError> {
    let before = STARTS.with_borrow_mut(|s| s.pop()).unwrap_or_default();
    let after = snapshot()?;
    // SAFETY: reads the current role's attribute.
    let superuser = unsafe { pg_sys::superuser() };

    for obj in audit_schema_objects()? {
        if !superuser {
            return Err(AuditError::AuditSchemaDdl(obj));
        }
        capture::record_config(
            "audit_log",
            &obj,
            "DDL",
            json!({"command": tag, "object": obj}),
        )?;
    }

    for (oid, was) in &before {
        if !was.fully_audited() {
            continue;
        }
        let table = quoted(was);
        match after.get(oid) {
            Some(now) if now.fully_audited() => {
                if now.schema != was.schema || now.name != was.name || now.columns != was.columns {
                    capture::record_config(
                        &now.schema,
                        &now.name,
                        "DDL",
                        json!({
                            "command": tag,
                            "before": {"schema": was.schema, "table": was.name, "columns": was.columns},
                            "after": {"schema": now.schema, "table": now.name, "columns": now.columns},
                        }),
                    )?;
                }
            }
            _ if !relation_exists(*oid)? => {
                capture::record_config(
                    &was.schema,
                    &was.name,
                    "DROP",
                    json!({"command": tag, "table": table}),
                )?;
                internal_ddl(|| {
                    Spi::run_with_args(
                        "DELETE FROM audit_log.audited_tables WHERE relid = $1::int8::oid",
                        &[i64::from(*oid).into()],
                    )?;
                    Ok(())
                })?;
            }
            now => {
                let detached =
                    was.is_partition && now.is_none_or(|n| !n.is_partition && !n.has_row);
                if detached {
                    // A partition detached from an audited table stays audited on its own.
                    internal_ddl(|| {
                        api::create_row_trigger(&table, &crate::options::Options::default())?;
                        api::create_stmt_trigger(&table)
                    })?;
                    capture::record_config(
                        &was.schema,
                        &was.name,
                        "DDL",
                        json!({"command": tag, "table": table, "detached": true, "still_audited": true}),
                    )?;
                } else if !superuser {
                    return Err(AuditError::AuditTriggerChanged {
                        action: tag.to_string(),
                        table: format!("{}.{}", was.schema, was.name),
                    });
                } else {
                    capture::record_config(
                        &was.schema,
                        &was.name,
                        "DDL",
                        json!({"command": tag, "table": table, "capture_triggers_changed_by_superuser": true}),
                    )?;
                }
            }
        }
    }

    // New partitions of an audited table: the row trigger is cloned by
    // PostgreSQL; the statement trigger and ENABLE ALWAYS are ours to add.
    if tag == "CREATE TABLE" || tag == "ALTER TABLE" {
        for (oid, now) in &after {
            // Only tables this command made partitions (created or attached):
            // a table that had an audit trigger before is not new, and pg_restore
            // recreates existing partitions' triggers itself.
            if now.is_partition && now.has_row && !now.fully_audited() && !before.contains_key(oid)
            {
                let table = quoted(now);
                internal_ddl(|| {
                    api::create_stmt_trigger(&table)?;
                    Spi::run(&format!(
                        "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {ROW_TRIGGER}"
                    ))?;
                    Ok(())
                })?;
            }
        }
    }

    // New tables in a schema given to audit_log.enable_schema() are audited
    // from their creation. (During pg_restore the list of schemas is still
    // empty when tables are created: the dump's own triggers come later.)
    if matches!(tag, "CREATE TABLE" | "CREATE TABLE AS" | "SELECT INTO") {
        for oid in new_tables_in_audited_schemas()? {
            api::enable_default(oid)?;
        }
    }
    Ok(())
}

fn new_tables_in_audited_schemas() -> Result<Vec<pg_sys::Oid>, AuditError> {
    // The list of schemas is the extension's; the command's role need not read it.
    crate::catalog::as_owner(|| Spi::connect(|c| {
        let t = c.select(
            "SELECT DISTINCT d.objid FROM pg_catalog.pg_event_trigger_ddl_commands() d
               JOIN pg_catalog.pg_class c ON c.oid = d.objid
              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND c.relkind IN ('r', 'p')
                AND NOT c.relispartition AND c.relpersistence <> 't'
                AND d.schema_name IN (SELECT nspname FROM audit_log.audited_schemas)",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.extend(r.get::<pg_sys::Oid>(1)?);
        }
        Ok(out)
    }))
}

fn command_tag(data: &pg_sys::EventTriggerData) -> String {
    // SAFETY: GetCommandTagName returns a static string.
    unsafe { CStr::from_ptr(pg_sys::GetCommandTagName(data.tag)) }
        .to_string_lossy()
        .into_owned()
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_audit_log_ddl_command_start() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_audit_log_ddl_command_end() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// # Safety
/// Called by PostgreSQL's function manager as an event trigger.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn audit_log_ddl_command_start(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid for this call.
    if unsafe { event_trigger_data(fcinfo) }.is_none() {
        not_event_trigger().raise();
    }
    if !api::internal_ddl_active() {
        on_start().or_raise();
    }
    pg_sys::Datum::from(0)
}

/// # Safety
/// Called by PostgreSQL's function manager as an event trigger.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn audit_log_ddl_command_end(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid for this call.
    let Some(data) = (unsafe { event_trigger_data(fcinfo) }) else {
        not_event_trigger().raise();
    };
    if !api::internal_ddl_active() {
        on_end(&command_tag(data)).or_raise();
    }
    pg_sys::Datum::from(0)
}

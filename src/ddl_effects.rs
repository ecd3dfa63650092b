//! What the DDL guard does about a command's effects, beyond judging it:
//! keep capture options on renamed columns, follow a renamed schema,
//! record attaches and detaches, audit what joins an audited table or
//! schema, and find the audited tables a type change reaches.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::capture;
use crate::errors::AuditError;
use crate::options::Options;
use crate::relstate::{self, RelState};
use crate::triggers::{self, internal_ddl, ROW_TRIGGER, STMT_TRIGGER};

pub(crate) fn superuser() -> bool {
    // SAFETY: a catalog check on the current user.
    unsafe { pg_sys::superuser() }
}

/// Record a DDL event on a table.
pub(crate) fn record_ddl(st: &RelState, details: serde_json::Value) -> Result<(), AuditError> {
    record_ddl_id(st, details).map(|_| ())
}

/// As [`record_ddl`], returning the event's id.
pub(crate) fn record_ddl_id(st: &RelState, details: serde_json::Value) -> Result<i64, AuditError> {
    capture::record_config_id(&st.schema, &st.name, "DDL", details)
}

/// The options of an audited relation's row trigger (its parent's, for a partition).
pub(crate) fn options_of(st: &RelState) -> Result<Options, AuditError> {
    Ok(triggers::trigger_options(&st.quoted())?.unwrap_or_default())
}

/// The type and modifier of a column now.
pub(crate) fn column_type(table: pg_sys::Oid, column: &str) -> Option<(pg_sys::Oid, i32)> {
    let name = std::ffi::CString::new(column).ok()?;
    // SAFETY: a syscache lookup of pg_attribute by name; released at once.
    unsafe {
        let tup = pg_sys::SearchSysCacheAttName(table, name.as_ptr());
        if tup.is_null() {
            return None;
        }
        let hdr = (*tup).t_data;
        let form = &*((hdr as *const u8).add((*hdr).t_hoff as usize)
            as *const pg_sys::FormData_pg_attribute);
        let out = (form.atttypid, form.atttypmod);
        pg_sys::ReleaseSysCache(tup);
        Some(out)
    }
}

/// The typed tables (CREATE TABLE ... OF type) of the composite type whose
/// relation is `typrel`, and their inheritors: ALTER TYPE ... CASCADE
/// changes them all.
pub(crate) fn typed_tables(typrel: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>, AuditError> {
    let typed = crate::catalog::oids(
        "SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.reloftype = (SELECT reltype FROM pg_catalog.pg_class WHERE oid = $1)",
        typrel,
    )?;
    Ok(typed
        .into_iter()
        .flat_map(relstate::with_inheritors)
        .collect())
}

/// ATTACH PARTITION of a table that is audited on its own to an audited
/// parent: PostgreSQL would clone the parent's row trigger onto it and fail
/// on the name. Its own capture triggers go first (the partition is then
/// audited once, with the parent's options); ddl_command_end records it.
pub(crate) fn attach_prepare(parent: pg_sys::Oid, child: pg_sys::Oid) -> Result<(), AuditError> {
    let (Some(p), Some(c)) = (relstate::rel_state(parent), relstate::rel_state(child)) else {
        return Ok(());
    };
    if p.row.is_none() || c.row.is_none_or(|t| t.clone) && c.stmt.is_none() {
        return Ok(());
    }
    let table = c.quoted();
    internal_ddl(|| {
        Spi::run(&format!(
            "DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON {table};
             DROP TRIGGER IF EXISTS {STMT_TRIGGER} ON {table};"
        ))?;
        Spi::run_with_args(
            "DELETE FROM audit_log.audited_tables WHERE relid = $1",
            &[child.into()],
        )?;
        Ok(())
    })
}

/// Capture options name columns: after a rename they must follow the column
/// (its attribute number), or a renamed `ssn` would be recorded in clear
/// and a column renamed to an excluded name would vanish from the log. A
/// dropped column leaves the options. The change is an OPTIONS event.
pub(crate) fn follow_renamed_columns(
    oid: pg_sys::Oid,
    was: &RelState,
    now: &RelState,
) -> Result<(), AuditError> {
    let opts = options_of(now)?;
    if opts.exclude_columns.is_empty() && opts.redact_columns.is_empty() {
        return Ok(());
    }
    let follow = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter_map(|n| {
                let attnum = was.attnames.iter().find(|(_, c)| c == n)?.0;
                now.attnames
                    .iter()
                    .find(|(a, _)| *a == attnum)
                    .map(|(_, c)| c.clone())
            })
            .collect()
    };
    let mut next = opts.clone();
    next.exclude_columns = follow(&opts.exclude_columns);
    next.redact_columns = follow(&opts.redact_columns);
    if next != opts {
        triggers::change_options(oid, &next)?;
    }
    Ok(())
}

/// A schema renamed: events of its audited tables carry the new name from
/// now on, so the rename is recorded, and a schema given to enable_schema()
/// stays so under its new name.
pub(crate) fn schema_renamed(tag: &str, old: &str, new: &str) -> Result<(), AuditError> {
    let (listed, audited) = crate::catalog::as_owner(|| {
        let listed = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM audit_log.audited_schemas WHERE nspname = $1)",
            &[old.into()],
        )?
        .unwrap_or(false);
        // Audited tables, and partitions audited through a root that may
        // be in another schema.
        let audited = Spi::connect(|c| -> Result<Vec<pg_sys::Oid>, AuditError> {
            let mut out = Vec::new();
            for r in c.select(
                "SELECT c.oid FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                    AND EXISTS (SELECT FROM audit_log.audited_tables a
                                 WHERE a.relid = c.oid
                                    OR (c.relispartition AND a.relid IN (
                                        SELECT p.relid FROM pg_catalog.pg_partition_ancestors(c.oid) p)))",
                None,
                &[new.into()],
            )? {
                out.extend(r.get::<pg_sys::Oid>(1)?);
            }
            Ok(out)
        })?;
        Ok((listed, audited))
    })?;
    if !listed && audited.is_empty() {
        return Ok(());
    }
    if listed {
        internal_ddl(|| {
            Spi::run_with_args(
                "UPDATE audit_log.audited_schemas SET nspname = $2 WHERE nspname = $1",
                &[old.into(), new.into()],
            )?;
            Ok(())
        })?;
    }
    let id = capture::record_config_id(
        new,
        "",
        "DDL",
        json!({"command": tag, "schema_before": old, "schema_after": new,
               "audited_tables": audited.len(), "enable_schema": listed}),
    )?;
    // Its tables' changes so far are filed under the old name: history()
    // searches them by content (the schema may get that name back). A
    // partition's root, in whatever schema, is marked with it.
    audited
        .into_iter()
        .try_for_each(|t| capture::mark_history_since(t, id))
}

/// An audited table attached as a partition of an audited table: it is now
/// audited through its parent, with the parent's options.
pub(crate) fn attached(
    tag: &str,
    parent: pg_sys::Oid,
    child: pg_sys::Oid,
) -> Result<(), AuditError> {
    let (Some(p), Some(c)) = (relstate::rel_state(parent), relstate::rel_state(child)) else {
        return Ok(());
    };
    if !p.audited() {
        return Ok(());
    }
    let id = record_ddl_id(
        &c,
        json!({"command": tag, "table": c.quoted(), "attached_to": p.quoted(),
               "options": options_of(&p)?.to_value()}),
    )?;
    // The child's changes before the attach are not in the history()
    // index under the parent (it may have had no history, or another key).
    capture::mark_history_since(parent, id)
}

/// A partition detached from an audited table stays audited on its own,
/// with the options it had.
pub(crate) fn detached(
    tag: &str,
    parent: pg_sys::Oid,
    child: pg_sys::Oid,
) -> Result<(), AuditError> {
    let (Some(p), Some(c)) = (relstate::rel_state(parent), relstate::rel_state(child)) else {
        return Ok(());
    };
    if !p.audited() || c.is_partition || c.audited() {
        return Ok(());
    }
    let opts = options_of(&p)?;
    triggers::enable_detached(child, &c, &opts)?;
    // Its history() index entries are its parent's, complete from the
    // same event on.
    triggers::internal_ddl(|| {
        Spi::run_with_args(
            "UPDATE audit_log.audited_tables SET history_since = (
                 SELECT pg_catalog.max(a.history_since) FROM audit_log.audited_tables a
                  WHERE a.relid = $2
                     OR a.relid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($2)))
              WHERE relid = $1",
            &[child.into(), parent.into()],
        )?;
        Ok(())
    })?;
    record_ddl(
        &c,
        json!({"command": tag, "table": c.quoted(), "detached_from": p.quoted(),
               "still_audited": true, "options": opts.to_value()}),
    )
}

/// An unlogged table loses its rows in a crash, with no event: it cannot
/// join an audited table or schema.
pub(crate) fn refuse_unlogged(st: &RelState, audited: &str) -> Result<(), AuditError> {
    if st.persistence == b'u' {
        return Err(AuditError::Unlogged {
            table: format!("{}.{}", st.schema, st.name),
            audited: audited.to_string(),
        });
    }
    Ok(())
}

/// Whether a relation is an ordinary table in a schema given to enable_schema().
pub(crate) fn in_audited_schema(rel: pg_sys::Oid) -> Result<bool, AuditError> {
    let Some(st) = relstate::rel_state(rel) else {
        return Ok(false);
    };
    if !matches!(st.kind, b'r' | b'p') || st.is_partition || st.persistence == b't' || st.audited()
    {
        return Ok(false);
    }
    // The list of schemas is the extension's; the command's role need not read it.
    let audited = relstate::schema_is_audited(&st.schema);
    if audited {
        let schema = relstate::quote_ident(&st.schema);
        refuse_unlogged(&st, &format!("a table of audited schema {schema}"))?;
    }
    Ok(audited)
}

/// Audited tables with a column of this type, directly or through arrays,
/// domains, ranges or composites, and typed tables of it.
pub(crate) fn tables_using_type(typ: pg_sys::Oid) -> Result<Vec<RelState>, AuditError> {
    let rels = crate::catalog::oids(
        "WITH RECURSIVE deps(classid, objid) AS (
                 SELECT 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid, $1
               UNION
                 SELECT d.classid, d.objid FROM pg_catalog.pg_depend d JOIN deps
                     ON d.refclassid = deps.classid AND d.refobjid = deps.objid
                  WHERE d.classid IN ('pg_catalog.pg_type'::pg_catalog.regclass,
                                      'pg_catalog.pg_class'::pg_catalog.regclass)
                    AND d.deptype IN ('n', 'i'))
             SELECT DISTINCT objid FROM deps
              WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass
             UNION
             SELECT c.oid FROM pg_catalog.pg_class c WHERE c.reloftype = $1",
        typ,
    )?;
    Ok(relstate::states(rels)
        .into_values()
        .filter(RelState::audited)
        .collect())
}

/// The default or generation expression of each of these columns that has
/// one: what filled a column added to an audited table.
pub(crate) fn column_expressions(
    rel: pg_sys::Oid,
    attnums: &[i16],
) -> Result<Vec<serde_json::Value>, AuditError> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                    a.attgenerated <> ''
               FROM pg_catalog.pg_attrdef d
               JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
              WHERE d.adrelid = $1 AND d.adnum = ANY ($2) ORDER BY d.adnum",
            None,
            &[rel.into(), attnums.to_vec().into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            let name: String = r.get(1)?.unwrap_or_default();
            let expr: String = r.get(2)?.unwrap_or_default();
            let generated = r.get::<bool>(3)?.unwrap_or(false);
            let key = if generated { "generated" } else { "default" };
            out.push(json!({"column": name, key: expr}));
        }
        Ok(out)
    })
}

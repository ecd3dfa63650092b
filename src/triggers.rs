//! The capture triggers, and what audit_log does to a table to audit it:
//! describe it, create or find its triggers (as the extension owner, unseen
//! by the DDL guard), and record what changed. The SQL functions in `api`
//! and the DDL guard both act through here.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::json;

use crate::capture;
use crate::catalog::{self, as_owner};
use crate::errors::{optional_row, AuditError};
use crate::options::Options;

pub use crate::catalog::{ROW_TRIGGER, STMT_TRIGGER};

thread_local! {
    /// Set while audit_log itself runs DDL, so that its DDL guard lets it pass.
    static INTERNAL_DDL: Cell<u32> = const { Cell::new(0) };
}

pub fn internal_ddl_active() -> bool {
    INTERNAL_DDL.get() > 0
}

/// Run audit_log's own DDL: as the owner, and unseen by the DDL guard.
pub fn internal_ddl<T>(f: impl FnOnce() -> Result<T, AuditError>) -> Result<T, AuditError> {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            INTERNAL_DDL.set(INTERNAL_DDL.get() - 1);
        }
    }
    INTERNAL_DDL.set(INTERNAL_DDL.get() + 1);
    let _depth = Depth;
    as_owner(f)
}

/// A table as audit_log acts on it.
pub struct Target {
    pub oid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    pub qualified: String,
    pub partitioned: bool,
}

/// relkind, relpersistence, schema, name, and the name as regclass prints it.
type RelRow = (String, String, String, String, String);

pub fn describe(oid: pg_sys::Oid) -> Result<Target, AuditError> {
    let row = Spi::connect(|c| -> Result<Option<RelRow>, AuditError> {
        let t = c.select(
            "SELECT c.relkind::text, c.relpersistence::text, n.nspname::text, c.relname::text,
                    c.oid::regclass::text
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $1",
            Some(1),
            &[oid.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            r.get(1)?.unwrap_or_default(),
            r.get(2)?.unwrap_or_default(),
            r.get(3)?.unwrap_or_default(),
            r.get(4)?.unwrap_or_default(),
            r.get(5)?.unwrap_or_default(),
        )))
    })?;
    let Some((kind, persistence, schema, name, qualified)) = row else {
        return Err(AuditError::NoSuchRelation(oid.to_u32()));
    };
    let what = match kind.as_str() {
        "r" | "p" => None,
        "v" => Some("a view"),
        "m" => Some("a materialized view"),
        "f" => Some("a foreign table"),
        "S" => Some("a sequence"),
        "i" | "I" => Some("an index"),
        "c" => Some("a composite type"),
        "t" => Some("a TOAST table"),
        _ => Some("not a table"),
    };
    if let Some(kind) = what {
        return Err(AuditError::WrongObjectKind {
            name: qualified,
            kind,
        });
    }
    if persistence == "t" {
        return Err(AuditError::TemporaryTable(qualified));
    }
    if persistence == "u" {
        return Err(AuditError::Unlogged {
            table: qualified,
            audited: "audit_log.enable() or an audited schema".into(),
        });
    }
    if schema == "pg_catalog"
        || schema == "information_schema"
        || schema == "audit_log"
        || schema.starts_with("pg_toast")
    {
        return Err(AuditError::SystemTable(qualified));
    }
    Ok(Target {
        oid,
        schema,
        name,
        qualified,
        partitioned: kind == "p",
    })
}

/// Partitions at every level below a partitioned table.
pub fn partitions(oid: pg_sys::Oid) -> Result<Vec<String>, AuditError> {
    catalog::first_column(
        "SELECT relid::regclass::text FROM pg_catalog.pg_partition_tree($1)
          WHERE relid <> $1::regclass",
        oid,
    )
}

/// Whether `rel` carries the trigger `name`, enabled ALWAYS.
fn has_trigger(oid: pg_sys::Oid, name: &str) -> Result<bool, AuditError> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                         WHERE tgrelid = $1 AND tgname = $2 AND tgenabled = 'A')",
        &[oid.into(), name.into()],
    )?
    .unwrap_or(false))
}

pub fn fully_audited(t: &Target) -> Result<bool, AuditError> {
    Ok(has_trigger(t.oid, ROW_TRIGGER)? && has_trigger(t.oid, STMT_TRIGGER)?)
}

/// The capture options a relation's row trigger carries (its one argument),
/// or None if it has no row trigger.
pub fn trigger_options(qualified: &str) -> Result<Option<Options>, AuditError> {
    let arg = Spi::get_two_with_args::<bool, String>(
        "SELECT true, CASE WHEN tgnargs > 0 THEN pg_catalog.convert_from(
                    pg_catalog.substr(tgargs, 1, pg_catalog.length(tgargs) - 1), 'UTF8') END
           FROM pg_catalog.pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2",
        &[qualified.into(), ROW_TRIGGER.into()],
    );
    match optional_row(arg)? {
        Some((Some(true), Some(text))) => Ok(Some(Options::parse(&text)?)),
        Some((Some(true), None)) => Ok(Some(Options::default())),
        _ => Ok(None),
    }
}

/// `(arg)`: the function arguments that carry options into a trigger.
fn trigger_arg(opts: &Options) -> Result<String, AuditError> {
    match opts.to_arg() {
        None => Ok("()".into()),
        Some(text) => {
            let quoted = Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.quote_literal($1)",
                &[text.into()],
            )?
            .ok_or_else(|| AuditError::Internal("quote_literal returned NULL".into()))?;
            Ok(format!("({quoted})"))
        }
    }
}

/// Create the statement trigger on one relation (a table or a partition),
/// with the options of that relation's row trigger.
///
/// It records TRUNCATE; row changes are the row trigger's, and events are
/// written at commit, so it fires on nothing else (a statement trigger on
/// every INSERT would be work for nothing on the write path). A foreign
/// table (a foreign partition of an audited table) cannot have a TRUNCATE
/// trigger: its statement trigger, on the other operations, records
/// nothing and is kept so that every audited relation has the same pair
/// of triggers. A TRUNCATE through the partitioned parent is recorded there.
pub fn create_stmt_trigger(qualified: &str) -> Result<(), AuditError> {
    let arg = trigger_arg(&trigger_options(qualified)?.unwrap_or_default())?;
    let foreign = Spi::get_one_with_args::<bool>(
        "SELECT relkind = 'f' FROM pg_catalog.pg_class WHERE oid = $1::pg_catalog.regclass",
        &[qualified.into()],
    )?
    .unwrap_or(false);
    let events = if foreign {
        "INSERT OR UPDATE OR DELETE"
    } else {
        "TRUNCATE"
    };
    Spi::run(&format!(
        "DROP TRIGGER IF EXISTS {STMT_TRIGGER} ON {qualified};
         CREATE TRIGGER {STMT_TRIGGER} AFTER {events} ON {qualified}
             FOR EACH STATEMENT EXECUTE FUNCTION audit_log.capture_stmt{arg};
         ALTER TABLE {qualified} ENABLE ALWAYS TRIGGER {STMT_TRIGGER};"
    ))?;
    Ok(())
}

/// List a table in audit_log.audited_tables with its options (as the owner).
fn note_audited(oid: pg_sys::Oid, opts: &Options) -> Result<(), AuditError> {
    Spi::run_with_args(
        "INSERT INTO audit_log.audited_tables (relid, options) VALUES ($1, $2)
         ON CONFLICT (relid) DO UPDATE SET options = excluded.options",
        &[oid.into(), JsonB(opts.to_value()).into()],
    )?;
    Ok(())
}

/// A new partition of an audited table: PostgreSQL cloned the row trigger;
/// add the statement trigger and make both ALWAYS.
pub fn complete_partition(p: &crate::relstate::RelState) -> Result<(), AuditError> {
    let table = p.quoted();
    internal_ddl(|| {
        create_stmt_trigger(&table)?;
        Spi::run(&format!(
            "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {ROW_TRIGGER}"
        ))?;
        Ok(())
    })
}

/// A partition detached from an audited table: audited on its own from now
/// on, with the options it had through its parent.
pub fn enable_detached(
    oid: pg_sys::Oid,
    p: &crate::relstate::RelState,
    opts: &Options,
) -> Result<(), AuditError> {
    let table = p.quoted();
    internal_ddl(|| {
        create_row_trigger(&table, opts)?;
        create_stmt_trigger(&table)?;
        note_audited(oid, opts)
    })
}

/// A new inheritance child of an audited table: audited like its parent,
/// since an UPDATE or DELETE through the parent reaches its rows.
pub fn enable_inherited(oid: pg_sys::Oid, opts: &Options, parent: &str) -> Result<(), AuditError> {
    let t = describe(oid)?;
    if fully_audited(&t)? {
        return Ok(());
    }
    enable_with(oid, &t, opts)?;
    pgrx::notice!(
        "{} inherits from audited table {parent}: it is audited too",
        t.qualified
    );
    Ok(())
}

/// Inheritance children (not partitions) at every level below a table.
pub fn inheritance_children(oid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    crate::relstate::with_inheritors(oid)
        .into_iter()
        .filter(|&c| c != oid)
        .filter(|&c| crate::relstate::rel_state(c).is_some_and(|s| !s.is_partition))
        .collect()
}

/// Create the row trigger; on a partitioned table PostgreSQL clones it onto
/// every present and future partition, arguments included.
pub fn create_row_trigger(qualified: &str, opts: &Options) -> Result<(), AuditError> {
    let arg = trigger_arg(opts)?;
    Spi::run(&format!(
        "DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON {qualified};
         CREATE TRIGGER {ROW_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {qualified}
             FOR EACH ROW EXECUTE FUNCTION audit_log.capture_row{arg};
         ALTER TABLE {qualified} ENABLE ALWAYS TRIGGER {ROW_TRIGGER};"
    ))?;
    Ok(())
}

pub fn columns_of(oid: pg_sys::Oid) -> Result<Vec<String>, AuditError> {
    catalog::first_column(
        "SELECT attname::text FROM pg_catalog.pg_attribute
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        oid,
    )
}

/// A table's capture triggers, made (or made again) with `opts`; a
/// partitioned table's partitions get their statement triggers and the
/// cloned row trigger enabled always.
fn install_capture_triggers(
    t: &Target,
    oid: pg_sys::Oid,
    opts: &Options,
) -> Result<(), AuditError> {
    create_row_trigger(&t.qualified, opts)?;
    create_stmt_trigger(&t.qualified)?;
    if t.partitioned {
        for p in partitions(oid)? {
            create_stmt_trigger(&p)?;
            Spi::run(&format!(
                "ALTER TABLE {p} ENABLE ALWAYS TRIGGER {ROW_TRIGGER}"
            ))?;
        }
    }
    Ok(())
}

pub fn enable_with(oid: pg_sys::Oid, t: &Target, opts: &Options) -> Result<(), AuditError> {
    if !opts.redact_columns.is_empty() {
        // The database's salt, made once, from the server's strong random source.
        internal_ddl(|| {
            Spi::run(
                "INSERT INTO audit_log.secrets (name, value)
                 SELECT 'redaction_salt', pg_catalog.sha256(pg_catalog.convert_to(
                        pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, 'UTF8'))
                 ON CONFLICT (name) DO NOTHING",
            )?;
            Ok(())
        })?;
    }
    let current = trigger_options(&t.qualified)?;
    if fully_audited(t)? && current.as_ref().is_some_and(|c| c != opts) {
        // Audited, with other options: recreate the triggers, and record it.
        let old = current.unwrap_or_default();
        internal_ddl(|| {
            install_capture_triggers(t, oid, opts)?;
            Spi::run_with_args(
                "UPDATE audit_log.audited_tables SET options = $2 WHERE relid = $1",
                &[oid.into(), JsonB(opts.to_value()).into()],
            )?;
            Ok(())
        })?;
        let id = capture::record_config_id(
            &t.schema,
            &t.name,
            "OPTIONS",
            json!({"table": t.qualified, "old": old.to_value(), "new": opts.to_value()}),
        )?;
        // The index holds the table's changes from here on only.
        if opts.history && !old.history {
            capture::mark_history_since(oid, id)?;
        }
        return Ok(());
    }
    if fully_audited(t)? {
        // Repair partitions' statement triggers all the same: cheap and idempotent.
        if t.partitioned {
            internal_ddl(|| {
                partitions(oid)?
                    .iter()
                    .try_for_each(|p| create_stmt_trigger(p))
            })?;
        }
        pgrx::notice!("table {} is already audited", t.qualified);
        return Ok(());
    }
    internal_ddl(|| {
        // A partition audited on its own (from an audited schema, say) is
        // audited through its parent from now on: its own triggers go, or the
        // parent's row trigger could not be cloned onto it.
        if t.partitioned {
            for p in partitions(oid)? {
                Spi::run_with_args(
                    "DELETE FROM audit_log.audited_tables WHERE relid = $1::regclass",
                    &[p.as_str().into()],
                )?;
                Spi::run(&format!(
                    "DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON {p};
                     DROP TRIGGER IF EXISTS {STMT_TRIGGER} ON {p};"
                ))?;
            }
        }
        install_capture_triggers(t, oid, opts)?;
        note_audited(oid, opts)
    })?;
    let mut details = json!({"table": t.qualified, "partitioned": t.partitioned});
    if !opts.is_default() {
        details["options"] = opts.to_value();
    }
    capture::record_config(&t.schema, &t.name, "ENABLE", details)
}

/// New options for an audited table, as enable() would set them (recorded
/// as an OPTIONS event).
pub fn change_options(oid: pg_sys::Oid, opts: &Options) -> Result<(), AuditError> {
    enable_with(oid, &describe(oid)?, opts)
}

/// Audit a table with the default options, unless it is audited already
/// (then its options stay). For enable_schema and new tables in its schemas.
pub fn enable_default(oid: pg_sys::Oid) -> Result<(), AuditError> {
    let t = describe(oid)?;
    if fully_audited(&t)? {
        return Ok(());
    }
    enable_with(oid, &t, &Options::default())
}

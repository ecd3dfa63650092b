//! The SQL API: enable, disable, verify, checkpoint. Each checks its caller's
//! role itself; enable and disable then act as the extension owner, with
//! search_path pinned, to create or drop the capture triggers.

use std::cell::Cell;

use audit_log_core::model::{ChainHead, Checkpoint, CHECKPOINT_FORMAT};
use audit_log_core::time::{format_rfc3339, from_pg_timestamp};
use audit_log_core::verify::Verdict;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::json;

use crate::capture;
use crate::catalog::{self, as_owner};
use crate::errors::{optional_row, AuditError, SqlResult};
use crate::options::Options;

pub const ROW_TRIGGER: &str = "audit_log_capture_row";
pub const STMT_TRIGGER: &str = "audit_log_capture_stmt";

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

struct Target {
    oid: pg_sys::Oid,
    schema: String,
    name: String,
    qualified: String,
    partitioned: bool,
}

pub fn require_admin(action: &str) -> Result<(), AuditError> {
    if catalog::current_user_has(c"audit_log_admin") {
        Ok(())
    } else {
        Err(AuditError::NotAdmin {
            action: action.to_string(),
        })
    }
}

/// relkind, relpersistence, schema, name, and the name as regclass prints it.
type RelRow = (String, String, String, String, String);

fn describe(oid: pg_sys::Oid) -> Result<Target, AuditError> {
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
fn partitions(oid: pg_sys::Oid) -> Result<Vec<String>, AuditError> {
    Spi::connect(|c| -> Result<Vec<String>, AuditError> {
        let t = c.select(
            "SELECT relid::regclass::text FROM pg_catalog.pg_partition_tree($1)
              WHERE relid <> $1::regclass",
            None,
            &[oid.into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.extend(r.get::<String>(1)?);
        }
        Ok(out)
    })
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

fn fully_audited(t: &Target) -> Result<bool, AuditError> {
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
fn inheritance_children(oid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
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

fn columns_of(oid: pg_sys::Oid) -> Result<Vec<String>, AuditError> {
    Spi::connect(|c| -> Result<Vec<String>, AuditError> {
        let t = c.select(
            "SELECT attname::text FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            None,
            &[oid.into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.extend(r.get::<String>(1)?);
        }
        Ok(out)
    })
}

/// Enable auditing of a table (partitioned: every partition, present and
/// future), or change its options.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."enable"(
    "target" regclass,
    "operations" text[] DEFAULT NULL,
    "exclude_columns" text[] DEFAULT NULL,
    "redact_columns" text[] DEFAULT NULL,
    "skip_unchanged_updates" boolean DEFAULT false,
    "notify" boolean DEFAULT false,
    "history" boolean DEFAULT false,
    "changed_only" boolean DEFAULT false) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.enable(regclass, text[], text[], text[], boolean, boolean, boolean, boolean) IS 'Start auditing the row changes of a table, or change what is recorded. history => true indexes each change by the row''s primary key for audit_log.history(); changed_only => true keeps in an UPDATE''s old_row only the columns it changed. Idempotent; each change of options is recorded. Requires audit_log_admin.';
"#)]
// One argument per SQL parameter: the signature is the SQL API's.
#[allow(clippy::too_many_arguments)]
fn enable(
    target: Option<pg_sys::Oid>,
    operations: Option<Vec<Option<String>>>,
    exclude_columns: Option<Vec<Option<String>>>,
    redact_columns: Option<Vec<Option<String>>>,
    skip_unchanged_updates: Option<bool>,
    notify: Option<bool>,
    history: Option<bool>,
    changed_only: Option<bool>,
) -> SqlResult<()> {
    {
        let (oid, t) = admin_target(target, "enable auditing")?;
        let opts = Options::build(
            operations,
            exclude_columns,
            redact_columns,
            crate::options::Switches {
                skip_unchanged_updates: skip_unchanged_updates.unwrap_or(false),
                notify: notify.unwrap_or(false),
                history: history.unwrap_or(false),
                changed_only: changed_only.unwrap_or(false),
            },
            &columns_of(oid)?,
            (&t.schema, &t.name),
        )?;
        enable_with(oid, &t, &opts)?;
        // Rows of inheritance children show in the parent and are changed
        // through it: they are audited with the same options.
        for child in inheritance_children(oid) {
            enable_with(child, &describe(child)?, &opts)?;
        }
        Ok(())
    }
}

/// The checks enable and disable share: a non-NULL target, an admin caller,
/// a table that can be audited.
fn admin_target(
    target: Option<pg_sys::Oid>,
    action: &str,
) -> Result<(pg_sys::Oid, Target), AuditError> {
    let oid = target.ok_or(AuditError::NullArgument("target"))?;
    require_admin(action)?;
    Ok((oid, describe(oid)?))
}

fn enable_with(oid: pg_sys::Oid, t: &Target, opts: &Options) -> Result<(), AuditError> {
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
            Spi::run_with_args(
                "UPDATE audit_log.audited_tables SET options = $2 WHERE relid = $1",
                &[oid.into(), JsonB(opts.to_value()).into()],
            )?;
            Ok(())
        })?;
        return capture::record_config(
            &t.schema,
            &t.name,
            "OPTIONS",
            json!({"table": t.qualified, "old": old.to_value(), "new": opts.to_value()}),
        );
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

/// Audit every table of a schema, and every table created in it later.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."enable_schema"("name" text) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.enable_schema(text) IS 'Audit every current and future table of a schema. Tables already audited keep their options. Requires audit_log_admin.';
"#)]
fn enable_schema(name: Option<String>) -> SqlResult<()> {
    {
        let name = name.ok_or(AuditError::NullArgument("name"))?;
        require_admin("enable auditing")?;
        let ns = optional_row(Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[name.as_str().into()],
        ))?
        .flatten()
        .ok_or_else(|| AuditError::NoSuchSchema(name.clone()))?;
        if name == "audit_log" || name == "information_schema" || name.starts_with("pg_") {
            return Err(AuditError::SystemTable(format!("schema {name}")).into());
        }
        let tables = crate::catalog::oids(
            "SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = $1 AND relkind IN ('r', 'p')
                    AND NOT relispartition AND relpersistence <> 't' ORDER BY relname",
            ns,
        )?;
        // Unlogged tables cannot be audited: enable_schema() fails on them,
        // with the same message enable() gives, before changing anything.
        for &t in &tables {
            describe(t)?;
        }
        let added = change_schema_list(
            "INSERT INTO audit_log.audited_schemas (nspname) VALUES ($1)
             ON CONFLICT (nspname) DO NOTHING RETURNING true",
            &name,
        )?;
        if added {
            capture::record_config(&name, "", "ENABLE_SCHEMA", json!({"schema": name}))?;
        }
        Ok(tables.into_iter().try_for_each(enable_default)?)
    }
}

/// Add a schema to, or remove it from, the audited list (as the owner);
/// whether the list changed.
fn change_schema_list(sql: &str, name: &str) -> Result<bool, AuditError> {
    internal_ddl(|| {
        Ok(
            optional_row(Spi::get_one_with_args::<bool>(sql, &[name.into()]))?
                .flatten()
                .unwrap_or(false),
        )
    })
}

/// Stop auditing new tables of a schema; its tables stay audited.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."disable_schema"("name" text) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.disable_schema(text) IS 'Stop auditing tables created later in a schema; its tables stay audited until audit_log.disable(). Requires audit_log_admin.';
"#)]
fn disable_schema(name: Option<String>) -> SqlResult<()> {
    {
        let name = name.ok_or(AuditError::NullArgument("name"))?;
        require_admin("disable auditing")?;
        let removed = change_schema_list(
            "DELETE FROM audit_log.audited_schemas WHERE nspname = $1 RETURNING true",
            &name,
        )?;
        if removed {
            capture::record_config(&name, "", "DISABLE_SCHEMA", json!({"schema": name}))?;
        } else {
            pgrx::notice!("schema {name} was not given to audit_log.enable_schema()");
        }
        Ok(())
    }
}

/// What a redacted column holds for `value`: to show that a recorded change
/// had a given value, without the log ever holding it. Superusers only:
/// whoever can call it and read events can test guesses of a low-entropy
/// value (a 6-digit code) at hundreds of thousands per second.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."redacted"("value" jsonb) RETURNS text
STABLE PARALLEL SAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.redacted(jsonb) IS 'The salted SHA-256 that a redacted column records for this value. Superusers only: it would let anyone who reads events test guesses of a redacted value.';
"#)]
fn redacted(value: Option<&[u8]>) -> SqlResult<Option<String>> {
    {
        // SAFETY: a catalog check on the current user.
        if !unsafe { pg_sys::superuser() } {
            return Err(AuditError::NotSuperuser {
                action: "compute redacted values".into(),
                why: "it would let a role that reads events test guesses of a redacted value",
            }
            .into());
        }
        // The binary jsonb after its header, encoded without building a tree.
        let v = value.ok_or(AuditError::NullArgument("value"))?;
        let encoded = crate::jsonb::encode_payload(v);
        Ok(Some(crate::options::redact(
            &crate::options::redaction_salt()?,
            &encoded,
        )))
    }
}

/// Stop auditing a table. Its recorded events stay.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."disable"("target" regclass) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.disable(regclass) IS 'Stop auditing a table; its history stays and the change is itself recorded. Requires audit_log_admin.';
"#)]
fn disable(target: Option<pg_sys::Oid>) -> SqlResult<()> {
    let (oid, t) = admin_target(target, "disable auditing")?;
    let any = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname IN ($2, $3))",
        &[oid.into(), ROW_TRIGGER.into(), STMT_TRIGGER.into()],
    )
    .map_err(AuditError::from)?
    .unwrap_or(false);
    if !any {
        pgrx::notice!("table {} is not audited", t.qualified);
        return Ok(());
    }
    capture::record_config(&t.schema, &t.name, "DISABLE", json!({"table": t.qualified}))?;
    internal_ddl(|| {
        let mut rels = vec![t.qualified.clone()];
        if t.partitioned {
            rels.extend(partitions(oid)?);
        }
        for r in rels {
            Spi::run(&format!("DROP TRIGGER IF EXISTS {STMT_TRIGGER} ON {r}"))?;
        }
        Spi::run(&format!(
            "DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON {}",
            t.qualified
        ))?;
        Spi::run_with_args(
            "DELETE FROM audit_log.audited_tables WHERE relid = $1",
            &[oid.into()],
        )?;
        Ok(())
    })?;
    Ok(())
}

// ---------------------------------------------------------------- verify

use crate::records::{hash_of, run_verify};

type VerifyRow = (bool, i64, Option<i64>, Option<String>);

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

fn verdict_row(v: Verdict, checkpoint: bool) -> TableIterator<'static, VerifyRow> {
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
#[pg_extern(name = "verify", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
// The SQL signature, spelled out for pgrx.
#[allow(clippy::type_complexity)]
fn verify_all() -> SqlResult<
    TableIterator<
        'static,
        (
            name!(ok, bool),
            name!(events_checked, i64),
            name!(first_bad_event, Option<i64>),
            name!(problem, Option<String>),
        ),
    >,
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
) -> SqlResult<
    TableIterator<
        'static,
        (
            name!(ok, bool),
            name!(events_checked, i64),
            name!(first_bad_event, Option<i64>),
            name!(problem, Option<String>),
        ),
    >,
> {
    {
        let payload = checkpoint.ok_or(AuditError::NullArgument("checkpoint"))?;
        let text = crate::jsonb::payload_to_text(payload);
        // serde_json refuses nesting past 128 levels; a checkpoint has 3.
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| AuditError::BadCheckpoint(e.to_string()))?;
        let cp = Checkpoint::parse(&value).map_err(|e| AuditError::BadCheckpoint(e.to_string()))?;
        Ok(verdict_row(run_verify(Some(&cp))?, true))
    }
}

/// Every chain head, to be kept outside the database.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn checkpoint() -> SqlResult<JsonB> {
    // Committed prepared transactions join the chains first, so that the
    // checkpoint covers them; not on a standby or in a read-only transaction.
    // SAFETY: plain reads of transaction state.
    if unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly } {
        crate::chain::link_prepared(&catalog::lookup()?)?;
    }
    let chains = Spi::connect(|c| -> Result<Vec<ChainHead>, AuditError> {
        let t = c.select(
            "SELECT DISTINCT ON (chain_id) chain_id, seq, link_hash, last_event
               FROM audit_log.records ORDER BY chain_id, seq DESC",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.push(ChainHead {
                chain: r.get::<i32>(1)?.unwrap_or(-1),
                seq: r.get::<i64>(2)?.unwrap_or(0),
                link_hash: hash_of(r.get(3)?),
                last_event: r.get::<i64>(4)?.unwrap_or(0),
            });
        }
        Ok(out)
    })?;
    // SAFETY: plain reads of cluster identity and the clock.
    let (database, sysid, now) = unsafe {
        (
            catalog::database_name(),
            pg_sys::GetSystemIdentifier(),
            pg_sys::GetCurrentTimestamp(),
        )
    };
    let cp = Checkpoint {
        format: CHECKPOINT_FORMAT.into(),
        database: Some(database),
        system_identifier: Some(sysid.to_string()),
        taken_at: Some(format_rfc3339(from_pg_timestamp(now))),
        chains,
    };
    let value = serde_json::to_value(&cp).map_err(|e| AuditError::Internal(e.to_string()))?;
    Ok(JsonB(value))
}

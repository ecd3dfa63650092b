//! The SQL API of tables: enable, disable, enable_schema, disable_schema
//! and redacted. Each checks its caller's role itself; what it does to a
//! table goes through `triggers`, as the extension owner.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::capture;
use crate::catalog::require_admin;
use crate::errors::{optional_row, AuditError};
use crate::options::Options;
use crate::triggers::{
    columns_of, describe, enable_default, enable_with, inheritance_children, internal_ddl,
    partitions, Target, ROW_TRIGGER, STMT_TRIGGER,
};
use pgrx::pg_sys::panic::ErrorReport;

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
) -> Result<(), ErrorReport> {
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

/// Audit every table of a schema, and every table created in it later.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."enable_schema"("name" text) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.enable_schema(text) IS 'Audit every current and future table of a schema. Tables already audited keep their options. Requires audit_log_admin.';
"#)]
fn enable_schema(name: Option<String>) -> Result<(), ErrorReport> {
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
fn disable_schema(name: Option<String>) -> Result<(), ErrorReport> {
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
fn redacted(value: Option<&[u8]>) -> Result<Option<String>, ErrorReport> {
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
fn disable(target: Option<pg_sys::Oid>) -> Result<(), ErrorReport> {
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

//! Per-table capture options (selective capture): which operations to
//! record, columns to leave out, columns to keep only as a salted SHA-256,
//! whether to skip UPDATEs that changed nothing else, and a notification per
//! change. They travel as the capture triggers' one argument, so capture
//! reads them from the relcache with no lookup; `audited_tables.options`
//! shows them to people.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::IntoDatum;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::errors::AuditError;

/// A row operation that capture records (the `operations` option chooses
/// among them). Spelled in upper case in options, trigger arguments and
/// events, as SQL spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }

    /// An operation's name, in any case.
    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// None: every operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<Op>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_columns: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unchanged_updates: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify: bool,
    /// Index each change by the row's primary key, for audit_log.history().
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
    /// An UPDATE's old_row holds only the columns it changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_only: bool,
    /// The channel, fixed by enable() from the audited table's name, so that
    /// its partitions (whatever their names) notify on it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// enable()'s on/off options.
pub struct Switches {
    pub skip_unchanged_updates: bool,
    pub notify: bool,
    pub history: bool,
    pub changed_only: bool,
}

/// PostgreSQL's limit on a channel name, in bytes.
const MAX_CHANNEL: usize = 63;

impl Options {
    pub fn is_default(&self) -> bool {
        *self == Options::default()
    }

    pub fn records(&self, op: Op) -> bool {
        self.operations.as_ref().is_none_or(|ops| ops.contains(&op))
    }

    fn transforms(&self) -> bool {
        !self.exclude_columns.is_empty() || !self.redact_columns.is_empty()
    }

    /// The trigger argument: compact JSON, or none for the defaults.
    pub fn to_arg(&self) -> Option<String> {
        (!self.is_default()).then(|| serde_json::to_string(self).unwrap_or_default())
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Where a change to `schema.table` under these options is announced.
    pub fn channel_for(&self, schema: &str, table: &str) -> String {
        self.channel
            .clone()
            .unwrap_or_else(|| Self::channel(schema, table))
    }

    /// The channel that hears about each change to `schema.table`.
    pub fn channel(schema: &str, table: &str) -> String {
        format!("audit_log:{schema}.{table}")
    }

    /// Options as given to enable(), checked against the table's columns.
    pub fn build(
        operations: Option<Vec<Option<String>>>,
        exclude: Option<Vec<Option<String>>>,
        redact: Option<Vec<Option<String>>>,
        Switches {
            skip_unchanged_updates,
            notify,
            history,
            changed_only,
        }: Switches,
        columns: &[String],
        (schema, table): (&str, &str),
    ) -> Result<Options, AuditError> {
        let list =
            |what: &str, v: Option<Vec<Option<String>>>| -> Result<Vec<String>, AuditError> {
                let mut out: Vec<String> = Vec::new();
                for item in v.unwrap_or_default() {
                    let item =
                        item.ok_or_else(|| AuditError::BadOption(format!("{what} contains NULL")))?;
                    if !out.contains(&item) {
                        out.push(item);
                    }
                }
                Ok(out)
            };
        let operations = match operations {
            None => None,
            Some(ops) => {
                let names = list("operations", Some(ops))?;
                let mut ops = Vec::with_capacity(names.len());
                for name in names {
                    let Some(op) = Op::parse(&name) else {
                        return Err(AuditError::BadOption(format!(
                            "unknown operation \"{}\"; choose from INSERT, UPDATE, DELETE, TRUNCATE",
                            name.to_ascii_uppercase()
                        )));
                    };
                    ops.push(op);
                }
                if ops.is_empty() {
                    return Err(AuditError::BadOption(
                        "operations is empty: to stop auditing, call audit_log.disable()".into(),
                    ));
                }
                ops.sort();
                ops.dedup();
                (ops.len() < Op::ALL.len()).then_some(ops)
            }
        };
        let exclude_columns = list("exclude_columns", exclude)?;
        let redact_columns = list("redact_columns", redact)?;
        for c in exclude_columns.iter().chain(&redact_columns) {
            if !columns.contains(c) {
                return Err(AuditError::NoSuchColumn(
                    format!("{schema}.{table}"),
                    c.clone(),
                ));
            }
        }
        if let Some(c) = exclude_columns.iter().find(|c| redact_columns.contains(c)) {
            return Err(AuditError::BadOption(format!(
                "column \"{c}\" cannot be both excluded and redacted"
            )));
        }
        if notify && Self::channel(schema, table).len() > MAX_CHANNEL {
            return Err(AuditError::BadOption(format!(
                "the notification channel \"{}\" would be longer than {MAX_CHANNEL} bytes",
                Self::channel(schema, table)
            )));
        }
        Ok(Options {
            operations,
            exclude_columns,
            redact_columns,
            skip_unchanged_updates,
            notify,
            channel: notify.then(|| Self::channel(schema, table)),
            history,
            changed_only,
        })
    }

    pub fn parse(text: &str) -> Result<Options, AuditError> {
        serde_json::from_str(text)
            .map_err(|e| AuditError::Internal(format!("capture trigger argument {text:?}: {e}")))
    }

    /// A row (a jsonb datum) as it is to be recorded: excluded columns gone,
    /// redacted ones replaced by "sha256:" and the hex SHA-256 of the salt
    /// and the value's canonical encoding, so equal values show as equal.
    /// Only top-level members are touched, through PostgreSQL's jsonb
    /// functions: nothing here walks a nested value.
    pub fn apply(&self, row: pg_sys::Datum) -> Result<pg_sys::Datum, AuditError> {
        if !self.transforms() {
            return Ok(row);
        }
        let mut row = row;
        for c in &self.exclude_columns {
            // SAFETY: jsonb_delete(jsonb, text) on a jsonb datum and a text datum.
            row = unsafe {
                pgrx::direct_function_call_as_datum(
                    pg_sys::jsonb_delete,
                    &[Some(row), c.as_str().into_datum()],
                )
            }
            .ok_or_else(|| AuditError::Internal("jsonb_delete returned NULL".into()))?;
        }
        if self.redact_columns.is_empty() {
            return Ok(row);
        }
        let salt = redaction_salt()?;
        let mut hashed = serde_json::Map::new();
        for c in &self.redact_columns {
            // SAFETY: jsonb_object_field(jsonb, text); NULL when the member is absent.
            let v = unsafe {
                pgrx::direct_function_call_as_datum(
                    pg_sys::jsonb_object_field,
                    &[Some(row), c.as_str().into_datum()],
                )
            };
            if let Some(v) = v {
                // SAFETY: v is a jsonb datum.
                let encoded = unsafe { crate::jsonb::encode(v) };
                hashed.insert(c.clone(), Value::String(redact(&salt, &encoded)));
            }
        }
        if hashed.is_empty() {
            return Ok(row);
        }
        let patch = crate::jsonb::jsonb_in(&Value::Object(hashed).to_string())?;
        // SAFETY: jsonb_concat(jsonb, jsonb): the patch's members replace the row's.
        unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_concat, &[Some(row), Some(patch)])
        }
        .ok_or_else(|| AuditError::Internal("jsonb_concat returned NULL".into()))
    }
}

/// "sha256:<hex>" of the salt followed by a value's canonical encoding.
pub fn redact(salt: &[u8], encoded: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(encoded);
    format!("sha256:{}", hex::encode(h.finalize()))
}

thread_local! {
    static PARSED: RefCell<HashMap<String, Rc<Options>>> = RefCell::new(HashMap::new());
    /// The salt, with the OID of the audit_log.secrets it was read from: a
    /// DROP and CREATE EXTENSION in the same session makes a new table, and
    /// a new salt.
    static SALT: RefCell<Option<(pg_sys::Oid, Vec<u8>)>> = const { RefCell::new(None) };
}

/// The options a capture trigger was created with.
pub fn of_trigger(td: &pg_sys::TriggerData) -> Result<Rc<Options>, AuditError> {
    // SAFETY: tg_trigger is valid for the trigger call; tgargs has tgnargs cstrings.
    let arg = unsafe {
        let t = &*td.tg_trigger;
        if t.tgnargs < 1 || t.tgargs.is_null() {
            None
        } else {
            // Borrowed: the argument is copied only the first time it is seen.
            Some(std::ffi::CStr::from_ptr(*t.tgargs).to_string_lossy())
        }
    };
    let Some(arg) = arg else {
        return Ok(Rc::new(Options::default()));
    };
    if let Some(o) = PARSED.with_borrow(|m| m.get(&*arg).cloned()) {
        return Ok(o);
    }
    let o = Rc::new(Options::parse(&arg)?);
    PARSED.with_borrow_mut(|m| m.insert(arg.into_owned(), o.clone()));
    Ok(o)
}

/// The database's redaction salt (audit_log.secrets, readable only by the
/// extension's owner), read once per session and installation.
pub fn redaction_salt() -> Result<Vec<u8>, AuditError> {
    let secrets = crate::catalog::schema_oid()
        // SAFETY: a syscache lookup by name; InvalidOid when absent.
        .map(|ns| unsafe { pg_sys::get_relname_relid(c"secrets".as_ptr(), ns) })
        .unwrap_or(pg_sys::InvalidOid);
    if let Some(s) = SALT.with_borrow(|s| {
        s.as_ref()
            .filter(|(oid, _)| *oid == secrets)
            .map(|(_, v)| v.clone())
    }) {
        return Ok(s);
    }
    let salt = crate::catalog::as_owner(|| {
        crate::errors::optional_row(pgrx::Spi::get_one::<Vec<u8>>(
            "SELECT value FROM audit_log.secrets WHERE name = 'redaction_salt'",
        ))?
        .flatten()
        .ok_or(AuditError::NoSalt)
    })?;
    SALT.set(Some((secrets, salt.clone())));
    Ok(salt)
}

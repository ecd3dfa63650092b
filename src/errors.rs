//! Every error a user can trigger, with its SQLSTATE. Raising one aborts the
//! statement like any PostgreSQL error; nothing here panics.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("permission denied to {action}")]
    NotAdmin { action: String },
    #[error("permission denied to {action}: only a superuser may, because {why}")]
    NotSuperuser { action: String, why: &'static str },
    #[error("permission denied to {action}")]
    NotAuditor { action: String },
    #[error("\"{name}\" is {kind}; audit_log can only audit ordinary and partitioned tables")]
    WrongObjectKind { name: String, kind: &'static str },
    #[error("relation with OID {0} does not exist")]
    NoSuchRelation(u32),
    #[error("\"{0}\" is a temporary table; temporary tables cannot be audited")]
    TemporaryTable(String),
    #[error("\"{0}\" belongs to the system or to audit_log itself and cannot be audited")]
    SystemTable(String),
    #[error("{action} would switch off auditing of table {table}; refused")]
    AuditTriggerChanged { action: String, table: String },
    #[error("{action} on table {table}: triggers that call audit_log's capture functions are made only by audit_log.enable(); refused")]
    HandMadeTrigger { action: String, table: String },
    #[error("{action} on audited table {table} would change recorded values without recording the change; refused")]
    RewritesValues { action: String, table: String },
    #[error(
        "{0}: the table the command names changed while it waited for its lock; nothing was done"
    )]
    TargetChanged(String),
    #[error("DETACH PARTITION ... CONCURRENTLY (or FINALIZE) of a partition of audited table {0} is not supported")]
    DetachConcurrently(String),
    #[error("unlogged table {table} cannot be audited ({audited}): a crash would empty it with no event")]
    Unlogged { table: String, audited: String },
    #[error("{0} to json or jsonb is reserved to superusers while audit_log is installed: to_jsonb renders a type through such a cast, so its function would decide what the audit log records")]
    JsonCast(String),
    #[error("{0} must run at READ COMMITTED isolation")]
    ReadCommittedOnly(&'static str),
    #[error("{0} cannot run in a transaction that has recorded changes: they reach the log only at its commit")]
    EventsPending(&'static str),
    #[error("cannot PREPARE a transaction that took audit_log's own locks (checkpoint(), consistency(), prove(), verify(checkpoint), purge() or repair_segments() take them): prepared, it would keep them, and any links it made, for as long as it stays prepared")]
    PrepareAfterCheckpoint,
    #[error(
        "{0}: a permanent object cannot depend on a temporary one while audit_log is installed"
    )]
    DependsOnTemp(String),
    #[error("audited table {0} cannot be turned into a view")]
    AuditedToView(String),
    #[error("permission denied: DDL on schema audit_log (\"{0}\") is reserved to superusers")]
    AuditSchemaDdl(String),
    #[error("invalid checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("argument \"{0}\" must not be NULL")]
    NullArgument(&'static str),
    #[error("cannot {action} on a standby: this server is in recovery, and it writes")]
    Standby { action: String },
    #[error("no collected source is named \"{0}\"")]
    UnknownSource(String),
    #[error("audit_log is not installed in this database, or its objects are missing: {0}")]
    NotInstalled(String),
    #[error("audit_log.events has an index that audit_log cannot maintain: {0}")]
    UnsupportedIndex(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no retention is set: call audit_log.set_retention() before audit_log.purge()")]
    NoRetention,
    #[error("{0} is not audited with history => true, so there is no history index to fill")]
    NoHistory(String),
    #[error("schema \"{0}\" does not exist")]
    NoSuchSchema(String),
    #[error("invalid capture option: {0}")]
    BadOption(String),
    #[error("column \"{1}\" of table {0} does not exist")]
    NoSuchColumn(String, String),
    #[error("invalid audit_log.context: {0}; the change was not made")]
    BadContext(String),
    #[error("a transaction can record at most 2147483647 audited changes; this one has {0}")]
    TooManyEvents(i64),
    #[error("the audited changes to store at once take {0} bytes, more than a bytea value can hold (1 GB)")]
    PayloadTooLarge(usize),
    #[error("a recorded JSON value takes {0} bytes as text, more than a text or jsonb value can hold (1 GB); the event itself is recorded whole")]
    JsonTextTooLarge(usize),
    #[error("out of memory: audit_log could not allocate {0} bytes for the transaction's audited changes")]
    OutOfMemory(usize),
    #[error("the head of audit chain {chain} (link seq {seq}) is damaged: its link_hash is not a 32-byte hash; refusing to extend the chain")]
    ChainDamaged { chain: i32, seq: i64 },
    #[error("no column is redacted in this database yet, so there is no redaction salt")]
    NoSalt,
    #[error("trigger functions can only be called as triggers")]
    NotTrigger,
    #[error("chain {chain}'s Merkle tree cannot be built: {why}")]
    TreeUnavailable { chain: i32, why: String },
    #[error("record {seq} of audit chain {chain} is damaged: {why}")]
    TreeDamaged { chain: i32, seq: i64, why: String },
    #[error("event {0} is not in the audit log")]
    NoSuchEvent(i64),
    #[error("event {0} is not in the audit log: it is older than what audit_log.purge() left")]
    EventPurged(i64),
    #[error("a row of audited table {0} was changed again, by a statement run from a trigger or a function, before audit_log recorded the change that made it; refused, as the log would record the two changes out of order")]
    ChangedBeforeCapture(String),
    #[error("the key of a row of audited table {0} was given to another row by a statement run from a trigger or a function, whose change audit_log recorded before this row's earlier change; refused, as the log would record the two changes out of order")]
    KeyTakenBeforeCapture(String),
    #[error("audit_log internal error: {0}")]
    Internal(String),
}

impl AuditError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            AuditError::NotAdmin { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::NotSuperuser { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::NotAuditor { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::WrongObjectKind { .. } => ERRCODE_WRONG_OBJECT_TYPE,
            AuditError::NoSuchRelation(_) => ERRCODE_UNDEFINED_TABLE,
            AuditError::TemporaryTable(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            AuditError::SystemTable(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            AuditError::AuditTriggerChanged { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::AuditSchemaDdl(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::RewritesValues { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::HandMadeTrigger { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::AuditedToView(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            AuditError::DependsOnTemp(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            AuditError::JsonCast(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            AuditError::ReadCommittedOnly(_) | AuditError::EventsPending(_) => {
                ERRCODE_INVALID_TRANSACTION_STATE
            }
            AuditError::PrepareAfterCheckpoint => ERRCODE_FEATURE_NOT_SUPPORTED,
            AuditError::TargetChanged(_) => ERRCODE_T_R_SERIALIZATION_FAILURE,
            AuditError::Unlogged { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            AuditError::DetachConcurrently(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            AuditError::BadCheckpoint(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            AuditError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            AuditError::UnknownSource(_) => ERRCODE_UNDEFINED_OBJECT,
            AuditError::Standby { .. } => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            AuditError::NotInstalled(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            AuditError::UnsupportedIndex(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            AuditError::BadContext(_) => ERRCODE_INVALID_TEXT_REPRESENTATION,
            AuditError::BadOption(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            AuditError::NoSuchSchema(_) => ERRCODE_INVALID_SCHEMA_NAME,
            AuditError::Invalid(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            AuditError::NoRetention | AuditError::NoHistory(_) => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            AuditError::NoSuchColumn(..) => ERRCODE_UNDEFINED_COLUMN,
            AuditError::TooManyEvents(_)
            | AuditError::PayloadTooLarge(_)
            | AuditError::JsonTextTooLarge(_) => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            AuditError::OutOfMemory(_) => ERRCODE_OUT_OF_MEMORY,
            AuditError::ChainDamaged { .. } => ERRCODE_DATA_CORRUPTED,
            AuditError::NotTrigger => ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            AuditError::NoSalt => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            AuditError::TreeUnavailable { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            AuditError::TreeDamaged { .. } => ERRCODE_DATA_CORRUPTED,
            AuditError::NoSuchEvent(_) => ERRCODE_UNDEFINED_OBJECT,
            AuditError::EventPurged(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            AuditError::ChangedBeforeCapture(_) | AuditError::KeyTakenBeforeCapture(_) => {
                ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION
            }
            AuditError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            AuditError::NotAdmin { .. } => Some(
                "Grant the role audit_log_admin to the caller, or call it as a superuser.".into(),
            ),
            AuditError::NotAuditor { .. } => Some(
                "Grant the role audit_log_auditor to the caller, or call it as a superuser.".into(),
            ),
            AuditError::NotSuperuser { .. } => Some("Ask a superuser to do it.".into()),
            AuditError::Standby { .. } => Some("Run it on the primary; a standby replays its changes.".into()),
            AuditError::UnknownSource(_) => Some(
                "audit_log.sources lists the sources this database collects; audit_log.collect() adds one.".into(),
            ),
            AuditError::NoHistory(_) => Some(
                "audit_log.enable(..., history => true) starts the index; audit_log.history() \
                 searches the events of other tables by content."
                    .into(),
            ),
            AuditError::EventsPending(_) => Some("Run it in a transaction of its own.".into()),
            AuditError::NoSalt => Some(
                "The salt is made by the first audit_log.enable(..., redact_columns => ...)."
                    .into(),
            ),
            AuditError::AuditTriggerChanged { table, .. } => Some(format!(
                "Only audit_log.disable('{table}') switches auditing off; it requires \
                 audit_log_admin and is itself recorded."
            )),
            AuditError::RewritesValues { table, .. } => Some(format!(
                "A superuser may run it, and it is then recorded. Or an audit_log_admin calls \
                 audit_log.disable('{table}') first and audit_log.enable('{table}') after: \
                 both are recorded."
            )),
            AuditError::HandMadeTrigger { table, .. } => Some(format!(
                "To audit the table, an audit_log_admin calls audit_log.enable('{table}')."
            )),
            AuditError::Unlogged { table, .. } => Some(format!(
                "Create it logged, or ALTER TABLE {table} SET LOGGED first."
            )),
            AuditError::DependsOnTemp(_) => Some(
                "PostgreSQL drops temporary objects at the end of their session without event \
                 triggers, and the drop cascades to what depends on them (a table made OF a \
                 temporary type would vanish with no event). Use a permanent type or function."
                    .into(),
            ),
            AuditError::TargetChanged(_) => {
                Some("Run the command again, or name the table with its schema.".into())
            }
            AuditError::DetachConcurrently(_) => Some(
                "Use DETACH PARTITION without CONCURRENTLY: it runs in one transaction, \
                 so the detached partition stays audited."
                    .into(),
            ),
            AuditError::AuditedToView(t) => Some(format!(
                "Call audit_log.disable('{t}') first; the change is then recorded."
            )),
            AuditError::BadCheckpoint(_) => {
                Some("Pass the jsonb returned by audit_log.checkpoint(), unchanged.".into())
            }
            AuditError::BadContext(_) => Some(
                "Set audit_log.context to a JSON value, such as '{\"user\": \"alice\"}', or \
                 call audit_log.set_context(jsonb), or RESET audit_log.context."
                    .into(),
            ),
            AuditError::TooManyEvents(_) | AuditError::PayloadTooLarge(_) => {
                Some("Split the change into several transactions.".into())
            }
            AuditError::JsonTextTooLarge(_) => Some(
                "Leave old_row and new_row out of the query for that event (select its other \
                 columns, or filter on them first); audit_log.verify() and the CLI's exports \
                 read it whole."
                    .into(),
            ),
            AuditError::ChainDamaged { .. } | AuditError::TreeDamaged { .. } => Some(
                "Someone with superuser rights changed audit_log.records. Run \
                 SELECT * FROM audit_log.verify() to see what changed, and restore the log."
                    .into(),
            ),
            AuditError::TreeUnavailable { .. } => Some(
                "Records purged before audit_log kept tree tiles cannot be proven; \
                 audit_log.verify(checkpoint) still proves the rest."
                    .into(),
            ),
            AuditError::EventPurged(_) => Some(
                "audit_log.purge() removed it. A proof made before the purge still \
                 verifies against its checkpoint."
                    .into(),
            ),
            AuditError::ChangedBeforeCapture(_) | AuditError::KeyTakenBeforeCapture(_) => Some(
                "PostgreSQL runs a table's AFTER ROW triggers in the byte order of their names, \
                 once the statement has changed all its rows; a statement run before that, from a \
                 function the statement calls or from an earlier trigger, is recorded first. Change \
                 a row in its own BEFORE ROW trigger, or in an AFTER trigger that is FOR EACH \
                 STATEMENT on its own table (a foreign-key cascade's rows are recorded after \
                 the statement triggers of the table it comes from), or whose name sorts after \
                 \"audit_log_capture_row\" and that changes only the row it fires for."
                    .into(),
            ),
            AuditError::UnsupportedIndex(_) => {
                Some("Drop expression and partial indexes on audit_log tables.".into())
            }
            _ => None,
        }
    }

    /// Raise as a PostgreSQL ERROR, from code PostgreSQL calls directly (a
    /// trigger, an event trigger, a transaction callback) rather than
    /// through a SQL function's wrapper. Does not return.
    pub fn raise(self) -> ! {
        ErrorReport::from(self).report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// The one conversion of an audit_log error into PostgreSQL's error report:
/// its message, SQLSTATE and hint. SQL functions return
/// `Result<T, ErrorReport>`, spelled out (pgrx reads the signature to
/// generate SQL and does not see through an alias), and pgrx raises the
/// report.
impl From<AuditError> for ErrorReport {
    fn from(e: AuditError) -> ErrorReport {
        let report = ErrorReport::new(e.sqlstate(), e.to_string(), "audit_log");
        match e.hint() {
            Some(h) => report.set_hint(h),
            None => report,
        }
    }
}

/// Unwrap an audit_log result, raising the error as a PostgreSQL ERROR
/// (for the callbacks `AuditError::raise` is for).
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, AuditError> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

impl From<pgrx::spi::Error> for AuditError {
    fn from(e: pgrx::spi::Error) -> Self {
        AuditError::Internal(format!("SPI: {e}"))
    }
}

/// A single-row SPI read where no row at all is an answer, not an error:
/// `Ok(None)` for no row (or a NULL), every other SPI error passed on.
pub fn optional_row<T>(r: Result<T, pgrx::spi::Error>) -> Result<Option<T>, AuditError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(pgrx::spi::Error::InvalidPosition) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

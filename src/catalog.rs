//! Where audit_log's own objects are. OIDs are looked up by name and kept
//! until pg_class or pg_namespace changes (they change with DROP/CREATE
//! EXTENSION, and after a restore), and never enter a hash.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::errors::AuditError;

pub const SCHEMA: &CStr = c"audit_log";

/// The names of the capture triggers audit_log puts on the tables it audits.
pub const ROW_TRIGGER: &str = "audit_log_capture_row";
pub const STMT_TRIGGER: &str = "audit_log_capture_stmt";

#[derive(Clone, Copy, Debug)]
pub struct Oids {
    pub records: pg_sys::Oid,
    pub records_pkey: pg_sys::Oid,
    pub segments: pg_sys::Oid,
    pub segments_pkey: pg_sys::Oid,
    pub row_keys: pg_sys::Oid,
    pub prepared: pg_sys::Oid,
    pub prepared_pkey: pg_sys::Oid,
    pub events_seq: pg_sys::Oid,
    /// Events are written packed (format version 2 frames): the schema is
    /// 0.3.0's, whose views read them. A 0.2.0 schema (the library updated,
    /// ALTER EXTENSION not yet run) gets version 1 frames, which its views
    /// read.
    pub packed: bool,
}

fn relid(ns: pg_sys::Oid, name: &CStr) -> Result<pg_sys::Oid, AuditError> {
    // SAFETY: a syscache lookup by name; returns InvalidOid when absent.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), ns) };
    if oid == pg_sys::InvalidOid {
        return Err(AuditError::NotInstalled(format!(
            "{}.{} does not exist",
            log_schema_sql(),
            name.to_string_lossy()
        )));
    }
    Ok(oid)
}

/// Does audit_log's own schema have its Merkle tiles? Not while a database
/// still runs an older version's SQL with this library (before ALTER
/// EXTENSION audit_log UPDATE), nor for a collected source's log.
pub fn has_tiles() -> bool {
    LOG_SCHEMA.with_borrow(Option::is_none)
        && schema_oid().is_some_and(|ns| relid(ns, c"tiles").is_ok())
}

/// The first column of a query with one OID argument, NULLs left out.
pub fn first_column<T: pgrx::FromDatum + pgrx::IntoDatum>(
    query: &str,
    arg: pg_sys::Oid,
) -> Result<Vec<T>, AuditError> {
    pgrx::Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(query, None, &[arg.into()])? {
            out.extend(r.get::<T>(1)?);
        }
        Ok(out)
    })
}

/// The OIDs in the first column of a query with one OID argument.
pub fn oids(query: &str, arg: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>, AuditError> {
    first_column(query, arg)
}

/// The current database's name.
pub fn database_name() -> String {
    // SAFETY: MyDatabaseId is set in any backend running SQL; NULL if dropped.
    unsafe {
        let db = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if db.is_null() {
            String::new()
        } else {
            CStr::from_ptr(db).to_string_lossy().into_owned()
        }
    }
}

/// Whether audit_log's own schema is 0.3.0's (ALTER EXTENSION UPDATE has
/// run, or it was installed so): audit_log.tiles came with 0.3.0, as did
/// the views' functions that read packed frames, with the record's tx_id.
pub fn schema_reads_packed() -> bool {
    schema_oid().is_some_and(|ns| relid(ns, c"tiles").is_ok())
}

pub fn schema_oid() -> Option<pg_sys::Oid> {
    // SAFETY: missing_ok = true, so this cannot raise.
    let ns = unsafe { pg_sys::get_namespace_oid(SCHEMA.as_ptr(), true) };
    (ns != pg_sys::InvalidOid).then_some(ns)
}

thread_local! {
    /// The schema of the log that verification reads, when it is not
    /// audit_log's own: a source's log collected by logical replication
    /// (audit_log.verify_source()). Set only by [`with_log_schema`].
    static LOG_SCHEMA: std::cell::RefCell<Option<(pg_sys::Oid, String)>> =
        const { std::cell::RefCell::new(None) };
}

/// The columns of audit_log.records that verification reads, in order.
const RECORDS_LAYOUT: [(&CStr, pg_sys::Oid); 10] = [
    (c"chain_id", pg_sys::INT4OID),
    (c"seq", pg_sys::INT8OID),
    (c"tx_id", pg_sys::XID8OID),
    (c"first_event", pg_sys::INT8OID),
    (c"last_event", pg_sys::INT8OID),
    (c"event_count", pg_sys::INT8OID),
    (c"committed_at", pg_sys::TIMESTAMPTZOID),
    (c"segments", pg_sys::INT4OID),
    (c"link_hash", pg_sys::BYTEAOID),
    (c"payload", pg_sys::BYTEAOID),
];

/// The columns of audit_log.segments, in order.
const SEGMENTS_LAYOUT: [(&CStr, pg_sys::Oid); 3] = [
    (c"first_event", pg_sys::INT8OID),
    (c"part", pg_sys::INT4OID),
    (c"payload", pg_sys::BYTEAOID),
];

/// Refuse a table whose columns are not `layout`, at those places.
fn check_layout(rel: pg_sys::Oid, layout: &[(&CStr, pg_sys::Oid)]) -> Result<(), AuditError> {
    for (i, (name, typ)) in layout.iter().enumerate() {
        // SAFETY: syscache lookups by relation OID and column name.
        let (attnum, found) = unsafe {
            let n = pg_sys::get_attnum(rel, name.as_ptr());
            (n, pg_sys::get_atttype(rel, n))
        };
        if i16::try_from(i + 1) != Ok(attnum) || found != *typ {
            // SAFETY: a syscache lookup; NULL when the relation is gone.
            let table = unsafe { pg_sys::get_rel_name(rel) };
            let table = if table.is_null() {
                "?".into()
            } else {
                // SAFETY: a non-null result is a palloc'd C string.
                unsafe { CStr::from_ptr(table) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(AuditError::NotInstalled(format!(
                "{table}: column {} is not column {} of audit_log's own {table}, with its type",
                name.to_string_lossy(),
                i + 1
            )));
        }
    }
    Ok(())
}

/// Restores the log schema when dropped, also when an error unwinds.
struct LogSchemaReset;

impl Drop for LogSchemaReset {
    fn drop(&mut self) {
        LOG_SCHEMA.set(None);
    }
}

/// Run `f` reading the log in `schema` (which holds records, segments and
/// anchors laid out as audit_log's own) instead of audit_log's.
pub fn with_log_schema<T>(
    schema: &CStr,
    f: impl FnOnce() -> Result<T, AuditError>,
) -> Result<T, AuditError> {
    // SAFETY: missing_ok = true, so this cannot raise.
    let ns = unsafe { pg_sys::get_namespace_oid(schema.as_ptr(), true) };
    if ns == pg_sys::InvalidOid {
        return Err(AuditError::NotInstalled(format!(
            "schema {}",
            schema.to_string_lossy()
        )));
    }
    let _reset = LogSchemaReset;
    LOG_SCHEMA.set(Some((ns, schema.to_string_lossy().into_owned())));
    f()
}

/// The log's schema as an SQL identifier: audit_log, or the collected
/// source's that [`with_log_schema`] set.
pub fn log_schema_sql() -> String {
    LOG_SCHEMA.with_borrow(|s| match s {
        Some((_, name)) => format!("\"{}\"", name.replace('"', "\"\"")),
        None => "audit_log".into(),
    })
}

pub fn lookup() -> Result<Oids, AuditError> {
    if let Some(ns) = LOG_SCHEMA.with_borrow(|s| s.as_ref().map(|(ns, _)| *ns)) {
        // A collected log: only what verification reads, which reads
        // columns by position, so their places and types are checked.
        let records = relid(ns, c"records")?;
        let segments = relid(ns, c"segments")?;
        check_layout(records, &RECORDS_LAYOUT)?;
        check_layout(segments, &SEGMENTS_LAYOUT)?;
        return Ok(Oids {
            records,
            records_pkey: relid(ns, c"records_pkey")?,
            segments,
            segments_pkey: relid(ns, c"segments_pkey")?,
            row_keys: pg_sys::InvalidOid,
            prepared: pg_sys::InvalidOid,
            prepared_pkey: pg_sys::InvalidOid,
            events_seq: pg_sys::InvalidOid,
            packed: false,
        });
    }
    if let Some(oids) = OIDS.get() {
        return Ok(oids);
    }
    // A catalog lookup can read invalidations (a cache miss locks
    // pg_class), and a DROP and CREATE EXTENSION committed meanwhile would
    // mix old OIDs with new: gather them again until none came.
    for _ in 0..3 {
        let generation = OIDS_GENERATION.get();
        let oids = own_oids()?;
        if OIDS_GENERATION.get() == generation {
            OIDS.set(Some(oids));
            return Ok(oids);
        }
    }
    own_oids()
}

fn own_oids() -> Result<Oids, AuditError> {
    let ns = schema_oid().ok_or_else(|| AuditError::NotInstalled("schema audit_log".into()))?;
    Ok(Oids {
        records: relid(ns, c"records")?,
        records_pkey: relid(ns, c"records_pkey")?,
        segments: relid(ns, c"segments")?,
        segments_pkey: relid(ns, c"segments_pkey")?,
        row_keys: relid(ns, c"row_keys")?,
        prepared: relid(ns, c"prepared")?,
        prepared_pkey: relid(ns, c"prepared_pkey")?,
        events_seq: relid(ns, c"events_id_seq")?,
        packed: schema_reads_packed(),
    })
}

thread_local! {
    /// audit_log's own relations, found by name (nine catalog lookups,
    /// which every audited transaction made): kept until a change to
    /// pg_class or pg_namespace reaches this backend's caches, which a
    /// DROP, a CREATE or a rename of them (committed, or rolled back in
    /// this backend) always does, and so does a reset of the caches.
    static OIDS: std::cell::Cell<Option<Oids>> = const { std::cell::Cell::new(None) };
    static OIDS_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_oids(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    OIDS.set(None);
    OIDS_GENERATION.set(OIDS_GENERATION.get().wrapping_add(1));
}

/// Register the cache of [`lookup`]'s OIDs' invalidation (from _PG_init).
pub fn register_callbacks() {
    // SAFETY: registers callbacks for the life of the backend; both are syscaches.
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::RELNAMENSP,
            pg_sys::SysCacheIdentifier::NAMESPACENAME,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(forget_oids),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// The role that owns the extension (the superuser that ran CREATE EXTENSION).
/// audit_log acts as this role to create triggers on tables it audits.
pub fn extension_owner() -> Result<pg_sys::Oid, AuditError> {
    owner_in_pg_extension().ok_or_else(|| AuditError::NotInstalled("no pg_extension row".into()))
}

/// The owner of the extension audit_log, read from pg_extension.
fn owner_in_pg_extension() -> Option<pg_sys::Oid> {
    // SAFETY: a catalog lookup by name; InvalidOid when not installed.
    let ext = unsafe { pg_sys::get_extension_oid(c"audit_log".as_ptr(), true) };
    if ext == pg_sys::InvalidOid {
        return None;
    }
    crate::scan::catalog_rows(
        pg_sys::ExtensionRelationId,
        pg_sys::ExtensionOidIndexId,
        &[(pg_sys::Anum_pg_extension_oid as i16, ext)],
        0,
        |e: &pg_sys::FormData_pg_extension| e.extowner,
    )
    .first()
    .map(|(_, o)| *o)
}

pub fn role_oid(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: missing_ok = true.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Refuse a caller that does not hold audit_log_admin (or is not a
/// superuser), and, since every admin action writes, a standby.
pub fn require_admin(action: &str) -> Result<(), AuditError> {
    // SAFETY: a read of recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(AuditError::Standby {
            action: action.to_string(),
        });
    }
    if current_user_has(c"audit_log_admin") {
        Ok(())
    } else {
        Err(AuditError::NotAdmin {
            action: action.to_string(),
        })
    }
}

/// Superuser, or a member (with inherited privileges) of `role`.
pub fn current_user_has(role: &CStr) -> bool {
    // SAFETY: plain catalog checks on the current user.
    unsafe {
        let me = pg_sys::GetUserId();
        pg_sys::superuser() || role_oid(role).is_some_and(|r| pg_sys::has_privs_of_role(me, r))
    }
}

/// Set a GUC until the current GUC nest level is unwound.
pub fn set_in_nest_level(name: &CStr, value: &CStr) {
    // SAFETY: both are valid settings; GUC_ACTION_SAVE undoes it at AtEOXact_GUC.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// Whether setting `name` has the value `value` now.
pub fn setting_is(name: &CStr, value: &CStr) -> bool {
    // SAFETY: a read of a setting's current value; NULL if unknown.
    let now = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    // SAFETY: a non-null result is a valid C string owned by the GUC machinery.
    !now.is_null() && unsafe { CStr::from_ptr(now) } == value
}

/// Planner settings that a session may change and that would otherwise
/// reach audit_log's own small catalog queries: with every join method and
/// scan switched off, their estimated cost passes jit_above_cost and each
/// query was JIT-compiled (tens of milliseconds per DDL statement).
/// Output settings too, so that what audit_log computes and records (the
/// retention cutoff, identifiers and intervals in event details) does not
/// follow the session's TimeZone, styles or quoting.
const PLANNER: [(&CStr, &CStr); 15] = [
    (c"TimeZone", c"UTC"),
    (c"DateStyle", c"ISO, MDY"),
    (c"IntervalStyle", c"postgres"),
    (c"quote_all_identifiers", c"off"),
    (c"jit", c"off"),
    (c"enable_seqscan", c"on"),
    (c"enable_indexscan", c"on"),
    (c"enable_indexonlyscan", c"on"),
    (c"enable_bitmapscan", c"on"),
    (c"enable_hashjoin", c"on"),
    (c"enable_mergejoin", c"on"),
    (c"enable_nestloop", c"on"),
    (c"enable_sort", c"on"),
    (c"enable_material", c"on"),
    (c"max_parallel_workers_per_gather", c"0"),
];

/// Run `f` with search_path pinned to pg_catalog, so that no object of the
/// caller's (an operator, a function) can shadow what `f` runs through SPI,
/// and with the session's planner settings out of its way. Restored on
/// return, and by transaction abort processing if `f` raises.
pub fn pinned<T>(f: impl FnOnce() -> Result<T, AuditError>) -> Result<T, AuditError> {
    // SAFETY: GUC nest levels are unwound by AtEOXact_GUC below, or by abort.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    set_in_nest_level(c"search_path", c"pg_catalog, pg_temp");
    for (name, value) in PLANNER {
        // Most sessions have most of these already: a read is cheaper.
        if !setting_is(name, value) {
            set_in_nest_level(name, value);
        }
    }
    let result = f();
    // SAFETY: undo exactly what was done above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    result
}

/// Run `f` as the extension owner with search_path pinned to pg_catalog, so
/// that no object of the caller's can shadow what `f` runs. Both are restored
/// on return, and by transaction abort processing if `f` raises.
pub fn as_owner<T>(f: impl FnOnce() -> Result<T, AuditError>) -> Result<T, AuditError> {
    pinned(|| {
        let owner = extension_owner()?;
        let mut save_user = pg_sys::InvalidOid;
        let mut save_sec = 0;
        // SAFETY: the same save/switch/restore sequence fmgr uses for SECURITY DEFINER.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut save_user, &mut save_sec);
            pg_sys::SetUserIdAndSecContext(
                owner,
                save_sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
        // SAFETY: GUC nest levels are unwound by AtEOXact_GUC below, or by abort.
        let nest = unsafe { pg_sys::NewGUCNestLevel() };
        // Our own DROP TRIGGER IF EXISTS is not news to the caller.
        set_in_nest_level(c"client_min_messages", c"warning");
        let result = f();
        // SAFETY: undo exactly what was done above.
        unsafe {
            pg_sys::AtEOXact_GUC(true, nest);
            pg_sys::SetUserIdAndSecContext(save_user, save_sec);
        }
        result
    })
}

//! Capture: row triggers turn each changed row into an event, the statement
//! trigger records TRUNCATE and writes the statement's events in one batch,
//! and configuration changes (enable, disable, DDL) become events too.
//! Hashing happens here, in the transaction, without any lock.

use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;

use audit_log_core::model::EventRef;
use audit_log_core::ranges::RangeSet;
use audit_log_core::time::from_pg_timestamp;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::Value;

use crate::errors::{AuditError, OrRaise};
use crate::fmgr::c_function;
use crate::jsonb;
use crate::options::{self, Op};
use crate::rowenc;
use crate::txstate::{self, RowKeys};

/// A jsonb value as hashed and stored (its canonical encoding, read from
/// the binary form by `jsonb::encode`), and its binary form if asked for.
#[derive(Clone)]
pub struct Json {
    /// The binary jsonb, kept only when a row key is to be read from it
    /// (tables with `history => true`): copying it for every row would be
    /// work for nothing on the write path.
    pub raw: Option<Vec<u8>>,
    pub encoded: Vec<u8>,
}

/// Copy a jsonb datum, and encode it canonically.
pub(crate) unsafe fn json_from_datum(d: pg_sys::Datum, keep_raw: bool) -> Json {
    // SAFETY: by the caller's contract, d is a jsonb datum.
    unsafe {
        let p = pg_sys::pg_detoast_datum(d.cast_mut_ptr());
        let raw = keep_raw
            .then(|| std::slice::from_raw_parts(p as *const u8, pgrx::varsize_any(p)).to_vec());
        let encoded = jsonb::encode(pg_sys::Datum::from(p));
        Json { raw, encoded }
    }
}

/// Whether two versions of a row hold the same stored value in every
/// column not named in `exclude` (dropped columns aside), compared as
/// stored (after detoasting), not as rendered.
///
/// An UPDATE whose rows render the same may still have changed a value in
/// a way the rendering cannot show: `to_jsonb` drops an array's lower
/// bounds (`'{7,8}'` and `'[5:6]={7,8}'`, where `a[1]` reads 7 in one and
/// NULL in the other), writes a float's `-0` as `0`, and reads a json
/// value into jsonb (whitespace, key order and duplicate keys go).
/// `skip_unchanged_updates` skips only an UPDATE that changed nothing
/// stored, so such a change is still an event, even if its two rows read
/// the same.
///
/// # Safety
/// Both tuples are of the relation whose descriptor is `desc`.
unsafe fn stored_values_equal(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    exclude: &[String],
) -> bool {
    // SAFETY: by the caller's contract; deform reads the tuples into
    // arrays of the descriptor's width, and same_image compares two values
    // of one attribute's type.
    unsafe {
        let attrs = crate::pgcompat::attrs(desc);
        let n = attrs.len();
        let (mut ov, mut on) = (vec![pg_sys::Datum::from(0); n], vec![true; n]);
        let (mut nv, mut nn) = (vec![pg_sys::Datum::from(0); n], vec![true; n]);
        pg_sys::heap_deform_tuple(old, desc, ov.as_mut_ptr(), on.as_mut_ptr());
        pg_sys::heap_deform_tuple(new, desc, nv.as_mut_ptr(), nn.as_mut_ptr());
        attrs.iter().enumerate().all(|(i, a)| {
            if a.attisdropped {
                return true;
            }
            let name = CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
            if exclude.iter().any(|c| c.as_bytes() == name) {
                return true;
            }
            match (on[i], nn[i]) {
                (true, true) => true,
                (false, false) => same_image(ov[i], nv[i], a.attbyval, a.attlen),
                _ => false,
            }
        })
    }
}

/// Whether two non-null values of one attribute are stored alike: the
/// same bytes, a varlena's after detoasting (PostgreSQL's
/// `datum_image_eq`, which pgrx does not bind).
///
/// # Safety
/// Both are values of an attribute with this `byval` and `len`.
unsafe fn same_image(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval {
        return a == b;
    }
    // SAFETY: by the caller's contract, a and b point to values of this
    // length (a fixed length, a varlena, or a C string).
    unsafe {
        match len {
            -1 => {
                let bytes = |d: pg_sys::Datum| {
                    let p = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                    pgrx::varlena_to_byte_slice(p)
                };
                // Unchanged values (a toast pointer kept by the UPDATE)
                // are the same bytes, header and all: no detoasting.
                let (pa, pb) = (
                    a.cast_mut_ptr::<pg_sys::varlena>(),
                    b.cast_mut_ptr::<pg_sys::varlena>(),
                );
                let raw = |p: *mut pg_sys::varlena| {
                    std::slice::from_raw_parts(p.cast::<u8>(), pgrx::varsize_any(p))
                };
                raw(pa) == raw(pb) || bytes(a) == bytes(b)
            }
            -2 => CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr()),
            n => {
                let n = usize::try_from(n).unwrap_or(0);
                std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), n)
                    == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), n)
            }
        }
    }
}

/// `to_jsonb(row)`, as a jsonb datum, rendered with the canonical output
/// settings and those that `depends` (of `desc`) names. to_jsonb learns its
/// argument's type from the call expression, so give it one naming the
/// table's row type.
pub(crate) unsafe fn row_to_jsonb(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    depends: crate::rendering::Depends,
) -> pg_sys::Datum {
    // SAFETY: by the caller's contract, tuple belongs to a relation whose descriptor is desc.
    unsafe {
        let composite = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
        let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
        let to_jsonb = pg_sys::Oid::from(pg_sys::F_TO_JSONB);
        pg_sys::fmgr_info(to_jsonb, &mut flinfo);
        let arg = pg_sys::makeNullConst((*desc).tdtypeid, -1, pg_sys::InvalidOid);
        let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
        flinfo.fn_expr = pg_sys::makeFuncExpr(
            to_jsonb,
            pg_sys::JSONBOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        )
        .cast();
        crate::rendering::canonical_output(depends, || {
            pg_sys::FunctionCall1Coll(&mut flinfo, pg_sys::InvalidOid, composite)
        })
    }
}

/// Parse a jsonb literal (for configuration-event details), via jsonb_in so
/// that what is hashed is exactly what is stored.
pub fn json_from_value(v: &Value) -> Result<Json, AuditError> {
    text_to_jsonb(&v.to_string())
}

/// `audit_log.context`: JSON text, or empty for none.
pub static CONTEXT: pgrx::GucSetting<Option<std::ffi::CString>> =
    pgrx::GucSetting::<Option<std::ffi::CString>>::new(None);

/// A context value parsed by PostgreSQL's own `jsonb_in`, which takes any
/// depth PostgreSQL allows. Its error (bad JSON, `\u0000`, a number out of
/// range, too deep for max_stack_depth) is raised again as one that names
/// the setting, with the start of the text, never all of it.
fn parse_context(text: &str) -> Result<Json, AuditError> {
    let shown: String = text.chars().take(80).collect();
    let shown = if shown.len() < text.len() {
        format!("{shown}…")
    } else {
        shown
    };
    pgrx::PgTryBuilder::new(|| text_to_jsonb(text))
        .catch_others(|e| {
            let why = match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => match r.detail() {
                    Some(d) => format!("{} ({d})", r.message()),
                    None => r.message().to_string(),
                },
                pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                    ereport.message().to_string()
                }
            };
            Err(AuditError::BadContext(format!("{why}, in {shown}")))
        })
        .execute()
}

thread_local! {
    /// The last context text seen and its jsonb: most changes repeat it.
    static CONTEXT_CACHE: RefCell<Option<(String, Json)>> = const { RefCell::new(None) };
}

/// The current application context as jsonb (raw, encoded), or None.
fn current_context() -> Result<Option<Json>, AuditError> {
    crate::ensure_settings();
    let Some(text) = CONTEXT.get() else {
        return Ok(None);
    };
    let text = text.to_string_lossy();
    if text.trim().is_empty() {
        return Ok(None);
    }
    if let Some(hit) = CONTEXT_CACHE.with_borrow(|c| {
        c.as_ref()
            .filter(|(t, _)| *t == text)
            .map(|(_, j)| j.clone())
    }) {
        return Ok(Some(hit));
    }
    let c = parse_context(&text)?;
    CONTEXT_CACHE.set(Some((text.into_owned(), c.clone())));
    Ok(Some(c))
}

/// `jsonb_in` over a text, so that what is hashed is exactly what is stored.
fn text_to_jsonb(text: &str) -> Result<Json, AuditError> {
    let d = crate::jsonb::jsonb_in(text)?;
    // SAFETY: d is a jsonb datum.
    Ok(unsafe { json_from_datum(d, false) })
}

thread_local! {
    /// The client address never changes within a session.
    static CLIENT_ADDR: RefCell<Option<Option<Rc<str>>>> = const { RefCell::new(None) };
}

fn client_addr() -> Option<Rc<str>> {
    CLIENT_ADDR.with_borrow_mut(|c| {
        c.get_or_insert_with(|| {
            // SAFETY: inet_client_addr takes no arguments and returns NULL for Unix sockets.
            let d = unsafe { pgrx::direct_function_call_as_datum(pg_sys::inet_client_addr, &[]) }?;
            // SAFETY: d is an inet datum.
            let out = unsafe { pgrx::direct_function_call_as_datum(pg_sys::inet_out, &[Some(d)]) }?;
            // SAFETY: inet_out returns a palloc'd cstring.
            Some(Rc::from(
                unsafe { CStr::from_ptr(out.cast_mut_ptr::<std::ffi::c_char>()) }.to_string_lossy(),
            ))
        })
        .clone()
    })
}

/// Names by OID, read from a syscache and kept: nearly every event repeats
/// the last ones. Each entry carries the generation it was read in; a
/// change to the catalog (a rename, a drop) starts a new generation, so no
/// name outlives its catalog row.
struct NameCache {
    names: RefCell<Vec<(pg_sys::Oid, u64, Rc<str>)>>,
    generation: std::cell::Cell<u64>,
}

impl NameCache {
    const fn new() -> Self {
        NameCache {
            names: RefCell::new(Vec::new()),
            generation: std::cell::Cell::new(0),
        }
    }

    /// Called by PostgreSQL's invalidation processing, possibly in the
    /// middle of one of our own lookups, so it only bumps a counter.
    fn forget(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
    }

    fn get(&self, oid: pg_sys::Oid, lookup: impl FnOnce() -> Rc<str>) -> Rc<str> {
        let generation = self.generation.get();
        let hit = self
            .names
            .borrow()
            .iter()
            .find(|(o, g, _)| *o == oid && *g == generation)
            .map(|(_, _, n)| n.clone());
        if let Some(name) = hit {
            return name;
        }
        let name = lookup();
        // The generation was read before the lookup: an invalidation
        // during it makes the entry stale.
        let mut names = self.names.borrow_mut();
        names.retain(|(_, g, _)| *g == generation);
        if names.len() >= 8 {
            names.clear();
        }
        names.push((oid, generation, name.clone()));
        name
    }
}

thread_local! {
    /// Role names, for session_user_name and current_user_name (pg_authid).
    static ROLE_NAMES: NameCache = const { NameCache::new() };
    /// Schema names, for table_schema (pg_namespace).
    static SCHEMA_NAMES: NameCache = const { NameCache::new() };
}

/// Syscache callback on pg_authid: forget every role name read so far.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_role_names(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    ROLE_NAMES.with(NameCache::forget);
}

/// Syscache callback on pg_namespace: forget every schema name read so far.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_schema_names(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    SCHEMA_NAMES.with(NameCache::forget);
}

/// Register the name caches' invalidations (from _PG_init).
pub fn register_callbacks() {
    // SAFETY: registers callbacks for the life of the backend; AUTHOID and
    // NAMESPACEOID are syscaches.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            Some(forget_role_names),
            pg_sys::Datum::from(0),
        );
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(forget_schema_names),
            pg_sys::Datum::from(0),
        );
    }
}

/// A palloc'd cstring (or NULL) as a name: `what oid` when NULL.
fn name_from(p: *const std::ffi::c_char, what: &str, oid: pg_sys::Oid) -> Rc<str> {
    if p.is_null() {
        Rc::from(format!("{what} {}", oid.to_u32()))
    } else {
        // SAFETY: p is a valid cstring, copied here.
        Rc::from(unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}

fn role_name(oid: pg_sys::Oid) -> Rc<str> {
    ROLE_NAMES.with(|c| {
        c.get(oid, || {
            // SAFETY: noerr = true returns NULL for a dropped role.
            name_from(unsafe { pg_sys::GetUserNameFromId(oid, true) }, "role", oid)
        })
    })
}

/// A schema's name, or "" for one that is gone.
fn schema_name(oid: pg_sys::Oid) -> Rc<str> {
    SCHEMA_NAMES.with(|c| {
        c.get(oid, || {
            // SAFETY: a syscache lookup; NULL for a missing schema.
            let p = unsafe { pg_sys::get_namespace_name(oid) };
            if p.is_null() {
                Rc::from("")
            } else {
                name_from(p, "schema", oid)
            }
        })
    })
}

thread_local! {
    /// The last application_name read, as an event holds it.
    static APPLICATION_NAME: RefCell<Option<Rc<str>>> = const { RefCell::new(None) };
}

/// The session's application_name: nearly every event repeats the last
/// one, which is kept, compared byte for byte with the setting each time,
/// and shared; only a changed name is copied.
fn application_name() -> Option<Rc<str>> {
    // SAFETY: the GUC's variable: a cstring the GUC machinery owns, or NULL.
    let p = unsafe { pg_sys::application_name };
    if p.is_null() {
        return None;
    }
    // SAFETY: p is a valid cstring owned by the GUC machinery; it is copied
    // or compared here, and not held.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    if bytes.is_empty() {
        return None;
    }
    APPLICATION_NAME.with_borrow_mut(|last| {
        if let Some(name) = last.as_ref().filter(|n| n.as_bytes() == bytes) {
            return Some(name.clone());
        }
        let name: Rc<str> = Rc::from(String::from_utf8_lossy(bytes));
        *last = Some(name.clone());
        Some(name)
    })
}

/// Record one event in the current transaction.
pub fn record(
    table_schema: &str,
    table_name: &str,
    op: &str,
    old_row: Option<Json>,
    new_row: Option<Json>,
    rows_packed: bool,
    row_keys: RowKeys,
) -> Result<i64, AuditError> {
    // SAFETY: plain reads of session state.
    let (session_user, current_user, recorded_at, statement_at) = unsafe {
        (
            role_name(pg_sys::GetSessionUserId()),
            role_name(pg_sys::GetUserId()),
            from_pg_timestamp(pg_sys::GetCurrentTimestamp()),
            from_pg_timestamp(pg_sys::GetCurrentStatementStartTimestamp()),
        )
    };
    let application_name = application_name();
    let client_addr = client_addr();
    let context = current_context()?;
    txstate::append(|tx_id, id, tx_seq| {
        let event = EventRef {
            id,
            tx_id,
            tx_seq,
            recorded_at,
            statement_at,
            session_user_name: &session_user,
            current_user_name: &current_user,
            application_name: application_name.as_deref(),
            client_addr: client_addr.as_deref(),
            context: context.as_ref().map(|j| &j.encoded[..]),
            table_schema,
            table_name,
            op,
            old_row: old_row.as_ref().map(|j| &j.encoded[..]),
            new_row: new_row.as_ref().map(|j| &j.encoded[..]),
            rows_packed,
        };
        (event, row_keys)
    })
}

/// Record a configuration change (enable, disable, DDL) as an event.
pub fn record_config(
    schema: &str,
    table: &str,
    op: &str,
    details: Value,
) -> Result<(), AuditError> {
    record_config_id(schema, table, op, details).map(|_| ())
}

/// As [`record_config`], returning the event's id.
pub fn record_config_id(
    schema: &str,
    table: &str,
    op: &str,
    details: Value,
) -> Result<i64, AuditError> {
    let details = json_from_value(&details)?;
    record(
        schema,
        table,
        op,
        None,
        Some(details),
        false,
        RowKeys::default(),
    )
}

/// History from `event` on: the row_keys index holds every change of
/// `table` (a table, or a partition, whose own listing and its ancestors'
/// are marked) recorded after this event, and history() searches the ones
/// before by content. Run as the owner.
pub fn mark_history_since(table: pg_sys::Oid, event: i64) -> Result<(), AuditError> {
    crate::triggers::internal_ddl(|| {
        Spi::run_with_args(
            "UPDATE audit_log.audited_tables SET history_since = $2
              WHERE relid = $1
                 OR relid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($1))",
            &[table.into(), event.into()],
        )?;
        Ok(())
    })
}

/// A relation's schema and name, as events record them.
pub struct RelationNames {
    pub schema: Rc<str>,
    /// A copy of the relation cache's name: an invalidation rebuilds that
    /// entry in place (a concurrent ANALYZE rewrites it), so it is not
    /// borrowed.
    name: pg_sys::NameData,
}

impl RelationNames {
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        // SAFETY: NameData is NAMEDATALEN bytes; reading them as u8 is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                self.name.data.as_ptr().cast::<u8>(),
                std::mem::size_of_val(&self.name.data),
            )
        };
        match CStr::from_bytes_until_nul(bytes) {
            Ok(c) => c.to_string_lossy(),
            Err(_) => String::from_utf8_lossy(bytes),
        }
    }
}

/// The schema and name of `rel`.
///
/// # Safety
/// `rel` is an open relation.
pub unsafe fn relation_names(rel: pg_sys::Relation) -> RelationNames {
    // SAFETY: by the caller's contract, rel is an open relation.
    let (name, namespace) = unsafe { ((*(*rel).rd_rel).relname, (*(*rel).rd_rel).relnamespace) };
    RelationNames {
        schema: schema_name(namespace),
        name,
    }
}

fn trigger_data<'a>(trigger: &'a PgTrigger<'_>) -> &'a pg_sys::TriggerData {
    trigger.trigger_data()
}

/// The capture triggers' entry point. Called other than as a trigger
/// (anyone may try: the functions are executable by PUBLIC so that a
/// table's owner can add partitions), it raises PostgreSQL's own
/// trigger-protocol error.
fn run_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
    body: fn(&PgTrigger<'_>) -> Result<(), AuditError>,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid for this call; from_fcinfo checks that it is a
    // trigger call before reading the trigger data.
    let trigger = match unsafe { PgTrigger::from_fcinfo(&*fcinfo) } {
        Ok(t) => t,
        Err(_) => AuditError::NotTrigger.raise(),
    };
    body(&trigger).or_raise();
    // An AFTER trigger's result is ignored: NULL.
    pg_sys::Datum::from(0)
}

// AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW.
c_function!(pg_finfo_audit_log_capture_row, audit_log_capture_row, |f| {
    run_trigger(f, capture_row_impl)
});
// AFTER TRUNCATE FOR EACH STATEMENT (AFTER INSERT OR UPDATE OR DELETE on a
// foreign table, where it records nothing).
c_function!(
    pg_finfo_audit_log_capture_stmt,
    audit_log_capture_stmt,
    |f| run_trigger(f, capture_stmt_impl)
);

fn capture_row_impl(trigger: &PgTrigger<'_>) -> Result<(), AuditError> {
    let td = trigger_data(trigger);
    let ev = td.tg_event;
    if ev & pg_sys::TRIGGER_EVENT_ROW == 0 || ev & pg_sys::TRIGGER_EVENT_TIMINGMASK != 0 {
        return Err(AuditError::Internal(
            "capture_row must be an AFTER ... FOR EACH ROW trigger".into(),
        ));
    }
    let op = match ev & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => Op::Insert,
        pg_sys::TRIGGER_EVENT_UPDATE => Op::Update,
        pg_sys::TRIGGER_EVENT_DELETE => Op::Delete,
        _ => {
            return Err(AuditError::Internal(
                "capture_row fired for an unexpected event".into(),
            ))
        }
    };
    let opts = options::of_trigger(td)?;
    if !opts.records(op) {
        if op == Op::Delete && opts.records(Op::Insert) {
            // A row moved to another partition leaves by a DELETE here and
            // arrives by an INSERT there, whose event is recorded: the move
            // is remembered as a change though its DELETE is not.
            // SAFETY: the trigger's relation and slot.
            unsafe { note_change(td.tg_relation, td.tg_trigslot, true)? };
        }
        return Ok(());
    }
    // SAFETY: the trigger manager hands us a valid relation and tuples.
    unsafe {
        let rel = td.tg_relation;
        let desc = (*rel).rd_att;
        // A row of common column types is encoded from its datums (rowenc),
        // unless it is to be redacted or keyed for history(): those work on
        // the jsonb.
        let plan = (!opts.history && opts.redact_columns.is_empty())
            .then(|| rowenc::Plan::new(desc, &opts.exclude_columns))
            .flatten();
        // Rows that rowenc writes are written packed, as the payload stores
        // them, when the payload is packed (a 0.3.0 schema) and no option
        // reads them back (changed_only compares them in version 1). Both
        // rows of an event are in the same form.
        let packed = plan.is_some() && !opts.changed_only && txstate::writes_packed()?;
        // What to_jsonb's rendering of these rows reads: found once for
        // both rows of an UPDATE, and only if one takes to_jsonb.
        let depends = std::cell::OnceCell::new();
        let row = |t: pg_sys::HeapTuple| -> Result<Json, AuditError> {
            if let Some(encoded) = plan.as_ref().and_then(|p| p.encode(t, packed)) {
                return Ok(Json { raw: None, encoded });
            }
            // Options work on the datums with PostgreSQL's own jsonb
            // functions, which never walk nested values, so any depth is fine.
            let depends = *depends.get_or_init(|| crate::rendering::depends(desc));
            let d = opts.apply(row_to_jsonb(t, desc, depends))?;
            let mut j = json_from_datum(d, opts.history);
            if packed {
                // Held twice for a moment: room for it, or an ERROR.
                let mut p = Vec::new();
                p.try_reserve(j.encoded.len())
                    .map_err(|_| AuditError::OutOfMemory(j.encoded.len()))?;
                audit_log_core::encoding::packed::json_pack(&j.encoded, &mut p)
                    .map_err(|e| AuditError::Internal(format!("row encoding: {e:?}")))?;
                j.encoded = p;
            }
            Ok(j)
        };
        let old = (op != Op::Insert)
            .then(|| row(td.tg_trigtuple))
            .transpose()?;
        let new = match op {
            Op::Insert => Some(row(td.tg_trigtuple)?),
            Op::Update => Some(row(td.tg_newtuple)?),
            _ => None,
        };
        if opts.skip_unchanged_updates
            && op == Op::Update
            && old.as_ref().map(|j| &j.encoded) == new.as_ref().map(|j| &j.encoded)
            && stored_values_equal(td.tg_trigtuple, td.tg_newtuple, desc, &opts.exclude_columns)
        {
            // Only excluded columns changed (or nothing did).
            return Ok(());
        }
        let names = relation_names(rel);
        let name = names.name();
        let (schema, name) = (&*names.schema, &*name);
        // The row's identity: its key before the change, or after an INSERT;
        // and the key after an UPDATE that changed it, so that history()
        // of the new key starts with the change that gave it.
        let key = if opts.history {
            primary_key_names(rel)
        } else {
            None
        };
        let key_of = |row: Option<&Json>, names: &[String]| {
            let payload = row?.raw.as_ref()?.get(pg_sys::VARHDRSZ..)?;
            let text = audit_log_core::jsonb::key_text(payload, names)
                .ok()
                .flatten()?;
            Some(audit_log_core::jsonb::row_key_hash(schema, name, &text))
        };
        let row_keys = key.map_or_else(RowKeys::default, |names| {
            let key = key_of(old.as_ref().or(new.as_ref()), &names);
            let moved_to = (op == Op::Update)
                .then(|| key_of(new.as_ref(), &names))
                .flatten()
                .filter(|k| Some(*k) != key);
            RowKeys { key, moved_to }
        });
        // changed_only: the old row keeps what the UPDATE changed (its key
        // was taken above, from the whole row).
        let old = match (old, &new) {
            (Some(mut o), Some(n)) if opts.changed_only && op == Op::Update => {
                if let Some(c) =
                    audit_log_core::encoding::decode::changed_members(&o.encoded, &n.encoded)
                {
                    o.encoded = c;
                }
                Some(o)
            }
            (o, _) => o,
        };
        // A row's events in the order of its changes. PostgreSQL runs a
        // statement's AFTER ROW triggers once it has changed all its rows,
        // and a statement run before that (from a function the statement
        // calls, or from one of those triggers: one that fires before ours,
        // or on another row) runs its own first: its change to a row
        // version whose event still waits here is recorded before it.
        // That event remembers the version; this one, following the row's
        // later versions, finds it and refuses. The statement's own
        // foreign-key cascades queue their events after its own, in order.
        if op != Op::Insert {
            note_change(rel, td.tg_trigslot, false)?;
            let new = (op == Op::Update).then_some(td.tg_newtuple);
            if key_taken_before_capture(rel, td.tg_trigslot, new, &opts) {
                return Err(AuditError::KeyTakenBeforeCapture(
                    crate::relstate::qualified(schema, name),
                ));
            }
        }
        let made = match op {
            Op::Insert => td.tg_trigslot,
            Op::Update => td.tg_newslot,
            _ => std::ptr::null_mut(),
        };
        if !made.is_null() && changed_before_capture(rel, made) {
            return Err(AuditError::ChangedBeforeCapture(
                crate::relstate::qualified(schema, name),
            ));
        }
        let channel = opts.notify.then(|| opts.channel_for(schema, name));
        let id = record(schema, name, op.as_str(), old, new, packed, row_keys)?;
        if !made.is_null() {
            note_made(rel, made)?;
        }
        if let Some(channel) = channel {
            notify(&channel, id, op.as_str(), schema, name);
        }
        Ok(())
    }
}

/// A heap tuple in an AFTER ROW trigger's slot, as the page holds it: the
/// trigger manager fetched it by its ctid for this trigger, so its header
/// shows the changes made to it since. Only a heap table's buffer slot has
/// one; others give None.
///
/// # Safety
/// `slot` is null or a trigger's valid slot, holding its tuple.
unsafe fn slot_heap_tuple(
    slot: *mut pg_sys::TupleTableSlot,
) -> Option<(pg_sys::HeapTuple, pg_sys::Buffer)> {
    // SAFETY: by the caller's contract.
    unsafe {
        if slot.is_null()
            || !std::ptr::eq((*slot).tts_ops, &raw const pg_sys::TTSOpsBufferHeapTuple)
        {
            return None;
        }
        let bslot = slot.cast::<pg_sys::BufferHeapTupleTableSlot>();
        let tuple = (*bslot).base.tuple;
        (!tuple.is_null() && !(*tuple).t_data.is_null()).then_some((tuple, (*bslot).buffer))
    }
}

/// The transaction that updated or deleted a heap tuple, if one did and it
/// is this one (not a lock, not a rolled-back subtransaction's change), and
/// the ctid of what replaced it (its own for a DELETE).
///
/// # Safety
/// `header` lies in `buffer`, pinned (or in local memory when `buffer` is
/// invalid).
unsafe fn updated_here(
    header: pg_sys::HeapTupleHeader,
    buffer: pg_sys::Buffer,
) -> Option<(pg_sys::TransactionId, pg_sys::ItemPointerData)> {
    // SAFETY: by the caller's contract; the header is read under the
    // buffer's share lock, but for the first look.
    unsafe {
        // The common case, read without the lock: no xmax at all. Only this
        // backend could set one that is not a lock, and it is here; others
        // can only add locks and hint bits.
        let invalid = pg_sys::HEAP_XMAX_INVALID as u16;
        if std::ptr::read_volatile(&raw const (*header).t_infomask) & invalid != 0 {
            return None;
        }
        let locked = buffer != pg_sys::InvalidBuffer as pg_sys::Buffer;
        if locked {
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        }
        let mask = (*header).t_infomask;
        let updater = if mask & invalid != 0 || xmax_is_locked_only(mask) {
            None
        } else if mask & pg_sys::HEAP_XMAX_IS_MULTI as u16 != 0 {
            Some(pg_sys::HeapTupleGetUpdateXid(header))
        } else {
            Some((*header).t_choice.t_heap.t_xmax)
        };
        let next = (*header).t_ctid;
        if locked {
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        }
        updater
            .filter(|&xid| pg_sys::TransactionIdIsCurrentTransactionId(xid))
            .map(|xid| (xid, next))
    }
}

/// `HEAP_XMAX_IS_LOCKED_ONLY`: the xmax only locks the row.
fn xmax_is_locked_only(mask: u16) -> bool {
    let lock_only = pg_sys::HEAP_XMAX_LOCK_ONLY as u16;
    let multi_or_lock = (pg_sys::HEAP_XMAX_IS_MULTI | pg_sys::HEAP_LOCK_MASK) as u16;
    mask & lock_only != 0 || mask & multi_or_lock == pg_sys::HEAP_XMAX_EXCL_LOCK as u16
}

/// A row version's identity: its table, its ctid, the command that made it
/// and the transaction that changed it. A TRUNCATE or a rewrite in the
/// transaction starts the table's ctids again (in a new file, or in the
/// same one when the table is new in the subtransaction); the versions
/// made after it come from later commands.
type Changed = (u32, u32, u16, pg_sys::CommandId, u32);

/// Whose the record below is: a top-level statement's start time and its
/// transaction.
type RecordedScope = (pg_sys::TimestampTz, u32);

/// What the current top-level statement recorded of the rows its
/// transaction made, to keep each row's events in the order of its changes.
#[derive(Default)]
struct Recorded {
    /// Row versions made in this transaction whose UPDATE or DELETE was
    /// recorded, which can come before the row version's own event when
    /// that waits in an outer statement's queue. At most as many as the
    /// statement changed of the rows its transaction made.
    changed: std::collections::HashSet<Changed>,
    /// Per table, the commands with a recorded event on a row version this
    /// transaction made (its INSERT or UPDATE, or its UPDATE or DELETE): a
    /// DELETE whose command came before one of them may have had its key
    /// taken by a row recorded first. A foreign-key cascade queues its
    /// events behind the waiting one, so its command is not here until
    /// they are recorded.
    made: std::collections::HashMap<u32, RangeSet>,
}

thread_local! {
    static RECORDED: RefCell<(RecordedScope, Recorded)> =
        RefCell::new(((0, 0), Recorded::default()));
}

/// `f` on the record above, emptied first if it is another statement's or
/// another transaction's.
fn with_recorded<T>(f: impl FnOnce(&mut Recorded) -> T) -> T {
    // SAFETY: reads the statement's start time and the transaction's id.
    let scope = unsafe {
        (
            pg_sys::GetCurrentStatementStartTimestamp(),
            pg_sys::GetTopTransactionIdIfAny().into_inner(),
        )
    };
    RECORDED.with_borrow_mut(|(at, rec)| {
        if *at != scope {
            *at = scope;
            // A large set from a statement before is given back.
            *rec = Recorded::default();
        }
        f(rec)
    })
}

/// The identity of a row version this transaction made and then changed.
///
/// # Safety
/// `rel` is an open relation; `header` is the version at `tid`, whose xmin
/// is this transaction's.
unsafe fn changed_key(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointerData,
    header: pg_sys::HeapTupleHeader,
    xid: pg_sys::TransactionId,
) -> Changed {
    let block = (u32::from(tid.ip_blkid.bi_hi) << 16) | u32::from(tid.ip_blkid.bi_lo);
    // SAFETY: by the caller's contract.
    let (oid, made_by) = unsafe {
        (
            (*rel).rd_id.to_u32(),
            pg_sys::HeapTupleHeaderGetCmin(header),
        )
    };
    (oid, block, tid.ip_posid, made_by, xid.into_inner())
}

/// Called for a recorded UPDATE or DELETE event: if it changes a row
/// version this transaction made, remember that version as changed. With
/// `moved_only`, only if the change moved the row to another partition.
///
/// Every depth counts: a statement run from a function that the outer
/// statement calls (in its expressions, a default, a CHECK, a policy, a
/// trigger's WHEN) fires its triggers at depth 1, as a top-level one does,
/// and nothing a trigger can see tells the two apart. A top-level statement
/// that changes rows its transaction made remembers them until the next
/// top-level statement.
///
/// # Safety
/// `rel` and `slot` are the trigger's.
unsafe fn note_change(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    moved_only: bool,
) -> Result<(), AuditError> {
    // SAFETY: by the caller's contract.
    unsafe {
        let Some((tuple, buffer)) = slot_heap_tuple(slot) else {
            return Ok(());
        };
        let xmin = (*(*tuple).t_data).t_choice.t_heap.t_xmin;
        if !pg_sys::TransactionIdIsCurrentTransactionId(xmin) {
            return Ok(());
        }
        if let Some((xid, next)) = updated_here((*tuple).t_data, buffer) {
            if moved_only && u32::from(next.ip_posid) != pg_sys::MovedPartitionsOffsetNumber {
                return Ok(());
            }
            let key = changed_key(rel, (*tuple).t_self, (*tuple).t_data, xid);
            // The command that changed it, for the key check: a version
            // that held a key and whose change is recorded shows the key.
            let cid = pg_sys::HeapTupleHeaderGetCmax((*tuple).t_data);
            // Room for it, or an ERROR (a failed allocation would abort
            // the backend).
            let size = std::mem::size_of::<Changed>();
            with_recorded(|rec| {
                let set = &mut rec.changed;
                set.try_reserve(1)
                    .map(|()| set.insert(key))
                    .map_err(|_| AuditError::OutOfMemory(size.saturating_mul(set.len().max(1))))
            })?;
            note_command(rel, cid)?;
        }
        Ok(())
    }
}

/// Called for an INSERT or UPDATE event: whether the row version it makes,
/// or one that replaced it since in this transaction, was changed by a
/// statement whose event is already recorded. The versions between
/// may have been changed without an event (an operation the table does not
/// record, an UPDATE that `skip_unchanged_updates` skipped), so the whole
/// chain of this transaction's versions is followed.
///
/// # Safety
/// `rel` and `slot` are the trigger's.
unsafe fn changed_before_capture(rel: pg_sys::Relation, slot: *mut pg_sys::TupleTableSlot) -> bool {
    // SAFETY: by the caller's contract; each later version is fetched by
    // its ctid into a pinned buffer, released before the next.
    unsafe {
        let Some((tuple, buffer)) = slot_heap_tuple(slot) else {
            return false;
        };
        let Some(first) = updated_here((*tuple).t_data, buffer) else {
            return false;
        };
        let mut tid = (*tuple).t_self;
        let (mut xid, mut next) = first;
        let mut key = changed_key(rel, tid, (*tuple).t_data, xid);
        loop {
            if with_recorded(|rec| rec.changed.contains(&key)) {
                return true;
            }
            // A DELETE points to itself; a row moved to another partition
            // leaves a marker, and its later versions there are not
            // followed.
            let same = |a: &pg_sys::ItemPointerData, b: &pg_sys::ItemPointerData| {
                (a.ip_blkid.bi_hi, a.ip_blkid.bi_lo, a.ip_posid)
                    == (b.ip_blkid.bi_hi, b.ip_blkid.bi_lo, b.ip_posid)
            };
            if same(&next, &tid) || u32::from(next.ip_posid) == pg_sys::MovedPartitionsOffsetNumber
            {
                return false;
            }
            let mut later: pg_sys::HeapTupleData = std::mem::zeroed();
            later.t_self = next;
            let mut buf: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
            let any = &raw mut pg_sys::SnapshotAnyData;
            if !crate::pgcompat::heap_fetch(rel, any, &mut later, &mut buf) {
                if buf != pg_sys::InvalidBuffer as pg_sys::Buffer {
                    pg_sys::ReleaseBuffer(buf);
                }
                return false;
            }
            // The version there is the one this transaction made by that
            // change (as heap_get_latest_tid checks), or the chain ends.
            let made_here = (*later.t_data).t_choice.t_heap.t_xmin == xid;
            let step = if made_here {
                updated_here(later.t_data, buf)
            } else {
                None
            };
            let Some((by, after)) = step else {
                pg_sys::ReleaseBuffer(buf);
                return false;
            };
            xid = by;
            key = changed_key(rel, next, later.t_data, xid);
            pg_sys::ReleaseBuffer(buf);
            tid = next;
            next = after;
        }
    }
}

/// Called once an INSERT or UPDATE event is recorded: its command is one
/// that made a row version of its table with a recorded event.
///
/// # Safety
/// `rel` and `slot` are the trigger's; the slot holds the version made.
unsafe fn note_made(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
) -> Result<(), AuditError> {
    // SAFETY: by the caller's contract; the version was made by this
    // transaction, so its cmin is this backend's to read.
    unsafe {
        let Some((tuple, _)) = slot_heap_tuple(slot) else {
            return Ok(());
        };
        note_command(rel, pg_sys::HeapTupleHeaderGetCmin((*tuple).t_data))
    }
}

/// Remember `cid` as a command with a recorded event on `rel` of a row
/// version this transaction made: its INSERT or UPDATE, or the UPDATE or
/// DELETE of such a version.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn note_command(rel: pg_sys::Relation, cid: pg_sys::CommandId) -> Result<(), AuditError> {
    // SAFETY: by the caller's contract.
    let oid = unsafe { (*rel).rd_id.to_u32() };
    with_recorded(|rec| {
        let full = |n: usize| AuditError::OutOfMemory(n.saturating_mul(8));
        // One lookup for a statement's every row after its first.
        if let Some(commands) = rec.made.get_mut(&oid) {
            return commands
                .try_insert(cid)
                .map_err(|_| full(commands.ranges()));
        }
        let mut commands = RangeSet::new();
        commands.try_insert(cid).map_err(|_| full(1))?;
        rec.made.try_reserve(1).map_err(|_| full(1))?;
        rec.made.insert(oid, commands);
        Ok(())
    })
}

/// Called for a DELETE event, or an UPDATE event (with `new`): whether the
/// row's key (its primary key's values before the change) was held, after
/// this row's change, by another row version of this transaction with a
/// recorded event: its INSERT or UPDATE, or its own UPDATE or DELETE. Such
/// a command ran from a trigger or a function while this event waited, and
/// `history()` of the key would show the other row before the change that
/// freed the key. Only looked for when the table has an event recorded in
/// this statement from a later command; a foreign-key cascade's rows, whose
/// events wait behind this one, do not count. An UPDATE that keeps its key
/// cannot free it.
///
/// Only a key checked at once: it is held by one row at a time, so a
/// version holding it made by a later command was made after this row's
/// change. A deferrable key can be held by two rows, and a BEFORE
/// trigger's statement runs first under a later command, so the command
/// ids do not tell the order (README, "Not detected").
///
/// # Safety
/// `rel` and `slot` are the trigger's; `new` is the UPDATE's new tuple.
unsafe fn key_taken_before_capture(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    new: Option<pg_sys::HeapTuple>,
    opts: &options::Options,
) -> bool {
    // SAFETY: by the caller's contract. The row's command and the other
    // versions' are this transaction's; the primary key is opened and
    // scanned under AccessShareLock with its own operators and collations,
    // and the scan is ended before return.
    unsafe {
        let Some((tuple, buffer)) = slot_heap_tuple(slot) else {
            return false;
        };
        let oid = (*rel).rd_id.to_u32();
        let Some(latest) = with_recorded(|rec| rec.made.get(&oid).and_then(RangeSet::max)) else {
            return false;
        };
        if updated_here((*tuple).t_data, buffer).is_none() {
            return false;
        }
        // The command of this row's change.
        let since = pg_sys::HeapTupleHeaderGetCmax((*tuple).t_data);
        if latest <= since {
            return false;
        }
        let Some(pk) = primary_key_index(rel) else {
            return false;
        };
        let idx = pg_sys::index_open(pk, pg_sys::AccessShareLock as i32);
        let desc = (*rel).rd_att;
        let attrs = crate::pgcompat::attrs(desc);
        let n = attrs.len();
        let (mut ov, mut on) = (vec![pg_sys::Datum::from(0); n], vec![true; n]);
        pg_sys::heap_deform_tuple(tuple, desc, ov.as_mut_ptr(), on.as_mut_ptr());
        let (mut nv, mut nn) = (vec![pg_sys::Datum::from(0); n], vec![true; n]);
        if let Some(t) = new {
            pg_sys::heap_deform_tuple(t, desc, nv.as_mut_ptr(), nn.as_mut_ptr());
        }
        let nkeys = (*(*idx).rd_index).indnkeyatts as usize;
        let columns = (*(*idx).rd_index).indkey.values.as_slice(nkeys).to_vec();
        let mut keys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); nkeys];
        let mut usable = true;
        let mut kept = new.is_some();
        for (i, &attno) in columns.iter().enumerate() {
            let Some(a) = usize::try_from(attno)
                .ok()
                .and_then(|a| a.checked_sub(1))
                .filter(|&a| a < n && !on[a])
            else {
                usable = false;
                break;
            };
            if new.is_some() {
                let att = &attrs[a];
                kept &= !nn[a] && same_image(ov[a], nv[a], att.attbyval, att.attlen);
            }
            let family = *(*idx).rd_opfamily.add(i);
            let input = *(*idx).rd_opcintype.add(i);
            let op = pg_sys::get_opfamily_member(
                family,
                input,
                input,
                pg_sys::BTEqualStrategyNumber as i16,
            );
            if op == pg_sys::InvalidOid {
                usable = false;
                break;
            }
            pg_sys::ScanKeyEntryInitialize(
                &mut keys[i],
                0,
                attno,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::InvalidOid,
                *(*idx).rd_indcollation.add(i),
                pg_sys::get_opcode(op),
                ov[a],
            );
        }
        pg_sys::index_close(idx, pg_sys::AccessShareLock as i32);
        if !usable || kept {
            return false;
        }
        let scan = pg_sys::systable_beginscan(
            rel,
            pk,
            true,
            &raw mut pg_sys::SnapshotAnyData,
            nkeys as i32,
            keys.as_mut_ptr(),
        );
        let own = (*tuple).t_self;
        let mut taken = false;
        loop {
            let t = pg_sys::systable_getnext(scan);
            if t.is_null() {
                break;
            }
            let h = (*t).t_data;
            let tid = (*t).t_self;
            if (tid.ip_blkid.bi_hi, tid.ip_blkid.bi_lo, tid.ip_posid)
                == (own.ip_blkid.bi_hi, own.ip_blkid.bi_lo, own.ip_posid)
            {
                continue;
            }
            if !pg_sys::TransactionIdIsCurrentTransactionId((*h).t_choice.t_heap.t_xmin) {
                continue;
            }
            // Made after this row's change, by a command whose events are
            // recorded: not by a cascade whose events wait behind this one.
            let cmin = pg_sys::HeapTupleHeaderGetCmin(h);
            if cmin <= since {
                continue;
            }
            let made_by = if (*h).t_infomask & pg_sys::HEAP_UPDATED as u16 != 0 {
                Op::Update
            } else {
                Op::Insert
            };
            let made_recorded = opts.records(made_by)
                && with_recorded(|rec| rec.made.get(&oid).is_some_and(|c| c.contains(cmin)));
            // Or changed since, with its UPDATE or DELETE recorded (its
            // INSERT or UPDATE may not be): its old row shows the key.
            let version_buffer = slot_heap_tuple((*scan).slot)
                .map_or(pg_sys::InvalidBuffer as pg_sys::Buffer, |(_, b)| b);
            let change_recorded = !made_recorded
                && updated_here(h, version_buffer).is_some_and(|(xid, _)| {
                    let key = changed_key(rel, tid, h, xid);
                    with_recorded(|rec| rec.changed.contains(&key))
                });
            if made_recorded || change_recorded {
                taken = true;
                break;
            }
        }
        pg_sys::systable_endscan(scan);
        taken
    }
}

/// Tell listeners of a table's channel about one change: at commit, as
/// NOTIFY does, and not at all if the change rolls back.
fn notify(channel: &str, id: i64, op: &str, schema: &str, table: &str) {
    let payload =
        serde_json::json!({"event_id": id, "op": op, "schema": schema, "table": table}).to_string();
    // SAFETY: pg_notify(text, text) with two non-null text datums.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.into_datum(), payload.as_str().into_datum()],
        );
    }
}

/// A table's primary key as last seen: its index, column numbers and names.
struct PrimaryKey {
    index: pg_sys::Oid,
    columns: Vec<i16>,
    names: Rc<[String]>,
}

thread_local! {
    static PRIMARY_KEYS: RefCell<std::collections::HashMap<pg_sys::Oid, PrimaryKey>> =
        RefCell::new(std::collections::HashMap::new());
}

/// A table's primary key index, if the key is checked at once. A
/// deferrable key is no key to audit_log, on any version: two rows can hold
/// it within a statement, so neither history() row keys nor the key check
/// use it (README, "Not detected"); history() searches such a table's
/// events by content.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn primary_key_index(rel: pg_sys::Relation) -> Option<pg_sys::Oid> {
    // SAFETY: by the caller's contract; the index list fills the relcache
    // entry's fields and is freed.
    unsafe {
        if !(*rel).rd_indexvalid {
            pg_sys::list_free(pg_sys::RelationGetIndexList(rel));
        }
        crate::pgcompat::immediate_primary_key(rel)
    }
}

/// The attribute name of column `attno` (1-based) now, if it exists.
unsafe fn attname<'a>(desc: pg_sys::TupleDesc, attno: i16) -> Option<&'a CStr> {
    // SAFETY: by the caller's contract, desc is a valid tuple descriptor.
    unsafe {
        let natts = (*desc).natts as usize;
        let i = usize::try_from(attno)
            .ok()?
            .checked_sub(1)
            .filter(|&i| i < natts)?;
        Some(CStr::from_ptr(
            crate::pgcompat::attrs(desc)[i].attname.data.as_ptr(),
        ))
    }
}

/// The names of a table's primary key columns, now: a rename shows at once.
/// Capture calls this for every row, so the names are cached and only
/// compared with the descriptor, which allocates nothing.
pub unsafe fn primary_key_names(rel: pg_sys::Relation) -> Option<Rc<[String]>> {
    // SAFETY: by the caller's contract, rel is an open relation.
    unsafe {
        let pk = primary_key_index(rel)?;
        let relid = (*rel).rd_id;
        let desc = (*rel).rd_att;
        let hit = PRIMARY_KEYS.with_borrow(|m| {
            let k = m.get(&relid).filter(|k| k.index == pk)?;
            let same = k
                .columns
                .iter()
                .zip(k.names.iter())
                .all(|(&a, n)| attname(desc, a).is_some_and(|c| c.to_bytes() == n.as_bytes()));
            same.then(|| k.names.clone())
        });
        if hit.is_some() {
            return hit;
        }
        let idx = pg_sys::index_open(pk, pg_sys::AccessShareLock as i32);
        let form = (*idx).rd_index;
        let n = (*form).indnkeyatts as usize;
        let columns = (*form).indkey.values.as_slice(n).to_vec();
        pg_sys::index_close(idx, pg_sys::AccessShareLock as i32);
        let names: Option<Vec<String>> = columns
            .iter()
            .map(|&a| attname(desc, a).map(|c| c.to_string_lossy().into_owned()))
            .collect();
        let names: Rc<[String]> = names?.into();
        PRIMARY_KEYS.with_borrow_mut(|m| {
            m.insert(
                relid,
                PrimaryKey {
                    index: pk,
                    columns,
                    names: names.clone(),
                },
            )
        });
        Some(names)
    }
}

fn capture_stmt_impl(trigger: &PgTrigger<'_>) -> Result<(), AuditError> {
    let td = trigger_data(trigger);
    if td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_TRUNCATE {
        let opts = options::of_trigger(td)?;
        if opts.records(Op::Truncate) {
            // SAFETY: the trigger manager hands us a valid relation.
            let names = unsafe { relation_names(td.tg_relation) };
            let name = names.name();
            let (schema, name) = (&*names.schema, &*name);
            let op = Op::Truncate.as_str();
            let id = record(schema, name, op, None, None, false, RowKeys::default())?;
            if opts.notify {
                notify(&opts.channel_for(schema, name), id, op, schema, name);
            }
        }
    }
    Ok(())
}

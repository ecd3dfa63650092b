//! What the DDL guard reads of a relation: its names, columns, persistence
//! and capture triggers, straight from the relation cache and the catalogs.
//! No SQL is run, so no session planner setting takes part, and the cost
//! is per relation a command touches, not per audited table.

use std::collections::BTreeMap;
use std::ffi::CStr;

use pgrx::pg_sys;

use crate::catalog::{ROW_TRIGGER, STMT_TRIGGER};
use crate::scan::catalog_rows as scan_rows;

/// One of audit_log's capture triggers on a relation, found by its name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaptureTrigger {
    /// It calls audit_log's own function (capture_row or capture_stmt).
    pub ours: bool,
    /// pg_trigger.tgenabled: 'A' (ALWAYS) is the only state that captures everything.
    pub enabled: u8,
    /// Cloned by PostgreSQL from a partitioned parent's trigger.
    pub clone: bool,
}

impl CaptureTrigger {
    pub fn on(&self) -> bool {
        self.ours && self.enabled == b'A'
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RelState {
    pub schema: String,
    pub name: String,
    /// Columns as `name type, ...`, in order.
    pub columns: String,
    /// Column names by attribute number.
    pub attnames: Vec<(i16, String)>,
    pub kind: u8,
    pub persistence: u8,
    pub is_partition: bool,
    pub row: Option<CaptureTrigger>,
    pub stmt: Option<CaptureTrigger>,
    /// The names of its primary key's columns, as history() keys name
    /// them (none for a deferrable key); read only with a row trigger.
    pub primary_key: Option<std::rc::Rc<[String]>>,
}

impl RelState {
    /// The row trigger is on: changes are captured.
    pub fn audited(&self) -> bool {
        self.row.is_some_and(|t| t.on())
    }

    pub fn fully_audited(&self) -> bool {
        self.audited() && self.stmt.is_some_and(|t| t.on())
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// `schema.name`, each part quoted as quote_ident() does.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// An identifier quoted as PostgreSQL's quote_ident() does: only if needed.
pub fn quote_ident(s: &str) -> String {
    let Ok(c) = std::ffi::CString::new(s) else {
        return format!("\"{}\"", s.replace('"', "\"\""));
    };
    // SAFETY: quote_identifier returns its argument or a palloc'd copy.
    cstr(unsafe { pg_sys::quote_identifier(c.as_ptr()) })
}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string from the catalogs.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Whether `f` is audit_log's function `name`.
fn is_audit_fn(f: pg_sys::Oid, name: &str) -> bool {
    let Some(ns) = crate::catalog::schema_oid() else {
        return false;
    };
    // SAFETY: syscache lookups; NULL / InvalidOid for a missing function.
    unsafe { pg_sys::get_func_namespace(f) == ns && cstr(pg_sys::get_func_name(f)) == name }
}

/// The state of a relation now, or None if it does not exist.
pub fn rel_state(oid: pg_sys::Oid) -> Option<RelState> {
    // SAFETY: RelationIdGetRelation returns NULL for a missing relation and a
    // reference-counted relcache entry otherwise, released by RelationClose.
    // The caller's command holds whatever lock it needs; a read needs none.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(oid);
        if rel.is_null() {
            return None;
        }
        let form = &*(*rel).rd_rel;
        let desc = (*rel).rd_att;
        let mut columns = Vec::new();
        let mut attnames = Vec::new();
        for a in crate::pgcompat::attrs(desc) {
            if a.attisdropped {
                continue;
            }
            let name = cstr(a.attname.data.as_ptr());
            let ty = cstr(pg_sys::format_type_with_typemod(a.atttypid, a.atttypmod));
            columns.push(format!("{} {ty}", quote_ident(&name)));
            attnames.push((a.attnum, name));
        }
        let mut row = None;
        let mut stmt = None;
        let td = (*rel).trigdesc;
        if !td.is_null() {
            for t in std::slice::from_raw_parts((*td).triggers, (*td).numtriggers as usize) {
                let name = cstr(t.tgname);
                let slot = if name == ROW_TRIGGER {
                    &mut row
                } else if name == STMT_TRIGGER {
                    &mut stmt
                } else {
                    continue;
                };
                let f = if name == ROW_TRIGGER {
                    "capture_row"
                } else {
                    "capture_stmt"
                };
                *slot = Some(CaptureTrigger {
                    ours: is_audit_fn(t.tgfoid, f),
                    enabled: t.tgenabled as u8,
                    clone: t.tgisclone,
                });
            }
        }
        let state = RelState {
            schema: cstr(pg_sys::get_namespace_name(form.relnamespace)),
            name: cstr(form.relname.data.as_ptr()),
            columns: columns.join(", "),
            attnames,
            kind: form.relkind as u8,
            persistence: form.relpersistence as u8,
            is_partition: form.relispartition,
            primary_key: if row.is_some() {
                crate::capture::primary_key_names(rel)
            } else {
                None
            },
            row,
            stmt,
        };
        pg_sys::RelationClose(rel);
        Some(state)
    }
}

unsafe extern "C-unwind" {
    // catalog/pg_inherits.h, which pgrx does not bind.
    #[link_name = "find_all_inheritors"]
    fn find_all_inheritors_raw(
        parent: pg_sys::Oid,
        lockmode: pg_sys::LOCKMODE,
        numparents: *mut *mut pg_sys::List,
    ) -> *mut pg_sys::List;
}

/// A relation and every relation below it (partitions, inheritance children).
pub fn with_inheritors(oid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    inheritors_locked(oid, pg_sys::NoLock as pg_sys::LOCKMODE)
}

/// The same, each child locked as the command that recurses to it will.
pub fn inheritors_locked(oid: pg_sys::Oid, lockmode: pg_sys::LOCKMODE) -> Vec<pg_sys::Oid> {
    // SAFETY: a read of pg_inherits, locking the children found; the list holds OIDs.
    unsafe {
        let list = pg_sys::ffi::pg_guard_ffi_boundary(|| {
            find_all_inheritors_raw(oid, lockmode, std::ptr::null_mut())
        });
        let mut out = Vec::new();
        if !list.is_null() {
            for i in 0..(*list).length {
                out.push((*(*list).elements.add(i as usize)).oid_value);
            }
            pg_sys::list_free(list);
        }
        out
    }
}

/// States of several relations, those that exist.
pub fn states(oids: impl IntoIterator<Item = pg_sys::Oid>) -> BTreeMap<u32, RelState> {
    oids.into_iter()
        .filter_map(|o| rel_state(o).map(|s| (o.to_u32(), s)))
        .collect()
}

/// The leading columns of pg_inherits (catalog/pg_inherits.h), which pgrx
/// does not bind: its OIDs are fixed in PostgreSQL's catalog.
#[repr(C)]
struct InheritsRow {
    inhrelid: pg_sys::Oid,
    inhparent: pg_sys::Oid,
}
const INHERITS_RELATION_ID: u32 = 2611;
const INHERITS_RELID_SEQNO_INDEX_ID: u32 = 2680;

/// The direct inheritance parents of a relation (for a partition, its
/// partitioned parent).
pub fn inheritance_parents(rel: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    scan_rows(
        pg_sys::Oid::from(INHERITS_RELATION_ID),
        INHERITS_RELID_SEQNO_INDEX_ID,
        &[(1, rel)],
        0,
        |r: &InheritsRow| {
            debug_assert_eq!(r.inhrelid, rel);
            r.inhparent
        },
    )
    .into_iter()
    .map(|(_, p)| p)
    .collect()
}

/// The leading columns of pg_depend (catalog/pg_depend.h, unbound), and its
/// fixed OIDs.
#[repr(C)]
#[derive(Clone, Copy)]
struct DependRow {
    classid: pg_sys::Oid,
    objid: pg_sys::Oid,
    objsubid: i32,
    refclassid: pg_sys::Oid,
    refobjid: pg_sys::Oid,
    refobjsubid: i32,
    deptype: std::ffi::c_char,
}
const DEPEND_RELATION_ID: u32 = 2608;
const DEPEND_REFERENCE_INDEX_ID: u32 = 2674;

/// The rows of pg_depend whose two leading key columns of `index` (heap
/// attribute numbers and values) match.
fn depend_rows(index: u32, keys: [(i16, pg_sys::Oid); 2]) -> Vec<DependRow> {
    scan_rows(
        pg_sys::Oid::from(DEPEND_RELATION_ID),
        index,
        &keys,
        0,
        |d: &DependRow| *d,
    )
    .into_iter()
    .map(|(_, d)| d)
    .collect()
}

/// Whether any table column (or typed table) uses a type, directly or
/// through its array type, domains or ranges over it: a cheap test, read
/// from pg_depend, before the full search for audited tables that use it.
pub fn type_used_by_tables(typ: pg_sys::Oid) -> bool {
    let mut todo = vec![typ];
    let mut seen = 0;
    while let Some(t) = todo.pop() {
        seen += 1;
        if seen > 256 {
            return true; // a web of types: let the full search decide
        }
        // Who depends on type t: pg_depend by (refclassid, refobjid).
        let rows: Vec<(pg_sys::Oid, pg_sys::Oid)> = depend_rows(
            DEPEND_REFERENCE_INDEX_ID,
            [(4, pg_sys::TypeRelationId), (5, t)],
        )
        .into_iter()
        .map(|d| (d.classid, d.objid))
        .collect();
        for (class, obj) in rows {
            if class == pg_sys::RelationRelationId {
                return true;
            }
            if class == pg_sys::TypeRelationId {
                todo.push(obj);
            }
        }
    }
    false
}

const DEPEND_DEPENDER_INDEX_ID: u32 = 2673;

/// The namespace of an object of pg_class, pg_type or pg_proc, if any.
fn namespace_of(class: pg_sys::Oid, obj: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: syscache lookups; InvalidOid or NULL for a missing object.
    unsafe {
        let ns = if class == pg_sys::RelationRelationId {
            pg_sys::get_rel_namespace(obj)
        } else if class == pg_sys::ProcedureRelationId {
            pg_sys::get_func_namespace(obj)
        } else if class == pg_sys::TypeRelationId {
            let tup = pg_sys::SearchSysCache1(
                pg_sys::SysCacheIdentifier::TYPEOID as i32,
                pg_sys::Datum::from(obj),
            );
            if tup.is_null() {
                return None;
            }
            let hdr = (*tup).t_data;
            let form = &*((hdr as *const u8).add((*hdr).t_hoff as usize)
                as *const pg_sys::FormData_pg_type);
            let ns = form.typnamespace;
            pg_sys::ReleaseSysCache(tup);
            ns
        } else {
            return None;
        };
        (ns != pg_sys::InvalidOid).then_some(ns)
    }
}

/// Objects with lower OIDs are PostgreSQL's own: never temporary, and
/// not worth following.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
/// The catalogs whose rows belong to a relation or a type: defaults and
/// generation expressions, constraints (also a domain's), policies,
/// triggers, rewrite rules (a view's query).
const PART_CLASSES: [u32; 5] = [2604, 2606, 3256, 2620, 2618];

/// An index (its expressions and predicate are parts of its table). Not
/// partitions or children: they are relations of their own, judged when
/// they are created or altered, and a parent may have thousands.
fn is_index(rel: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup; '\0' for a missing relation.
    let kind = unsafe { pg_sys::get_rel_relkind(rel) } as u8;
    kind == b'i' || kind == b'I'
}

fn is_temp(class: pg_sys::Oid, obj: pg_sys::Oid) -> bool {
    // SAFETY: a lookup of the backend's temporary namespaces.
    namespace_of(class, obj).is_some_and(|ns| unsafe { pg_sys::isAnyTempNamespace(ns) })
}

/// A dependency that makes its object a part of what it depends on.
fn is_part_of(d: &DependRow) -> bool {
    d.deptype as u8 == b'a' || d.deptype as u8 == b'i'
}

/// The parts of a relation or type (its rows in PART_CLASSES, and a
/// relation's indexes), and for a composite type its relation (whose
/// columns are the type's attributes).
fn parts_of(class: pg_sys::Oid, obj: pg_sys::Oid) -> Vec<(pg_sys::Oid, pg_sys::Oid)> {
    let mut out: Vec<(pg_sys::Oid, pg_sys::Oid)> =
        depend_rows(DEPEND_REFERENCE_INDEX_ID, [(4, class), (5, obj)])
            .into_iter()
            .filter(is_part_of)
            .filter(|d| {
                PART_CLASSES.contains(&d.classid.to_u32())
                    || (d.classid == pg_sys::RelationRelationId && is_index(d.objid))
            })
            .map(|d| (d.classid, d.objid))
            .collect();
    if class == pg_sys::TypeRelationId {
        // SAFETY: a syscache lookup; InvalidOid unless a composite type.
        let rel = unsafe { pg_sys::get_typ_typrelid(obj) };
        if rel != pg_sys::InvalidOid {
            out.push((pg_sys::RelationRelationId, rel));
        }
    }
    out
}

/// The object a part belongs to (the relation or type it is a part of).
fn owner_of_part(class: pg_sys::Oid, obj: pg_sys::Oid) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    if !PART_CLASSES.contains(&class.to_u32()) {
        return None;
    }
    depend_rows(DEPEND_DEPENDER_INDEX_ID, [(1, class), (2, obj)])
        .into_iter()
        .find(|d| {
            is_part_of(d)
                && (d.refclassid == pg_sys::RelationRelationId
                    || d.refclassid == pg_sys::TypeRelationId)
        })
        .map(|d| (d.refclassid, d.refobjid))
}

/// Whether a permanent object depends on a temporary one, directly or
/// through other objects (a function whose SQL body reads a temporary
/// table, a view over a temporary function, a domain over a temporary type
/// or with a check on a temporary function, a composite type with an
/// attribute of a temporary row type), or through the parts of a relation
/// or type on the way (defaults and generation expressions, constraints,
/// policies, triggers, rewrite rules, indexes). PostgreSQL drops temporary
/// objects at the end of their session by itself, without event triggers,
/// and the drop cascades: to an audited table (a partition key on such a
/// function took the whole table), a column, a default, or a trigger whose
/// drop waits for a lock while the committing session holds its audit
/// chain. Objects that are temporary themselves, or parts of a temporary
/// relation, are exempt. The walk is breadth-first: what is nearest is
/// always judged, however large the web behind it.
pub fn depends_on_temp(class: pg_sys::Oid, obj: pg_sys::Oid) -> bool {
    if is_temp(class, obj) || owner_of_part(class, obj).is_some_and(|(c, o)| is_temp(c, o)) {
        return false;
    }
    let mut todo = std::collections::VecDeque::from([(class, obj)]);
    let mut seen = std::collections::HashSet::new();
    while let Some((c, o)) = todo.pop_front() {
        if !seen.insert((c, o)) {
            continue;
        }
        if seen.len() > 4096 {
            // Everything within the nearest levels was judged; past that,
            // a web this large is someone's big schema.
            return false;
        }
        for d in depend_rows(DEPEND_DEPENDER_INDEX_ID, [(1, c), (2, o)]) {
            if d.refobjid.to_u32() < FIRST_NORMAL_OBJECT_ID {
                continue;
            }
            if is_temp(d.refclassid, d.refobjid) {
                return true;
            }
            todo.push_back((d.refclassid, d.refobjid));
        }
        if c == pg_sys::RelationRelationId || c == pg_sys::TypeRelationId {
            for part in parts_of(c, o) {
                if is_temp(part.0, part.1) {
                    return true;
                }
                todo.push_back(part);
            }
        }
    }
    false
}

/// Whether audit_log.audited_schemas lists a schema: read straight through
/// its primary key, as the extension (whoever runs the command).
pub fn schema_is_audited(name: &str) -> bool {
    let Some(ns) = crate::catalog::schema_oid() else {
        return false;
    };
    // SAFETY: syscache lookups by name; InvalidOid when absent.
    let (table, index) = unsafe {
        (
            pg_sys::get_relname_relid(c"audited_schemas".as_ptr(), ns),
            pg_sys::get_relname_relid(c"audited_schemas_pkey".as_ptr(), ns),
        )
    };
    if table == pg_sys::InvalidOid || index == pg_sys::InvalidOid {
        return false;
    }
    // SAFETY: an index scan of an extension table under the transaction's
    // current snapshot, with a text key that lives through the scan.
    unsafe {
        let key_text = pg_sys::cstring_to_text_with_len(name.as_ptr().cast(), name.len() as i32);
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as i32);
        let mut k: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut k,
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            pg_sys::Datum::from(key_text),
        );
        k.sk_collation = pg_sys::DEFAULT_COLLATION_OID;
        let scan =
            pg_sys::systable_beginscan(rel, index, true, pg_sys::GetLatestSnapshot(), 1, &mut k);
        let found = !pg_sys::systable_getnext(scan).is_null();
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        found
    }
}

/// A capture trigger (by name or by function) that the current command
/// created or changed, as it is now.
#[derive(Debug)]
pub struct ChangedTrigger {
    pub name: String,
    /// Which of audit_log's capture functions it calls, if one.
    pub calls: Option<&'static str>,
    pub enabled: u8,
}

impl ChangedTrigger {
    /// It captures everything: our name, our matching function, ALWAYS.
    /// (What PostgreSQL itself makes when it clones the row trigger onto a
    /// new partition; anything else was switched off, renamed, replaced or
    /// made by hand.)
    pub fn is_on(&self) -> bool {
        let expected = if self.name == ROW_TRIGGER {
            Some("capture_row")
        } else if self.name == STMT_TRIGGER {
            Some("capture_stmt")
        } else {
            None
        };
        self.enabled == b'A' && expected.is_some() && self.calls == expected
    }
}

/// Capture triggers of `rel` changed by the command that started at `since`.
pub fn changed_capture_triggers(rel: pg_sys::Oid, since: pg_sys::CommandId) -> Vec<ChangedTrigger> {
    let rows = scan_rows(
        pg_sys::TriggerRelationId,
        pg_sys::TriggerRelidNameIndexId,
        &[(pg_sys::Anum_pg_trigger_tgrelid as i16, rel)],
        since,
        |t: &pg_sys::FormData_pg_trigger| (cstr(t.tgname.data.as_ptr()), t.tgfoid, t.tgenabled),
    );
    rows.into_iter()
        .filter(|(changed, _)| *changed)
        .filter_map(|(_, (name, tgfoid, tgenabled))| {
            let calls = ["capture_row", "capture_stmt"]
                .into_iter()
                .find(|f| is_audit_fn(tgfoid, f));
            let ours = calls.is_some() || name == ROW_TRIGGER || name == STMT_TRIGGER;
            ours.then_some(ChangedTrigger {
                name,
                calls,
                enabled: tgenabled as u8,
            })
        })
        .collect()
}

/// Whether the current command (from `since`) changed the relation's
/// pg_class row or any of its pg_attribute rows: a rename, a move, a column
/// change. Concurrent commits of other sessions do not count.
pub fn relation_changed(rel: pg_sys::Oid, since: pg_sys::CommandId) -> bool {
    let class = scan_rows(
        pg_sys::RelationRelationId,
        pg_sys::ClassOidIndexId,
        &[(pg_sys::Anum_pg_class_oid as i16, rel)],
        since,
        |_: &pg_sys::FormData_pg_class| (),
    );
    if class.iter().any(|(c, _)| *c) {
        return true;
    }
    let attrs = scan_rows(
        pg_sys::AttributeRelationId,
        pg_sys::AttributeRelidNumIndexId,
        &[(pg_sys::Anum_pg_attribute_attrelid as i16, rel)],
        since,
        |_: &pg_sys::FormData_pg_attribute| (),
    );
    attrs.iter().any(|(c, _)| *c)
}

/// A relation by schema and name, or None.
pub fn relation_by_name(schema: &str, name: &str) -> Option<pg_sys::Oid> {
    let (Ok(s), Ok(n)) = (std::ffi::CString::new(schema), std::ffi::CString::new(name)) else {
        return None;
    };
    // SAFETY: syscache lookups by name; InvalidOid when absent.
    unsafe {
        let ns = pg_sys::get_namespace_oid(s.as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(n.as_ptr(), ns);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}

/// The relation a trigger belongs to.
pub fn trigger_relation(trigger: pg_sys::Oid) -> Option<pg_sys::Oid> {
    let rows = scan_rows(
        pg_sys::TriggerRelationId,
        pg_sys::TriggerOidIndexId,
        &[(pg_sys::Anum_pg_trigger_oid as i16, trigger)],
        0,
        |t: &pg_sys::FormData_pg_trigger| t.tgrelid,
    );
    rows.first().map(|(_, r)| *r)
}

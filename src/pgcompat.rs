//! What differs between the PostgreSQL versions audit_log builds for (13 to
//! 18, by cargo feature), in one place.

use pgrx::pg_sys;

/// A tuple descriptor's attributes, 0-based. PostgreSQL 18 keeps the array
/// behind its compact attributes, where only `TupleDescAttr` finds it;
/// before 18 it is the descriptor's `attrs` member. Either way the
/// attributes lie next to each other.
///
/// # Safety
/// `desc` is a valid tuple descriptor that outlives the slice.
pub unsafe fn attrs<'a>(desc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: by the caller's contract, desc is valid; its natts attributes
    // are one array starting at attribute 0.
    unsafe {
        let natts = usize::try_from((*desc).natts).unwrap_or(0);
        if natts == 0 {
            return &[];
        }
        #[cfg(feature = "pg18")]
        let first = pg_sys::TupleDescAttr(desc, 0).cast_const();
        #[cfg(not(feature = "pg18"))]
        let first = (*desc).attrs.as_ptr();
        std::slice::from_raw_parts(first, natts)
    }
}

/// What an ALTER TABLE statement alters (a table, a view, a composite
/// type…): `objtype` since PostgreSQL 14, `relkind` in 13.
pub fn alter_table_objtype(s: &pg_sys::AlterTableStmt) -> pg_sys::ObjectType::Type {
    #[cfg(feature = "pg13")]
    return s.relkind;
    #[cfg(not(feature = "pg13"))]
    return s.objtype;
}

/// Whether a partition command is DETACH … CONCURRENTLY (PostgreSQL 14 on).
pub fn detach_concurrently(pc: &pg_sys::PartitionCmd) -> bool {
    #[cfg(feature = "pg13")]
    return {
        let _ = pc;
        false
    };
    #[cfg(not(feature = "pg13"))]
    return pc.concurrent;
}

/// `heap_fetch` without keeping the buffer of a tuple it does not return
/// (PostgreSQL 15 added the `keep_buf` argument; before, it never kept it).
///
/// # Safety
/// As `heap_fetch`: an open relation, a registered or static snapshot, a
/// tuple whose `t_self` is set. On true, `*buf` is pinned: release it.
pub unsafe fn heap_fetch(
    rel: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    tuple: pg_sys::HeapTuple,
    buf: *mut pg_sys::Buffer,
) -> bool {
    // SAFETY: the caller's contract.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        return pg_sys::heap_fetch(rel, snapshot, tuple, buf);
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        return pg_sys::heap_fetch(rel, snapshot, tuple, buf, false);
    }
}

/// The `money` type (`CASHOID` in PostgreSQL 13's headers).
#[cfg(feature = "pg13")]
pub const MONEYOID: pg_sys::Oid = pg_sys::CASHOID;
#[cfg(not(feature = "pg13"))]
pub const MONEYOID: pg_sys::Oid = pg_sys::MONEYOID;

/// A table's primary key index as the relcache keeps it, if the key is
/// checked at once. Before PostgreSQL 18 the relcache keeps only such a
/// key; 18 keeps a deferrable one too (flagged `rd_ispkdeferrable`), which
/// is left out here so that every version sees the same keys.
///
/// # Safety
/// `rel` is an open relation whose index list is valid (`rd_indexvalid`).
pub unsafe fn immediate_primary_key(rel: pg_sys::Relation) -> Option<pg_sys::Oid> {
    // SAFETY: by the caller's contract, reads of the relcache entry.
    unsafe {
        #[cfg(feature = "pg18")]
        if (*rel).rd_ispkdeferrable {
            return None;
        }
        let pk = (*rel).rd_pkindex;
        (pk != pg_sys::InvalidOid).then_some(pk)
    }
}

//! Reading audit_log's own tables for verification: straight from the heap,
//! in the order of a btree index, under one snapshot. No executor, no sort
//! spilling to disk, no row copies, one deform per row. Direct scans skip
//! the executor's permission checks, so `open` checks SELECT itself.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::errors::AuditError;

pub struct Row<'a> {
    values: &'a [pg_sys::Datum],
    nulls: &'a [bool],
}

impl Row<'_> {
    fn get(&self, i: usize) -> Option<pg_sys::Datum> {
        (!self.nulls.get(i).copied().unwrap_or(true)).then(|| self.values[i])
    }

    pub fn i64(&self, i: usize) -> Option<i64> {
        self.get(i).map(|d| d.value() as i64)
    }

    pub fn i32(&self, i: usize) -> Option<i32> {
        self.get(i).map(|d| d.value() as i32)
    }

    /// The bytes of a text, bytea or jsonb column (after the varlena header),
    /// valid while the row is: detoasted, if need be, into the per-row context.
    pub fn slice(&self, i: usize) -> Option<&[u8]> {
        // SAFETY: a varlena column of the current row.
        self.get(i).map(|d| unsafe {
            let p = d.cast_mut_ptr::<pg_sys::varlena>();
            // Most values lie in the row as they are (what
            // pg_detoast_datum_packed returns unchanged): read in place,
            // without a call into PostgreSQL per column per row.
            let v = if pgrx::varlena::varatt_is_4b_c(p) || pgrx::varlena::varatt_is_1b_e(p) {
                pg_sys::pg_detoast_datum_packed(p)
            } else {
                p
            };
            pgrx::varlena_to_byte_slice(v)
        })
    }
}

/// Scan keys for "heap column = value" (heap attno, equality function, value).
pub fn equality_keys(keys: &[(i16, u32, pg_sys::Datum)]) -> Vec<pg_sys::ScanKeyData> {
    let with_strategy: Vec<_> = keys
        .iter()
        .map(|&(attno, proc_, value)| (attno, pg_sys::BTEqualStrategyNumber, proc_, value))
        .collect();
    scan_keys(&with_strategy)
}

/// Scan keys for "heap column OP value" (heap attno, btree strategy,
/// the operator's function, value).
pub fn scan_keys(keys: &[(i16, u32, u32, pg_sys::Datum)]) -> Vec<pg_sys::ScanKeyData> {
    // SAFETY: ScanKeyData is plain data; ScanKeyInit fills each entry.
    unsafe {
        let mut out: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); keys.len()];
        for (k, &(attno, strategy, proc_, value)) in out.iter_mut().zip(keys) {
            pg_sys::ScanKeyInit(k, attno, strategy as u16, pg_sys::Oid::from(proc_), value);
        }
        out
    }
}

/// A table read in the order of one of its btree indexes, or (with no
/// index) in the order its rows lie on disk.
pub struct Ordered<T, F = fn(&Row) -> Option<T>> {
    rel: pg_sys::Relation,
    /// Null for a sequential scan.
    idx: pg_sys::Relation,
    scan: pg_sys::SysScanDesc,
    row_cx: pg_sys::MemoryContext,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    convert: F,
    /// The scan reached its end: a btree scan asked again would start over.
    done: bool,
    _rows: std::marker::PhantomData<fn() -> T>,
}

impl<T> Ordered<T> {
    /// Every row, in the order they lie on disk (a sequential scan).
    pub fn sequential(
        relid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        convert: fn(&Row) -> Option<T>,
    ) -> Result<Self, AuditError> {
        Self::open_where(relid, pg_sys::InvalidOid, snapshot, &[], convert)
    }

    /// The rows whose leading index columns equal `keys` (each: the index
    /// column's heap attno, its equality function, a value), in the index's
    /// order. `snapshot` must stay registered while the scan is open.
    pub fn open_where(
        relid: pg_sys::Oid,
        indexid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        keys: &[(i16, u32, pg_sys::Datum)],
        convert: fn(&Row) -> Option<T>,
    ) -> Result<Self, AuditError> {
        Self::open_keys(relid, indexid, snapshot, equality_keys(keys), convert)
    }

    /// As `open_where`, without checking the calling role's privilege on
    /// the table: for what the extension reads for itself in the caller's
    /// transaction and never hands to it (the committed prepared
    /// transactions an audited commit links, by any role that writes to an
    /// audited table).
    pub fn open_where_for_extension(
        relid: pg_sys::Oid,
        indexid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        keys: &[(i16, u32, pg_sys::Datum)],
        convert: fn(&Row) -> Option<T>,
    ) -> Result<Self, AuditError> {
        Ordered::with_access(
            relid,
            indexid,
            snapshot,
            equality_keys(keys),
            convert,
            false,
        )
    }

    /// As `open_where`, for the rows that match `scankeys` (made by [`scan_keys`]).
    pub fn open_keys(
        relid: pg_sys::Oid,
        indexid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        scankeys: Vec<pg_sys::ScanKeyData>,
        convert: fn(&Row) -> Option<T>,
    ) -> Result<Self, AuditError> {
        Ordered::with(relid, indexid, snapshot, scankeys, convert)
    }
}

impl<T, F: FnMut(&Row) -> Option<T>> Ordered<T, F> {
    /// The rows from block `start` on, in the order they lie on disk,
    /// through a converter that may keep state (and skip rows by returning
    /// None). A table not stored by the heap access method is read whole.
    pub fn sequential_from(
        relid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        start: u32,
        convert: F,
    ) -> Result<Self, AuditError> {
        let this = Self::with(relid, pg_sys::InvalidOid, snapshot, Vec::new(), convert)?;
        // SAFETY: a heap scan not started yet, of a relation it holds open.
        unsafe {
            if start > 0 && (*(*this.rel).rd_rel).relam == pg_sys::HEAP_TABLE_AM_OID {
                // The pages the scan saw at its start (a heap scan's
                // descriptor begins with the table scan's).
                let heap = (*this.scan).scan as *mut pg_sys::HeapScanDescData;
                let blocks = (*heap).rs_nblocks;
                let start = start.min(blocks);
                pg_sys::heap_setscanlimits((*this.scan).scan, start, blocks - start);
            }
        }
        Ok(this)
    }

    fn with(
        relid: pg_sys::Oid,
        indexid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        scankeys: Vec<pg_sys::ScanKeyData>,
        convert: F,
    ) -> Result<Self, AuditError> {
        Self::with_access(relid, indexid, snapshot, scankeys, convert, true)
    }

    /// `check_caller`: refuse a caller without SELECT on the table.
    fn with_access(
        relid: pg_sys::Oid,
        indexid: pg_sys::Oid,
        snapshot: pg_sys::Snapshot,
        mut scankeys: Vec<pg_sys::ScanKeyData>,
        convert: F,
        check_caller: bool,
    ) -> Result<Self, AuditError> {
        // SAFETY: a privilege check, then a plain ordered index scan under a
        // registered snapshot, with AccessShareLock like any SELECT.
        unsafe {
            if check_caller
                && pg_sys::pg_class_aclcheck(
                    relid,
                    pg_sys::GetUserId(),
                    pg_sys::ACL_SELECT as pg_sys::AclMode,
                ) != pg_sys::AclResult::ACLCHECK_OK
            {
                let name = pg_sys::get_rel_name(relid);
                let name = if name.is_null() {
                    "?".into()
                } else {
                    CStr::from_ptr(name).to_string_lossy()
                };
                return Err(AuditError::NotAuditor {
                    action: format!("read audit_log.{name}"),
                });
            }
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
            let idx = if indexid == pg_sys::InvalidOid {
                std::ptr::null_mut()
            } else {
                pg_sys::index_open(indexid, pg_sys::AccessShareLock as i32)
            };
            let nkeys = scankeys.len() as i32;
            let scan = if idx.is_null() {
                pg_sys::systable_beginscan(
                    rel,
                    pg_sys::InvalidOid,
                    false,
                    snapshot,
                    nkeys,
                    scankeys.as_mut_ptr(),
                )
            } else {
                pg_sys::systable_beginscan_ordered(rel, idx, snapshot, nkeys, scankeys.as_mut_ptr())
            };
            let natts = (*(*rel).rd_att).natts as usize;
            let row_cx = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CurrentMemoryContext,
                c"audit_log verify row".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            Ok(Ordered {
                rel,
                idx,
                scan,
                row_cx,
                values: vec![pg_sys::Datum::from(0); natts],
                nulls: vec![true; natts],
                convert,
                done: false,
                _rows: std::marker::PhantomData,
            })
        }
    }
}

impl<T, F: FnMut(&Row) -> Option<T>> Iterator for Ordered<T, F> {
    type Item = Result<T, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            // A long verify() can be cancelled.
            pgrx::check_for_interrupts!();
            // SAFETY: the scan is open; each row is deformed and converted in
            // a context that is reset before the next.
            unsafe {
                pg_sys::MemoryContextReset(self.row_cx);
                let tup = if self.idx.is_null() {
                    pg_sys::systable_getnext(self.scan)
                } else {
                    pg_sys::systable_getnext_ordered(
                        self.scan,
                        pg_sys::ScanDirection::ForwardScanDirection,
                    )
                };
                if tup.is_null() {
                    self.done = true;
                    return None;
                }
                if self.idx.is_null() {
                    prefetch_around((*tup).t_data.cast::<u8>(), (*tup).t_len as usize);
                }
                let old = pg_sys::MemoryContextSwitchTo(self.row_cx);
                pg_sys::heap_deform_tuple(
                    tup,
                    (*self.rel).rd_att,
                    self.values.as_mut_ptr(),
                    self.nulls.as_mut_ptr(),
                );
                let out = (self.convert)(&Row {
                    values: &self.values,
                    nulls: &self.nulls,
                });
                pg_sys::MemoryContextSwitchTo(old);
                if let Some(x) = out {
                    return Some(Ok(x));
                }
            }
        }
    }
}

/// Ask the CPU for a sequential scan's next tuples while this one is read.
/// A heap page fills from its end, so the tuples that follow in a scan lie
/// below this one in memory, where hardware prefetchers look late: the
/// first touch of each tuple was a cache miss (`heap_deform_tuple` loading
/// its header, 8% of `verify()`'s time on one core). This tuple's own
/// lines are asked for at once too, so their misses overlap. A prefetch
/// never faults, so lines before the page's start cost only the request.
#[inline]
fn prefetch_around(data: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        // About two records of the log ahead.
        const AHEAD: usize = 768;
        let mut at = 0;
        while at < len.min(4096) {
            // SAFETY: a prefetch hint, which reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(data.wrapping_add(at).cast()) };
            at += LINE;
        }
        let mut back = LINE;
        while back <= AHEAD {
            // SAFETY: as above; the address is only a hint.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(data.wrapping_sub(back).cast()) };
            back += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, len);
}

impl<T, F> Drop for Ordered<T, F> {
    fn drop(&mut self) {
        // SAFETY: opened in `open`.
        unsafe {
            if self.idx.is_null() {
                pg_sys::systable_endscan(self.scan);
            } else {
                pg_sys::systable_endscan_ordered(self.scan);
                pg_sys::index_close(self.idx, pg_sys::AccessShareLock as i32);
            }
            pg_sys::table_close(self.rel, pg_sys::AccessShareLock as i32);
            pg_sys::MemoryContextDelete(self.row_cx);
        }
    }
}

/// The calling query's snapshot, registered for the life of the guard.
pub struct SnapshotGuard(pub pg_sys::Snapshot);

impl SnapshotGuard {
    pub fn active() -> Self {
        // SAFETY: a SQL function always runs with an active snapshot.
        SnapshotGuard(unsafe { pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot()) })
    }

    /// The snapshot an SPI query run now would take: at READ COMMITTED a new
    /// one, which sees at least what the SPI queries before it saw (the
    /// calling query's snapshot can be older). For scans that must see the
    /// records whose count an SPI query just read.
    pub fn fresh() -> Self {
        // SAFETY: inside a transaction, as every SQL function is; the
        // command counter moves on first, so this transaction's own writes
        // so far (tiles just integrated) are seen.
        unsafe {
            pg_sys::CommandCounterIncrement();
            SnapshotGuard(pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot()))
        }
    }
}

impl SnapshotGuard {
    /// What has committed by now, and nothing of this transaction's own:
    /// a copy of the latest snapshot whose command id is the first, under
    /// which no row this transaction (or any of its subtransactions) wrote
    /// is visible. Only for direct scans and [`select_at`], which runs its
    /// query read-only so that SPI keeps the command id as it is.
    pub fn committed() -> Self {
        // SAFETY: inside a transaction; RegisterSnapshot copies the static
        // latest snapshot, and only this guard holds the copy it changes.
        unsafe {
            let s = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            (*s).curcid = pg_sys::FirstCommandId;
            SnapshotGuard(s)
        }
    }

    /// The latest snapshot: what has committed by now, whatever the
    /// statement's snapshot saw (for the committed prepared transactions,
    /// whose COMMIT PREPARED can be newer than the statement).
    pub fn latest() -> Self {
        // SAFETY: inside a transaction, as every caller is.
        SnapshotGuard(unsafe { pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()) })
    }
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        // SAFETY: registered by the constructor.
        unsafe { pg_sys::UnregisterSnapshot(self.0) }
    }
}

/// A catalog row changed (inserted or updated) by the current command or a
/// later one of this transaction: its xmin is ours, its cmin at least `since`.
///
/// # Safety
/// `tup` must be a valid heap tuple from a catalog scan.
pub unsafe fn changed_since(tup: pg_sys::HeapTuple, since: pg_sys::CommandId) -> bool {
    // SAFETY: by the caller's contract, a valid tuple; GetCmin is only asked of our own tuples.
    unsafe {
        let hdr = (*tup).t_data;
        let xmin = (*hdr).t_choice.t_heap.t_xmin;
        pg_sys::TransactionIdIsCurrentTransactionId(xmin)
            && pg_sys::HeapTupleHeaderGetCmin(hdr) >= since
    }
}

/// Each row of `catalog` whose key columns (heap attribute numbers, the
/// leading columns of `index`) equal the given OIDs, as (changed since
/// `since`, what `read` takes from the row's fixed part, a `Form` of that
/// catalog).
pub fn catalog_rows<Form, T>(
    catalog: pg_sys::Oid,
    index: u32,
    keys: &[(i16, pg_sys::Oid)],
    since: pg_sys::CommandId,
    read: impl Fn(&Form) -> T,
) -> Vec<(bool, T)> {
    // SAFETY: a catalog index scan under the catalog snapshot; `read` sees
    // each row's fixed-size part (laid out as Form) before the next.
    unsafe {
        let rel = pg_sys::table_open(catalog, pg_sys::AccessShareLock as i32);
        let mut scankeys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); keys.len()];
        for (k, &(attno, value)) in scankeys.iter_mut().zip(keys) {
            pg_sys::ScanKeyInit(
                k,
                attno,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::Oid::from(pg_sys::F_OIDEQ),
                pg_sys::Datum::from(value),
            );
        }
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::Oid::from(index),
            true,
            std::ptr::null_mut(),
            keys.len() as i32,
            scankeys.as_mut_ptr(),
        );
        let mut out = Vec::new();
        loop {
            let tup = pg_sys::systable_getnext(scan);
            if tup.is_null() {
                break;
            }
            let hdr = (*tup).t_data;
            let form = (hdr as *const u8).add((*hdr).t_hoff as usize) as *const Form;
            out.push((changed_since(tup, since), read(&*form)));
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        out
    }
}

/// One column of a row [`select_at`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Val::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// An argument of [`select_at`].
pub enum Arg {
    Int4(i32),
    Int8(i64),
}

/// The rows of a read-only query run under exactly `snapshot`, whose
/// columns are integers (int4, int8) or bytea. SPI's own choice of
/// snapshot depends on what the transaction ran before (read-only SPI uses
/// the calling query's, read-write SPI a new one each time); a reader that
/// also scans tables directly needs one snapshot for both.
pub fn select_at(
    snapshot: pg_sys::Snapshot,
    query: &str,
    args: &[Arg],
) -> Result<Vec<Vec<Val>>, AuditError> {
    let q = std::ffi::CString::new(query)
        .map_err(|_| AuditError::Internal("a query with a NUL byte".into()))?;
    let mut types: Vec<pg_sys::Oid> = args
        .iter()
        .map(|a| match a {
            Arg::Int4(_) => pg_sys::INT4OID,
            Arg::Int8(_) => pg_sys::INT8OID,
        })
        .collect();
    let mut values: Vec<pg_sys::Datum> = args
        .iter()
        .map(|a| match a {
            Arg::Int4(i) => pg_sys::Datum::from(*i),
            Arg::Int8(i) => pg_sys::Datum::from(*i),
        })
        .collect();
    let nulls: Vec<std::ffi::c_char> = vec![b' ' as std::ffi::c_char; args.len()];
    pgrx::spi::Spi::connect(|_| {
        // SAFETY: SPI is connected for the closure; the plan and the result
        // are SPI's, read before the connection ends; every value is copied
        // out of the tuple table.
        unsafe {
            let plan = pg_sys::SPI_prepare(q.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() {
                let code = std::ptr::addr_of!(pg_sys::SPI_result).read();
                return Err(AuditError::Internal(format!("SPI_prepare failed ({code})")));
            }
            let rc = pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                true,
                false,
                0,
            );
            if rc != pg_sys::SPI_OK_SELECT as i32 {
                pg_sys::SPI_freeplan(plan);
                return Err(AuditError::Internal(format!("SPI_execute_snapshot: {rc}")));
            }
            let tt = pg_sys::SPI_tuptable;
            let mut out = Vec::new();
            if !tt.is_null() {
                let desc = (*tt).tupdesc;
                let ncols = (*desc).natts;
                for i in 0..pg_sys::SPI_processed as usize {
                    let tup = *(*tt).vals.add(i);
                    let mut row = Vec::with_capacity(ncols as usize);
                    for col in 1..=ncols {
                        let mut isnull = false;
                        let d = pg_sys::SPI_getbinval(tup, desc, col, &mut isnull);
                        let typ = pg_sys::SPI_gettypeid(desc, col);
                        row.push(if isnull {
                            Val::Null
                        } else if typ == pg_sys::INT4OID {
                            Val::Int(i64::from(d.value() as i32))
                        } else if typ == pg_sys::INT8OID {
                            Val::Int(d.value() as i64)
                        } else if typ == pg_sys::BYTEAOID {
                            let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                            Val::Bytes(pgrx::varlena_to_byte_slice(v).to_vec())
                        } else {
                            Val::Null
                        });
                    }
                    out.push(row);
                }
            }
            pg_sys::SPI_freeplan(plan);
            Ok(out)
        }
    })
}

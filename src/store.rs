//! The one owner of audit_log's storage tables: their layout (columns by
//! name, checked against the catalog when a table is opened) and every write
//! to them, straight into heaps and indexes. No SQL is parsed, so neither the
//! audited role's privileges nor its search_path take part; and it is much
//! cheaper than an executor run.

use audit_log_core::record::Record;
use audit_log_core::time::to_pg_timestamp;
use audit_log_core::Hash;
use pgrx::pg_sys;

use crate::catalog::Oids;
use crate::errors::AuditError;

/// `audit_log.records` (sql/bootstrap.sql), by column.
pub mod records {
    pub const COLUMNS: [&str; 10] = [
        "chain_id",
        "seq",
        "tx_id",
        "first_event",
        "last_event",
        "event_count",
        "committed_at",
        "segments",
        "link_hash",
        "payload",
    ];
    pub const CHAIN_ID: usize = 0;
    pub const SEQ: usize = 1;
    pub const TX_ID: usize = 2;
    pub const FIRST_EVENT: usize = 3;
    pub const LAST_EVENT: usize = 4;
    pub const EVENT_COUNT: usize = 5;
    pub const COMMITTED_AT: usize = 6;
    pub const SEGMENTS: usize = 7;
    pub const LINK_HASH: usize = 8;
    pub const PAYLOAD: usize = 9;
}

/// `audit_log.segments`, by column.
pub mod segments {
    pub const COLUMNS: [&str; 3] = ["first_event", "part", "payload"];
    pub const FIRST_EVENT: usize = 0;
    pub const PART: usize = 1;
    pub const PAYLOAD: usize = 2;
}

/// `audit_log.prepared`, by column.
pub mod prepared {
    pub const COLUMNS: [&str; 7] = [
        "first_event",
        "tx_id",
        "last_event",
        "event_count",
        "segments",
        "payload",
        "last_event_hash",
    ];
    pub const FIRST_EVENT: usize = 0;
    pub const TX_ID: usize = 1;
    pub const LAST_EVENT: usize = 2;
    pub const EVENT_COUNT: usize = 3;
    pub const SEGMENTS: usize = 4;
    pub const PAYLOAD: usize = 5;
    /// New in 0.3.0: absent from a schema not yet updated, NULL in its rows.
    pub const LAST_EVENT_HASH: usize = 6;
}

/// `audit_log.row_keys`, by column.
pub mod row_keys {
    pub const COLUMNS: [&str; 3] = ["row_key", "first_event", "tx_seq"];
}

fn bytes_datum(b: &[u8]) -> pg_sys::Datum {
    // SAFETY: copies the bytes into a palloc'd bytea in the current context.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            b.as_ptr().cast(),
            b.len() as i32,
        ))
    }
}

/// A bytea value built in Rust memory: room for the 4-byte varlena header,
/// then the bytes. It is handed to heap_form_tuple as it is, so a large
/// payload (a 1 MB segment) is not first copied into palloc'd memory.
pub struct Bytea(Vec<u8>);

const VARHDRSZ: usize = 4;

impl Default for Bytea {
    fn default() -> Self {
        Bytea(vec![0; VARHDRSZ])
    }
}

impl Bytea {
    pub fn from_slice(b: &[u8]) -> Bytea {
        let mut v = Vec::with_capacity(VARHDRSZ + b.len());
        v.extend_from_slice(&[0; VARHDRSZ]);
        v.extend_from_slice(b);
        Bytea(v)
    }

    /// The value's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0[VARHDRSZ..]
    }

    /// How many bytes the value has.
    pub fn byte_len(&self) -> usize {
        self.0.len() - VARHDRSZ
    }

    /// Append with `f`, which may only add bytes; returns where they start.
    pub fn append(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> usize {
        let at = self.byte_len();
        f(&mut self.0);
        at
    }

    /// Room for `n` more bytes, or an ERROR (not an abort) when memory is
    /// short: a transaction's payload is the largest allocation of capture.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), AuditError> {
        self.0
            .try_reserve(n)
            .map_err(|_| AuditError::OutOfMemory(self.0.len().saturating_add(n)))
    }

    /// Cut the value to its first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(VARHDRSZ + len);
    }

    /// The bytes from `at` on, as a value of their own; this one keeps the rest.
    pub fn split_off(&mut self, at: usize) -> Bytea {
        if at == 0 {
            return std::mem::take(self);
        }
        let mut tail = Vec::with_capacity(VARHDRSZ + self.byte_len() - at);
        tail.extend_from_slice(&[0; VARHDRSZ]);
        tail.extend_from_slice(&self.0[VARHDRSZ + at..]);
        self.truncate(at);
        Bytea(tail)
    }

    /// The value as a datum, valid while `self` is neither changed nor dropped.
    fn datum(&mut self) -> Result<pg_sys::Datum, AuditError> {
        let size = self.0.len();
        // A 4-byte header holds sizes below 1 GB (MaxAllocSize).
        if size > 0x3FFF_FFFF {
            return Err(AuditError::PayloadTooLarge(self.byte_len()));
        }
        let p = self.0.as_mut_ptr().cast::<pg_sys::varlena>();
        // The header is read as a u32: malloc aligns every allocation to
        // 16 bytes, and Vec<u8> takes its memory from malloc.
        if !p.cast::<u32>().is_aligned() {
            return Err(AuditError::Internal("unaligned payload buffer".into()));
        }
        // SAFETY: p points to `size` bytes, the first four for the header,
        // aligned for it (checked above).
        unsafe { pgrx::set_varsize_4b(p, size as i32) };
        Ok(pg_sys::Datum::from(p))
    }
}

/// An open audit table with its indexes, for a batch of inserts.
struct Target {
    rel: pg_sys::Relation,
    indexes: pg_sys::CatalogIndexState,
}

impl Target {
    pub fn open(relid: pg_sys::Oid, columns: &[&str]) -> Result<Target, AuditError> {
        // SAFETY: RowExclusiveLock as for any INSERT; the lock is held to commit.
        unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
            let natts = (*(*rel).rd_att).natts as usize;
            let name = || {
                std::ffi::CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            };
            // Checked on every open (each commit), so compared without
            // allocating; the names are spelled out only for the error.
            let name_of = |i: usize| {
                let a = &crate::pgcompat::attrs((*rel).rd_att)[i];
                (!a.attisdropped).then(|| std::ffi::CStr::from_ptr(a.attname.data.as_ptr()))
            };
            let same = natts == columns.len()
                && columns
                    .iter()
                    .enumerate()
                    .all(|(i, c)| name_of(i).is_some_and(|n| n.to_bytes() == c.as_bytes()));
            if !same {
                let names: Vec<String> = (0..natts)
                    .map(|i| {
                        name_of(i).map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                    })
                    .collect();
                let table = name();
                pg_sys::table_close(rel, pg_sys::NoLock as i32);
                return Err(AuditError::NotInstalled(format!(
                    "audit_log.{table} has columns ({}), expected ({})",
                    names.join(", "),
                    columns.join(", ")
                )));
            }
            let indexes = pg_sys::CatalogOpenIndexes(rel);
            let st = &*indexes;
            for i in 0..st.ri_NumIndices as usize {
                let info = &**st.ri_IndexRelationInfo.add(i);
                if !info.ii_Expressions.is_null() || !info.ii_Predicate.is_null() {
                    let table = name();
                    pg_sys::CatalogCloseIndexes(indexes);
                    pg_sys::table_close(rel, pg_sys::NoLock as i32);
                    return Err(AuditError::UnsupportedIndex(format!(
                        "an expression or partial index on audit_log.{table}"
                    )));
                }
            }
            Ok(Target { rel, indexes })
        }
    }

    /// Insert a row; returns where it went.
    fn insert(&self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) -> pg_sys::ItemPointerData {
        // SAFETY: values/nulls match the relation's descriptor (checked in open).
        unsafe {
            let tup = pg_sys::heap_form_tuple(
                (*self.rel).rd_att,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            pg_sys::CatalogTupleInsertWithInfo(self.rel, tup, self.indexes);
            let at = (*tup).t_self;
            pg_sys::heap_freetuple(tup);
            at
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: opened in Target::open; keep the lock until commit.
        unsafe {
            pg_sys::CatalogCloseIndexes(self.indexes);
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// Whether block `block` of the open relation `rel` exists, for a caller
/// that holds a lock on it (RowExclusiveLock, as for any INSERT), so that
/// VACUUM cannot truncate it meanwhile.
///
/// Asked at every commit for the block of the chain's head, the newest
/// record, which is nearly always in shared buffers: a block there exists
/// (truncation drops a relation's buffers past its new end before it
/// shortens the file, and a buffer that another backend is extending the
/// relation into only makes the fetch wait and read a new page). Only a
/// block that is not there costs a system call for the file's size. The
/// look-up in the buffer pool never reads the file (it asks the kernel to
/// read ahead instead), but it would raise an ERROR for a block in a
/// segment file that no longer exists: a block past the first segment
/// takes the system call.
///
/// # Safety
/// `rel` is open and locked, and is not a temporary relation.
unsafe fn block_exists(rel: pg_sys::Relation, block: pg_sys::BlockNumber) -> bool {
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    // SAFETY: by the caller's contract; a look-up in the shared buffer
    // mapping table, and a file size asked of the storage manager.
    unsafe {
        if block < pg_sys::RELSEG_SIZE
            && pg_sys::PrefetchBuffer(rel, main, block).recent_buffer != 0
        {
            return true;
        }
        block < pg_sys::RelationGetNumberOfBlocksInFork(rel, main)
    }
}

/// A stored link hash (a non-null bytea of `audit_log.records`), or None
/// if it is not 32 bytes (damaged).
pub fn hash_datum(d: pg_sys::Datum) -> Option<Hash> {
    // SAFETY: d is a non-null bytea from a records tuple.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        pgrx::varlena_to_byte_slice(v).try_into().ok()
    }
}

/// `audit_log.records`, open to append committed transactions' records.
pub struct Records(Target);

impl Records {
    pub fn open(oids: &Oids) -> Result<Records, AuditError> {
        Target::open(oids.records, &records::COLUMNS).map(Records)
    }

    /// The open relation (valid while `self` is).
    pub fn relation(&self) -> pg_sys::Relation {
        self.0.rel
    }

    /// Whether the record at `at` is there, as the transaction sees it
    /// (SnapshotSelf: committed, or its own), and is link `seq` of `chain`
    /// with this link hash: a chain's head as it was stored.
    pub fn holds(
        &self,
        at: pg_sys::ItemPointerData,
        chain: i32,
        seq: i64,
        link_hash: &Hash,
    ) -> bool {
        // SAFETY: a fetch by TID from the open relation, under SnapshotSelf;
        // the tuple's columns are read while its buffer is pinned, then the
        // pin goes.
        unsafe {
            // A block past the end (the table truncated by VACUUM after a
            // superuser deleted its newest records) would make the fetch
            // raise an ERROR: the record is simply not there.
            let block = (u32::from(at.ip_blkid.bi_hi) << 16) | u32::from(at.ip_blkid.bi_lo);
            if !block_exists(self.0.rel, block) {
                return false;
            }
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            tuple.t_self = at;
            let mut buf: pg_sys::Buffer = 0;
            if !crate::pgcompat::heap_fetch(
                self.0.rel,
                &raw mut pg_sys::SnapshotSelfData,
                &mut tuple,
                &mut buf,
            ) {
                return false;
            }
            let desc = (*self.0.rel).rd_att;
            let mut values = [pg_sys::Datum::from(0); records::COLUMNS.len()];
            let mut nulls = [true; records::COLUMNS.len()];
            // The payload is only pointed to, never detoasted.
            pg_sys::heap_deform_tuple(&mut tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let same = !nulls[records::CHAIN_ID]
                && !nulls[records::SEQ]
                && !nulls[records::LINK_HASH]
                && values[records::CHAIN_ID].value() as i32 == chain
                && values[records::SEQ].value() as i64 == seq
                && hash_datum(values[records::LINK_HASH]).as_ref() == Some(link_hash);
            pg_sys::ReleaseBuffer(buf);
            same
        }
    }

    /// Append a committed transaction's record; returns where it went.
    pub fn insert(
        &self,
        r: &Record,
        segments: i32,
        payload: &mut Bytea,
    ) -> Result<pg_sys::ItemPointerData, AuditError> {
        let mut nulls = [false; records::COLUMNS.len()];
        let mut values = [
            pg_sys::Datum::from(r.chain_id),
            pg_sys::Datum::from(r.seq),
            pg_sys::Datum::from(r.tx_id),
            pg_sys::Datum::from(r.first_event),
            pg_sys::Datum::from(r.last_event),
            pg_sys::Datum::from(r.event_count),
            pg_sys::Datum::from(to_pg_timestamp(r.committed_at)),
            pg_sys::Datum::from(segments),
            bytes_datum(&r.link_hash),
            payload.datum()?,
        ];
        Ok(self.0.insert(&mut values, &mut nulls))
    }
}

/// Seal a transaction's events at PREPARE TRANSACTION.
pub fn insert_prepared(
    oids: &Oids,
    tx_id: u64,
    (first_event, last_event, event_count): (i64, i64, i64),
    segments: i32,
    payload: &mut Bytea,
    last_event_hash: &audit_log_core::Hash,
) -> Result<(), AuditError> {
    // A 0.2.0 schema (the library updated, ALTER EXTENSION not yet run) has
    // no last_event_hash: the row goes without it, and is hashed when linked.
    let (target, width) = match Target::open(oids.prepared, &prepared::COLUMNS) {
        Ok(t) => (t, prepared::COLUMNS.len()),
        Err(first @ AuditError::NotInstalled(_)) => {
            match Target::open(
                oids.prepared,
                &prepared::COLUMNS[..prepared::LAST_EVENT_HASH],
            ) {
                Ok(t) => (t, prepared::LAST_EVENT_HASH),
                // Neither layout: say what this version expects.
                Err(_) => return Err(first),
            }
        }
        Err(e) => return Err(e),
    };
    let mut hash = Bytea::from_slice(last_event_hash);
    let mut nulls = [false; prepared::COLUMNS.len()];
    let mut values = [
        pg_sys::Datum::from(first_event),
        pg_sys::Datum::from(tx_id),
        pg_sys::Datum::from(last_event),
        pg_sys::Datum::from(event_count),
        pg_sys::Datum::from(segments),
        payload.datum()?,
        hash.datum()?,
    ];
    target.insert(&mut values[..width], &mut nulls[..width]);
    Ok(())
}

/// Write part of a large transaction's events before commit.
pub fn insert_segment(
    oids: &Oids,
    first_event: i64,
    part: i32,
    payload: &mut Bytea,
) -> Result<(), AuditError> {
    let target = Target::open(oids.segments, &segments::COLUMNS)?;
    let mut nulls = [false; 3];
    let mut values = [
        pg_sys::Datum::from(first_event),
        pg_sys::Datum::from(part),
        payload.datum()?,
    ];
    target.insert(&mut values, &mut nulls);
    Ok(())
}

/// history()'s lookup entries: (row_key, first_event, tx_seq).
pub fn insert_row_keys(oids: &Oids, keys: &[(i64, i64, i32)]) -> Result<(), AuditError> {
    if keys.is_empty() {
        return Ok(());
    }
    let target = Target::open(oids.row_keys, &row_keys::COLUMNS)?;
    for &(k, first, seq) in keys {
        let mut nulls = [false; 3];
        let mut values = [
            pg_sys::Datum::from(k),
            pg_sys::Datum::from(first),
            pg_sys::Datum::from(seq),
        ];
        target.insert(&mut values, &mut nulls);
    }
    Ok(())
}

fn segment_row(r: &crate::scan::Row) -> Option<Vec<u8>> {
    r.slice(segments::PAYLOAD).map(<[u8]>::to_vec)
}

/// The payloads of a transaction's segments, in order, each read from the
/// table only when the one before has been taken; for a caller with SELECT
/// on the table.
pub fn segments(
    oids: &Oids,
    snapshot: pg_sys::Snapshot,
    first_event: i64,
) -> Result<crate::scan::Ordered<Vec<u8>>, AuditError> {
    crate::scan::Ordered::open_where(
        oids.segments,
        oids.segments_pkey,
        snapshot,
        &segment_key(first_event),
        segment_row,
    )
}

/// As [`segments`], read by the extension for itself: what an audited
/// commit reads to link a committed prepared transaction, whoever commits.
pub fn segments_for_extension(
    oids: &Oids,
    snapshot: pg_sys::Snapshot,
    first_event: i64,
) -> Result<crate::scan::Ordered<Vec<u8>>, AuditError> {
    crate::scan::Ordered::open_where_for_extension(
        oids.segments,
        oids.segments_pkey,
        snapshot,
        &segment_key(first_event),
        segment_row,
    )
}

fn segment_key(first_event: i64) -> [(i16, u32, pg_sys::Datum); 1] {
    [(
        segments::FIRST_EVENT as i16 + 1,
        pg_sys::F_INT8EQ,
        pg_sys::Datum::from(first_event),
    )]
}

/// The first segment of the transaction `first_event` after `after` (its
/// part), with its part: for a reader that takes them one at a time over
/// several calls, without a scan kept open between them.
pub fn segment_after(
    oids: &Oids,
    snapshot: pg_sys::Snapshot,
    first_event: i64,
    after: Option<i32>,
) -> Result<Option<(i32, Vec<u8>)>, AuditError> {
    let mut keys = vec![(
        segments::FIRST_EVENT as i16 + 1,
        pg_sys::BTEqualStrategyNumber,
        pg_sys::F_INT8EQ,
        pg_sys::Datum::from(first_event),
    )];
    if let Some(part) = after {
        keys.push((
            segments::PART as i16 + 1,
            pg_sys::BTGreaterStrategyNumber,
            pg_sys::F_INT4GT,
            pg_sys::Datum::from(part),
        ));
    }
    let row = |r: &crate::scan::Row| Some((r.i32(segments::PART)?, segment_row(r)?));
    crate::scan::Ordered::open_keys(
        oids.segments,
        oids.segments_pkey,
        snapshot,
        crate::scan::scan_keys(&keys),
        row,
    )?
    .next()
    .transpose()
}

/// How many bytes of a transaction's events (its payload and segments)
/// readers hold at once to hand them to a worker thread. A transaction
/// larger than that is hashed by the session as its segments are read, one
/// at a time, so that no transaction, however large its writer made it,
/// makes verify(), the tree or a view hold it whole. With the batches of
/// `records::BATCH_BYTES` (two in flight per worker, each closed once past
/// its budget), verify() holds at most 2 × threads × (8 + 64) MB of
/// events: 288 MB with 2 workers, 1.1 GB with the default's most, 8. At
/// 32 MB, bench/verify.sh's bulk statements of 200,000 rows (45 MB) were
/// hashed in the session alone, at half the speed.
pub const TX_BYTES_HELD: usize = 64 << 20;

/// A transaction's segments: read whole, or past [`TX_BYTES_HELD`] what
/// `stream` made of all of them, read one at a time.
pub enum Spilled<S> {
    Whole(Vec<Vec<u8>>),
    Streamed(S),
}

/// Read the segments of the transaction `first_event` whole if they and
/// its payload (`payload_len` bytes) fit in [`TX_BYTES_HELD`]; otherwise hand
/// them all, those already read first, to `stream`.
pub fn read_or_stream<S>(
    oids: &Oids,
    snapshot: pg_sys::Snapshot,
    first_event: i64,
    payload_len: usize,
    stream: impl FnOnce(&mut dyn Iterator<Item = Result<Vec<u8>, AuditError>>) -> Result<S, AuditError>,
) -> Result<Spilled<S>, AuditError> {
    let mut rest = segments(oids, snapshot, first_event)?;
    let mut held = Vec::new();
    let mut bytes = payload_len;
    while let Some(part) = rest.next() {
        let part = part?;
        bytes = bytes.saturating_add(part.len());
        held.push(part);
        if bytes > TX_BYTES_HELD {
            let mut all = held.into_iter().map(Ok).chain(rest);
            return Ok(Spilled::Streamed(stream(&mut all)?));
        }
    }
    Ok(Spilled::Whole(held))
}

/// Delete, without firing triggers, every row of `relid` visible to the
/// transaction whose heap columns equal the keys (each a column of the
/// index `idxid`: heap attno, equality function, value). Returns the count.
pub fn delete_where(
    relid: pg_sys::Oid,
    idxid: pg_sys::Oid,
    keys: &[(i16, u32, pg_sys::Datum)],
) -> Result<i64, AuditError> {
    // SAFETY: an index scan under the active snapshot, deleting each tuple it
    // returns by TID (simple_heap_delete: no triggers, WAL-logged); the
    // caller holds the lock of whoever deletes from that table (purge, or
    // the linker of prepared transactions), and nobody else deletes there.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        let idx = pg_sys::index_open(idxid, pg_sys::RowExclusiveLock as i32);
        let mut scankeys = crate::scan::equality_keys(keys);
        // The latest snapshot, taken under the purge lock: the statement's
        // own may predate another purge that has just committed.
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let scan = pg_sys::systable_beginscan_ordered(
            rel,
            idx,
            snapshot,
            keys.len() as i32,
            scankeys.as_mut_ptr(),
        );
        let mut n = 0;
        loop {
            let tup =
                pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            pg_sys::simple_heap_delete(rel, &mut (*tup).t_self);
            n += 1;
        }
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        Ok(n)
    }
}

//! Writes events and links straight into their heaps and indexes. No SQL is
//! parsed, so neither the audited role's privileges nor its search_path take
//! part; and it is much cheaper than one executor run per event.

use audit_log_core::time::to_pg_timestamp;
use audit_log_core::Link;
use pgrx::memcxt::PgMemoryContexts;
use pgrx::pg_sys;

use crate::catalog::Oids;
use crate::errors::AuditError;
use crate::txstate::Pending;

const EVENT_COLUMNS: usize = 19;
const LINK_COLUMNS: usize = 10;

fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: copies the bytes into a palloc'd varlena in the current context.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr().cast(),
            s.len() as i32,
        ))
    }
}

fn bytes_datum(b: &[u8]) -> pg_sys::Datum {
    // bytea and jsonb values are varlenas; these bytes already are one for
    // jsonb (copied from a detoasted datum), and raw content for bytea.
    // SAFETY: as above.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            b.as_ptr().cast(),
            b.len() as i32,
        ))
    }
}

fn varlena_datum(raw: &[u8]) -> pg_sys::Datum {
    // SAFETY: `raw` is a complete varlena with a 4-byte header; copy it as is.
    unsafe {
        let p = pg_sys::palloc(raw.len()) as *mut u8;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), p, raw.len());
        pg_sys::Datum::from(p)
    }
}

/// An inet value as raw varlena bytes, parsed from its `inet_out` text.
fn inet_varlena(text: &str) -> Result<Vec<u8>, AuditError> {
    let c = std::ffi::CString::new(text).map_err(|e| AuditError::Internal(e.to_string()))?;
    // SAFETY: inet_in parses a cstring (the text came from inet_out) and
    // returns a plain varlena, copied out before its context goes.
    unsafe {
        let d = pgrx::direct_function_call_as_datum(
            pg_sys::inet_in,
            &[Some(pg_sys::Datum::from(c.as_ptr()))],
        )
        .ok_or_else(|| AuditError::Internal("inet_in returned NULL".into()))?;
        let p = d.cast_mut_ptr::<pg_sys::varlena>();
        Ok(std::slice::from_raw_parts(p as *const u8, pgrx::varsize_any(p)).to_vec())
    }
}

/// An open audit table with its indexes, for a batch of inserts.
struct Target {
    rel: pg_sys::Relation,
    indexes: pg_sys::CatalogIndexState,
}

impl Target {
    fn open(relid: pg_sys::Oid, columns: usize) -> Result<Target, AuditError> {
        // SAFETY: RowExclusiveLock as for any INSERT; the lock is held to commit.
        unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
            let natts = (*(*rel).rd_att).natts as usize;
            let name = std::ffi::CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr())
                .to_string_lossy()
                .into_owned();
            if natts != columns {
                pg_sys::table_close(rel, pg_sys::NoLock as i32);
                return Err(AuditError::NotInstalled(format!(
                    "audit_log.{name} has {natts} columns, expected {columns}"
                )));
            }
            let indexes = pg_sys::CatalogOpenIndexes(rel);
            let st = &*indexes;
            for i in 0..st.ri_NumIndices as usize {
                let info = &**st.ri_IndexRelationInfo.add(i);
                if !info.ii_Expressions.is_null() || !info.ii_Predicate.is_null() {
                    pg_sys::CatalogCloseIndexes(indexes);
                    pg_sys::table_close(rel, pg_sys::NoLock as i32);
                    return Err(AuditError::UnsupportedIndex(format!(
                        "an expression or partial index on audit_log.{name}"
                    )));
                }
            }
            Ok(Target { rel, indexes })
        }
    }

    fn insert(&self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        // SAFETY: values/nulls match the relation's descriptor (checked in open).
        unsafe {
            let tup = pg_sys::heap_form_tuple(
                (*self.rel).rd_att,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            pg_sys::CatalogTupleInsertWithInfo(self.rel, tup, self.indexes);
            pg_sys::heap_freetuple(tup);
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

pub fn insert_events(oids: &Oids, batch: &[Pending]) -> Result<(), AuditError> {
    let target = Target::open(oids.events, EVENT_COLUMNS)?;
    let mut cx = PgMemoryContexts::new("audit_log event insert");
    // A session's client address is the same for every event: parse it once.
    let mut client: Option<(&str, Vec<u8>)> = None;
    for p in batch {
        let client_raw = match p.event.client_addr.as_deref() {
            None => None,
            Some(t) if client.as_ref().is_some_and(|(c, _)| *c == t) => {
                client.as_ref().map(|c| &c.1)
            }
            Some(t) => {
                client = Some((t, inet_varlena(t)?));
                client.as_ref().map(|c| &c.1)
            }
        };
        let e = &p.event;
        // SAFETY: every allocation for one row lives in `cx`, reset per row.
        unsafe {
            cx.switch_to(|_| -> Result<(), AuditError> {
                let mut nulls = [false; EVENT_COLUMNS];
                let opt_text = |s: &Option<String>, n: &mut bool| match s {
                    Some(s) => text_datum(s),
                    None => {
                        *n = true;
                        pg_sys::Datum::from(0)
                    }
                };
                // jsonb and inet values arrive as complete varlenas.
                let opt_varlena = |b: Option<&Vec<u8>>, n: &mut bool| match b {
                    Some(b) => varlena_datum(b),
                    None => {
                        *n = true;
                        pg_sys::Datum::from(0)
                    }
                };
                let mut values = [
                    pg_sys::Datum::from(e.id),
                    pg_sys::Datum::from(e.tx_id),
                    // append() refuses a tx_seq past i32::MAX.
                    pg_sys::Datum::from(
                        i32::try_from(e.tx_seq).map_err(|_| AuditError::TooManyEvents(e.tx_seq))?,
                    ),
                    pg_sys::Datum::from(to_pg_timestamp(e.recorded_at)),
                    pg_sys::Datum::from(to_pg_timestamp(e.statement_at)),
                    text_datum(&e.session_user_name),
                    text_datum(&e.current_user_name),
                    opt_text(&e.application_name, &mut nulls[7]),
                    opt_varlena(client_raw, &mut nulls[8]),
                    opt_varlena(p.context.as_ref(), &mut nulls[9]),
                    text_datum(&e.table_schema),
                    text_datum(&e.table_name),
                    text_datum(&e.op),
                    opt_varlena(p.old_row.as_ref(), &mut nulls[13]),
                    opt_varlena(p.new_row.as_ref(), &mut nulls[14]),
                    bytes_datum(&e.prev_hash),
                    bytes_datum(&e.hash),
                    match p.row_key {
                        Some(k) => pg_sys::Datum::from(k),
                        None => {
                            nulls[17] = true;
                            pg_sys::Datum::from(0)
                        }
                    },
                    pg_sys::Datum::from(e.tx_first),
                ];
                target.insert(&mut values, &mut nulls);
                Ok(())
            })?;
            cx.reset();
        }
    }
    Ok(())
}

pub fn insert_link(oids: &Oids, l: &Link) -> Result<(), AuditError> {
    let target = Target::open(oids.links, LINK_COLUMNS)?;
    let mut nulls = [false; LINK_COLUMNS];
    let mut values = [
        pg_sys::Datum::from(l.chain_id),
        pg_sys::Datum::from(l.seq),
        pg_sys::Datum::from(l.tx_id),
        pg_sys::Datum::from(l.event_count),
        pg_sys::Datum::from(l.first_event),
        pg_sys::Datum::from(l.last_event),
        bytes_datum(&l.last_event_hash),
        pg_sys::Datum::from(to_pg_timestamp(l.committed_at)),
        bytes_datum(&l.prev_link_hash),
        bytes_datum(&l.link_hash),
    ];
    target.insert(&mut values, &mut nulls);
    Ok(())
}

//! The canonical encoding of a jsonb value, read straight from its binary
//! form: no text round trip, no parse. The pure crate reads the bytes
//! (`audit_log_core::jsonb`); PostgreSQL's own iterator is the fallback for
//! anything that reader refuses, and the reference a test compares it with.
//! The independent verifier in pg_test parses jsonb's text instead, so any
//! disagreement between the routes fails the tests.

use std::cell::Cell;
use std::ffi::CStr;

use audit_log_core::encoding::JsonBuilder;
use pgrx::pg_sys;
#[cfg(any(test, feature = "pg_test"))]
use pgrx::{FromDatum, IntoDatum};

use crate::errors::AuditError;

thread_local! {
    /// Scratch memory for walks (iterator frames, numeric text), reset before each.
    static SCRATCH: Cell<pg_sys::MemoryContext> = const { Cell::new(std::ptr::null_mut()) };
}

fn scratch() -> pg_sys::MemoryContext {
    SCRATCH.with(|c| {
        if c.get().is_null() {
            // SAFETY: a child of TopMemoryContext that lives as long as the backend.
            let cx = unsafe {
                pg_sys::AllocSetContextCreateInternal(
                    pg_sys::TopMemoryContext,
                    c"audit_log jsonb walk".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            };
            c.set(cx);
        }
        c.get()
    })
}

/// Run `f` in the scratch context, emptied first.
fn in_scratch<T>(f: impl FnOnce() -> T) -> T {
    let cx = scratch();
    // SAFETY: nothing allocated in cx outlives a walk.
    unsafe {
        pg_sys::MemoryContextReset(cx);
        let old = pg_sys::MemoryContextSwitchTo(cx);
        let out = f();
        pg_sys::MemoryContextSwitchTo(old);
        out
    }
}

unsafe fn scalar(b: &mut JsonBuilder, v: &pg_sys::JsonbValue) {
    use pg_sys::jbvType as t;
    // SAFETY: by the caller's contract, v is a scalar JsonbValue from JsonbIteratorNext.
    unsafe {
        match v.type_ {
            t::jbvNull => b.null(),
            t::jbvBool => b.bool(v.val.boolean),
            t::jbvString => {
                let s = v.val.string;
                b.string(std::slice::from_raw_parts(
                    s.val as *const u8,
                    s.len as usize,
                ))
            }
            t::jbvNumeric => {
                let text = pgrx::direct_function_call_as_datum(
                    pg_sys::numeric_out,
                    &[Some(pg_sys::Datum::from(v.val.numeric))],
                );
                let text = text.map(|d| CStr::from_ptr(d.cast_mut_ptr::<std::ffi::c_char>()));
                b.number(&text.map(|t| t.to_string_lossy()).unwrap_or_default())
            }
            // Stored jsonb holds no other scalar kinds.
            _ => b.null(),
        }
    }
}

/// The canonical encoding of a jsonb datum (docs/FORMAT.md, `json`).
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn encode(datum: pg_sys::Datum) -> Vec<u8> {
    // SAFETY: by the caller's contract, a jsonb datum. Detoasting copies only when the value
    // is compressed, out of line or has a short header; the copy is freed.
    unsafe {
        let p = datum.cast_mut_ptr::<pg_sys::varlena>();
        let d = pg_sys::pg_detoast_datum_packed(p);
        let out = audit_log_core::jsonb::encode_jsonb(pgrx::varlena_to_byte_slice(d));
        if d != p {
            pg_sys::pfree(d.cast());
        }
        match out {
            Ok(bytes) => bytes,
            Err(_) => encode_via_iterator(datum),
        }
    }
}

/// The canonical encoding of a jsonb value given as the bytes after its
/// varlena header; PostgreSQL's iterator reads what the pure reader refuses.
pub fn encode_payload(payload: &[u8]) -> Vec<u8> {
    if let Ok(bytes) = audit_log_core::jsonb::encode_jsonb(payload) {
        return bytes;
    }
    // SAFETY: rebuilds the varlena in a palloc'd copy, walks it, frees it.
    unsafe {
        let v = with_varlena(payload);
        let out = encode_via_iterator(pg_sys::Datum::from(v));
        pg_sys::pfree(v.cast());
        out
    }
}

/// A jsonb value's text (`jsonb_out`), given the bytes after its varlena header.
pub fn payload_to_text(payload: &[u8]) -> String {
    // SAFETY: rebuilds the varlena in a palloc'd copy; jsonb_out returns a
    // palloc'd cstring, copied out; both are freed.
    unsafe {
        let v = with_varlena(payload);
        let out =
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(pg_sys::Datum::from(v))]);
        let text = out.map(|d| {
            let p = d.cast_mut_ptr::<std::ffi::c_char>();
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            pg_sys::pfree(p.cast());
            s
        });
        pg_sys::pfree(v.cast());
        text.unwrap_or_default()
    }
}

/// A palloc'd varlena holding `payload`.
unsafe fn with_varlena(payload: &[u8]) -> *mut pg_sys::varlena {
    // SAFETY: by the caller's contract, frees the result with pfree.
    unsafe {
        let size = payload.len() + pg_sys::VARHDRSZ;
        let v = pg_sys::palloc(size) as *mut pg_sys::varlena;
        pgrx::set_varsize_4b(v, size as i32);
        std::ptr::copy_nonoverlapping(
            payload.as_ptr(),
            (v as *mut u8).add(pg_sys::VARHDRSZ),
            payload.len(),
        );
        v
    }
}

/// The same encoding through PostgreSQL's `JsonbIteratorNext` and `numeric_out`.
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn encode_via_iterator(datum: pg_sys::Datum) -> Vec<u8> {
    use pg_sys::JsonbIteratorToken::*;
    in_scratch(|| {
        // SAFETY: by the caller's contract, a jsonb datum; detoasted into the scratch context.
        unsafe {
            let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
            let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            let mut b = JsonBuilder::new();
            // A top-level scalar is stored as a one-element "raw scalar" array.
            let mut raw_scalar_depth: Vec<bool> = Vec::new();
            loop {
                match pg_sys::JsonbIteratorNext(&mut it, &mut v, false) {
                    WJB_DONE => break,
                    WJB_BEGIN_ARRAY => {
                        let raw = v.val.array.rawScalar;
                        raw_scalar_depth.push(raw);
                        if !raw {
                            b.begin_array();
                        }
                    }
                    WJB_END_ARRAY => {
                        let raw = raw_scalar_depth.pop().unwrap_or(false);
                        if !raw {
                            b.end();
                        }
                    }
                    WJB_BEGIN_OBJECT => b.begin_object(),
                    WJB_END_OBJECT => b.end(),
                    WJB_KEY => {
                        let s = v.val.string;
                        b.key(std::slice::from_raw_parts(
                            s.val as *const u8,
                            s.len as usize,
                        ));
                    }
                    WJB_VALUE | WJB_ELEM => scalar(&mut b, &v),
                    _ => {}
                }
            }
            b.finish()
        }
    })
}

/// A jsonb column read as its canonical encoding through SPI, by both routes
/// (tests compare them with each other and with the text route).
#[cfg(any(test, feature = "pg_test"))]
pub struct CanonicalJsonb(pub Vec<u8>, pub Vec<u8>);

#[cfg(any(test, feature = "pg_test"))]
impl FromDatum for CanonicalJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: by the caller's contract, a jsonb datum unless null.
        (!is_null).then(|| unsafe { CanonicalJsonb(encode(datum), encode_via_iterator(datum)) })
    }
}

#[cfg(any(test, feature = "pg_test"))]
impl IntoDatum for CanonicalJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        None // read-only: never passed back to PostgreSQL
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// A jsonb datum parsed from JSON text by PostgreSQL's own `jsonb_in`.
pub fn jsonb_in(text: &str) -> Result<pg_sys::Datum, AuditError> {
    let text = std::ffi::CString::new(text).map_err(|e| AuditError::Internal(e.to_string()))?;
    // SAFETY: jsonb_in parses a cstring.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(text.as_ptr()))],
        )
        .ok_or_else(|| AuditError::Internal("jsonb_in returned NULL".into()))
    }
}

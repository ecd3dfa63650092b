//! `to_jsonb(row)` in the canonical encoding, built straight from the row's
//! datums, for rows whose columns are all of a few common types. The usual
//! way (`capture::row_to_jsonb`, then reading the jsonb back) builds a jsonb
//! tree, serializes it and walks it again: on a bulk UPDATE that was a
//! third of audit_log's time. Here each column becomes exactly the JSON
//! value `to_jsonb` gives it, by the rules of PostgreSQL's own
//! `datum_to_jsonb` for its type:
//!
//! - `boolean`: `true` or `false`;
//! - `smallint`, `integer`, `bigint`: a number, the integer's decimal text;
//! - `numeric`: a number, `numeric_out`'s text (scale kept: 1.50 stays
//!   1.50); NaN and the infinities, which to_jsonb turns into strings, send
//!   the row the usual way;
//! - `text`, `varchar`: a string of the value's bytes;
//! - `date`, `timestamp`, `timestamptz`: a string, from PostgreSQL's own
//!   `JsonEncodeDateTime`, which to_jsonb calls (under the canonical output
//!   settings, as to_jsonb runs: UTC);
//! - NULL: `null`. Dropped columns are left out, as to_jsonb leaves them.
//!
//! A row with a column of any other type (a domain too, even over one of
//! these) returns None, and the caller takes to_jsonb. A test compares both
//! ways byte for byte over every kind of value (`tests::row_encodings`).

use std::ffi::CStr;

use audit_log_core::encoding::JsonBuilder;
use pgrx::pg_sys;

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Text,
    Numeric,
    DateTime,
}

fn kind(t: pg_sys::Oid) -> Option<Kind> {
    Some(match t {
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::INT2OID => Kind::Int2,
        pg_sys::INT4OID => Kind::Int4,
        pg_sys::INT8OID => Kind::Int8,
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Kind::Text,
        pg_sys::NUMERICOID => Kind::Numeric,
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Kind::DateTime,
        _ => return None,
    })
}

/// Rows larger than this (the bytes of their names and values) take
/// to_jsonb: jsonb refuses a string or an object past 256 MB ("string too
/// long to represent as jsonb string"), and a row it refuses must be
/// refused here too, not recorded as an event that the views, which read
/// rows back as jsonb, could not show. Far below that limit, so that no
/// estimate of jsonb's own overhead matters.
const MAX_DIRECT_BYTES: usize = 16 << 20;

/// Whether every column of `desc` is of a type encoded here.
///
/// # Safety
/// `desc` is a valid tuple descriptor.
pub unsafe fn handles(desc: pg_sys::TupleDesc) -> bool {
    // SAFETY: by the caller's contract.
    unsafe { crate::pgcompat::attrs(desc) }
        .iter()
        .all(|a| a.attisdropped || kind(a.atttypid).is_some())
}

/// The canonical encoding of `to_jsonb(tuple)` without the columns named in
/// `exclude` (as `jsonb_delete` leaves it), or None if a column needs
/// to_jsonb itself.
///
/// # Safety
/// `tuple` is a heap tuple of `desc`; the canonical output settings are in
/// force (`capture::with_canonical_output`).
pub unsafe fn encode(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    exclude: &[String],
) -> Option<Vec<u8>> {
    // SAFETY: by the caller's contract, tuple and desc go together; every
    // datum read is of the type its attribute says.
    unsafe {
        if !handles(desc) {
            return None;
        }
        let attrs = crate::pgcompat::attrs(desc);
        let mut values = vec![pg_sys::Datum::from(0); attrs.len()];
        let mut nulls = vec![false; attrs.len()];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let mut b = JsonBuilder::new();
        let mut size = 0usize;
        b.begin_object();
        for (i, a) in attrs.iter().enumerate() {
            if a.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
            if exclude.iter().any(|c| c.as_bytes() == name) {
                continue;
            }
            b.key(name);
            size += name.len();
            if nulls[i] {
                b.null();
                continue;
            }
            let d = values[i];
            match kind(a.atttypid)? {
                Kind::Bool => b.bool(d.value() != 0),
                Kind::Int2 => b.number(&(d.value() as i16).to_string()),
                Kind::Int4 => b.number(&(d.value() as i32).to_string()),
                Kind::Int8 => b.number(&(d.value() as i64).to_string()),
                Kind::Text => {
                    // The size is known without detoasting the value.
                    size += pg_sys::toast_raw_datum_size(d);
                    if size > MAX_DIRECT_BYTES {
                        return None;
                    }
                    let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                    b.string(pgrx::varlena_to_byte_slice(v));
                }
                Kind::Numeric => {
                    let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                    let bytes = std::slice::from_raw_parts(v as *const u8, pgrx::varsize_any(v));
                    let text = audit_log_core::jsonb::numeric_text(bytes).ok()?;
                    // NaN and the infinities are strings in to_jsonb.
                    if !text.as_bytes().last().is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    size += text.len();
                    if size > MAX_DIRECT_BYTES {
                        return None;
                    }
                    b.number(&text);
                }
                Kind::DateTime => {
                    let s = pg_sys::JsonEncodeDateTime(
                        std::ptr::null_mut(),
                        d,
                        a.atttypid,
                        std::ptr::null(),
                    );
                    b.string(CStr::from_ptr(s).to_bytes());
                    pg_sys::pfree(s.cast());
                }
            }
        }
        b.end();
        Some(b.finish())
    }
}

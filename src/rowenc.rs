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
//! - `text`, `varchar`, `char(n)`: a string of the value's bytes (a
//!   `char(n)` with its padding, as `bpcharout` prints it);
//! - `uuid`: a string, `uuid_out`'s lowercase 8-4-4-4-12 hex;
//! - `date`, `timestamp`, `timestamptz`: a string, from PostgreSQL's own
//!   `JsonEncodeDateTime`, which to_jsonb calls, at offset 0 for a
//!   timestamptz (to_jsonb runs under the canonical output settings: UTC);
//! - NULL: `null`. Dropped columns are left out, as to_jsonb leaves them.
//!
//! A row with a column of any other type (a domain too, even over one of
//! these) returns None, and the caller takes to_jsonb. A test compares both
//! ways byte for byte over every kind of value (`tests::row_encodings`).

use std::ffi::CStr;

use audit_log_core::encoding::packed::put_varint;
use audit_log_core::encoding::{put_len, tag};
use pgrx::{pg_sys, varlena};

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Text,
    Uuid,
    Numeric,
    DateTime,
}

fn kind(t: pg_sys::Oid) -> Option<Kind> {
    Some(match t {
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::INT2OID => Kind::Int2,
        pg_sys::INT4OID => Kind::Int4,
        pg_sys::INT8OID => Kind::Int8,
        // to_jsonb prints these with their output functions, which give
        // the stored bytes (bpchar keeps its padding).
        pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Kind::Text,
        pg_sys::UUIDOID => Kind::Uuid,
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

/// The decimal text of an integer, into `buf`: to_jsonb's number for it.
fn int_text(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// `uuid_out`: lowercase hex, hyphens after the 4th, 6th, 8th and 10th byte.
fn uuid_text(b: &[u8]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in b.iter().take(16).enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xF)];
        at += 2;
    }
    out
}

/// A length or count: 4 bytes (version 1), or a varint (packed).
fn put_n(out: &mut Vec<u8>, n: usize, packed: bool) {
    if packed {
        put_varint(out, n as u64);
    } else {
        put_len(out, n);
    }
}

/// A string or number value: its tag, length and bytes.
fn put_scalar(out: &mut Vec<u8>, tag: u8, bytes: &[u8], packed: bool) {
    out.push(tag);
    put_n(out, bytes.len(), packed);
    out.extend_from_slice(bytes);
}

/// Whether a varlena datum is stored out of line or compressed: only then
/// does reading it take a detoast.
///
/// # Safety
/// `d` is a non-null varlena datum.
unsafe fn toasted(d: pg_sys::Datum) -> bool {
    let v = d.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: by the caller's contract.
    unsafe { varlena::varatt_is_1b_e(v) || varlena::varatt_is_4b_c(v) }
}

/// A varlena datum's size once detoasted, without detoasting it.
///
/// # Safety
/// `d` is a non-null varlena datum.
unsafe fn raw_size(d: pg_sys::Datum) -> usize {
    // SAFETY: by the caller's contract.
    unsafe {
        if toasted(d) {
            pg_sys::toast_raw_datum_size(d)
        } else {
            varlena::varsize_any(d.cast_mut_ptr::<pg_sys::varlena>())
        }
    }
}

/// A varlena datum's value in memory: read in place when it is inline and
/// uncompressed (the common case), else detoasted.
///
/// # Safety
/// `d` is a non-null varlena datum.
unsafe fn detoasted(d: pg_sys::Datum) -> *const pg_sys::varlena {
    let v = d.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: by the caller's contract.
    unsafe {
        if toasted(d) {
            pg_sys::pg_detoast_datum_packed(v).cast_const()
        } else {
            v.cast_const()
        }
    }
}

/// How to write `to_jsonb(tuple)` without the columns named in `exclude`
/// (as `jsonb_delete` leaves it) for rows of one descriptor: made once per
/// row change, it encodes both of an UPDATE's rows.
///
/// A row is written straight into one buffer, members in byte order of their
/// names (the order jsonb keeps): no intermediate value, no allocation per
/// column.
///
/// No output setting of the session changes it: to_jsonb's rendering of
/// these types depends only on TimeZone, for timestamptz, which is set to
/// UTC here (what `rendering::canonical_output` gives to_jsonb).
pub struct Plan<'a> {
    desc: pg_sys::TupleDesc,
    /// (name, attribute index, kind, type), in byte order of the names. A
    /// relation's column names are unique, so the order is total.
    members: Vec<(&'a [u8], usize, Kind, pg_sys::Oid)>,
}

impl<'a> Plan<'a> {
    /// The plan for rows of `desc` without the columns named in `exclude`,
    /// or None if a column is of a type that needs to_jsonb.
    ///
    /// # Safety
    /// `desc` is a valid tuple descriptor that outlives the plan.
    pub unsafe fn new(desc: pg_sys::TupleDesc, exclude: &[String]) -> Option<Plan<'a>> {
        // SAFETY: by the caller's contract.
        let attrs = unsafe { crate::pgcompat::attrs(desc) };
        let mut members = Vec::with_capacity(attrs.len());
        for (i, a) in attrs.iter().enumerate() {
            if a.attisdropped {
                continue;
            }
            let k = kind(a.atttypid)?;
            // SAFETY: attname is a NUL-terminated NameData of the descriptor.
            let name = unsafe { CStr::from_ptr(a.attname.data.as_ptr()) }.to_bytes();
            if exclude.iter().any(|c| c.as_bytes() == name) {
                continue;
            }
            members.push((name, i, k, a.atttypid));
        }
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(Plan { desc, members })
    }

    /// The canonical encoding of `to_jsonb(tuple)` without the excluded
    /// columns, or None if a value needs to_jsonb (NaN, a row too large).
    /// `packed`: in the packed form that payloads store
    /// (`audit_log_core::encoding::packed::json_pack`'s), lengths and
    /// counts as varints, so that it is copied into the payload as it is.
    ///
    /// # Safety
    /// `tuple` is a heap tuple of the plan's descriptor.
    pub unsafe fn encode(&self, tuple: pg_sys::HeapTuple, packed: bool) -> Option<Vec<u8>> {
        // SAFETY: by the caller's contract, tuple and desc go together; every
        // datum read is of the type its attribute says.
        unsafe {
            let (desc, members) = (self.desc, &self.members);
            let natts = usize::try_from((*desc).natts).unwrap_or(0);
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![false; natts];
            pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let mut out = Vec::with_capacity(64 + members.len() * 40);
            out.push(tag::OBJECT);
            put_n(&mut out, members.len(), packed);
            let mut size = 0usize;
            let mut digits = [0u8; 20];
            for &(name, i, k, typid) in members {
                put_n(&mut out, name.len(), packed);
                out.extend_from_slice(name);
                size += name.len();
                if nulls[i] {
                    out.push(tag::NULL);
                    continue;
                }
                let d = values[i];
                match k {
                    Kind::Bool => out.push(if d.value() != 0 {
                        tag::TRUE
                    } else {
                        tag::FALSE
                    }),
                    Kind::Int2 => put_scalar(
                        &mut out,
                        tag::NUMBER,
                        int_text(i64::from(d.value() as i16), &mut digits),
                        packed,
                    ),
                    Kind::Int4 => put_scalar(
                        &mut out,
                        tag::NUMBER,
                        int_text(i64::from(d.value() as i32), &mut digits),
                        packed,
                    ),
                    Kind::Int8 => put_scalar(
                        &mut out,
                        tag::NUMBER,
                        int_text(d.value() as i64, &mut digits),
                        packed,
                    ),
                    Kind::Text => {
                        // Sized before it is detoasted: a value too large for
                        // this path is never read twice.
                        size += raw_size(d);
                        if size > MAX_DIRECT_BYTES {
                            return None;
                        }
                        let v = detoasted(d);
                        let bytes = pgrx::varlena_to_byte_slice(v);
                        // A large value where memory is short takes to_jsonb,
                        // whose allocations fail as an ERROR, not an abort.
                        out.try_reserve(5 + bytes.len()).ok()?;
                        put_scalar(&mut out, tag::STRING, bytes, packed);
                    }
                    Kind::Uuid => {
                        // SAFETY: a uuid is 16 bytes passed by reference.
                        let b = std::slice::from_raw_parts(d.cast_mut_ptr::<u8>().cast_const(), 16);
                        put_scalar(&mut out, tag::STRING, &uuid_text(b), packed);
                    }
                    Kind::Numeric => {
                        let v = detoasted(d);
                        let bytes =
                            std::slice::from_raw_parts(v.cast::<u8>(), varlena::varsize_any(v));
                        let text = audit_log_core::jsonb::numeric_text(bytes).ok()?;
                        // NaN and the infinities are strings in to_jsonb.
                        if !text.as_bytes().last().is_some_and(u8::is_ascii_digit) {
                            return None;
                        }
                        size += text.len();
                        if size > MAX_DIRECT_BYTES {
                            return None;
                        }
                        put_scalar(&mut out, tag::NUMBER, text.as_bytes(), packed);
                    }
                    Kind::DateTime => {
                        // Written into our buffer: nothing to palloc or free.
                        // A timestamptz is rendered at offset 0 (UTC) whatever
                        // the session's TimeZone; a date or timestamp has no
                        // zone. JsonEncodeDateTime's style is fixed (ISO 8601),
                        // so no setting of the session enters the text.
                        let mut buf = [0 as std::ffi::c_char; pg_sys::MAXDATELEN as usize + 1];
                        let utc: std::ffi::c_int = 0;
                        let s = pg_sys::JsonEncodeDateTime(buf.as_mut_ptr(), d, typid, &utc);
                        put_scalar(&mut out, tag::STRING, CStr::from_ptr(s).to_bytes(), packed);
                    }
                }
            }
            Some(out)
        }
    }
}

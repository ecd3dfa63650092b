//! The session settings that decide how `to_jsonb` renders a value, and
//! their canonical values, which capture pins while it renders a row.
//!
//! Any role may change these for its own session (and for its own logins,
//! with ALTER ROLE ... SET). Left alone, they would let the application
//! role decide what the log says a value was:
//!
//! - `extra_float_digits = -15` records 1049.99 as 1000;
//! - `DateStyle`, `IntervalStyle`, `TimeZone`, `bytea_output` and
//!   `quote_all_identifiers` change how dates, intervals, bytes and names
//!   read;
//! - `lc_monetary` changes a `money` value's currency symbol, separators
//!   and decimal places: the same stored amount reads `$1,234.56` in one
//!   session and `123.456 ¥` or `1.234,56 €` in another;
//! - `search_path` decides whether a `regclass`, `regproc` or other
//!   name-typed value is written with its schema: a role that puts its own
//!   schema first records `accounts` for its own table of that name, which
//!   a reader takes for `public.accounts`.
//!
//! The first group applies to every row that takes `to_jsonb`, and a few
//! reads tell whether the session has them already. The last two are
//! pinned only for rows whose types can hold a `money` or a name-typed
//! value (through domains, arrays, ranges and composite types): pinning
//! them costs more (a locale change, a search path recomputed), and almost
//! no table needs it.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::catalog::{set_in_nest_level, setting_is};

unsafe extern "C" {
    // utils/bytea.h, which pgrx does not bind: 1 is BYTEA_OUTPUT_HEX.
    #[link_name = "bytea_output"]
    static BYTEA_OUTPUT: std::ffi::c_int;
}

/// The canonical `lc_monetary`: PostgreSQL's own fallbacks (`$`, `,` and
/// `.`, two decimal places), the same on every server.
const MONETARY: &CStr = c"C";
/// The canonical `search_path`: a name is written without its schema only
/// when it is in `pg_catalog`, or a temporary object of the session.
const SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// Which of the type-dependent settings a row's rendering reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depends {
    /// `lc_monetary`: a `money` value somewhere in the row.
    pub monetary: bool,
    /// `search_path`: a `regclass`, `regproc`, … value somewhere in the row.
    pub search_path: bool,
}

impl Depends {
    const ALL: Depends = Depends {
        monetary: true,
        search_path: true,
    };

    fn or(self, other: Depends) -> Depends {
        Depends {
            monetary: self.monetary || other.monetary,
            search_path: self.search_path || other.search_path,
        }
    }
}

/// Nesting past this (domains over domains, composite types within
/// composite types) is taken to read both settings, without looking further.
const MAX_DEPTH: u32 = 32;

/// Which type-dependent settings `to_jsonb` reads to render the columns of
/// `desc` (dropped columns left out).
///
/// # Safety
/// `desc` is a valid tuple descriptor.
pub unsafe fn depends(desc: pg_sys::TupleDesc) -> Depends {
    // SAFETY: by the caller's contract.
    let attrs = unsafe { crate::pgcompat::attrs(desc) };
    attrs
        .iter()
        .filter(|a| !a.attisdropped)
        .fold(Depends::default(), |d, a| d.or(type_depends(a.atttypid, 0)))
}

/// What renders through the settings of `Depends`, for a type.
fn type_depends(t: pg_sys::Oid, depth: u32) -> Depends {
    match t {
        // The common types, answered without a look-up.
        pg_sys::BOOLOID
        | pg_sys::INT2OID
        | pg_sys::INT4OID
        | pg_sys::INT8OID
        | pg_sys::FLOAT4OID
        | pg_sys::FLOAT8OID
        | pg_sys::NUMERICOID
        | pg_sys::TEXTOID
        | pg_sys::VARCHAROID
        | pg_sys::BPCHAROID
        | pg_sys::NAMEOID
        | pg_sys::UUIDOID
        | pg_sys::JSONOID
        | pg_sys::JSONBOID
        | pg_sys::BYTEAOID
        | pg_sys::DATEOID
        | pg_sys::TIMEOID
        | pg_sys::TIMETZOID
        | pg_sys::TIMESTAMPOID
        | pg_sys::TIMESTAMPTZOID
        | pg_sys::INTERVALOID
        | pg_sys::INETOID
        | pg_sys::CIDROID
        | pg_sys::OIDOID
        | pg_sys::XMLOID => return Depends::default(),
        crate::pgcompat::MONEYOID => {
            return Depends {
                monetary: true,
                search_path: false,
            }
        }
        // Their output functions write a name with its schema unless the
        // search path finds it (regnamespace and regrole have no schema).
        pg_sys::REGPROCOID
        | pg_sys::REGPROCEDUREOID
        | pg_sys::REGOPEROID
        | pg_sys::REGOPERATOROID
        | pg_sys::REGCLASSOID
        | pg_sys::REGTYPEOID
        | pg_sys::REGCONFIGOID
        | pg_sys::REGDICTIONARYOID
        | pg_sys::REGCOLLATIONOID => {
            return Depends {
                monetary: false,
                search_path: true,
            }
        }
        _ => {}
    }
    if depth >= MAX_DEPTH {
        return Depends::ALL;
    }
    let flags = pg_sys::TYPECACHE_TUPDESC
        | pg_sys::TYPECACHE_RANGE_INFO
        | pg_sys::TYPECACHE_DOMAIN_BASE_INFO;
    // SAFETY: the type cache's entry for a column's type (it raises an
    // ERROR for a type that does not exist); entries live as long as the
    // backend, and the fields read are set for the flags asked.
    unsafe {
        let e = &*pg_sys::lookup_type_cache(t, flags as i32);
        match e.typtype as u8 {
            b'd' => type_depends(e.domainBaseType, depth + 1),
            b'c' if !e.tupDesc.is_null() => {
                // The types first: a look-up below may process an
                // invalidation that releases this descriptor.
                let types: Vec<pg_sys::Oid> = crate::pgcompat::attrs(e.tupDesc)
                    .iter()
                    .filter(|a| !a.attisdropped)
                    .map(|a| a.atttypid)
                    .collect();
                types
                    .into_iter()
                    .fold(Depends::default(), |d, t| d.or(type_depends(t, depth + 1)))
            }
            b'r' if !e.rngelemtype.is_null() => type_depends((*e.rngelemtype).type_id, depth + 1),
            b'e' => Depends::default(),
            // An array (or any type with elements, such as int2vector):
            // its elements' output functions write it.
            b'b' if e.typelem != pg_sys::InvalidOid => type_depends(e.typelem, depth + 1),
            // Another base type: its own output function, which reads
            // none of the two (types of extensions are their authors').
            b'b' => Depends::default(),
            // A multirange, or anything else: taken to read both.
            _ => Depends::ALL,
        }
    }
}

/// Whether every setting that changes how to_jsonb renders any value has
/// its canonical value: floats at shortest-exact precision
/// (extra_float_digits 1), ISO dates, intervals in the postgres style, hex
/// bytea, unquoted identifiers, and a UTC clock.
fn canonical() -> bool {
    // SAFETY: plain reads of the backend's GUC variables.
    unsafe {
        let mut offset: std::ffi::c_long = 0;
        pg_sys::extra_float_digits == 1
            && pg_sys::DateStyle == pg_sys::USE_ISO_DATES as i32
            && pg_sys::IntervalStyle == pg_sys::INTSTYLE_POSTGRES as i32
            && BYTEA_OUTPUT == 1
            && !pg_sys::quote_all_identifiers
            && pg_sys::pg_get_timezone_offset(pg_sys::session_timezone, &mut offset)
            && offset == 0
    }
}

/// Run `f` with the output settings at their canonical values, and those
/// of `depends` too (each set only when it is not already: the common case
/// costs a few reads).
pub fn canonical_output<T>(depends: Depends, f: impl FnOnce() -> T) -> T {
    let monetary = depends.monetary && !setting_is(c"lc_monetary", MONETARY);
    let search_path = depends.search_path && !setting_is(c"search_path", SEARCH_PATH);
    if canonical() && !monetary && !search_path {
        return f();
    }
    // SAFETY: a GUC nest level undone right after, or by abort processing.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in [
        (c"extra_float_digits", c"1"),
        (c"DateStyle", c"ISO, MDY"),
        (c"IntervalStyle", c"postgres"),
        (c"bytea_output", c"hex"),
        (c"TimeZone", c"UTC"),
        (c"quote_all_identifiers", c"off"),
    ] {
        set_in_nest_level(name, value);
    }
    if monetary {
        set_in_nest_level(c"lc_monetary", MONETARY);
    }
    if search_path {
        set_in_nest_level(c"search_path", SEARCH_PATH);
    }
    let out = f();
    // SAFETY: undo exactly what was done above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    out
}

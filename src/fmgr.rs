//! C-language functions that PostgreSQL calls by fixed symbol names (the
//! capture triggers and the event triggers, declared in sql/finalize.sql):
//! renaming a Rust function cannot break an installed SQL definition.

/// Define `$name` as a version-1 C function (with its `$finfo` record)
/// whose body `$body: fn(FunctionCallInfo) -> Datum` runs under pg_guard.
macro_rules! c_function {
    ($finfo:ident, $name:ident, $body:expr) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        /// # Safety
        /// Called by PostgreSQL's function manager.
        #[unsafe(no_mangle)]
        #[pgrx::pg_guard]
        pub unsafe extern "C-unwind" fn $name(
            fcinfo: pgrx::pg_sys::FunctionCallInfo,
        ) -> pgrx::pg_sys::Datum {
            let body: fn(pgrx::pg_sys::FunctionCallInfo) -> pgrx::pg_sys::Datum = $body;
            body(fcinfo)
        }
    };
}

pub(crate) use c_function;

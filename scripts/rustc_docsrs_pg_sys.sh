#!/bin/sh
# RUSTC_WRAPPER for scripts/check_versions.sh: compiles pgrx-pg-sys with
# `--cfg docsrs`, so that it uses the bindings it ships for every
# PostgreSQL version instead of generating them from server headers.
case " $* " in
*" --crate-name pgrx_pg_sys "*) exec "$@" --cfg docsrs ;;
esac
exec "$@"

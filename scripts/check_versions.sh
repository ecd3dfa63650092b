#!/usr/bin/env bash
# Type-check the extension for the PostgreSQL versions it builds for but
# is not tested on here (13, 14, 16, 17: no server headers on this machine),
# against the bindings pgrx-pg-sys ships for each (its docs.rs mode, which
# generates nothing from headers). Tests run on 15 and 18 (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
for v in 13 14 16 17; do
    echo "check: PostgreSQL $v"
    DOCS_RS=1 RUSTC_WRAPPER="$PWD/scripts/rustc_docsrs_pg_sys.sh" \
        cargo check -q --no-default-features --features "pg$v" --target-dir target/version-check
done

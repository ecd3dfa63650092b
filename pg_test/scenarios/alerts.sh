#!/usr/bin/env bash
# Alerts: a table enabled with notify => true announces each committed
# change on its own channel (and nothing for a rollback); a failing
# verify() raises a WARNING and notifies audit_log_alert.
set -euo pipefail
db=al_alerts
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
  -c "CREATE TABLE orders (id int PRIMARY KEY, amount numeric)" -c "CREATE TABLE quiet (id int)" \
  -c "SELECT audit_log.enable('orders', notify => true), audit_log.enable('quiet')" >/dev/null

# One session listens, writes, rolls back a write, and prints what it heard.
out=$(psql -X -v ON_ERROR_STOP=1 -d $db 2>&1 <<'SQL'
LISTEN "audit_log:public.orders";
INSERT INTO orders VALUES (1, 10), (2, 20);
BEGIN; UPDATE orders SET amount = 0; ROLLBACK;
UPDATE orders SET amount = 11 WHERE id = 1;
INSERT INTO quiet VALUES (1);
SELECT 1;
SQL
)
heard=$(echo "$out" | grep -c 'Asynchronous notification "audit_log:public.orders"' || true)
[ "$heard" = 3 ] || fail "expected 3 notifications (2 inserts, 1 update; none for the rollback), heard $heard: $out"
grep -q <<<"$out" '"op": "UPDATE"' || grep -q <<<"$out" '"op":"UPDATE"' || fail "no UPDATE payload: $out"
echo "  notify: 3 committed changes announced on audit_log:public.orders, none for a rolled-back one"

# A failed verification: a WARNING, and a notification for monitoring.
# (A superuser turns the recorded INSERTs into DELETEs, in the stored bytes.)
q -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
  -c "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'), encode('INSERT', 'hex'), encode('DELETE', 'hex')), 'hex') WHERE position('INSERT'::bytea IN payload) > 0" \
  -c "ALTER TABLE audit_log.records ENABLE TRIGGER USER"
out=$(psql -X -v ON_ERROR_STOP=1 -d $db 2>&1 <<'SQL'
LISTEN audit_log_alert;
SELECT ok FROM audit_log.verify();
SELECT 1;
SQL
)
grep -q <<<"$out" 'WARNING:  audit_log.verify() failed: content_changed' || fail "no WARNING: $out"
grep -q <<<"$out" 'Asynchronous notification "audit_log_alert" with payload ".*content_changed' || fail "no alert: $out"
echo "  verify(): WARNING and a notification on audit_log_alert for monitoring"
psql -X -q -d postgres -c "DROP DATABASE $db"
echo "alerts: per-table notifications and verification alerts arrive"

#!/usr/bin/env bash
# pgaudit beside audit_log, as the README's recipe sets them up: pgaudit
# logs statements (reads, DDL, role changes) to the server log, audit_log
# records row changes in its hash chain. On its own cluster, since pgaudit
# must be in shared_preload_libraries. An application role reads, writes
# and alters its audited table; then:
# - pgaudit's log has the SELECT, the DDL and the GRANT, each once, and no
#   row values;
# - audit_log has every row change with old and new values, and the DDL,
#   and verifies;
# - neither gets in the other's way: the application's statements all
#   succeed, audit_log's work at commit leaves nothing in pgaudit's log (its
#   DDL guard's one catalog read per DDL statement does, as the README's
#   recipe says), and audit_log records no event for a read.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pg_config=${PG_CONFIG:-/usr/bin/pg_config}
BIN=$("$pg_config" --bindir)
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$("$pg_config" --pkglibdir)/pgaudit.so" ] || fail "pgaudit is not installed for $("$pg_config" --version) (scripts/setup.sh installs postgresql-15-pgaudit)"
dir=${AUDIT_LOG_PGAUDIT_DIR:-/tmp/audit_log_pgaudit}
export PGHOST=$dir PGPORT=${AUDIT_LOG_PGAUDIT_PORT:-55502} PGUSER=postgres
db=al_pgaudit
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }
as_app() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db -U app "$@"; }

if [ -f "$dir/data/postmaster.pid" ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$dir"; mkdir -p "$dir"; chown postgres:postgres "$dir"
cleanup() {
    runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
runuser -u postgres -- "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
# The README's recipe.
cat >>"$dir/data/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'pgaudit,audit_log'
pgaudit.log = 'read, ddl, role'
pgaudit.log_catalog = off
pgaudit.log_parameter = off
pgaudit.log_relation = on
log_line_prefix = '%m [%p] %u@%d '
CONF
runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
log=$dir/server.log

psql -X -q -d postgres -c "CREATE DATABASE $db"
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION pgaudit;
CREATE EXTENSION audit_log;
CREATE ROLE app LOGIN;
GRANT CREATE ON SCHEMA public TO app;
SQL
as_app -c "CREATE TABLE orders (id int PRIMARY KEY, item text, qty int)"
q -c "SELECT audit_log.enable('orders')" >/dev/null
before=$(wc -l <"$log")
as_app <<'SQL' >/dev/null
INSERT INTO orders VALUES (1, 'secret-item-alpha', 1), (2, 'secret-item-beta', 2);
UPDATE orders SET qty = qty + 10 WHERE id = 1;
DELETE FROM orders WHERE id = 2;
SELECT count(*) FROM orders WHERE item LIKE 'secret%';
ALTER TABLE orders ADD COLUMN note text;
SQL
q -c "CREATE ROLE reader NOLOGIN" -c "GRANT SELECT ON orders TO reader" -c "SELECT pg_sleep(0.2)" >/dev/null
new=$(tail -n +"$((before + 1))" "$log")
audit_lines=$(grep 'AUDIT: SESSION' <<<"$new" || true)

# pgaudit: the read, the DDL and the role statements, each once; no row values.
count() { grep -c "$1" <<<"$audit_lines" || true; }
[ "$(count ',READ,SELECT,TABLE,public.orders,')" = 1 ] || fail "pgaudit logged the SELECT $(count ',READ,SELECT,TABLE,public.orders,') time(s): $audit_lines"
[ "$(count ',DDL,ALTER TABLE,TABLE,public.orders,')" = 1 ] || fail "pgaudit did not log the ALTER TABLE once: $audit_lines"
[ "$(count ',ROLE,CREATE ROLE,')" = 1 ] || fail "pgaudit did not log CREATE ROLE once: $audit_lines"
[ "$(count ',ROLE,GRANT,')" = 1 ] || fail "pgaudit did not log the GRANT once: $audit_lines"
[ "$(count ',WRITE,')" = 0 ] || fail "pgaudit logged writes, which the recipe leaves to audit_log: $audit_lines"
! grep -q 'secret-item' <<<"$audit_lines" || fail "pgaudit's log holds row values"
# audit_log's work at commit (no SQL: it writes its record directly) is not
# in pgaudit's log. Its DDL guard reads pg_event_trigger_ddl_commands()
# through SQL, which pgaudit logs as a READ substatement of each DDL
# statement, under the role that ran it (the README's recipe says so): one
# here, for the ALTER TABLE.
app_lines=$(grep ' app@' <<<"$audit_lines" || true)
! grep -q 'audit_log\.' <<<"$app_lines" || fail "pgaudit logged audit_log's internal statements as the application's: $app_lines"
internal=$(grep -c 'READ,SELECT,,,"SELECT classid::pg_catalog.int8, objid' <<<"$app_lines" || true)
[ "$internal" = 1 ] || fail "pgaudit logged the DDL guard's read $internal time(s) for one DDL statement: $app_lines"
[ "$(grep -c ',READ,' <<<"$app_lines")" = 2 ] || fail "the application's reads in pgaudit's log are other than its SELECT and the guard's read: $app_lines"

# audit_log: every row change with its values, the DDL, and no event for the read.
ops=$(q -c "SELECT string_agg(op, ',' ORDER BY id) FROM audit_log.events WHERE table_name = 'orders'")
[ "$ops" = "ENABLE,INSERT,INSERT,UPDATE,DELETE,DDL" ] || fail "audit_log recorded $ops"
[ "$(q -c "SELECT new_row->>'qty' FROM audit_log.events WHERE op = 'UPDATE' AND table_name = 'orders'")" = 11 ] ||
    fail "audit_log's UPDATE lacks the new value"
[ "$(q -c "SELECT old_row->>'item' FROM audit_log.events WHERE op = 'DELETE' AND table_name = 'orders'")" = secret-item-beta ] ||
    fail "audit_log's DELETE lacks the old row"
[ "$(q -c "SELECT session_user_name FROM audit_log.events WHERE op = 'INSERT' LIMIT 1")" = app ] ||
    fail "audit_log's events are not attributed to the application role"
[ "$(q -c "SELECT ok FROM audit_log.verify()")" = t ] || fail "audit_log does not verify beside pgaudit"
echo "pgaudit: statements (SELECT, ALTER TABLE, CREATE ROLE, GRANT) in the server log once each and no row values; audit_log: $ops, verified"

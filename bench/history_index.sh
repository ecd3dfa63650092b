#!/usr/bin/env bash
# history() of a row of a marked table (audited_tables.history_since set:
# history => true turned on late, a key or name changed, a partition
# attached) against the same call after audit_log.index_history(), on a log
# of EVENTS row events (default 200,000), in one run on one cluster. Prints
# the median of ROUNDS calls each (default 5), the time index_history()
# took, and the ratio. Needs the extension installed (scripts/install.sh).
#   bash bench/history_index.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
events=${EVENTS:-200000}
rounds=${ROUNDS:-5}
dir=${AUDIT_LOG_BENCH_DIR:-/tmp/audit_log_bench_history}
port=${AUDIT_LOG_BENCH_PORT:-55471}
export PGHOST=$dir PGPORT=$port PGUSER=postgres
bash "$here/pg_test/cluster.sh" start "$dir" "$port"
[ -n "${KEEP:-}" ] || trap 'bash "$here/pg_test/cluster.sh" stop "$dir"' EXIT
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d postgres "$@"; }

# Autovacuum visits every second, and never VACUUMs because of inserts:
# until the VACUUM below, only its work items summarize the records' BRIN
# ranges, as each one fills (autosummarize).
q -c "ALTER SYSTEM SET autovacuum_naptime = 1" -c "ALTER SYSTEM SET autovacuum_vacuum_insert_threshold = -1" \
  -c "SELECT pg_reload_conf()" >/dev/null
q <<SQL >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric);
CREATE TABLE other (id int PRIMARY KEY, v text);
SELECT audit_log.enable('acct'), audit_log.enable('other');
-- Half the log on the measured table, half on another (a search by
-- content unpacks both), in transactions of 10 changes, as an application
-- writes them (a lookup unpacks only the transactions it finds).
SET synchronous_commit = off;
DO \$\$
BEGIN
    FOR b IN 0 .. $events / 40 - 1 LOOP
        INSERT INTO acct SELECT g, 'owner ' || g, g FROM generate_series(b * 10 + 1, b * 10 + 10) g;
        COMMIT;
    END LOOP;
    FOR b IN 0 .. $events / 40 - 1 LOOP
        UPDATE acct SET balance = balance + 1 WHERE id BETWEEN b * 10 + 1 AND b * 10 + 10;
        COMMIT;
    END LOOP;
    FOR b IN 0 .. $events / 20 - 1 LOOP
        INSERT INTO other SELECT g, repeat('x', 40) FROM generate_series(b * 10 + 1, b * 10 + 10) g;
        COMMIT;
    END LOOP;
END
\$\$;
-- history => true turned on late: the changes so far are below the mark.
SELECT audit_log.enable('acct', history => true);
UPDATE acct SET owner = 'after' WHERE id = 7;
ANALYZE audit_log.records, audit_log.row_keys;
CHECKPOINT;
SQL
n=$(q -c "SELECT count(*) FROM audit_log.events WHERE op IN ('INSERT', 'UPDATE', 'DELETE')")

# The median, in ms, of ROUNDS runs of a statement (after one warm-up).
median() {
    local sql=$1 times=()
    q -c "$sql" >/dev/null
    for _ in $(seq "$rounds"); do
        times+=("$(q -c '\timing on' -c "$sql" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
call="SELECT count(*) FROM audit_log.history('acct', '{\"id\": 7}')"
rows_marked=$(q -c "$call")
marked=$(median "$call")
t_index=$(q -c '\timing on' -c "SELECT audit_log.index_history('acct')" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
added=$(q -c "SELECT new_row->>'entries_added' FROM audit_log.events WHERE op = 'INDEX_HISTORY'")
q -c "ANALYZE audit_log.records, audit_log.row_keys"
rows_indexed=$(q -c "$call")
unvacuumed=$(median "$call")
# What autovacuum's VACUUMs add: the last, partly filled range summarized.
q -c "VACUUM ANALYZE audit_log.records, audit_log.row_keys"
indexed=$(median "$call")
[ "$rows_marked" = "$rows_indexed" ] || { echo "FAIL: history() gave $rows_marked rows marked, $rows_indexed after index_history()" >&2; exit 1; }
vacuums=$(q -c "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'audit_log.records'::regclass")
echo "history() of one row (3 versions), log of $n row events, median of $rounds:"
awk -v m="$marked" -v u="$unvacuumed" -v i="$indexed" -v x="$t_index" -v a="$added" -v v="$vacuums" 'BEGIN {
    printf "  marked (search by content before the mark): %9.1f ms\n", m
    printf "  after index_history(), records not vacuumed:%9.1f ms   (%.0fx faster; autovacuum VACUUMs: %d)\n", u, m / u, v
    printf "  after index_history() and VACUUM:           %9.1f ms   (%.0fx faster)\n", i, m / i
    printf "  index_history() itself, once:               %9.1f ms   (%d entries added)\n", x, a
}'

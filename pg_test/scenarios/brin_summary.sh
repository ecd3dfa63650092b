#!/usr/bin/env bash
# The records' BRIN index (committed_at, first_event) is summarized range
# by range as the log grows, without a VACUUM: autovacuum takes each full
# range of 16 pages as a work item (autosummarize). Until a range is
# summarized, every lookup by time or by event id (history(), prove(),
# a query on audit_log.events) reads all of it; on a fresh log of 200,000
# events that was every record, 600 ms for one row's history.
#
# Its own cluster: VACUUMs triggered by inserts (which summarize too) are
# turned off, so only the work items can summarize the ranges.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
dir=${AUDIT_LOG_BRIN_DIR:-/tmp/audit_log_brin}
export PGHOST=$dir PGPORT=${AUDIT_LOG_BRIN_PORT:-55516} PGUSER=postgres
db=al_brin
fail() { echo "FAIL: $*" >&2; exit 1; }
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }

# shellcheck source=../lib/own_cluster.sh
. "$here/lib/own_cluster.sh"
own_cluster_start "-c unlimited" "autovacuum = on
autovacuum_naptime = 1
autovacuum_vacuum_insert_threshold = -1
autovacuum_vacuum_threshold = 1000000000
autovacuum_analyze_threshold = 1000000000"

psql -X -q -d postgres -c "CREATE DATABASE $db"
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT audit_log.enable('t', history => true);
-- 3,000 transactions, a record each: more than four full ranges.
DO $$
BEGIN
  FOR i IN 1..3000 LOOP
    INSERT INTO t VALUES (i, 'row ' || i);
    COMMIT;
  END LOOP;
END $$;
SQL

pages=$(q -c "SELECT pg_relation_size('audit_log.records') / current_setting('block_size')::int")
[ "$pages" -ge 64 ] || fail "the records fill $pages pages, fewer than four ranges of 16"
# The heap blocks a lookup of the first record by its event id reads.
# EXPLAIN cannot be a subquery; its JSON is read by a function.
q <<'SQL' >/dev/null
CREATE FUNCTION lookup_blocks() RETURNS int LANGUAGE plpgsql AS $$
DECLARE plan jsonb; node jsonb;
BEGIN
  SET LOCAL enable_seqscan = off;
  EXECUTE pg_catalog.format('EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM audit_log.records
            WHERE first_event = %s', (SELECT min(first_event) FROM audit_log.records)) INTO plan;
  -- The bitmap heap scan, wherever the plan puts it.
  SELECT n INTO node FROM jsonb_path_query(plan, 'strict $.**') n
   WHERE n->>'Node Type' = 'Bitmap Heap Scan' LIMIT 1;
  IF node IS NULL THEN
    RAISE EXCEPTION 'no bitmap heap scan in %', plan;
  END IF;
  RETURN coalesce((node->>'Lossy Heap Blocks')::int, 0) + coalesce((node->>'Exact Heap Blocks')::int, 0);
END $$;
SQL
# Right after the load the work items may not have run yet: then a lookup
# reads every page. Within a few autovacuum rounds it reads the first
# range and the newest ranges not yet summarized, at most 3 of them.
limit=$((3 * 16))
for i in $(seq 1 120); do
    got=$(q -c "SELECT lookup_blocks()")
    [ "$got" -le "$limit" ] && break
    sleep 1
done
[ "$got" -le "$limit" ] ||
    fail "a lookup by first_event still reads $got of $pages pages after 120 s: the BRIN ranges were not summarized"
# Nothing but the work items summarized them: no VACUUM ran on the records.
vacuums=$(q -c "SELECT autovacuum_count + vacuum_count FROM pg_stat_user_tables WHERE relid = 'audit_log.records'::regclass")
[ "$vacuums" = 0 ] || fail "the records were vacuumed $vacuums times; the test needs none"
[ "$(q -c "SELECT ok FROM audit_log.verify()")" = t ] || fail "verify() failed"
no_crash
echo "brin_summary: a lookup reads $got of $pages pages, summarized by autovacuum's work items, with no VACUUM"

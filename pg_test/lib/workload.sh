# Shared by the scenarios: a concurrent audited workload, and the invariants
# that must hold after it, each checked against something other than the log.
# Source it; it expects PGHOST/PGPORT/PGUSER to point at the test cluster.

wl_q() { psql -X -q -v ON_ERROR_STOP=1 -At -d "$WL_DB" "$@"; }
wl_fail() { echo "FAIL: $*" >&2; exit 1; }

# Create database $1 with three audited tables and an unaudited witness
# table, into which every workload transaction writes its own xid. A log
# restored into a new cluster holds transactions of two clusters whose xids
# overlap, so a witness row also names its era (see wl_new_era).
wl_setup() {
    WL_DB=$1
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $WL_DB" -c "CREATE DATABASE $WL_DB" 2>/dev/null
    wl_q <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t1 (k int PRIMARY KEY, v int);
CREATE TABLE t2 (k int PRIMARY KEY, v int);
CREATE TABLE t3 (k int PRIMARY KEY, v int);
CREATE TABLE witness (tx xid8, era int NOT NULL DEFAULT 1, PRIMARY KEY (tx, era));
-- An era's transactions are those whose first event is at or after first_event.
CREATE TABLE wl_eras (era int PRIMARY KEY, first_event bigint NOT NULL);
INSERT INTO wl_eras VALUES (1, 0);
SELECT audit_log.enable('t1'), audit_log.enable('t2'), audit_log.enable('t3') \g /dev/null
INSERT INTO t2 SELECT g, 0 FROM generate_series(1, 200) g;
SQL
    WL_SCRIPT=$(mktemp /tmp/audit_log_workload.XXXXXX)
    chmod 644 "$WL_SCRIPT"
    cat >"$WL_SCRIPT" <<'PGB'
\set a random(1, 200)
\set r random(0, 9)
BEGIN;
INSERT INTO t1 VALUES (:a, :r) ON CONFLICT (k) DO UPDATE SET v = t1.v + 1;
INSERT INTO witness VALUES (pg_current_xact_id());
SAVEPOINT s;
UPDATE t2 SET v = v + 1 WHERE k = :a;
\if :r < 3
ROLLBACK TO s;
\endif
DELETE FROM t3 WHERE k = :a;
INSERT INTO t3 VALUES (:a, :r);
\if :r = 9
ROLLBACK;
\else
COMMIT;
\endif
PGB
}

# Start a new era, after restoring into a new cluster: from now on witness
# rows are of the new era, and so are links whose first event comes after
# every event already in the log. Event ids come from a sequence pg_dump
# keeps, so they keep growing where xids start again.
wl_new_era() {
    wl_q <<'SQL'
INSERT INTO wl_eras SELECT max(era) + 1, (SELECT coalesce(max(id), 0) + 1 FROM audit_log.events) FROM wl_eras;
SELECT format('ALTER TABLE witness ALTER era SET DEFAULT %s', max(era)) FROM wl_eras \gexec
SQL
}

# The invariants:
#  (a) verify() is ok (against checkpoint $1 if given);
#  (b) every committed workload transaction (a witness row) has exactly one
#      link and no link lacks one, but for the two setup transactions; and
#      replaying the events row by row reproduces each table exactly;
#  (c) every chain's seq runs 1..n with no gap or fork;
#  (d) at least $2 workload transactions (default 0) committed since the
#      previous wl_check of this script, so that a run with no work fails.
wl_check() {
    local cp=${1:-} min_new=${2:-0} prev=${WL_TX:-0}
    local v
    if [ -n "$cp" ]; then
        v=$(wl_q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp')")
    else
        v=$(wl_q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify()")
    fi
    [ "$v" = "true " ] || wl_fail "verify: $v"
    local linked witness extra gaps
    # A link belongs to the witness row of the same xid and era.
    local link_era="(SELECT max(era) FROM wl_eras e WHERE e.first_event <= l.first_event)"
    linked=$(wl_q -c "SELECT count(*) || ' ' || count(DISTINCT (w.tx, w.era)) FROM audit_log.links l
                        JOIN witness w ON w.tx = l.tx_id AND w.era = $link_era")
    witness=$(wl_q -c "SELECT count(*) FROM witness")
    [ "$linked" = "$witness $witness" ] || wl_fail "$witness committed transactions, links matching them (links, transactions): $linked"
    [ "$min_new" = 0 ] || [ $((witness - prev)) -ge "$min_new" ] \
        || wl_fail "$((witness - prev)) workload transactions committed since the previous check, expected at least $min_new"
    extra=$(wl_q -c "SELECT count(*) FROM audit_log.links l
                       WHERE NOT EXISTS (SELECT 1 FROM witness w WHERE w.tx = l.tx_id AND w.era = $link_era)")
    [ "$extra" = 2 ] || wl_fail "expected 2 setup links besides the workload's, found $extra"
    gaps=$(wl_q -c "SELECT count(*) FROM (SELECT chain_id, count(*) n, max(seq) m, count(DISTINCT seq) d
                                            FROM audit_log.links GROUP BY 1) c WHERE n <> m OR d <> n")
    [ "$gaps" = 0 ] || wl_fail "$gaps chain(s) with a gap or a fork"
    local t diff
    for t in t1 t2 t3; do
        diff=$(wl_q <<SQL
WITH last AS (
  SELECT DISTINCT ON (coalesce(new_row, old_row)->>'k') op, new_row
    FROM audit_log.events WHERE table_name = '$t' AND op IN ('INSERT', 'UPDATE', 'DELETE')
   ORDER BY coalesce(new_row, old_row)->>'k', id DESC),
replayed AS (SELECT (new_row->>'k')::int k, (new_row->>'v')::int v FROM last WHERE op <> 'DELETE')
SELECT count(*) FROM ((SELECT k, v FROM replayed EXCEPT ALL SELECT k, v FROM $t)
            UNION ALL (SELECT k, v FROM $t EXCEPT ALL SELECT k, v FROM replayed)) d;
SQL
)
        [ "$diff" = 0 ] || wl_fail "$t: replaying the events differs from the table in $diff row(s)"
    done
    WL_TX=$witness
    WL_EVENTS=$(wl_q -c "SELECT count(*) FROM audit_log.events")
}

# wl_check against checkpoint $1 (or none) with at least $2 new commits, and
# the commits of the $3 transactions pgbench finished since the previous
# check are there: 1 in 10 on average end with the script's ROLLBACK, so at
# least 7 in 10 committed.
wl_check_load() {
    local prev=${WL_TX:-0} finished=$3
    wl_check "$1" "$2"
    [ $((WL_TX - prev)) -ge $((finished * 7 / 10)) ] \
        || wl_fail "pgbench finished $finished transactions, but only $((WL_TX - prev)) committed"
}

# After a pgbench load that ran to its end, with its output in file $1 and
# its exit status $2: it must have exited 0 (serialization failures and
# deadlocks, counted without retries, are not errors) having finished
# transactions. Sets LOAD_TX to how many.
wl_load_done() {
    local out=$1 rc=$2
    [ "$rc" = 0 ] || wl_fail "pgbench exited with $rc: $(tail -n 5 "$out")"
    LOAD_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    [ "${LOAD_TX:-0}" -gt 0 ] || wl_fail "pgbench finished no transaction: $(tail -n 5 "$out")"
}

# After a pgbench load that a crash ended, with its output in file $1 and
# its exit status $2: it must have started (status 2, clients aborted; 1 is
# a failure to start), every client must have aborted by losing its server
# and by nothing else, and it must have finished transactions first. Sets
# LOAD_TX to how many.
wl_load_crashed() {
    local out=$1 rc=$2 other
    [ "$rc" = 2 ] || wl_fail "pgbench exited with $rc, not 2 (clients aborted by the crash): $(tail -n 5 "$out")"
    # The two threads write their messages in pieces that can interleave at
    # any point ("pgbench: pgbench:error: client 14 ...", a message split over
    # two lines): join the output, remove the prefixes and every expected
    # message, and whatever still speaks of an error is one.
    other=$(tr '\n' ' ' <"$out" \
        | sed -E -e 's/pgbench: ?//g' -e 's/error: ?//g' \
                 -e 's/client [0-9]+ aborted in command [0-9]+ \(SQL\) of script 0; perhaps the backend died while processing//g' \
                 -e 's/client [0-9]+ script [0-9]+ aborted in command [0-9]+ query [0-9]+: server closed the connection unexpectedly//g' \
                 -e 's/(FATAL|WARNING): +terminating connection due to (immediate shutdown|administrator) command//g' \
                 -e 's/Run was aborted; the above results are incomplete\.//g' \
        | grep -o -i -E '.{0,80}(error|fatal|abort).{0,80}' || true)
    [ -z "$other" ] || wl_fail "pgbench failed otherwise than by losing its server: $(head -n 5 <<<"$other")"
    LOAD_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\)$/\1/p' "$out")
    [ "${LOAD_TX:-0}" -gt 0 ] || wl_fail "pgbench finished no transaction before the crash: $(tail -n 5 "$out")"
}

# After a crash and a restart: wait until the server accepts connections.
wait_ready() {
    for _ in $(seq 1 120); do
        psql -X -q -d postgres -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    wl_fail "server did not come back"
}

wl_teardown() {
    rm -f "$WL_SCRIPT"
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $WL_DB" 2>/dev/null || true
}

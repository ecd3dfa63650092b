#!/usr/bin/env bash
# The DDL guard's cost per DDL statement: a migration's statements timed with
# pgbench (one client, -t iterations, per-statement latencies) in
#   plain    a database without audit_log (with the same number of tables)
#   audited  a database with audit_log and DDL_AUDITED_TABLES audited tables
# each also under hostile planner settings for the session. The guard's cost
# must not grow with the number of audited tables, nor depend on the
# planner: target < 1 ms added per statement that records no event.
#
#   bash bench/ddl.sh            (bench/run.sh calls it at its end)
#   DDL_ITERATIONS=100 DDL_ROUNDS=3 DDL_AUDITED_TABLES=10000 bash bench/ddl.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
iters=${DDL_ITERATIONS:-100} rounds=${DDL_ROUNDS:-3} ntables=${DDL_AUDITED_TABLES:-10000}
dir=${DDL_BENCH_DIR:-/tmp/audit_log_bench_ddl} port=${DDL_BENCH_PORT:-55491}
target_ms=1
hostile="-c enable_seqscan=off -c enable_indexscan=off -c enable_bitmapscan=off -c enable_hashjoin=off
 -c enable_mergejoin=off -c enable_nestloop=off -c parallel_setup_cost=0 -c parallel_tuple_cost=0
 -c min_parallel_table_scan_size=0 -c max_parallel_maintenance_workers=0"
# max_parallel_maintenance_workers = 0: with parallel costs at 0, PostgreSQL
# would build even an empty table's index with parallel workers, and each
# worker loads every library the session has loaded (audit_log's costs about
# 0.4 ms per worker): a cost of loading any extension, the same with one
# audited table or 10,000, measured apart below.
hostile=$(echo $hostile)

bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"; rm -rf "${scripts:-}"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
now() { date +%s.%N; }

# The migration's statements. On an unaudited table: CREATE, ADD COLUMN,
# CREATE INDEX, RENAME, DROP. On the audited table acct: each ALTER TABLE
# records an event (expected cost; CREATE/DROP INDEX record none).
scripts=$(mktemp -d); chmod 755 "$scripts"
cat >"$scripts/unaudited.sql" <<'S'
CREATE TABLE mig_t (id int PRIMARY KEY, a int);
ALTER TABLE mig_t ADD COLUMN b text;
CREATE INDEX mig_t_a ON mig_t (a);
ALTER TABLE mig_t RENAME TO mig_t2;
DROP TABLE mig_t2;
S
unaudited_labels=("CREATE TABLE" "ALTER TABLE ADD COLUMN" "CREATE INDEX" "ALTER TABLE RENAME" "DROP TABLE")
cat >"$scripts/audited.sql" <<'S'
ALTER TABLE acct ADD COLUMN note text;
ALTER TABLE acct RENAME COLUMN note TO memo;
CREATE INDEX acct_memo ON acct (memo);
ALTER TABLE acct RENAME TO acct_old;
ALTER TABLE acct_old RENAME TO acct;
DROP INDEX acct_memo;
ALTER TABLE acct DROP COLUMN memo;
S
audited_labels=("ALTER TABLE ADD COLUMN *" "ALTER TABLE RENAME COLUMN *" "CREATE INDEX" "ALTER TABLE RENAME *"
                "ALTER TABLE RENAME back *" "DROP INDEX" "ALTER TABLE DROP COLUMN *")
chmod 644 "$scripts"/*.sql

# Two databases with the same tables; the workload runs as a table owner
# (not a superuser), as a migration does.
q postgres -c "CREATE ROLE bench_owner LOGIN"
declare -A setup_s
for db in plain audited; do
    q postgres -c "CREATE DATABASE $db"
    q "$db" -c "GRANT CREATE ON SCHEMA public TO bench_owner" -c "CREATE SCHEMA many"
    enable=""
    if [ $db = audited ]; then
        q "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log"
        enable="PERFORM audit_log.enable(format('many.t%s', i)::regclass);"
    fi
    t0=$(now)
    q "$db" -c "DO \$\$ BEGIN
        FOR i IN 1..$ntables LOOP
            EXECUTE format('CREATE TABLE many.t%s (id int, v int)', i);
            $enable
            IF i % 500 = 0 THEN COMMIT; END IF;
        END LOOP; END \$\$"
    setup_s[$db]=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    q "$db" -c "VACUUM ANALYZE"
done
audited_n=$(q audited -c "SELECT count(*) FROM audit_log.audited_tables")
[ "$audited_n" = "$ntables" ] || { echo "bench: expected $ntables audited tables, found $audited_n" >&2; exit 1; }
echo "bench ddl: $ntables tables in ${setup_s[plain]} s without audit_log, $ntables audited tables in ${setup_s[audited]} s" >&2

reset_acct() {  # a fresh acct of 1000 rows before each audited run (dropped columns accumulate)
    q "$1" -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS acct, acct_old" \
        -c "CREATE TABLE acct (id int PRIMARY KEY, a int NOT NULL, b text NOT NULL)" \
        -c "INSERT INTO acct SELECT g, g, 'row ' || g FROM generate_series(1, 1000) g" \
        -c "ALTER TABLE acct OWNER TO bench_owner" -c "VACUUM ANALYZE acct"
    if [ "$1" = audited ]; then q "$1" -c "SELECT audit_log.enable('acct')" >/dev/null; fi
}

declare -A res
run() {  # run WORKLOAD DB SETTINGS(normal|hostile) ITERATIONS [keep] -> per-statement ms into res[]
    local w=$1 db=$2 s=$3 n=$4 out opts=""
    [ "$s" = hostile ] && opts=$hostile
    [ "$s" = parallel ] && opts="$hostile -c max_parallel_maintenance_workers=2"
    [ "$w" = audited ] && reset_acct "$db"
    out=$(PGOPTIONS="$opts" pgbench -n -r -U bench_owner -f "$scripts/$w.sql" -t "$n" "$db" 2>&1) \
        || { echo "bench: pgbench failed ($w, $db, $s): $out" >&2; exit 1; }
    grep -q '^number of failed transactions: 0 ' <<<"$out" \
        || { echo "bench: failed transactions ($w, $db, $s): $out" >&2; exit 1; }
    [ "${5:-}" = keep ] || return 0
    local i=0 ms
    while read -r ms; do
        res["$w $db $s $i"]+="$ms "
        i=$((i + 1))
    done < <(sed -n '/^statement latencies/,$p' <<<"$out" | awk 'NR > 1 { print $1 }')
}
mean() { printf '%s\n' "$@" | awk '{s += $1} END {print s / NR}'; }
. "$here/stats.sh"

configs=("plain normal" "audited normal" "plain hostile" "audited hostile")
for c in "${configs[@]}"; do   # warm-up: caches, catalog bloat's first steps
    for w in unaudited audited; do run $w $c 20; done
done
t0=$(now)
for r in $(seq 1 "$rounds"); do
    for w in unaudited audited; do
        for c in "${configs[@]}"; do run $w $c "$iters" keep; done
    done
    echo "bench ddl: round $r/$rounds done" >&2
done
measure_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
# Parallel index builds forced (the hostile settings with parallel
# maintenance workers allowed): what loading audit_log in each worker costs.
for r in $(seq 1 "$rounds"); do
    for db in plain audited; do run unaudited "$db" parallel "$iters" keep; done
done

worst=0
table() {  # table WORKLOAD LABELS...
    local w=$1; shift
    local i=0 label p a ph ah line
    local -a sp sa sph sah
    for label in "$@"; do
        p=$(median ${res["$w plain normal $i"]}) a=$(median ${res["$w audited normal $i"]})
        ph=$(median ${res["$w plain hostile $i"]}) ah=$(median ${res["$w audited hostile $i"]})
        sp+=("$p") sa+=("$a") sph+=("$ph") sah+=("$ah")
        row "$label" "$p" "$a" "$ph" "$ah"
        i=$((i + 1))
    done
    row "mix, mean per statement" "$(mean "${sp[@]}")" "$(mean "${sa[@]}")" "$(mean "${sph[@]}")" "$(mean "${sah[@]}")"
}
row() {  # row LABEL PLAIN AUDITED PLAIN_HOSTILE AUDITED_HOSTILE
    awk -v l="$1" -v p="$2" -v a="$3" -v ph="$4" -v ah="$5" 'BEGIN {
        printf "| %-29s | %7.3f | %9.3f | %+7.3f | %7.3f | %9.3f | %+7.3f |\n", l, p, a, a - p, ph, ah, ah - ph }'
}
header() {
    printf '| %-29s | %7s | %9s | %7s | %7s | %9s | %7s |\n' "$1" plain "10k aud." added "plain" "10k aud." added
    printf '| %-29s | %7s | %9s | %7s | %7s | %9s | %7s |\n' "" "" "" "" hostile hostile hostile
    printf '|%s|\n' "-------------------------------|---------|-----------|---------|---------|-----------|---------"
}

echo
echo "audit_log DDL guard benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(q postgres -c 'SHOW server_version' | cut -d' ' -f1), synchronous_commit on"
echo "pgbench -n -t $iters, one client, as a table owner (not a superuser); medians of $rounds interleaved rounds; ms per statement"
echo "setup: $ntables tables (id int, v int) created in ${setup_s[plain]} s without audit_log;" \
     "created and audited with audit_log.enable() in ${setup_s[audited]} s ($(awk -v s="${setup_s[audited]}" -v n="$ntables" 'BEGIN { printf "%.2f", s * 1000 / n }') ms per table)"
echo "plain: no audit_log, the same $ntables tables; 10k aud.: audit_log, $ntables audited tables;"
echo "hostile: the session SETs $hostile"
echo
echo "Target: < $target_ms ms added per DDL statement that records no event, with $ntables audited tables, hostile settings too."
echo
header "unaudited table"
unaudited_rows=$(table unaudited "${unaudited_labels[@]}")
echo "$unaudited_rows"
echo
echo "On the audited table acct (1000 rows); * records an event in the log, expected cost beyond the guard:"
echo
header "audited table"
audited_rows=$(table audited "${audited_labels[@]}")
echo "$audited_rows"
echo
# The target covers every statement that records no event: those on
# unaudited tables, and CREATE and DROP INDEX on the audited one.
worst=$( { echo "$unaudited_rows"; echo "$audited_rows" | grep -v '\*'; } | grep -v 'mix, mean' \
    | awk -F'|' '{ for (i = 5; i <= 8; i += 3) if ($i + 0 > m) m = $i + 0 } END { printf "%.3f", m }')
verdict=$(awk -v w="$worst" -v t="$target_ms" 'BEGIN { print (w < t ? "met" : "NOT MET") }')
echo "largest added cost on a statement that records no event: $worst ms per statement (target < $target_ms ms): $verdict"
for i in 0 2; do
    awk -v l="${unaudited_labels[$i]}" -v p="$(median ${res["unaudited plain parallel $i"]})" \
        -v a="$(median ${res["unaudited audited parallel $i"]})" 'BEGIN {
        printf "parallel index builds forced, %s: %.3f ms without audit_log, %.3f with (%+.3f: each parallel worker loads the library)\n", l, p, a, a - p }'
done
echo "measured in ${measure_s} s"

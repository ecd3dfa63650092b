#!/usr/bin/env bash
# audit_log benchmarks: every variant measured side by side in one run, in
# interleaved rounds, medians reported as ratios to no auditing.
#
#   bash bench/run.sh                 (needs the README's setup; installs pgaudit)
#   ROUNDS=3 SECONDS_PER_RUN=10 VERIFY_EVENTS=1000000 bash bench/run.sh
#   BENCH_SEED=1 bash bench/run.sh    (other orders of the variants in the rounds)
#
# Variants, each in its own database of one throwaway PostgreSQL 15 cluster:
#   none       no auditing
#   audit_log  this extension
#   pgaudit    pgaudit with pgaudit.log = 'write' (log lines only, no row data)
#   diy_jsonb  a PL/pgSQL trigger writing rows as jsonb (bench/baselines.sql)
#   diy_chain  a PL/pgSQL hash chain locking one head row (bench/baselines.sql)
#   floor      each workload's own statements, each with a CTE inserting one record
#              of the size of the audit_log record it causes (pg_column_size of the
#              audit_log.records row that a single-row transaction of that statement
#              writes, per event, measured once per run) into a table with a
#              two-column primary key. Nothing that stores the event durably in the
#              same transaction can write less: the physical limit (issue 11).
# The cluster preloads pgaudit and audit_log (the README's recommended setup: the
# chain heads in shared memory), for every variant alike.
# Besides, not in the pgbench workloads: audit_hist (database b_audit_hist) is
# audit_log with history => true on bulk_t, timed on the bulk statements only.
# Workloads: single-row INSERT and UPDATE at 1, 8 and 32 clients, a multi-statement
# transaction and pgbench's built-in tpcb-like (all four pgbench tables audited,
# TPCB_SCALE, default 1) at 8 clients, the single-row INSERT and UPDATE at 1 client
# again "apart" (pgbench pinned to CPU 0, its backend to CPU 1; with 2 CPUs or
# more), then a 100k-row INSERT and a 50k-row UPDATE.
# WAL bytes per transaction for each, and for single-row INSERTs (1 client) their
# ratio to no auditing (issue target: audit_log <= 2.5x).
# Then bench/ddl.sh: the DDL guard's cost per DDL statement, on its own cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
. "$here/floor.sh"
rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-8} verify_events=${VERIFY_EVENTS:-1000000}
rows=${TABLE_ROWS:-100000} tpcb_scale=${TPCB_SCALE:-1}
bulk_limit=${BULK_LIMIT_SECONDS:-90}   # the PL/pgSQL chain's bulk load is quadratic
dir=${BENCH_DIR:-/tmp/audit_log_bench} port=${BENCH_PORT:-55450}
variants=(none audit_log pgaudit diy_jsonb diy_chain floor)

dpkg -s postgresql-15-pgaudit >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-pgaudit >/dev/null; }
command -v perf >/dev/null 2>&1 || true

bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
# No checkpoint during the run (its several GB of WAL are kept until the
# cluster goes): the full-page images after a checkpoint would land on
# whichever variant runs next.
cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pgaudit,audit_log'
shared_buffers = '1GB'
max_wal_size = '64GB'
checkpoint_timeout = '1d'
synchronous_commit = on
log_destination = 'stderr'
logging_collector = on
log_directory = '$dir/log'
CONF
mkdir -p "$dir/log"; chown postgres:postgres "$dir/log"
runuser -u postgres -- "$(/usr/bin/pg_config --bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w restart >/dev/null
export PGHOST=$dir PGPORT=$port PGUSER=postgres
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }

setup_db() {
    local v=$1 db=b_$1
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    q "$db" <<SQL
SET client_min_messages = warning;
CREATE TABLE bench_t (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL);
CREATE TABLE bulk_t (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL);
INSERT INTO bench_t (a, b, c, d) SELECT g, 'customer ' || g, g * 1.25, now() FROM generate_series(1, $rows) g;
SQL
    local out
    # audit_hist runs only the bulk statements: no pgbench tables.
    if [ "$v" != audit_hist ]; then
        out=$(pgbench -i -q -s "$tpcb_scale" "$db" 2>&1) || { echo "bench: pgbench -i failed in $db: $out" >&2; exit 1; }
    fi
    case $v in
    audit_log) q "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
                 -c "SELECT audit_log.enable(t) FROM unnest('{bench_t,bulk_t,$pgbench_tables}'::regclass[]) t" >/dev/null ;;
    # history => true: each row change also indexed in audit_log.row_keys.
    audit_hist) q "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
                  -c "SELECT audit_log.enable('bulk_t', history => true)" >/dev/null ;;
    pgaudit) q "$db" -c "CREATE EXTENSION pgaudit" -c "ALTER DATABASE $db SET pgaudit.log = 'write'" ;;
    diy_jsonb|diy_chain)
        q "$db" -f "$here/baselines.sql" >/dev/null
        local fn=${v#diy_}; fn=$([ "$fn" = jsonb ] && echo diy_audit || echo chain_audit)
        local t
        for t in bench_t bulk_t ${pgbench_tables//,/ }; do
            q "$db" -c "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON $t FOR EACH ROW EXECUTE FUNCTION $fn()"
        done ;;
    # The floor's record: (transaction, position) as key, padding to an event's size.
    # STORAGE EXTERNAL: never compressed, as the events it stands for are not.
    floor) q "$db" -c "CREATE TABLE floor_log (tx xid8 NOT NULL, n int NOT NULL, pad text NOT NULL, PRIMARY KEY (tx, n))" \
               -c "ALTER TABLE floor_log ALTER pad SET STORAGE EXTERNAL" ;;
    esac
    q "$db" -c "VACUUM ANALYZE"
}

pgbench_tables=pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history
scripts=$(mktemp -d); chmod 755 "$scripts"
cat >"$scripts/insert.sql" <<'S'
INSERT INTO bench_t (a, b, c, d) VALUES (1, 'new customer', 99.95, now());
S
cat >"$scripts/update.sql" <<S
\set id random(1, $rows)
UPDATE bench_t SET a = a + 1, c = c + 0.01 WHERE id = :id;
S
cat >"$scripts/multi.sql" <<S
\set id random(1, $rows)
\set id2 random(1, $rows)
BEGIN;
SELECT a, b, c FROM bench_t WHERE id = :id;
UPDATE bench_t SET a = a + 1 WHERE id = :id;
UPDATE bench_t SET c = c + 1 WHERE id = :id2;
INSERT INTO bench_t (a, b, c, d) VALUES (:id, 'order line', 12.50, now());
SELECT count(*) FROM bench_t WHERE id BETWEEN :id AND :id + 10;
COMMIT;
S
chmod 644 "$scripts"/*.sql

extra=(audit_hist)   # bulk statements only, reported below the table
echo "bench: setting up $(( ${#variants[@]} + ${#extra[@]} )) databases of $rows rows each" >&2
for v in "${variants[@]}" "${extra[@]}"; do setup_db "$v"; done

# The floor's record sizes: each statement run once, as a transaction of its
# own, in b_audit_log (as pgbench, whose application_name the events record),
# the audit_log.records row it writes measured with pg_column_size (per event:
# one event each here), and the floor's padding chosen so that its row
# (tx, n, pad) has the same pg_column_size.
declare -A esize pad
measure() {  # KEY SQL: the record size per event that SQL writes into esize[KEY], padding into pad[KEY]
    local before
    before=$(q b_audit_log -c "SELECT coalesce(max(last_event), 0) FROM audit_log.records")
    PGAPPNAME=pgbench q b_audit_log -c "$2" >/dev/null
    esize[$1]=$(q b_audit_log -c "SELECT round(sum(pg_column_size(r.*))::numeric / sum(r.event_count))::int
                                  FROM audit_log.records r WHERE r.first_event > $before")
    [ -n "${esize[$1]}" ] || { echo "bench: no audit_log record for $1: $2" >&2; exit 1; }
    pad[$1]=$(floor_pad b_floor "${esize[$1]}")
}
mid=$(( rows / 2 ))
measure insert "INSERT INTO bench_t (a, b, c, d) VALUES (1, 'new customer', 99.95, now())"
measure update "UPDATE bench_t SET a = a + 1, c = c + 0.01 WHERE id = $mid"
measure multi1 "UPDATE bench_t SET a = a + 1 WHERE id = $mid"
measure multi2 "UPDATE bench_t SET c = c + 1 WHERE id = $mid"
measure multi3 "INSERT INTO bench_t (a, b, c, d) VALUES ($mid, 'order line', 12.50, now())"
measure tpcb1 "UPDATE pgbench_accounts SET abalance = abalance + 1234 WHERE aid = 50000"
measure tpcb2 "UPDATE pgbench_tellers SET tbalance = tbalance + 1234 WHERE tid = 5"
measure tpcb3 "UPDATE pgbench_branches SET bbalance = bbalance + 1234 WHERE bid = 1"
measure tpcb4 "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 50000, 1234, CURRENT_TIMESTAMP)"
measure bulk_insert "INSERT INTO bulk_t SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(50000, 50000) g"
measure bulk_update "UPDATE bulk_t SET a = a + 1 WHERE id = 50000"
q b_audit_log -c "TRUNCATE bulk_t"
rec() { echo "WITH f AS (INSERT INTO floor_log VALUES (pg_current_xact_id(), $1, repeat('x', ${pad[$2]})))"; }
cat >"$scripts/insert.floor.sql" <<S
$(rec 1 insert) INSERT INTO bench_t (a, b, c, d) VALUES (1, 'new customer', 99.95, now());
S
cat >"$scripts/update.floor.sql" <<S
\set id random(1, $rows)
$(rec 1 update) UPDATE bench_t SET a = a + 1, c = c + 0.01 WHERE id = :id;
S
cat >"$scripts/multi.floor.sql" <<S
\set id random(1, $rows)
\set id2 random(1, $rows)
BEGIN;
SELECT a, b, c FROM bench_t WHERE id = :id;
$(rec 1 multi1) UPDATE bench_t SET a = a + 1 WHERE id = :id;
$(rec 2 multi2) UPDATE bench_t SET c = c + 1 WHERE id = :id2;
$(rec 3 multi3) INSERT INTO bench_t (a, b, c, d) VALUES (:id, 'order line', 12.50, now());
SELECT count(*) FROM bench_t WHERE id BETWEEN :id AND :id + 10;
COMMIT;
S
# pgbench's built-in tpcb-like (PostgreSQL 15's text), each write with its record.
cat >"$scripts/tpcb-like.floor.sql" <<S
\set aid random(1, 100000 * $tpcb_scale)
\set bid random(1, 1 * $tpcb_scale)
\set tid random(1, 10 * $tpcb_scale)
\set delta random(-5000, 5000)
BEGIN;
$(rec 1 tpcb1) UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
$(rec 2 tpcb2) UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
$(rec 3 tpcb3) UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
$(rec 4 tpcb4) INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
S
chmod 644 "$scripts"/*.sql

lsn() { q postgres -c "SELECT pg_current_wal_insert_lsn()"; }
wal_since() { q postgres -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$1')::bigint"; }
script_opt() {  # variant workload -> pgbench's script: the variant's own, the shared one, or a built-in
    if [ -f "$scripts/$2.$1.sql" ]; then echo "-f $scripts/$2.$1.sql"
    elif [ -f "$scripts/$2.sql" ]; then echo "-f $scripts/$2.sql"
    else echo "-b $2"; fi
}
# "apart": pgbench on CPU 0 and its one backend on CPU 1, as with a client on
# another machine. Left to the scheduler on 2 CPUs, a client and its backend
# share one CPU in some runs and in others the backend is moved to the
# client's CPU at each query, differently for each variant: pinned, every
# variant runs the same way (docs/PERFORMANCE.md, "The 1-client gap";
# PLACEMENT in bench/cpu.sh).
pgbench_placed() {  # variant placement pgbench-args...: pgbench's output
    local db=b_$1 place=$2 pid= i rc=0
    shift 2
    if [ "$place" != apart ]; then pgbench "$@"; return; fi
    taskset -c 0 pgbench "$@" >"$scripts/pgbench.out" 2>&1 &
    local bench=$!
    for i in $(seq 1 200); do
        pid=$(q postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = '$db' AND application_name = 'pgbench'
                             ORDER BY backend_start DESC LIMIT 1")
        [ -n "$pid" ] && break
        sleep 0.01
    done
    if [ -n "$pid" ]; then
        taskset -p -c 1 "$pid" >/dev/null
    else
        echo "bench: pgbench's backend in $db not found, so not pinned" >&2
    fi
    wait "$bench" || rc=$?
    cat "$scripts/pgbench.out"
    return "$rc"
}
tps() {  # variant workload clients [placement] -> tps; WAL bytes per transaction into $scripts/wal.*
    local out start n key=$3${4:+.$4}
    start=$(lsn)
    out=$(pgbench_placed "$1" "${4:-free}" -n $(script_opt "$1" "$2") -c "$3" -j $(( $3 < 2 ? 1 : 2 )) -T "$secs" "b_$1" 2>&1) || { echo 0; return; }
    n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    echo "$(( $(wal_since "$start") / (n > 0 ? n : 1) ))" | tee -a "$scripts/walall.$1.$2.$key" >"$scripts/wal.$1.$2.$key"
    echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
. "$here/stats.sh"

declare -A res
# tpcb-like runs in every variant: audit_log, pgaudit and the two triggers cover
# all four pgbench tables, and the floor runs the built-in script's statements
# with a record each. None is skipped. At TPCB_SCALE 1 the 8 clients share one
# pgbench_branches row, so its row lock (held until the commit's WAL flush)
# serializes them, as pgbench's documentation warns for scale < clients.
workloads=("insert 1" "insert 8" "insert 32" "update 1" "update 8" "update 32" "multi 8" "tpcb-like 8")
[ "$(nproc)" -ge 2 ] && workloads+=("insert 1 apart" "update 1 apart")
# Each round and workload runs the variants in its own order, the same in
# every run of this script: a variant that always ran after the same one
# would pay for that one's aftermath (its autovacuum, its dirty buffers) in
# every round.
# Over a few rounds the orders are not balanced (one variant can follow
# another in two rounds of three): BENCH_SEED (default 0) draws others.
seed=${BENCH_SEED:-0}
shuffled() {  # ROUND WORKLOAD VARIANT...: the variants in that round's order
    local r=$1 w=$2 v
    shift 2
    for v in "$@"; do printf '%s %s\n' "$(printf '%s' "$seed $r $w $v" | md5sum | cut -c1-8)" "$v"; done | sort | cut -d' ' -f2
}
for r in $(seq 1 "$rounds"); do
    for w in "${workloads[@]}"; do
        set -- $w
        for v in $(shuffled "$r" "$w" "${variants[@]}"); do
            res["$1 $2${3:+ $3} $v"]+="$(tps "$v" "$1" "$2" "${3:-}") "
        done
        echo "bench: round $r/$rounds $1 x$2${3:+ $3} done" >&2
    done
    for v in $(shuffled "$r" bulk "${variants[@]}" "${extra[@]}"); do
        # A statement over the limit counts as the limit, and is shown as ">".
        # The floor writes one record of an event's size per row, in the same statement.
        fl_ins="" fl_upd=""
        if [ "$v" = floor ]; then
            fl_ins="WITH f AS (INSERT INTO floor_log SELECT pg_current_xact_id(), g, repeat('x', ${pad[bulk_insert]}) FROM generate_series(1, 100000) g)"
            fl_upd="WITH f AS (INSERT INTO floor_log SELECT pg_current_xact_id(), g, repeat('x', ${pad[bulk_update]}) FROM generate_series(1, 50000) g)"
        fi
        q "b_$v" -c "TRUNCATE bulk_t"
        start=$(lsn)
        t1=$(q "b_$v" -c "SET statement_timeout = '${bulk_limit}s'" -c '\timing on' \
              -c "$fl_ins INSERT INTO bulk_t SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, 100000) g" \
              2>/dev/null | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' || true)
        echo "$(( $(wal_since "$start") / 100000 ))" >"$scripts/wal.$v.bulk_insert"
        t2=""
        # Time the UPDATE only over a complete table (not after a timed-out INSERT).
        if [ "$(q "b_$v" -c "SELECT count(*) FROM bulk_t")" = 100000 ]; then
            start=$(lsn)
            t2=$(q "b_$v" -c "SET statement_timeout = '${bulk_limit}s'" -c '\timing on' \
                  -c "$fl_upd UPDATE bulk_t SET a = a + 1 WHERE id <= 50000" 2>/dev/null | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' || true)
            echo "$(( $(wal_since "$start") / 50000 ))" >"$scripts/wal.$v.bulk_update"
        fi
        res["bulk_insert $v"]+="${t1:-$((bulk_limit * 1000))} "
        res["bulk_update $v"]+="${t2:-$((bulk_limit * 1000))} "
    done
    echo "bench: round $r/$rounds bulk done" >&2
done

# Verification speed over VERIFY_EVENTS events, next to raw SHA-256 over the same bytes.
# Events are counted from the records (event_count): the events view unpacks them.
q b_audit_log -c "SET client_min_messages = warning" -c "CREATE TABLE vt (id bigint, a int, b text, c numeric, d timestamptz)" \
    -c "SELECT audit_log.enable('vt')" >/dev/null
n_events() { q "$1" -c "SELECT coalesce(sum(event_count), 0)::bigint FROM audit_log.records"; }
have=$(n_events b_audit_log)
while [ "$have" -lt "$verify_events" ]; do
    n=$(( verify_events - have < 200000 ? verify_events - have : 200000 ))
    q b_audit_log -c "INSERT INTO vt SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, $n) g"
    have=$(n_events b_audit_log)
done
q b_audit_log -c "VACUUM ANALYZE audit_log.records" -c "VACUUM ANALYZE audit_log.segments" -c "VACUUM ANALYZE audit_log.row_keys"
vt=() vt1=()
for r in $(seq 1 "$rounds"); do
    vt+=("$(q b_audit_log -c '\timing on' -c "SELECT ok FROM audit_log.verify()" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')")
    vt1+=("$(q b_audit_log -c "SET audit_log.verify_threads = 0" -c '\timing on' -c "SELECT ok FROM audit_log.verify()" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')")
done
verify_ms=$(median "${vt[@]}") verify1_ms=$(median "${vt1[@]}")
# The offline verifier over the same log, as exported in each form.
cli=${AUDIT_LOG_CLI:-$(command -v audit-log || echo "$root/target/release/audit-log")}
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=b_audit_log"
"$cli" export --dsn "$dsn" --format records --out "$scripts/records.jsonl" 2>/dev/null
"$cli" export --dsn "$dsn" --format binary --out "$scripts/records.bin" 2>/dev/null
"$cli" export --dsn "$dsn" --format logical --out "$scripts/logical.jsonl" 2>/dev/null
offline() {  # FILE THREADS -> milliseconds that audit-log verify took
    "$cli" verify --threads "$2" "$1" 2>&1 >/dev/null | sed -n 's/^verified [0-9]* events in \([0-9.]*\) s.*/\1/p' | awk '{ printf "%.0f", $1 * 1000 }'; }
ort=() or1=() olt=() obt=() ob1=()
for r in $(seq 1 "$rounds"); do
    ort+=("$(offline "$scripts/records.jsonl" "$(nproc)")")
    or1+=("$(offline "$scripts/records.jsonl" 1)")
    obt+=("$(offline "$scripts/records.bin" "$(nproc)")")
    ob1+=("$(offline "$scripts/records.bin" 1)")
    olt+=("$(offline "$scripts/logical.jsonl" "$(nproc)")")
done
offline_rec_ms=$(median "${ort[@]}") offline_rec1_ms=$(median "${or1[@]}") offline_log_ms=$(median "${olt[@]}")
offline_bin_ms=$(median "${obt[@]}") offline_bin1_ms=$(median "${ob1[@]}")
events=$(n_events b_audit_log)
# What verify() hashes: every payload, uncompressed (octet_length of a bytea is its raw size).
bytes=$(q b_audit_log -c "SELECT (SELECT coalesce(sum(octet_length(payload)), 0) FROM audit_log.records)
                               + (SELECT coalesce(sum(octet_length(payload)), 0) FROM audit_log.segments)")
sha_mbs=$(python3 -c "
import hashlib, time
buf = b'x' * (64 << 20); t = time.perf_counter(); n = 0
while time.perf_counter() - t < 2: hashlib.sha256(buf).digest(); n += len(buf)
print(n / (time.perf_counter() - t) / 1e6)")
log_size="pg_total_relation_size('audit_log.records') + pg_total_relation_size('audit_log.segments') + pg_total_relation_size('audit_log.row_keys')"
size=$(q b_audit_log -c "SELECT ($log_size) / greatest(sum(event_count), 1)::bigint FROM audit_log.records")
hist_size=$(q b_audit_hist -c "SELECT ($log_size) / greatest(sum(event_count), 1)::bigint FROM audit_log.records")
hist_keys=$(q b_audit_hist -c "SELECT pg_total_relation_size('audit_log.row_keys') / greatest(count(*), 1) FROM audit_log.row_keys")
diy_size=$(q b_diy_jsonb -c "SELECT pg_total_relation_size('diy_audit') / greatest(count(*), 1) FROM diy_audit")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# audit_log's ratio minus the floor's per round (floor_differences); for a
# bulk statement, LIMIT (ms) leaves out the rounds that timed out.
differences() {  # KEY [LIMIT]: one per round that has one, in the rounds' order
    floor_differences "${res["$1 none"]}" "${res["$1 audit_log"]}" "${res["$1 floor"]}" "${2:-0}"
}
paired() {  # KEY [LIMIT]: the median of differences(), or "-"
    local d
    d=$(differences "$@")
    # shellcheck disable=SC2086
    if [ -n "$d" ]; then printf '%+.2f' "$(median $d)"; else echo -; fi
}
cols=(audit_log floor pgaudit diy_jsonb diy_chain)   # after none, in this order
row() {  # KEY LABEL tps|ms: one line of the table; after floor, the median of differences()
    local key=$1 base m r cell line limit=""
    if [ "$3" = ms ]; then limit=$((bulk_limit * 1000)); fi
    base=$(median ${res["$key none"]})
    line=$(printf '| %-28s | %9.0f |' "$2" "$base")
    for v in "${cols[@]}"; do
        m=$(median ${res["$key $v"]}) r=$(ratio "$m" "$base")
        if [ "$3" = ms ] && awk -v m="$m" -v l="$((bulk_limit * 1000))" 'BEGIN { exit !(m >= l) }'; then
            cell=">${bulk_limit}000 (timeout)" r=-
        else
            cell=$(printf '%7.0f (%5sx)' "$m" "$r")
        fi
        line+=$(printf ' %16s |' "$cell")
        [ "$v" = floor ] && line+=$(printf ' %8s |' "$(paired "$key" "$limit")")
    done
    echo "$line"
}
echo
echo "audit_log benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(q postgres -c 'SHOW server_version' | cut -d' ' -f1), synchronous_commit on"
echo "medians of $rounds interleaved rounds, ${secs}s each; throughput in tps, ratio = variant / none;"
echo "vs floor = audit_log's ratio minus the floor's, each round against its own none, median of the rounds (not the columns' difference)"
echo "(for the ms rows, + is slower); variants in a different order in each round; tpcb-like at scale $tpcb_scale"
echo
printf '| %-28s | %9s | %16s | %16s | %8s | %16s | %16s | %16s |\n' workload none audit_log floor "vs floor" pgaudit diy_jsonb diy_chain
printf '|%s|\n' "------------------------------|-----------|------------------|------------------|----------|------------------|------------------|------------------"
label() {  # workload clients [placement] -> the table's label
    echo "$1, $2 client(s)${3:+, $3}"
}
for w in "${workloads[@]}"; do
    set -- $w
    row "$1 $2${3:+ $3}" "$(label "$@")" tps
done
row bulk_insert "INSERT 100k rows (ms)" ms
row bulk_update "UPDATE 50k rows (ms)" ms
# The spread behind each median: audit_log's ratio minus the floor's in
# each round, against that round's own "none" (rounds without one left out).
echo
echo "vs floor, round by round (in the rounds' order):"
for w in "${workloads[@]}"; do
    set -- $w
    k="$1 $2${3:+ $3}"
    echo "  $(label "$@"): $(differences "$k" | paste -sd, | sed 's/,/, /g')"
done
# audit_log with history => true on bulk_t (b_audit_hist), bulk statements only.
hist_row() {  # KEY LABEL: its median ms, ratio to none, and audit_log's for comparison
    local m base al
    m=$(median ${res["$1 audit_hist"]}) base=$(median ${res["$1 none"]}) al=$(median ${res["$1 audit_log"]})
    if awk -v m="$m" -v l="$((bulk_limit * 1000))" 'BEGIN { exit !(m >= l) }'; then
        printf '%s >%s000 ms (timeout)' "$2" "$bulk_limit"
    else
        printf '%s %.0f ms (%sx; audit_log without history %.0f ms, %sx)' "$2" "$m" "$(ratio "$m" "$base")" "$al" "$(ratio "$al" "$base")"
    fi
}
echo
echo "history => true on bulk_t: $(hist_row bulk_insert "INSERT 100k rows"), $(hist_row bulk_update "UPDATE 50k rows")"
echo
echo "WAL written per transaction (bytes; per row for the bulk statements; ratio = variant / none), last round:"
echo
printf '| %-28s | %9s | %16s | %16s | %16s | %16s | %16s |\n' workload none "${cols[@]}"
printf '|%s|\n' "------------------------------|-----------|------------------|------------------|------------------|------------------|------------------"
for w in "${workloads[@]}" bulk_insert bulk_update; do
    set -- $w
    case $1 in bulk_insert) lbl="INSERT 100k rows" ;; bulk_update) lbl="UPDATE 50k rows" ;; *) lbl=$(label "$@") ;; esac
    line=$(printf '| %-28s |' "$lbl")
    base=$(cat "$scripts/wal.none.$1${2:+.$2}${3:+.$3}" 2>/dev/null || echo -)
    line+=$(printf ' %9s |' "$base")
    for v in "${cols[@]}"; do
        f="$scripts/wal.$v.$1${2:+.$2}${3:+.$3}"
        if [ -f "$f" ]; then
            wal=$(cat "$f") cell=$(printf '%7s (%5sx)' "$wal" "$(ratio "$wal" "${base/-/0}")")
        else
            cell=-
        fi
        line+=$(printf ' %16s |' "$cell")
    done
    echo "$line"
done
echo "history => true on bulk_t, WAL per row: INSERT $(cat "$scripts/wal.audit_hist.bulk_insert" 2>/dev/null || echo -)," \
     "UPDATE $(cat "$scripts/wal.audit_hist.bulk_update" 2>/dev/null || echo -)"
# The issue's target: an audited single-row transaction writes <= 2.5x the WAL
# of an unaudited one. Medians over every round of the single-row INSERT at 1 client.
wal_none=$(median $(cat "$scripts/walall.none.insert.1" 2>/dev/null)) wal_al=$(median $(cat "$scripts/walall.audit_log.insert.1" 2>/dev/null))
echo "WAL per single-row INSERT transaction (1 client, median of $rounds round(s)): none $wal_none bytes/tx," \
     "audit_log $wal_al bytes/tx = $(ratio "$wal_al" "$wal_none")x none (target <= 2.5x)"
echo
echo -n "floor records, bytes (pg_column_size per event of the audit_log.records row each stands for / of the floor's row):"
for k in insert update multi1 multi2 multi3 tpcb1 tpcb2 tpcb3 tpcb4 bulk_insert bulk_update; do
    echo -n " $k $(q b_floor -c "SELECT ${esize[$k]} || '/' || pg_column_size(ROW('0'::xid8, 0, repeat('x', ${pad[$k]})))")"
done
echo
awk -v e="$events" -v ms="$verify_ms" -v ms1="$verify1_ms" -v c="$(nproc)" -v b="$bytes" -v s="$sha_mbs" 'BEGIN {
  printf "verify(), hashing on worker threads: %d events in %.0f ms = %.0f events/s (%d cores)\n", e, ms, e / (ms / 1000), c;
  printf "verify(), verify_threads = 0 (one core): %d events in %.0f ms = %.0f events/s\n", e, ms1, e / (ms1 / 1000);
  printf "raw SHA-256 over the same %.0f MB: %.0f MB/s = %.0f events/s (the limit)\n", b / 1e6, s, e / (b / 1e6 / s) }'
awk -v e="$events" -v r="$offline_rec_ms" -v r1="$offline_rec1_ms" -v l="$offline_log_ms" -v c="$(nproc)" \
    -v b="$offline_bin_ms" -v b1="$offline_bin1_ms" 'BEGIN {
  printf "offline audit-log verify, binary export: %.0f ms = %.0f events/s (%d worker threads), %.0f ms = %.0f events/s (1 worker thread)\n", b, e / (b / 1000), c, b1, e / (b1 / 1000);
  printf "offline audit-log verify, records export: %.0f ms = %.0f events/s (%d worker threads), %.0f ms = %.0f events/s (1 worker thread)\n", r, e / (r / 1000), c, r1, e / (r1 / 1000);
  printf "offline audit-log verify, logical export: %.0f ms = %.0f events/s (%d worker threads)\n", l, e / (l / 1000), c }'
echo "size on disk: audit_log $size bytes/event (records, segments, row_keys and their indexes, TOAST included); diy_jsonb $diy_size bytes/event"
echo "size on disk, b_audit_hist (bulk statements only, history => true): $hist_size bytes/event; row_keys $hist_keys bytes per entry (one per row change)"
rm -rf "$scripts"

# The DDL guard's cost, on a cluster of its own, once this one has stopped.
bash "$root/pg_test/cluster.sh" stop "$dir"
echo
bash "$here/ddl.sh"

#!/usr/bin/env bash
# Central collection by logical replication, on two clusters of its own:
#   cluster A: source database src1;
#   cluster B: source database src2 and the collector database.
# Each source publishes audit_log.records, segments, anchors and source
# (publish = 'insert'); the collector subscribes to both and keeps each
# log in its own schema (audit_log.collect()). Under a write load on both
# sources, the collector's cluster and then the source's cluster are
# stopped with an immediate shutdown and restarted. Then, per source:
# - the collected copy holds exactly the source's records (none lost, none
#   twice), and verifies in SQL and with the CLI with the source's result;
# - a checkpoint taken at the source verifies against the collector's copy;
# - the collector knows the source by its identity (audit_log.source_id());
# - the collected log is append-only there too;
# - a source that drops the tail of a chain after shipping it verifies alone,
#   and is caught by the collector's checkpoint.
# Bad input: an unregistered subscription, a subscription re-pointed at
# another database, an unknown source and a bad source name. The lag from a
# source's commit to the collector is measured at a stated write rate.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
pg_config=${PG_CONFIG:-/usr/bin/pg_config}
BIN=$("$pg_config" --bindir)
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
dir=${AUDIT_LOG_COLLECT_DIR:-/tmp/audit_log_collect}
aport=${AUDIT_LOG_COLLECT_PORT:-55510} bport=$((aport + 1))
rate=${RATE:-100}
. "$here/lib/workload.sh"
[ -x "$cli" ] || wl_fail "$cli not built (cargo build --release -p audit_log_cli)"
CL_DIR=$dir; . "$here/lib/clusters.sh"
export PGHOST=$dir PGUSER=postgres
A() { PGPORT=$aport psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
B() { PGPORT=$bport psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }

cl_fresh
work=$dir/work
trap 'cl_stop_all; rm -f "${WL_SCRIPT:-}"; rm -rf "$dir"' EXIT
logical=("wal_level = logical" "max_wal_senders = 10" "max_replication_slots = 10"
         "max_logical_replication_workers = 8" "wal_retrieve_retry_interval = 500ms")
cl_init a "$aport" "${logical[@]}"
cl_init b "$bport" "${logical[@]}"
start() { cl_start "$1"; }
crash() { cl_crash "$1"; }

# The sources: the shared workload's audited tables, an identity, a publication.
PGPORT=$aport wl_setup src1; script1=$WL_SCRIPT
PGPORT=$bport wl_setup src2; script2=$WL_SCRIPT
publication="CREATE PUBLICATION audit_log_pub FOR TABLE audit_log.records, audit_log.segments,
                 audit_log.anchors, audit_log.source WITH (publish = 'insert')"
A -d src1 -c "SELECT audit_log.source_id()" -c "$publication" >/dev/null
B -d src2 -c "SELECT audit_log.source_id()" -c "$publication" >/dev/null
# A subscription to a database of its own cluster needs its slot made first.
B -d src2 -c "SELECT pg_create_logical_replication_slot('sub_src2', 'pgoutput')" >/dev/null

# The collector.
B -d postgres -c "CREATE DATABASE collector"
C() { B -d collector "$@"; }
C -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
  -c "SELECT audit_log.collect('src1', 'sub_src1'), audit_log.collect('src2', 'sub_src2')" \
  -c "CREATE ROLE collect_auditor LOGIN IN ROLE audit_log_auditor" >/dev/null
C -c "CREATE SUBSCRIPTION sub_src1 CONNECTION 'host=$dir port=$aport user=postgres dbname=src1' PUBLICATION audit_log_pub" 2>/dev/null
C -c "CREATE SUBSCRIPTION sub_src2 CONNECTION 'host=$dir port=$bport user=postgres dbname=src2' PUBLICATION audit_log_pub
        WITH (create_slot = false, slot_name = 'sub_src2')" 2>/dev/null

heads_at_source() { "$1" -d "$2" -c "SELECT string_agg(chain_id || ':' || seq || ':' || encode(link_hash, 'hex'), ',' ORDER BY chain_id, seq) FROM audit_log.records"; }
heads_at_collector() { C -c "SELECT string_agg(chain_id || ':' || seq || ':' || encode(link_hash, 'hex'), ',' ORDER BY chain_id, seq) FROM audit_log_source_$1.records"; }
caught_up() {  # caught_up SIDE DB NAME: wait until the collector holds every record of the source
    local i
    for i in $(seq 1 240); do
        [ "$(heads_at_source "$1" "$2")" = "$(heads_at_collector "$3")" ] && return 0
        sleep 0.25
    done
    wl_fail "the collector did not catch up with $3 in 60 s: source $(heads_at_source "$1" "$2" | wc -c) bytes of heads, collector $(heads_at_collector "$3" | wc -c)"
}

# Writes on both sources; the collector's cluster, then a source's, dies mid-stream.
load() {  # load SIDE_PORT DB SCRIPT SECONDS LOG
    PGPORT=$1 pgbench -n -c 2 -j 2 -R "$rate" -T "$4" -f "$3" "$2" >"$5" 2>&1
}
load $aport src1 "$script1" 12 "$work/l1.out" & l1=$!
load $bport src2 "$script2" 4 "$work/l2.out" & l2=$!
sleep 2
crash b                     # the subscriber (and src2) die mid-stream
set +e; wait $l2; rc2=$?; set -e
[ "$rc2" = 2 ] || wl_fail "pgbench on src2 when its cluster died exited $rc2: $(tail -2 "$work/l2.out")"
sleep 1
start b
load $bport src2 "$script2" 4 "$work/l2b.out" & l2=$!
sleep 2
crash a                     # a source dies mid-stream
set +e; wait $l1; rc1=$?; set -e
[ "$rc1" = 2 ] || wl_fail "pgbench on src1 when its cluster died exited $rc1: $(tail -2 "$work/l1.out")"
start a
load $aport src1 "$script1" 3 "$work/l1b.out" || wl_fail "pgbench on src1 after the restart: $(tail -2 "$work/l1b.out")"
wait $l2 || wl_fail "pgbench on src2 after the restart: $(tail -2 "$work/l2b.out")"

for s in src1 src2; do
    side=A; [ $s = src2 ] && side=B
    caught_up $side $s $s
    # The source's own invariants, and the copy against the source.
    port=$aport; [ $s = src2 ] && port=$bport
    PGPORT=$port WL_DB=$s WL_TX=0 wl_check "" 50
    at_source=$($side -d $s -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
    at_collector=$(C -c "SELECT ok || ' ' || events_checked FROM audit_log.verify_source('$s')")
    [ "$at_source" = "$at_collector" ] || wl_fail "$s: verify() says '$at_source' at the source, '$at_collector' at the collector"
    $side -d $s -c "SELECT audit_log.checkpoint()" >"$work/$s.cp"
    [ "$(C -c "SELECT ok FROM audit_log.verify_source('$s', '$(cat "$work/$s.cp")')")" = t ] \
        || wl_fail "$s: the source's checkpoint does not verify against the collected copy"
    [ "$(C -c "SELECT source_id FROM audit_log.sources WHERE name = '$s'")" = "$($side -d $s -c "SELECT audit_log.source_id()")" ] \
        || wl_fail "$s: the collector does not know the source by its identity"
    # The CLI, from the collector.
    "$cli" export --dsn "host=$dir port=$bport user=collect_auditor dbname=collector" --source $s \
        --format records --out "$work/$s.jsonl" 2>"$work/export.err" || wl_fail "$s: export --source: $(cat "$work/export.err")"
    out=$("$cli" verify "$work/$s.jsonl" --checkpoint "$work/$s.cp" 2>&1) || wl_fail "$s: the collected export does not verify: $out"
    grep -q "events checked: ${at_source#* }," <<<"$out" || wl_fail "$s: the CLI checked other than ${at_source#* } events: $out"
    echo "  $s: ${at_source#* } events collected once each; verify() at both ends, the CLI and the source's checkpoint agree"
done
# No row of a source went into the collector's own log.
[ "$(C -c "SELECT count(*) FROM audit_log.records")" = 0 ] || wl_fail "collected rows went into the collector's own log"

# Append-only at the collector: for the auditor, and for a superuser.
for stmt in "UPDATE audit_log_source_src1.records SET seq = seq" "DELETE FROM audit_log_source_src1.records" \
            "INSERT INTO audit_log_source_src1.anchors VALUES (0, 1, '\\x00', 1, now())"; do
    out=$(PGPORT=$bport psql -X -q -At -U collect_auditor -d collector -c "$stmt" 2>&1) && wl_fail "the auditor could: $stmt"
    grep -q "permission denied" <<<"$out" || wl_fail "$stmt as the auditor: $out"
done
for stmt in "UPDATE audit_log_source_src1.records SET seq = seq" "DELETE FROM audit_log_source_src2.records" \
            "TRUNCATE audit_log_source_src1.records"; do
    out=$(C -c "$stmt" 2>&1) && wl_fail "a superuser could: $stmt"
    grep -q "append-only" <<<"$out" || wl_fail "$stmt as a superuser: $out"
done

# A schema made under a registered source's name, after a superuser
# dropped the real one, is not that source's log: a non-superuser who made
# it cannot have it read, or written to, as one.
C -c "SELECT audit_log.collect('src3', 'sub_src3')" -c "DROP SCHEMA audit_log_source_src3 CASCADE" \
  -c "CREATE ROLE squatter LOGIN" -c "GRANT CREATE ON DATABASE collector TO squatter" >/dev/null 2>&1
PGPORT=$bport psql -X -q -v ON_ERROR_STOP=1 -U squatter -d collector \
  -c "CREATE SCHEMA audit_log_source_src3" \
  -c "CREATE TABLE audit_log_source_src3.records (chain_id int, seq bigint, tx_id xid8, first_event bigint, last_event bigint,
        event_count bigint, committed_at timestamptz, segments int, link_hash bytea, payload bytea)" \
  -c "CREATE TABLE audit_log_source_src3.segments (first_event bigint, part int, payload bytea)" \
  -c "CREATE TABLE audit_log_source_src3.anchors (chain_id int, seq bigint, link_hash bytea, last_event bigint, purged_at timestamptz)" \
  >/dev/null || wl_fail "the squatter could not make its schema"
out=$(C -c "SELECT * FROM audit_log.verify_source('src3')" 2>&1) && wl_fail "a squatted schema was verified as a source's log"
grep -q "is not the one audit_log.collect() made" <<<"$out" || wl_fail "squatted schema: $out"
# A collected table whose columns a superuser changed is refused, not misread.
C -c "SELECT audit_log.collect('src5', 'sub_src5')" \
  -c "INSERT INTO audit_log_source_src5.records SELECT * FROM audit_log_source_src1.records" \
  -c "ALTER TABLE audit_log_source_src5.records ALTER link_hash TYPE bigint USING 7" >/dev/null 2>&1
out=$(C -c "SELECT * FROM audit_log.verify_source('src5')" 2>&1) && wl_fail "a collected table with other column types verified"
grep -q "column link_hash is not column 9" <<<"$out" || wl_fail "changed column type: $out"
[ "$(C -c "SELECT 1")" = 1 ] || wl_fail "the collector's server did not survive"
# A publication of the whole audit_log schema: the tables a source does not
# publish by design refuse the subscription's rows, so a source cannot write
# the collector's own configuration or log.
A -d src1 -c "SELECT audit_log.set_retention('10 years')" \
  -c "CREATE PUBLICATION audit_log_all FOR TABLES IN SCHEMA audit_log WITH (publish = 'insert')" >/dev/null
C -c "SELECT audit_log.collect('srcall', 'sub_all')" >/dev/null
C -c "CREATE SUBSCRIPTION sub_all CONNECTION 'host=$dir port=$aport user=postgres dbname=src1' PUBLICATION audit_log_all" 2>/dev/null
for _ in $(seq 1 60); do grep -q "audit_log.retention takes no rows from a subscription" "$dir/b.log" && break; sleep 0.25; done
grep -q "audit_log.retention takes no rows from a subscription" "$dir/b.log" \
    || wl_fail "a subscription wrote the collector's retention: $(grep ERROR "$dir/b.log" | tail -3)"
[ "$(C -c "SELECT count(*) FROM audit_log.retention")" = 0 ] || wl_fail "the collector's retention took a source's row"
[ "$(C -c "SELECT count(*) FROM audit_log.audited_tables")" = 0 ] || wl_fail "the collector's audited_tables took a source's rows"
C -c "DROP SUBSCRIPTION sub_all" 2>/dev/null

# Bad input.
out=$(C -c "SELECT * FROM audit_log.verify_source('nope')" 2>&1) && wl_fail "an unknown source verified"
grep -q 'no collected source is named "nope"' <<<"$out" || wl_fail "unknown source: $out"
out=$(C -c "SELECT audit_log.collect('Bad-Name', 'x')" 2>&1) && wl_fail "a bad source name was taken"
grep -q "must be 1 to 40 lower-case letters" <<<"$out" || wl_fail "bad source name: $out"
# A subscription nobody registered: its rows are refused, nothing is stored.
A -d src1 -c "SELECT pg_create_logical_replication_slot('sub_unregistered', 'pgoutput')" >/dev/null
C -c "CREATE SUBSCRIPTION sub_unregistered CONNECTION 'host=$dir port=$aport user=postgres dbname=src1' PUBLICATION audit_log_pub
        WITH (create_slot = false, slot_name = 'sub_unregistered')" 2>/dev/null
for _ in $(seq 1 40); do grep -q "no source is registered for it" "$dir/b.log" && break; sleep 0.25; done
grep -q 'subscription sub_unregistered delivers audit_log rows, but no source is registered for it' "$dir/b.log" \
    || wl_fail "an unregistered subscription's rows were not refused: $(grep -i error "$dir/b.log" | tail -3)"
[ "$(C -c "SELECT count(*) FROM audit_log.records")" = 0 ] || wl_fail "an unregistered subscription's rows were stored"
C -c "ALTER SUBSCRIPTION sub_unregistered DISABLE" -c "ALTER SUBSCRIPTION sub_unregistered SET (slot_name = NONE)" \
  -c "DROP SUBSCRIPTION sub_unregistered" 2>/dev/null
A -d src1 -c "SELECT pg_drop_replication_slot('sub_unregistered')" >/dev/null
# src1's subscription dropped and made again against src2: the identity
# it copies gives it away, and nothing of src2 goes into src1's log.
src1_records=$(C -c "SELECT count(*) FROM audit_log_source_src1.records")
C -c "DROP SUBSCRIPTION sub_src1" 2>/dev/null
B -d src2 -c "SELECT pg_create_logical_replication_slot('sub_src1', 'pgoutput')" >/dev/null
C -c "CREATE SUBSCRIPTION sub_src1 CONNECTION 'host=$dir port=$bport user=postgres dbname=src2' PUBLICATION audit_log_pub
        WITH (create_slot = false, slot_name = 'sub_src1')" 2>/dev/null
for _ in $(seq 1 40); do grep -q "subscription sub_src1 delivers the log of source" "$dir/b.log" && break; sleep 0.25; done
grep -q "subscription sub_src1 delivers the log of source $(B -d src2 -c "SELECT audit_log.source_id()"), but src1 collects the log of source" "$dir/b.log" \
    || wl_fail "a subscription re-made against another database was not refused: $(grep ERROR "$dir/b.log" | tail -3)"
sleep 1
[ "$(C -c "SELECT count(*) FROM audit_log_source_src1.records")" = "$src1_records" ] \
    || wl_fail "src2's records went into src1's collected log"
# This subscription's publisher is in the collector's own cluster: a
# table sync worker's walsender there may still be creating its slot,
# which waits for every running transaction to end, DROP SUBSCRIPTION's
# too, while DROP SUBSCRIPTION waits for it (seen once on PostgreSQL 18,
# a hang). Disabled, the subscription starts no worker; its walsenders are
# ended before the drop.
C -c "ALTER SUBSCRIPTION sub_src1 DISABLE"
subid=$(C -c "SELECT oid FROM pg_subscription WHERE subname = 'sub_src1'")
for _ in $(seq 1 100); do
    [ "$(C -c "SELECT count(*) FROM pg_stat_subscription WHERE subid = $subid AND pid IS NOT NULL")" = 0 ] && break
    sleep 0.1
done
B -d src2 -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE backend_type = 'walsender' AND application_name LIKE 'pg\_${subid}\_sync\_%'" >/dev/null
C -c "ALTER SUBSCRIPTION sub_src1 SET (slot_name = NONE)" -c "DROP SUBSCRIPTION sub_src1" 2>/dev/null
B -d src2 -c "SELECT pg_drop_replication_slot('sub_src1')" >/dev/null
echo "  bad input: an unknown source, a bad name, an unregistered subscription, one re-made against another database, a squatted schema, changed column types and a whole-schema publication refused; nothing stored"

# Lag from a source's commit to the collector, at a stated write rate:
# src2 (src1's subscription is gone), a marker transaction every 0.5 s.
load $bport src2 "$script2" 8 "$work/l3.out" & l3=$!
sleep 1
lags=()
for _ in $(seq 1 10); do
    t0=$(date +%s%N)
    PGPORT=$bport WL_DB=src2 wl_q -c "INSERT INTO t3 VALUES (-1, 0) ON CONFLICT (k) DO UPDATE SET v = t3.v + 1" >/dev/null
    ev=$(B -d src2 -c "SELECT max(first_event) FROM audit_log.records")
    for _ in $(seq 1 400); do
        [ "$(C -c "SELECT EXISTS (SELECT 1 FROM audit_log_source_src2.records WHERE first_event >= $ev)")" = t ] && break
        sleep 0.005
    done
    lags+=($(( ($(date +%s%N) - t0) / 1000000 )))
    sleep 0.5
done
wait $l3 || wl_fail "pgbench for the lag: $(tail -2 "$work/l3.out")"
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/l3.out")
sorted=$(printf '%s\n' "${lags[@]}" | sort -n | tr '\n' ' ')
echo "  lag from commit at src2 to the collector at ${tps%.*} audited transactions/s (pgbench -R $rate, 2 clients), 10 markers: ${sorted}ms"
caught_up B src2 src2
# A source drops the tail of a chain after it was shipped: it still
# verifies alone, but not against the collector's checkpoint of its log.
C -c "SELECT audit_log.source_checkpoint('src2')" >"$work/src2_collected.cp"
# One transaction: the guard records the superuser's trigger changes at its
# commit, after the delete, so they cannot refill the dropped place.
B -d src2 -c "BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;
  DELETE FROM audit_log.records r WHERE (r.chain_id, r.seq) IN (SELECT chain_id, max(seq) FROM audit_log.records GROUP BY chain_id LIMIT 1);
  ALTER TABLE audit_log.records ENABLE TRIGGER USER; COMMIT;" >/dev/null 2>&1
[ "$(B -d src2 -c "SELECT ok FROM audit_log.verify()" 2>/dev/null)" = t ] || wl_fail "a dropped tail should verify alone"
compared=$(B -d src2 -c "SELECT ok || ' ' || split_part(problem, ':', 1) FROM audit_log.verify('$(cat "$work/src2_collected.cp")')" 2>"$work/compare.err") || wl_fail "verify(the collector's checkpoint) at src2: $(cat "$work/compare.err")"
[ "${compared%% *}" = false ] || wl_fail "the source's dropped tail passed the collector's checkpoint: $compared"
echo "  a source's dropped tail verifies alone, and is caught against the collector's checkpoint ($compared)"

echo "collect: two sources (one on another cluster) collected through a subscriber crash and a source crash, none lost or repeated; verified at both ends and with the CLI; append-only; bad input refused; tampering caught by comparison"

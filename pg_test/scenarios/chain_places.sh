#!/usr/bin/env bash
# The directory of chain places in shared memory (src/heads.rs), attacked
# by a role with CREATEDB, as a tenant of a shared cluster could: it copies
# a database that holds a log and commits in each copy, to take every block
# of places so that other databases' logs must share places. All of a
# database's backends must always agree on a chain's place: two places for
# one chain would let two commits take it at once. On a cluster of its own,
# with the library preloaded, one session holds a backend in each copy
# (dblink) while the role works:
# - the template and 223 copies take all 224 blocks; the next database is
#   given the template's, which no backend is connected to, and the server
#   log names the template;
# - with every block's database connected, the next database gets none
#   (its chains hash into the shared region) and the server log says so;
#   its commits from 80 backends still verify; 1,100 backends of it that
#   each connect alone hash too, and do not fill the list of hashed
#   databases;
# - the session leaves two copies and the role drops one: a new database
#   is given one of their blocks, and the server log names exactly those
#   two databases; a new backend of the database that hashed, while
#   another of its backends is connected, still hashes though a block is
#   free, and once none is, the next is given that block;
# - the dropped copy's OID given to a new database (CREATE DATABASE … OID,
#   the attacker's way to meet old places again): it commits and
#   verifies;
# - nothing crashed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
dir=${AUDIT_LOG_PLACES_DIR:-/tmp/audit_log_places}
export PGHOST=$dir PGPORT=${AUDIT_LOG_PLACES_PORT:-55514} PGUSER=postgres
fail() { echo "FAIL: $*" >&2; exit 1; }
# shellcheck source=../lib/own_cluster.sh
. "$here/lib/own_cluster.sh"
# No autovacuum: a worker in a database counts as a backend connected to
# it, and would keep the block this scenario expects to be given back.
# Only its Unix socket: a TCP port here can be taken by another client's
# ephemeral port.
own_cluster_start "-c 0" "shared_preload_libraries = 'audit_log'
listen_addresses = ''
fsync = off
autovacuum = off
max_connections = 300"
log=$dir/server.log work=$dir/work
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
as_copier() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -U copier -d "$db" "$@"; }

# The template: a log of one audited table, all of it the role's but the
# extension. With the default 64 chains, a log takes one block.
q postgres <<'SQL'
CREATE ROLE copier LOGIN CREATEDB;
CREATE DATABASE tpl OWNER copier;
CREATE EXTENSION dblink;
SQL
q tpl <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t (k bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
ALTER TABLE t OWNER TO copier;
SELECT audit_log.enable('t');
SQL

# The holding session: a psql that reads from a FIFO; hold SQL runs SQL in
# it and waits for it to finish.
mkfifo "$work/hold.in"
psql -X -q -v ON_ERROR_STOP=1 -At -d postgres <"$work/hold.in" >"$work/hold.out" 2>&1 &
exec 7>"$work/hold.in"
marks=0
hold() {
    marks=$((marks + 1))
    printf '%s\n\\! touch %s\n' "$1" "$work/mark.$marks" >&7
    for _ in $(seq 1 600); do [ -f "$work/mark.$marks" ] && return 0; sleep 0.2; done
    fail "the holding session did not finish: $(tail -5 "$work/hold.out")"
}
# A backend of the session in DB, as the role, that commits once.
connect() { hold "SELECT dblink_connect('$1', 'dbname=$1 user=copier host=$dir port=$PGPORT') || dblink_exec('$1', 'INSERT INTO t (v) VALUES (0)');"; }
disconnect() {  # DB...: the session's backends leave, and are gone
    local db
    for db in "$@"; do hold "SELECT dblink_disconnect('$db');"; done
    local list; list=$(printf "'%s'," "$@"); list=${list%,}
    for _ in $(seq 1 100); do
        [ "$(q postgres -c "SELECT count(*) FROM pg_stat_activity WHERE datname IN ($list)")" = 0 ] && return 0
        sleep 0.1
    done
    fail "backends of $* did not leave"
}
# Commits from N new backends, P (2) at a time.
commits() {  # DB N [P]
    seq 1 "$2" | xargs -P "${3:-2}" -I{} psql -X -q -v ON_ERROR_STOP=1 -U copier -d "$1" -c "INSERT INTO t (v) VALUES ({})"
}
oid() { q postgres -c "SELECT oid FROM pg_database WHERE datname = '$1'"; }
given() { grep -c "have places [0-9]*\.\.[0-9]* in shared memory" "$log" || true; }
given_to() { grep -c "of the log [0-9]* in database $1 have places" "$log" || true; }
freed_lines() { grep -o "blocks of chain places are free again: no backend is connected to their databases ([0-9, ]*)" "$log" || true; }
freed_dbs() {  # the databases of the Nth line
    freed_lines | sed -n "${1}p" | grep -o "([0-9, ]*)" | tr -d '() ' | tr ',' '\n' | sort -n | paste -sd ' '
}
full_line="all 224 blocks of chain places in shared memory are given"
check() {  # DB EVENTS: verify() accepts the log, which holds EVENTS inserts into t
    local got
    got=$(q "$1" -c "SELECT (SELECT bool_and(ok) FROM audit_log.verify()) || ' ' || (SELECT count(*) FROM audit_log.events WHERE table_name = 't' AND op = 'INSERT')")
    [ "$got" = "true $2" ] || fail "$1: verify() and the inserts into t: '$got', expected 'true $2'"
}

# The role copies the template; the session commits in each copy and stays.
n=$((224 - $(given)))
seq 1 $n | sed 's/.*/CREATE DATABASE c& TEMPLATE tpl STRATEGY FILE_COPY;/' | as_copier postgres
hold "SELECT count(dblink_connect('c' || g, format('dbname=c%s user=copier host=%s port=%s', g, '$dir', $PGPORT))) FROM generate_series(1, $n) g;
SELECT count(dblink_exec('c' || g, 'INSERT INTO t (v) VALUES (0)')) FROM generate_series(1, $n) g;"
[ "$(given)" = 224 ] || fail "$n copies and the template took $(given) blocks, not 224"
! grep -q "$full_line" "$log" || fail "the server log says the directory is full before a log found it so"
echo "  the template and $n copies took all 224 blocks"

# The directory is full, but no backend is connected to the template.
as_copier postgres -c "CREATE DATABASE late TEMPLATE tpl STRATEGY FILE_COPY"
connect late
[ "$(given_to "$(oid late)")" = 1 ] || fail "a database created with the directory full got no block, though the template's was idle"
[ "$(freed_dbs 1)" = "$(oid tpl)" ] || fail "the blocks given back were those of databases '$(freed_dbs 1)', expected the template's $(oid tpl)"

# Every block's database has a backend: a new database hashes, and its
# commits from many backends at once make gapless chains.
as_copier postgres -c "CREATE DATABASE hashed TEMPLATE tpl STRATEGY FILE_COPY"
h=$(oid hashed)
connect hashed
commits hashed 80
[ "$(given_to "$h")" = 0 ] || fail "a database created with every block in use was given one"
grep -q "$full_line" "$log" || fail "the server log does not say that the directory is full"
[ "$(freed_lines | wc -l)" = 1 ] || fail "blocks were given back though every database had a backend"
check hashed 81

# Its only backends, one at a time, 1,100 times, each alone (pgbench -C):
# each asks for its chain's place, finds none free and hashes. The list of
# hashed databases must name it once, not fill up (more than 1,024 names
# would hash every later log until a restart: fresh, below, would get no
# block). Then the session takes a backend in it again.
disconnect hashed
printf 'INSERT INTO t (v) VALUES (1);\n' >"$work/one.sql"
"$BIN/pgbench" -n -C -c 1 -t 1100 -U copier -f "$work/one.sql" hashed >"$work/pgbench.out" 2>&1 ||
    fail "pgbench in hashed: $(tail -3 "$work/pgbench.out")"
[ "$(given_to "$h")" = 0 ] || fail "a database was given a block with every block's database connected"
connect hashed

# The session leaves c1 and c2, and the role drops c1: a new database gets
# one of their two blocks, and the server log names both.
c1=$(oid c1) c2=$(oid c2)
disconnect c1 c2
as_copier postgres -c "DROP DATABASE c1"
as_copier postgres -c "CREATE DATABASE fresh TEMPLATE tpl STRATEGY FILE_COPY"
commits fresh 3
[ "$(given_to "$(oid fresh)")" = 1 ] || fail "a database created after two copies were left was given $(given_to "$(oid fresh)") blocks, not 1"
want=$(printf '%s\n' "$c1" "$c2" | sort -n | paste -sd ' ')
[ "$(freed_dbs 2)" = "$want" ] || fail "the blocks given back were those of databases '$(freed_dbs 2)', expected $want"
check fresh 3

# The database that hashed, with the session's backend still in it: a new
# backend hashes too, though a block is free (the session's backend
# remembers the hashed places). Once no other backend is connected, the
# next is given that block, and the chain goes on.
commits hashed 20
[ "$(given_to "$h")" = 0 ] || fail "the database that hashed was given a block while another of its backends remembered its places"
disconnect hashed
commits hashed 20 1
[ "$(given_to "$h")" = 1 ] || fail "the database that hashed got $(given_to "$h") blocks once no other backend was connected, not 1"
check hashed 1222

# The dropped copy's OID, given to a new copy (its log has the dropped
# one's identity, down to the relfilenode): it commits and verifies.
as_copier postgres -c "CREATE DATABASE again OID $c1 TEMPLATE tpl STRATEGY FILE_COPY"
commits again 10
check again 10
hold "SELECT count(dblink_disconnect(c)) FROM unnest(dblink_get_connections()) c;"
exec 7>&-
wait
no_crash
echo "  chain places: a full directory gives back idle and dropped databases' blocks, and a database's backends never disagree on a place"

#!/usr/bin/env bash
# The directory of chain places in shared memory (src/heads.rs), attacked
# by a role with CREATEDB, as a tenant of a shared cluster could: it copies
# a database that holds a log, commits in the copy, and drops it, to take
# every block of places so that other databases' logs must share places.
# On a cluster of its own, with the library preloaded:
# - the role's copies take blocks until all 224 are given; a database
#   created then gets none, and the server log says so (its chains hash into
#   the shared region), and its commits, from many backends at once, still
#   make one gapless chain each that verify() accepts;
# - the role drops two copies: the next database to need a block is given
#   one of theirs, and the server log names exactly the two dropped
#   databases; the database that hashed keeps hashing (its backends must
#   agree on a chain's place), and still verifies;
# - nothing crashed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
dir=${AUDIT_LOG_PLACES_DIR:-/tmp/audit_log_places}
export PGHOST=$dir PGPORT=${AUDIT_LOG_PLACES_PORT:-55514} PGUSER=postgres
fail() { echo "FAIL: $*" >&2; exit 1; }
# shellcheck source=../lib/own_cluster.sh
. "$here/lib/own_cluster.sh"
own_cluster_start "-c 0" "shared_preload_libraries = 'audit_log'
fsync = off
max_connections = 40"
log=$dir/server.log
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
as_copier() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -U copier -d "$db" "$@"; }

# The template: a log of one audited table, all of it the role's but the
# extension. With the default 64 chains, a log takes one block.
q postgres <<'SQL'
CREATE ROLE copier LOGIN CREATEDB;
CREATE DATABASE tpl OWNER copier;
SQL
q tpl <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t (k bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
ALTER TABLE t OWNER TO copier;
SELECT audit_log.enable('t');
SQL

# Commits from N new backends, two at a time.
commits() {  # DB N
    seq 1 "$2" | xargs -P 2 -I{} psql -X -q -v ON_ERROR_STOP=1 -U copier -d "$1" -c "INSERT INTO t (v) VALUES ({})"
}
oid() { q postgres -c "SELECT oid FROM pg_database WHERE datname = '$1'"; }
given_to() { grep -c "of the log [0-9]* in database $1 have places" "$log" || true; }
full_line="all 224 blocks of chain places in shared memory are given"

# The role copies the template and commits in each copy until every block
# is given (the template's ENABLE took one).
given() { grep -c "have places [0-9]*\.\.[0-9]* in shared memory" "$log" || true; }
n=$((224 - $(given)))
seq 1 $n | sed 's/.*/CREATE DATABASE c& TEMPLATE tpl STRATEGY FILE_COPY;/' | as_copier postgres
seq 1 $n | xargs -P 2 -I{} psql -X -q -v ON_ERROR_STOP=1 -U copier -d c{} -c "INSERT INTO t (v) VALUES (1)"
[ "$(given)" = 224 ] || fail "$n copies and the template took $(given) blocks, not 224"
! grep -q "$full_line" "$log" || fail "the server log says the directory is full before a log found it so"
echo "  the template and $n copies took all 224 blocks"

# A database created now gets no block: its log hashes into the shared
# region. Commits from many backends at once still make one chain of
# commits per link, with no gap or fork.
as_copier postgres -c "CREATE DATABASE late TEMPLATE tpl STRATEGY FILE_COPY"
late=$(oid late)
commits late 80
[ "$(given_to "$late")" = 0 ] || fail "a database created with the directory full was given a block"
grep -q "$full_line" "$log" || fail "the server log does not say that the directory is full"
check() {  # DB EVENTS: verify() accepts the log, which holds EVENTS rows of t
    local got
    got=$(q "$1" -c "SELECT (SELECT bool_and(ok) FROM audit_log.verify()) || ' ' || (SELECT count(*) FROM audit_log.events WHERE table_name = 't' AND op = 'INSERT')")
    [ "$got" = "true $2" ] || fail "$1: verify() and the events of t: '$got', expected 'true $2'"
}
check late 80

# The role drops two copies: the next database that needs a block gets one
# of theirs (the other stays free), and the server log names the two
# databases.
c1=$(oid c1) c2=$(oid c2)
as_copier postgres -c "DROP DATABASE c1" -c "DROP DATABASE c2"
as_copier postgres -c "CREATE DATABASE fresh TEMPLATE tpl STRATEGY FILE_COPY"
fresh=$(oid fresh)
commits fresh 40
free=$(grep -o "blocks of chain places are free again: their databases ([0-9, ]*) no longer exist" "$log" || true)
[ -n "$free" ] || fail "no block was given back after two copies were dropped"
dbs=$(grep -o "([0-9, ]*)" <<<"$free" | tr -d '() ' | tr ',' '\n' | sort -n | paste -sd ' ')
want=$(printf '%s\n' "$c1" "$c2" | sort -n | paste -sd ' ')
[ "$dbs" = "$want" ] || fail "the blocks given back were those of databases $dbs, expected the dropped $want"
[ "$(given_to "$fresh")" = 1 ] || fail "a database created after two copies were dropped was given $(given_to "$fresh") blocks, not 1"
check fresh 40

# The database that hashed keeps hashing, though a block is free: a block
# given to it now would put a chain at two places, one remembered by its
# older backends.
commits late 40
[ "$(given_to "$late")" = 0 ] || fail "the database that hashed was given a block later"
check late 120
no_crash
echo "  chain places: a full directory gives back dropped databases' blocks"

#!/usr/bin/env bash
# The write path of two builds of audit_log, A against B, in one cluster:
# each build's library and install script swapped in turn, the server
# restarted, a fresh database audited, then single-row INSERTs at each
# number of clients in CLIENTS (default "1 8"; pgbench, SECONDS_PER_RUN
# each), in ROUNDS alternating rounds. Used to show that work off the
# commit path (Merkle tiles, issue 14) costs writes nothing beyond the
# noise. Each directory holds audit_log.so and
# audit_log--VERSION.sql of one build, as `cargo pgrx install` leaves them
# in /usr/lib/postgresql/15/lib and /usr/share/postgresql/15/extension:
#
#   git worktree add /tmp/a REV && (cd /tmp/a && CARGO_TARGET_DIR=/tmp/a/target \
#       cargo pgrx install --release --pg-config /usr/bin/pg_config)
#   mkdir -p /tmp/ab/a && cp /usr/lib/postgresql/15/lib/audit_log.so \
#       /usr/share/postgresql/15/extension/audit_log--0.3.0.sql /tmp/ab/a/
#   (the same for the other build into /tmp/ab/b), then
#   A=/tmp/ab/a B=/tmp/ab/b bash bench/ab_write.sh
# The build in B is left installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
a=${A:?directory of build A} b=${B:?directory of build B}
rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-8} clients=${CLIENTS:-1 8}
dir=${BENCH_DIR:-/tmp/audit_log_bench_ab} port=${BENCH_PORT:-55456}
pg_config=${PG_CONFIG:-/usr/bin/pg_config}
BIN=$("$pg_config" --bindir) lib=$("$pg_config" --pkglibdir) ext=$("$pg_config" --sharedir)/extension
sql=$(basename "$(ls "$b"/audit_log--*.sql | head -1)")
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres
echo "INSERT INTO t (a, b, c) VALUES (42, 'customer', 19.99);" >"$dir/ins.sql"; chmod 644 "$dir/ins.sql"
declare -A tps
for round in $(seq 1 "$rounds"); do
    for v in A B; do
        d=$a; [ $v = B ] && d=$b
        # The library is preloaded, here and maybe in other clusters: it is
        # replaced by a rename, never overwritten under a server's mapping
        # (which crashes the server).
        runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -w stop >/dev/null
        cp "$d/audit_log.so" "$lib/audit_log.so.ab" && mv -f "$lib/audit_log.so.ab" "$lib/audit_log.so"
        cp "$d/$sql" "$ext/$sql"
        runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS ab" -c "CREATE DATABASE ab" 2>/dev/null
        psql -X -q -d ab -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
            -c "CREATE TABLE t (id bigserial PRIMARY KEY, a int, b text, c numeric)" -c "SELECT audit_log.enable('t')" >/dev/null
        for c in $clients; do
            t=$(pgbench -n -c $c -j 2 -T "$secs" -f "$dir/ins.sql" ab 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
            tps[$v,$c]="${tps[$v,$c]:-} ${t%.*}"
        done
    done
done
. "$here/stats.sh"
for c in $clients; do
    ma=$(median ${tps[A,$c]}) mb=$(median ${tps[B,$c]})
    echo "single-row INSERT, $c client(s): A $ma tps (${tps[A,$c]# }), B $mb tps (${tps[B,$c]# }): B/A $(awk "BEGIN {printf \"%.3f\", $mb / $ma}")"
done

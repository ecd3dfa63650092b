#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster as the postgres OS user, on a
# private port and socket directory (never 5432). Usage:
#   pg_test/cluster.sh start DIR PORT     (prints nothing on success)
#   pg_test/cluster.sh stop DIR
# The server is Debian's PostgreSQL 15, or the one whose pg_config PG_CONFIG names.
# audit_log is in shared_preload_libraries (its chain heads in shared memory),
# unless AUDIT_LOG_PRELOAD=0: then commits read each head from the index.
set -euo pipefail
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
cmd=$1 dir=$2
case "$cmd" in
start)
    port=$3
    # A cluster left running by an earlier run is stopped before its directory goes.
    if [ -f "$dir/data/postmaster.pid" ]; then
        runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"; mkdir -p "$dir"; chown postgres:postgres "$dir"
    runuser -u postgres -- "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_prepared_transactions = 10
max_connections = 100
fsync = on
synchronous_commit = on
CONF
    if [ "${AUDIT_LOG_PRELOAD:-1}" != 0 ]; then
        echo "shared_preload_libraries = 'audit_log'" >>"$dir/data/postgresql.conf"
    fi
    # RUST_BACKTRACE on: a Rust backtrace that reached a client would show in
    # the golden tests' output. audit_log must keep them out whatever the setting.
    runuser -u postgres -- env RUST_BACKTRACE=1 "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    ;;
stop)
    if [ -d "$dir/data" ]; then
        runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac

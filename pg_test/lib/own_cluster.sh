# A scenario's own throwaway cluster, for what the shared one cannot give:
# limits of the OS on the server (`ulimit`), or settings of its own. Source
# it with `dir` (the cluster's directory), PGPORT and BIN set, and a `fail`
# function defined. own_cluster_start LIMITS CONF starts the server as the
# postgres OS user, under `ulimit LIMITS` (pg_ctl, the postmaster and every
# backend inherit them), with the lines CONF added to postgresql.conf, and
# stops it when the script exits: its directory goes if the script
# succeeded, and stays with the server's log if it failed. `$dir/work` is a
# directory for the scenario's files.

own_cluster_stop() {
    local rc=$?
    runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    if [ "$rc" = 0 ]; then rm -rf "$dir"; else echo "the server's log is in $dir/server.log" >&2; fi
}

own_cluster_start() {  # LIMITS CONF
    # A cluster left running by an earlier run is stopped before its directory goes.
    if [ -f "$dir/data/postmaster.pid" ]; then
        runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"; mkdir -p "$dir/work"; chown postgres:postgres "$dir"; chmod 755 "$dir/work"
    trap own_cluster_stop EXIT
    runuser -u postgres -- "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
$2
CONF
    # RUST_BACKTRACE on, as in cluster.sh: a backtrace must never reach a client.
    runuser -u postgres -- bash -c "ulimit $1 && exec env RUST_BACKTRACE=1 '$BIN/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w start" >/dev/null ||
        fail "cluster did not start with ulimit $1: $(tail -5 "$dir/server.log" 2>/dev/null)"
    started=$(instance)
}

# The server instance: after a backend crash the postmaster reinitializes and
# restarts every child, the checkpointer too, but pg_postmaster_start_time()
# stays the same, so both are compared.
instance() { psql -X -At -d postgres -c "SELECT pg_postmaster_start_time() || ', checkpointer ' || pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"; }

# The server has not restarted since own_cluster_start, and its log shows no
# crashed backend and no Rust panic.
no_crash() {
    local now; now=$(instance)
    [ "$now" = "$started" ] || fail "the server restarted: it was $started, now $now"
    ! grep -E -m1 "terminated by signal|reinitializing|panicked" "$dir/server.log" || fail "a backend crashed (server log above)"
}

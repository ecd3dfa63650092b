# Shared by the scenarios that run clusters of their own (standby,
# failover, collect): each cluster is DIR/NAME, run by the postgres OS user
# on a private port, with its socket in DIR and no TCP. Source it after
# setting BIN (the server's bindir) and CL_DIR (the scenarios' directory).

cl_pg() { runuser -u postgres -- "$@"; }

# cl_fresh: stop whatever an earlier run left in CL_DIR, then make it anew
# (with a work/ directory any user may read).
cl_fresh() {
    local pid
    for pid in "$CL_DIR"/*/postmaster.pid; do
        [ -f "$pid" ] && cl_pg "$BIN/pg_ctl" -D "$(dirname "$pid")" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$CL_DIR"; mkdir -p "$CL_DIR/work"; chown -R postgres:postgres "$CL_DIR"; chmod 755 "$CL_DIR/work"
}

# cl_stop_all: an immediate stop of every cluster in CL_DIR (for traps).
cl_stop_all() {
    local pid
    for pid in "$CL_DIR"/*/postmaster.pid; do
        [ -f "$pid" ] && cl_pg "$BIN/pg_ctl" -D "$(dirname "$pid")" -m immediate -w stop >/dev/null 2>&1 || true
    done
}

# cl_init NAME PORT [SETTING...]: initdb CL_DIR/NAME with these settings
# (one "key = value" per argument), and start it.
cl_init() {
    local name=$1 port=$2 setting
    shift 2
    cl_pg "$BIN/initdb" -D "$CL_DIR/$name" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$CL_DIR/initdb_$name.log" 2>&1
    {
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$CL_DIR'"
        for setting in "$@"; do echo "$setting"; done
    } >>"$CL_DIR/$name/postgresql.conf"
    cl_start "$name"
}

cl_start() { cl_pg "$BIN/pg_ctl" -D "$CL_DIR/$1" -l "$CL_DIR/$1.log" -w start >/dev/null; }
cl_crash() { cl_pg "$BIN/pg_ctl" -D "$CL_DIR/$1" -m immediate -w stop >/dev/null; }

# The floor variant of the benchmarks, sourced by bench/run.sh, point.sh,
# cpu.sh and instr.sh, in the running cluster that PGHOST/PGPORT/PGUSER name.

# The length of the floor's padding that makes its row (tx, n, pad), as
# pg_column_size measures it in database $1, $2 bytes: the size of the
# audit_log record it stands for.
floor_pad() {
    psql -X -At -v ON_ERROR_STOP=1 -d "$1" -c "SELECT greatest(0, p - (pg_column_size(ROW('0'::xid8, 0, repeat('x', p))) - $2))
                                               FROM (SELECT $2 - pg_column_size(ROW('0'::xid8, 0, ''::text)) AS p) s"
}

# audit_log's ratio minus the floor's in each round, each against the "none"
# of its own round (the machine's speed drifts between rounds; a difference
# taken within one round does not mix two speeds), one line per round. The
# arguments are the rounds' figures, space-separated, in the rounds' order.
# A round where one of the three is 0 (a failed run) or, with LIMIT, at or
# over it (a bulk statement that timed out) has no difference: left out.
floor_differences() {  # NONE AUDIT_LOG FLOOR [LIMIT]
    awk -v n="$1" -v a="$2" -v f="$3" -v limit="${4:-0}" 'BEGIN {
        c = split(n, N, " "); split(a, A, " "); split(f, F, " ")
        for (i = 1; i <= c; i++)
            if (N[i] > 0 && A[i] > 0 && F[i] > 0 && (limit == 0 || (N[i] < limit && A[i] < limit && F[i] < limit)))
                printf "%+.2f\n", A[i] / N[i] - F[i] / N[i] }'
}

# For bench/cpu.sh and bench/instr.sh: database $1 with three tables for the
# single-row INSERT of bench/run.sh: t_none (not audited), t_floor (not
# audited; its statement also inserts, in a CTE, a row of the size of
# audit_log's record into floor_log, whose primary key has two columns)
# and t_audit_log (audited). Writes each variant's statement to
# $2/<variant>.sql (none, floor, audit_log) and sets `size`, the bytes of
# the record audit_log writes for it, which the floor's row matches.
single_row_setup() {
    local db=$1 dir=$2
    local cols="id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL"
    local values="(a, b, c, d) VALUES (1, 'new customer', 99.95, now());"
    psql -X -q -d postgres -c "CREATE DATABASE $db"
    psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION audit_log" \
        -c "CREATE TABLE t_none ($cols)" -c "CREATE TABLE t_floor ($cols)" -c "CREATE TABLE t_audit_log ($cols)" \
        -c "CREATE TABLE floor_log (tx xid8 NOT NULL, n int NOT NULL, pad text NOT NULL, PRIMARY KEY (tx, n))" \
        -c "ALTER TABLE floor_log ALTER pad SET STORAGE EXTERNAL" \
        -c "SELECT audit_log.enable('t_audit_log')" >/dev/null
    # The record audit_log writes for this statement; the floor's row is
    # padded to the same size.
    psql -X -q -d "$db" -c "INSERT INTO t_audit_log $values"
    size=$(psql -X -At -d "$db" -c "SELECT pg_column_size(r.*) FROM audit_log.records r ORDER BY committed_at DESC LIMIT 1")
    local pad
    pad=$(floor_pad "$db" "$size")
    echo "INSERT INTO t_none $values" >"$dir/none.sql"
    echo "WITH f AS (INSERT INTO floor_log VALUES (pg_current_xact_id(), 1, repeat('x', $pad))) INSERT INTO t_floor $values" >"$dir/floor.sql"
    echo "INSERT INTO t_audit_log $values" >"$dir/audit_log.sql"
    chmod 644 "$dir"/none.sql "$dir"/floor.sql "$dir"/audit_log.sql
}

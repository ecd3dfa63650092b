-- audit_log schema, part 2: guards and privileges on the functions.
-- Runs after every function of the extension exists.

-- Append-only, even for the owner: only a superuser who disables these
-- triggers can change history, and verify() detects what they change.
CREATE FUNCTION audit_log.reject_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_log.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit history cannot be changed. Retention is handled by audit_log itself.';
END
$fn$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.events
    FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.links
    FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.links
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change();
ALTER TABLE audit_log.events ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE audit_log.events ENABLE ALWAYS TRIGGER append_only_truncate;
ALTER TABLE audit_log.links ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE audit_log.links ENABLE ALWAYS TRIGGER append_only_truncate;

-- The capture triggers' functions (src/capture.rs). No SET clause: they run
-- for every audited row, and run no SQL.
CREATE FUNCTION audit_log.capture_row() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'audit_log_capture_row';
CREATE FUNCTION audit_log.capture_stmt() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'audit_log_capture_stmt';
COMMENT ON FUNCTION audit_log.capture_row() IS 'Row trigger that records each change of an audited table. Created by audit_log.enable().';
COMMENT ON FUNCTION audit_log.capture_stmt() IS 'Statement trigger of an audited table: records TRUNCATE and writes each statement''s events. Created by audit_log.enable().';

-- DDL guard: refuses, for anyone but a superuser, DDL on the audit schema and
-- switching off the capture triggers of an audited table; records what it allows.
-- No SET search_path here: the guard resolves the command's table names as
-- the command does, under the session's search_path, and pins search_path
-- itself (to pg_catalog, pg_temp) for every query it runs.
CREATE FUNCTION audit_log.ddl_command_start() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'audit_log_ddl_command_start';
CREATE FUNCTION audit_log.ddl_command_end() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'audit_log_ddl_command_end';
CREATE EVENT TRIGGER audit_log_ddl_start ON ddl_command_start
    EXECUTE FUNCTION audit_log.ddl_command_start();
CREATE EVENT TRIGGER audit_log_ddl_end ON ddl_command_end
    EXECUTE FUNCTION audit_log.ddl_command_end();
CREATE FUNCTION audit_log.sql_drop() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'audit_log_sql_drop';
CREATE EVENT TRIGGER audit_log_sql_drop ON sql_drop
    EXECUTE FUNCTION audit_log.sql_drop();
ALTER EVENT TRIGGER audit_log_ddl_start ENABLE ALWAYS;
ALTER EVENT TRIGGER audit_log_ddl_end ENABLE ALWAYS;
ALTER EVENT TRIGGER audit_log_sql_drop ENABLE ALWAYS;

-- Functions: nothing for PUBLIC; the two roles get what they need. The
-- admin configures what is recorded; the auditor reads and verifies it (a
-- person who does both holds both roles). redacted() is for superusers only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA audit_log FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.enable(regclass, text[], text[], text[], boolean, boolean),
    audit_log.disable(regclass),
    audit_log.enable_schema(text), audit_log.disable_schema(text),
    audit_log.set_retention(interval), audit_log.purge(timestamptz)
    TO audit_log_admin;
GRANT EXECUTE ON FUNCTION audit_log.verify(), audit_log.verify(jsonb), audit_log.checkpoint()
    TO audit_log_auditor;
-- The capture triggers' functions: PostgreSQL checks EXECUTE on them when it
-- clones the row trigger onto a new partition, which the table's owner
-- creates. A trigger function cannot be called from SQL, and the DDL guard
-- refuses anyone but audit_log (and superusers) attaching them to a table,
-- so this lets nobody write an event that is not a real change.
GRANT EXECUTE ON FUNCTION audit_log.capture_row(), audit_log.capture_stmt() TO PUBLIC;

-- The application context, for any role: it only sets the caller's own
-- setting (audit_log.context), which every role may set anyway.
-- is_local must be given: set_config() would read NULL as false, and make a
-- context meant for one transaction stick to the session.
CREATE FUNCTION audit_log.set_context(context jsonb, is_local boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF is_local IS NULL THEN
        RAISE EXCEPTION 'audit_log.set_context: is_local must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass true (this transaction only, the default) or false (the rest of the session).';
    END IF;
    -- A NULL context clears it.
    PERFORM pg_catalog.set_config('audit_log.context', coalesce(context::pg_catalog.text, ''), is_local);
END
$$;
COMMENT ON FUNCTION audit_log.set_context(jsonb, boolean) IS
    'Set the application context recorded with each audited change: for this transaction (the default) or, with is_local => false, the session. NULL clears it.';
GRANT EXECUTE ON FUNCTION audit_log.set_context(jsonb, boolean) TO PUBLIC;

-- A row's versions, in order. With the table's primary key, an index lookup
-- on events.row_key; with other columns (a table without a primary key), a
-- search of that table's events by content. The table is named as it is
-- now: events recorded under an earlier name of the table are not found.
CREATE FUNCTION audit_log.history(target regclass, key jsonb)
RETURNS TABLE (event_id bigint, tx_id xid8, recorded_at timestamptz, op text,
               session_user_name text, current_user_name text, context jsonb,
               old_row jsonb, new_row jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    leaves regclass[];
    keys bigint[];
    s text;
    t text;
    missing text;
BEGIN
    IF target IS NULL OR key IS NULL THEN
        RAISE EXCEPTION 'audit_log.history: target and key must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT n.nspname, c.relname INTO s, t
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', target::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF jsonb_typeof(key) <> 'object' OR key = '{}' THEN
        RAISE EXCEPTION 'audit_log.history: key must be a JSON object naming the row''s key columns, such as {"id": 42}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(quote_ident(k2), ', ') INTO missing
      FROM jsonb_object_keys(key) AS k2
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = target AND a.attname = k2 AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'audit_log.history: %.% has no column %', quote_ident(s), quote_ident(t), missing
            USING ERRCODE = 'undefined_column';
    END IF;
    -- A partitioned table's events are recorded under its partitions' names.
    SELECT pg_catalog.array_agg(p.relid) INTO leaves
      FROM pg_catalog.pg_partition_tree(target) p WHERE p.isleaf;
    leaves := coalesce(leaves, ARRAY[target]);
    SELECT pg_catalog.array_agg(audit_log.row_key_of(l, key)) INTO keys
      FROM pg_catalog.unnest(leaves) l;
    IF pg_catalog.array_position(keys, NULL) IS NULL THEN
        RETURN QUERY
            SELECT e.id, e.tx_id, e.recorded_at, e.op, e.session_user_name, e.current_user_name,
                   e.context, e.old_row, e.new_row
              FROM audit_log.events e
             WHERE e.row_key = ANY (keys)
               AND (e.table_schema, e.table_name) IN (
                   SELECT n.nspname::text, c.relname::text FROM pg_catalog.unnest(leaves) l
                     JOIN pg_catalog.pg_class c ON c.oid = l
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace)
             ORDER BY e.id;
    ELSE
        RETURN QUERY
            SELECT e.id, e.tx_id, e.recorded_at, e.op, e.session_user_name, e.current_user_name,
                   e.context, e.old_row, e.new_row
              FROM audit_log.events e
             WHERE (e.table_schema, e.table_name) IN (
                   SELECT n.nspname::text, c.relname::text FROM pg_catalog.unnest(leaves) l
                     JOIN pg_catalog.pg_class c ON c.oid = l
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace)
               AND (e.old_row @> key OR e.new_row @> key)
             ORDER BY e.id;
    END IF;
END
$$;
COMMENT ON FUNCTION audit_log.history(regclass, jsonb) IS
    'A row''s versions in order: by primary key through an index, or by any columns of a table without one.';
REVOKE ALL ON FUNCTION audit_log.history(regclass, jsonb), audit_log.row_key_of(regclass, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.history(regclass, jsonb), audit_log.row_key_of(regclass, jsonb)
    TO audit_log_auditor;

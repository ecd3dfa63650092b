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

DO $guards$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['records', 'segments', 'row_keys', 'prepared', 'source'] LOOP
        EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.%I
                          FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change()', t);
        EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.%I
                          FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change()', t);
        EXECUTE format('ALTER TABLE audit_log.%I ENABLE ALWAYS TRIGGER append_only', t);
        EXECUTE format('ALTER TABLE audit_log.%I ENABLE ALWAYS TRIGGER append_only_truncate', t);
    END LOOP;
END
$guards$;

-- The auditor's interface: the log as one row per event and one per link,
-- with the columns of format v1. Nothing in them is stored twice: events
-- are unpacked from their records, and the hashes recomputed.
CREATE VIEW audit_log.events AS
SELECT e.id, e.tx_id::text::xid8 AS tx_id, e.tx_seq, e.recorded_at, e.statement_at,
       e.session_user_name, e.current_user_name, e.application_name,
       e.client_addr::inet AS client_addr, audit_log.canonical_json_text(e.context)::jsonb AS context,
       e.table_schema, e.table_name, e.op,
       audit_log.canonical_json_text(e.old_row)::jsonb AS old_row,
       audit_log.canonical_json_text(e.new_row)::jsonb AS new_row,
       e.prev_hash, e.hash, r.first_event AS tx_first, r.committed_at
  FROM audit_log.records r
 CROSS JOIN LATERAL audit_log.record_events(r.first_event, r.tx_id::text::bigint, r.segments, r.payload) e;
COMMENT ON VIEW audit_log.events IS 'Audit events, one per captured row change or configuration change, unpacked from audit_log.records. hash and prev_hash are recomputed; see docs/FORMAT.md.';
COMMENT ON COLUMN audit_log.events.committed_at IS 'When the event''s transaction was linked (its commit): a time range on this column reads only the records in it, through a BRIN index.';

CREATE VIEW audit_log.links AS
SELECT r.chain_id, r.seq, r.tx_id, r.event_count, r.first_event, r.last_event,
       audit_log.record_last_hash(r.first_event, r.tx_id::text::bigint, r.segments, r.payload) AS last_event_hash,
       r.committed_at,
       CASE WHEN r.seq = 1 THEN '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
            ELSE coalesce((SELECT p.link_hash FROM audit_log.records p
                            WHERE p.chain_id = r.chain_id AND p.seq = r.seq - 1),
                          (SELECT a.link_hash FROM audit_log.anchors a
                            WHERE a.chain_id = r.chain_id AND a.seq = r.seq - 1))
       END AS prev_link_hash,
       r.link_hash
  FROM audit_log.records r;
COMMENT ON VIEW audit_log.links IS 'One commit link per record of audit_log.records, with the columns of format v1: last_event_hash recomputed, prev_link_hash the stored hash of the record before.';

GRANT SELECT ON audit_log.events, audit_log.links TO audit_log_auditor;
REVOKE ALL ON FUNCTION audit_log.record_events(bigint, bigint, integer, bytea),
    audit_log.record_last_hash(bigint, bigint, integer, bytea), audit_log.canonical_json_text(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.record_events(bigint, bigint, integer, bytea),
    audit_log.record_last_hash(bigint, bigint, integer, bytea), audit_log.canonical_json_text(bytea) TO audit_log_auditor;

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
GRANT EXECUTE ON FUNCTION audit_log.enable(regclass, text[], text[], text[], boolean, boolean, boolean, boolean),
    audit_log.disable(regclass),
    audit_log.enable_schema(text), audit_log.disable_schema(text),
    audit_log.set_retention(interval), audit_log.purge(timestamptz),
    audit_log.repair_segments()
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

-- A row's versions, in order. With the primary key of a table enabled with
-- history => true, an index lookup in row_keys; otherwise a search of that
-- table's events by content. The table is named as it is
-- now: events recorded under an earlier name of the table are not found.
-- history()'s search by content: a row (before or after a change) whose
-- members named by the key equal the key's, as jsonb (5 and 5.0 alike; an
-- array or an object only the same one, where @> would take one holding
-- it). @> first, which is cheaper and implied. Operators qualified, so
-- that the function can be inlined into history()'s query.
CREATE FUNCTION audit_log.key_matches("row" jsonb, key jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT "row" OPERATOR(pg_catalog.@>) key AND NOT EXISTS (
    SELECT FROM pg_catalog.jsonb_each(key) m
     WHERE NOT coalesce("row" OPERATOR(pg_catalog.->) m.key OPERATOR(pg_catalog.=) m.value, false))
$$;
COMMENT ON FUNCTION audit_log.key_matches(jsonb, jsonb) IS 'Whether a row''s members named by key equal key''s, as jsonb: history()''s search by content.';
REVOKE ALL ON FUNCTION audit_log.key_matches(jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.key_matches(jsonb, jsonb) TO audit_log_auditor;

CREATE FUNCTION audit_log.history(target regclass, key jsonb)
RETURNS TABLE (event_id bigint, tx_id xid8, recorded_at timestamptz, op text,
               session_user_name text, current_user_name text, context jsonb,
               old_row jsonb, new_row jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- A lookup reads a few records: compiling its plan (whose estimate counts
-- 1,000 events per record) cost 40 ms to 2 s, the lookup itself 2 to 5 ms.
SET jit = off
AS $$
DECLARE
    leaves regclass[];
    keys bigint[];
    since bigint;
    leaf_schemas text[];
    leaf_names text[];
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
    SELECT pg_catalog.array_agg(n.nspname::text), pg_catalog.array_agg(c.relname::text)
      INTO leaf_schemas, leaf_names
      FROM pg_catalog.unnest(leaves) l
      JOIN pg_catalog.pg_class c ON c.oid = l
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
    SELECT pg_catalog.array_agg(audit_log.row_key_of(l, key)) INTO keys
      FROM pg_catalog.unnest(leaves) l;
    -- The index serves tables enabled with history => true (every leaf).
    IF pg_catalog.array_position(keys, NULL) IS NULL AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.unnest(leaves) l
         WHERE NOT coalesce((SELECT (a.options->>'history')::boolean FROM audit_log.audited_tables a
                              WHERE a.relid = l), false)
           AND NOT coalesce((SELECT (a.options->>'history')::boolean FROM audit_log.audited_tables a
                              WHERE a.relid = target), false)) THEN
        -- Changes recorded before history => true was set, or before the
        -- primary key last changed, are not in the index: searched by content.
        SELECT pg_catalog.max(a.history_since) INTO since FROM audit_log.audited_tables a
         WHERE a.relid = target OR a.relid = ANY (leaves);
        RETURN QUERY
            SELECT DISTINCT ON (h.id) h.* FROM (
            SELECT e.id, e.tx_id::text::xid8, e.recorded_at, e.op, e.session_user_name, e.current_user_name,
                   audit_log.canonical_json_text(e.context)::jsonb,
                   audit_log.canonical_json_text(e.old_row)::jsonb,
                   audit_log.canonical_json_text(e.new_row)::jsonb
              FROM (SELECT DISTINCT k.first_event, k.tx_seq FROM audit_log.row_keys k
                     WHERE k.row_key = ANY (keys)) k
              JOIN audit_log.records r ON r.first_event = k.first_event
             CROSS JOIN LATERAL audit_log.record_events(r.first_event, r.tx_id::text::bigint, r.segments, r.payload) e
             WHERE e.tx_seq = k.tx_seq
               AND (e.table_schema, e.table_name) IN (
                   SELECT * FROM unnest(leaf_schemas, leaf_names))
            UNION ALL
            -- From the records themselves, not audit_log.events: the bound
            -- on first_event reads only the records before the mark.
            SELECT e.id, e.tx_id::text::xid8, e.recorded_at, e.op, e.session_user_name, e.current_user_name,
                   audit_log.canonical_json_text(e.context)::jsonb, e.old_row, e.new_row
              FROM audit_log.records r
             CROSS JOIN LATERAL audit_log.record_events(r.first_event, r.tx_id::text::bigint, r.segments, r.payload) e0
             CROSS JOIN LATERAL (SELECT e0.id, e0.tx_id, e0.recorded_at, e0.op, e0.session_user_name,
                                        e0.current_user_name, e0.context,
                                        audit_log.canonical_json_text(e0.old_row)::jsonb AS old_row,
                                        audit_log.canonical_json_text(e0.new_row)::jsonb AS new_row) e
             WHERE since IS NOT NULL AND r.first_event < since AND e0.id < since
               AND (e0.table_schema, e0.table_name) IN (
                   SELECT * FROM unnest(leaf_schemas, leaf_names))
               AND e0.op IN ('INSERT', 'UPDATE', 'DELETE')
               AND (audit_log.key_matches(e.old_row, key) OR audit_log.key_matches(e.new_row, key))
            ) h
             ORDER BY h.id;
    ELSE
        RETURN QUERY
            SELECT e.id, e.tx_id, e.recorded_at, e.op, e.session_user_name, e.current_user_name,
                   e.context, e.old_row, e.new_row
              FROM audit_log.events e
             WHERE (e.table_schema, e.table_name) IN (
                   SELECT * FROM unnest(leaf_schemas, leaf_names))
               AND e.op IN ('INSERT', 'UPDATE', 'DELETE')
               AND (audit_log.key_matches(e.old_row, key) OR audit_log.key_matches(e.new_row, key))
             ORDER BY e.id;
    END IF;
END
$$;
COMMENT ON FUNCTION audit_log.history(regclass, jsonb) IS
    'A row''s versions in order: by primary key through an index, or by any columns of a table without one.';
REVOKE ALL ON FUNCTION audit_log.history(regclass, jsonb), audit_log.row_key_of(regclass, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.history(regclass, jsonb), audit_log.row_key_of(regclass, jsonb)
    TO audit_log_auditor;
REVOKE ALL ON FUNCTION audit_log.index_history(regclass), audit_log.row_key_in(regclass, bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.index_history(regclass) TO audit_log_admin;

-- Central collection (docs: README, "Collecting many databases' logs").
-- This log's identity as a source: made on first call, then fixed.
CREATE FUNCTION audit_log.source_id() RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id uuid;
BEGIN
    SELECT s.source_id INTO found_id FROM audit_log.source s;
    IF FOUND THEN
        RETURN found_id;
    END IF;
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'audit_log: this log has no source identity yet'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call audit_log.source_id() once on the primary.';
    END IF;
    INSERT INTO audit_log.source DEFAULT VALUES ON CONFLICT DO NOTHING;
    SELECT s.source_id INTO found_id FROM audit_log.source s;
    RETURN found_id;
END
$$;
COMMENT ON FUNCTION audit_log.source_id() IS
    'This log''s identity for central collection: a UUID made on the first call (on the primary) and kept by pg_dump, restores and physical copies.';

-- At a collector: register a source, delivered by a subscription (made
-- before or after) to a source's publication of audit_log.records,
-- segments, anchors and source, WITH (publish = 'insert').
CREATE FUNCTION audit_log.collect(source text, subscription name) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := 'audit_log_source_' || source;
    t text;
BEGIN
    IF source IS NULL OR subscription IS NULL THEN
        RAISE EXCEPTION 'audit_log.collect: source and subscription must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'permission denied to collect a source''s log'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask a superuser to do it: subscriptions are theirs.';
    END IF;
    IF source !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'audit_log.collect: source name "%" must be 1 to 40 lower-case letters, digits or _, starting with a letter', source
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM audit_log.sources x WHERE x.name = source OR x.subscription = collect.subscription) THEN
        RAISE EXCEPTION 'audit_log.collect: source "%" or subscription "%" is already registered', source, subscription
            USING ERRCODE = 'duplicate_object';
    END IF;
    EXECUTE pg_catalog.format('CREATE SCHEMA %I', s);
    INSERT INTO audit_log.sources (name, subscription, schema_oid)
    VALUES (source, subscription, (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = s));
    FOREACH t IN ARRAY ARRAY['records', 'segments', 'anchors'] LOOP
        EXECUTE pg_catalog.format('CREATE TABLE %I.%I (LIKE audit_log.%I INCLUDING ALL)', s, t, t);
        EXECUTE pg_catalog.format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON %I.%I
                                     FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change()', s, t);
        EXECUTE pg_catalog.format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON %I.%I
                                     FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change()', s, t);
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I ENABLE ALWAYS TRIGGER append_only', s, t);
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I ENABLE ALWAYS TRIGGER append_only_truncate', s, t);
        EXECUTE pg_catalog.format('REVOKE ALL ON %I.%I FROM PUBLIC', s, t);
        EXECUTE pg_catalog.format('GRANT SELECT ON %I.%I TO audit_log_auditor', s, t);
    END LOOP;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO audit_log_auditor', s);
END
$$;
COMMENT ON FUNCTION audit_log.collect(text, name) IS
    'At a collector: keep the log that subscription delivers (a source''s publication of audit_log.records, segments, anchors and source) in schema audit_log_source_<source>. Superuser only.';

-- Rows a subscription applies to audit_log.records, segments, anchors and
-- source go to their source's schema instead (REPLICA triggers fire only in
-- a subscription's workers). A key delivered twice must carry the same row;
-- a later anchor of a chain (a purge at the source) is not news here, where
-- the purged records are kept.
CREATE FUNCTION audit_log.collect_route() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sub oid;
    syncing oid;
    src audit_log.sources;
    s text;
    n bigint;
    last bigint;
    same boolean;
BEGIN
    -- relid is set in a worker copying a table's initial data.
    SELECT w.subid, w.relid INTO sub, syncing FROM pg_catalog.pg_stat_subscription w
     WHERE w.pid = pg_catalog.pg_backend_pid() LIMIT 1;
    IF sub IS NULL THEN
        RETURN NEW;  -- not a subscription's worker
    END IF;
    IF TG_TABLE_NAME NOT IN ('records', 'segments', 'anchors', 'source') THEN
        RAISE EXCEPTION 'audit_log: audit_log.% takes no rows from a subscription', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A source publishes audit_log.records, segments, anchors and source only.';
    END IF;
    SELECT x.* INTO src FROM audit_log.sources x
      JOIN pg_catalog.pg_subscription p ON p.subname = x.subscription
     WHERE p.oid = sub;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_log: subscription % delivers audit_log rows, but no source is registered for it',
            (SELECT p.subname FROM pg_catalog.pg_subscription p WHERE p.oid = sub)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run SELECT audit_log.collect(''<source name>'', ''<subscription>'') here.';
    END IF;
    IF TG_TABLE_NAME = 'source' THEN
        IF src.source_id IS NULL OR src.source_id = NEW.source_id THEN
            UPDATE audit_log.sources SET source_id = NEW.source_id, verified_by = sub WHERE name = src.name;
        ELSE
            RAISE EXCEPTION 'audit_log: subscription % delivers the log of source %, but % collects the log of source %',
                src.subscription, NEW.source_id, src.name, src.source_id
                USING ERRCODE = 'data_exception',
                      HINT = 'The subscription points at another database than the one first collected as this source.';
        END IF;
        RETURN NULL;
    END IF;
    IF src.verified_by IS DISTINCT FROM sub THEN
        RAISE EXCEPTION 'audit_log: subscription % has not delivered the identity of the log it reads yet', src.subscription
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Its publication must include audit_log.source, copied with its initial data; the rows are retried until it arrives.';
    END IF;
    s := 'audit_log_source_' || src.name;
    IF src.schema_oid IS DISTINCT FROM (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = s) THEN
        RAISE EXCEPTION 'audit_log: schema % is not the one audit_log.collect() made for source %', s, src.name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_TABLE_NAME = 'records' AND syncing IS NULL THEN
        -- Streamed records come in commit order, so each continues its chain.
        EXECUTE pg_catalog.format('SELECT max(r.seq) FROM %I.records r WHERE r.chain_id = $1', s)
            INTO last USING NEW.chain_id;
        IF last IS NULL THEN
            EXECUTE pg_catalog.format('SELECT a.seq FROM %I.anchors a WHERE a.chain_id = $1', s)
                INTO last USING NEW.chain_id;
        END IF;
        IF NEW.seq > coalesce(last, 0) + 1 THEN
            RAISE EXCEPTION 'audit_log: record %/% from subscription % does not continue chain % of source % (collected up to seq %)',
                NEW.chain_id, NEW.seq, src.subscription, NEW.chain_id, src.name, coalesce(last, 0)
                USING ERRCODE = 'data_corrupted',
                      HINT = 'The subscription delivers another log than the one collected as this source, or records were lost.';
        END IF;
    END IF;
    IF TG_TABLE_NAME = 'anchors' THEN
        -- Where the collected copy of a chain starts, when the source had
        -- purged before collection began; not once the copy holds what it covers.
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %I.records r WHERE r.chain_id = $1 AND r.seq <= $2)', s)
            INTO same USING NEW.chain_id, NEW.seq;
        IF NOT same THEN
            EXECUTE pg_catalog.format('INSERT INTO %I.anchors SELECT ($1).* ON CONFLICT DO NOTHING', s) USING NEW;
        END IF;
        RETURN NULL;
    END IF;
    EXECUTE pg_catalog.format('INSERT INTO %I.%I SELECT ($1).* ON CONFLICT DO NOTHING', s, TG_TABLE_NAME) USING NEW;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %I.%I t WHERE ROW(t.*) = ROW(($1).*))', s, TG_TABLE_NAME)
            INTO same USING NEW;
        IF NOT same THEN
            RAISE EXCEPTION 'audit_log: source % sent a row of % that differs from the one it sent before under the same key',
                src.name, TG_TABLE_NAME
                USING ERRCODE = 'data_corrupted',
                      HINT = 'The source''s log changed after it was collected; compare audit_log.verify_source() here with verify() there.';
        END IF;
    END IF;
    RETURN NULL;
END
$$;
DO $collect$
DECLARE
    t text;
BEGIN
    -- Every table of the log: those a source publishes are routed, the
    -- others refuse a subscription's rows.
    FOREACH t IN ARRAY ARRAY['records', 'segments', 'anchors', 'source', 'prepared', 'row_keys',
                             'audited_tables', 'audited_schemas', 'retention', 'secrets', 'sources'] LOOP
        EXECUTE format('CREATE TRIGGER collect BEFORE INSERT ON audit_log.%I
                          FOR EACH ROW EXECUTE FUNCTION audit_log.collect_route()', t);
        EXECUTE format('ALTER TABLE audit_log.%I ENABLE REPLICA TRIGGER collect', t);
    END LOOP;
END
$collect$;
REVOKE ALL ON FUNCTION audit_log.collect(text, name), audit_log.collect_route(), audit_log.source_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.source_id() TO audit_log_admin, audit_log_auditor;
GRANT EXECUTE ON FUNCTION audit_log.verify_source(text), audit_log.verify_source(text, jsonb),
    audit_log.source_checkpoint(text) TO audit_log_auditor;

-- Merkle proofs (new in 0.3.0): the tiles are append-only like the log,
-- refuse a subscription's rows, and only auditors ask for proofs.
DO $tiles$
BEGIN
    CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.tiles
        FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change();
    CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.tiles
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change();
    ALTER TABLE audit_log.tiles ENABLE ALWAYS TRIGGER append_only;
    ALTER TABLE audit_log.tiles ENABLE ALWAYS TRIGGER append_only_truncate;
    CREATE TRIGGER collect BEFORE INSERT ON audit_log.tiles
        FOR EACH ROW EXECUTE FUNCTION audit_log.collect_route();
    ALTER TABLE audit_log.tiles ENABLE REPLICA TRIGGER collect;
END
$tiles$;
REVOKE ALL ON FUNCTION audit_log.prove(bigint, jsonb), audit_log.consistency(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.prove(bigint, jsonb), audit_log.consistency(jsonb) TO audit_log_auditor;

-- audit_log 0.2.0 -> 0.3.0: ALTER EXTENSION audit_log UPDATE.
--
-- What 0.3.0 adds is mostly in the library (the records export and the
-- report of the audit-log CLI, a faster single-core verify()). The storage
-- format is still version 2 (docs/FORMAT.md), and its payloads now hold
-- packed event frames, which the views read with their records' tx_id. In SQL, verify() and
-- checkpoint() gain the comments every other function has, and central
-- collection arrives (audit_log.source_id(), collect(), verify_source()).
-- pg_test/scenarios/upgrade.sh checks that the result equals a fresh
-- install of 0.3.0, object by object.
--
-- Complain if this script is sourced in psql rather than run by ALTER
-- EXTENSION.
\echo Use "ALTER EXTENSION audit_log UPDATE TO '0.3.0'" to load this file. \quit

-- The log's text (names, rows as JSON) is UTF-8, as docs/FORMAT.md
-- requires and every verifier reads it: in a database of another encoding,
-- 0.2.0 stored its bytes as they are, and a non-ASCII value would
-- make the rest of its transaction unreadable in audit_log.events.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'audit_log needs a database encoded in UTF8; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Create the database with ENCODING ''UTF8'' (and a UTF-8 locale, or TEMPLATE template0), then install audit_log there; this database''s log can stay on 0.2.0.';
    END IF;
END
$encoding$;


-- A prepared transaction's row keeps the hash of its last event, computed
-- as it was captured, so that the commit that links it (anyone's) does not
-- hash all its events again. Rows prepared before have none.
ALTER TABLE audit_log.prepared ADD COLUMN last_event_hash bytea;
COMMENT ON COLUMN audit_log.prepared.last_event_hash IS 'The hash of the transaction''s last event, computed as it was captured: its link covers it without hashing the events again. NULL in rows prepared before 0.3.0, which are hashed when linked.';

-- history(): where the row_keys index starts to hold every change of a
-- table (history => true turned on, or its primary key changed), so that
-- the events before are searched by content. Unknown for 0.2.0's changes:
-- NULL, as for a table enabled with history => true (see the CHANGELOG).
ALTER TABLE audit_log.audited_tables ADD COLUMN history_since bigint;
COMMENT ON COLUMN audit_log.audited_tables.history_since IS 'With history => true: the event (OPTIONS, or DDL that changed the primary key) from which audit_log.row_keys holds every change of the table; history() searches the events before it by content. NULL: since the table was enabled.';
-- 0.3.0 files a numeric key by its value (5.000 as 5) and an UPDATE of
-- the key under both keys; 0.2.0's entries do neither. So history()
-- searches the changes recorded before this update by content, until
-- audit_log.index_history() files them again (see the CHANGELOG).
UPDATE audit_log.audited_tables SET history_since = (SELECT pg_catalog.nextval('audit_log.events_id_seq'))
 WHERE coalesce((options->>'history')::boolean, false);

-- One BRIN index over commit time and first event instead of one on each:
-- a query on either column uses it, and each commit updates one index, not
-- two. Building it reads the records once (BRIN builds are fast).
DROP INDEX audit_log.records_committed_at_idx;
DROP INDEX audit_log.records_first_event_idx;
CREATE INDEX records_committed_at_first_event_idx ON audit_log.records USING brin (committed_at, first_event) WITH (pages_per_range = 16, autosummarize = on);

-- Segments that are not runs of tx_seq, which 0.2.0 could write (a
-- savepoint released between two spills): verify() reports their
-- transactions changed. repair_segments() lays them out as runs, changing
-- no event; the admin runs it (see the CHANGELOG).
CREATE FUNCTION audit_log."repair_segments"()
RETURNS TABLE ("transactions" bigint, "segments_before" bigint, "segments_after" bigint)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'repair_segments_wrapper';
COMMENT ON FUNCTION audit_log.repair_segments() IS 'Lay out as runs of tx_seq the segments of transactions written before 0.3.0 that are not (a savepoint defect that makes verify() report them changed). No event or hash changes: a transaction is rewritten only if its new layout recomputes its stored link. Recorded as a REPAIR event. Requires audit_log_admin.';
REVOKE ALL ON FUNCTION audit_log.repair_segments() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.repair_segments() TO audit_log_admin;

COMMENT ON FUNCTION audit_log.verify() IS 'Recompute every event hash and link of the log; ok, or the first bad event and what is wrong with it. A failure also raises a WARNING and notifies audit_log_alert. Requires audit_log_auditor.';
COMMENT ON FUNCTION audit_log.checkpoint() IS 'Every chain''s head (seq, link hash, last event) and Merkle tree (size, root), to keep outside the database: audit_log.verify(checkpoint) or audit_log.consistency(checkpoint) later proves that the log extends it, and audit_log.prove(event, checkpoint) that it holds an event. Requires audit_log_auditor.';

-- Central collection (new in 0.3.0): this log's identity as a source, and at
-- a collector, the sources it receives by logical replication. The same
-- objects as a fresh install makes (sql/bootstrap.sql, sql/finalize.sql).
-- This log's identity as a source of central collection: made once by
-- audit_log.source_id(), kept by pg_dump and by physical copies, so a
-- restore or a failover does not change it.
CREATE TABLE audit_log.source (
    id         boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (id),
    source_id  uuid        NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE audit_log.source IS 'This log''s identity for central collection (audit_log.source_id()): one row, made once, kept by pg_dump and physical copies.';

-- At a collector: the sources whose logs it receives by logical
-- replication, each kept in schema audit_log_source_<name>.
CREATE TABLE audit_log.sources (
    name         text        NOT NULL PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    subscription name        NOT NULL UNIQUE,
    source_id    uuid,
    -- The subscription (OID) that delivered the matching identity: rows of
    -- any other subscription, or before it, are refused.
    verified_by  oid,
    -- The schema audit_log.collect() made: a schema of that name made later
    -- (by anyone) is not this source's.
    schema_oid   oid,
    added_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    added_by     text        NOT NULL DEFAULT pg_catalog."session_user"()
);
COMMENT ON TABLE audit_log.sources IS 'Sources collected here by audit_log.collect(): the subscription that delivers each, and the source''s identity (audit_log.source_id() there), learnt from the first row it sends.';
GRANT SELECT ON audit_log.source, audit_log.sources TO audit_log_auditor;
SELECT pg_catalog.pg_extension_config_dump('audit_log.source', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.sources', '');

CREATE FUNCTION audit_log."source_checkpoint"("source" text) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'source_checkpoint_wrapper';
COMMENT ON FUNCTION audit_log.source_checkpoint(text) IS 'Every chain head of the log of a source this database collects, as a checkpoint; its database field is the source''s name. Requires audit_log_auditor.';
CREATE FUNCTION audit_log."verify_source"("source" text)
RETURNS TABLE ("ok" boolean, "events_checked" bigint, "first_bad_event" bigint, "problem" text)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'verify_source_wrapper';
COMMENT ON FUNCTION audit_log.verify_source(text) IS 'As verify(), over the log of a source this database collects by logical replication (audit_log.collect()). Requires audit_log_auditor.';
CREATE FUNCTION audit_log."verify_source"("source" text, "checkpoint" jsonb)
RETURNS TABLE ("ok" boolean, "events_checked" bigint, "first_bad_event" bigint, "problem" text)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'verify_source_against_wrapper';
COMMENT ON FUNCTION audit_log.verify_source(text, jsonb) IS 'As verify(checkpoint), over the log of a source this database collects: a checkpoint taken at the source proves the collected copy extends it. Requires audit_log_auditor.';
REVOKE ALL ON FUNCTION audit_log.verify_source(text), audit_log.verify_source(text, jsonb),
    audit_log.source_checkpoint(text) FROM PUBLIC;

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
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.source
    FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.source
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change();
ALTER TABLE audit_log.source ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE audit_log.source ENABLE ALWAYS TRIGGER append_only_truncate;

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

-- Each chain's Merkle tree (new in 0.3.0; docs/FORMAT.md, "Merkle trees"):
-- tiles of 256 hashes, integrated by checkpoint() and purge(), never on
-- the commit path. Derived from the records, except the leaves a purge
-- keeps of the tile it cuts through (width < 256).
CREATE TABLE audit_log.tiles (
    chain_id integer NOT NULL,
    level    integer NOT NULL CHECK (level >= 0),
    idx      bigint  NOT NULL CHECK (idx >= 0),
    width    integer NOT NULL CHECK (width BETWEEN 1 AND 256),
    hashes   bytea   NOT NULL,
    root     bytea   NOT NULL,
    CONSTRAINT tiles_pkey PRIMARY KEY (chain_id, level, idx, width)
);
ALTER TABLE audit_log.tiles ALTER COLUMN hashes SET STORAGE EXTERNAL;
COMMENT ON TABLE audit_log.tiles IS 'Append-only: each chain''s Merkle tree as tiles of 256 hashes (level 0: the records'' leaf hashes; level L: the roots of the tiles of level L - 1), with each tile''s root. Integrated by checkpoint() and purge(); audit_log.prove() and consistency() read them. See docs/FORMAT.md.';
GRANT SELECT ON audit_log.tiles TO audit_log_auditor;
SELECT pg_catalog.pg_extension_config_dump('audit_log.tiles', '');
CREATE FUNCTION audit_log."prove"("event_id" bigint, "checkpoint" jsonb DEFAULT NULL) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'prove_wrapper';
COMMENT ON FUNCTION audit_log.prove(bigint, jsonb) IS 'An inclusion proof of one event: the event, its record, and O(log n) hashes up to its chain''s Merkle root in the given checkpoint (or the current tree). It reveals that event and hashes only. audit-log verify-proof checks it offline against a signed checkpoint. Requires audit_log_auditor.';
CREATE FUNCTION audit_log."consistency"("old" jsonb) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'consistency_wrapper';
COMMENT ON FUNCTION audit_log.consistency(jsonb) IS 'A new checkpoint, and for each chain of an older checkpoint (format v2) the RFC 9162 consistency proof that the chain''s tree now extends the old one: O(chains x log n) hashes instead of a full verify. Requires audit_log_auditor.';

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

-- Packed events (format version 2 frames, docs/FORMAT.md): about 60% of
-- the bytes of version 1, hashed as stored. Their ids come from their record,
-- so the views' functions take its tx_id too. The library writes packed
-- frames once this script has run (before, its frames are version 1, which
-- 0.2.0's functions, still in the library, read).
CREATE FUNCTION audit_log."record_events"("first_event" bigint, "tx_id" bigint, "segments" integer, "payload" bytea)
RETURNS TABLE ("id" bigint, "tx_id" bigint, "tx_seq" integer, "recorded_at" timestamptz,
    "statement_at" timestamptz, "session_user_name" text, "current_user_name" text,
    "application_name" text, "client_addr" text, "context" bytea, "table_schema" text,
    "table_name" text, "op" text, "old_row" bytea, "new_row" bytea, "prev_hash" bytea, "hash" bytea)
STABLE PARALLEL SAFE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'record_events_of_wrapper';
COMMENT ON FUNCTION audit_log.record_events(bigint, bigint, integer, bytea) IS 'The events of one record of audit_log.records (with its segments), as rows, each with its recomputed hash. audit_log.events is built on it.';
CREATE FUNCTION audit_log."record_last_hash"("first_event" bigint, "tx_id" bigint, "segments" integer, "payload" bytea)
RETURNS bytea
STABLE PARALLEL SAFE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'record_last_hash_of_wrapper';
COMMENT ON FUNCTION audit_log.record_last_hash(bigint, bigint, integer, bytea) IS 'The recomputed hash of the last event of one record of audit_log.records: what its link covers.';
CREATE OR REPLACE VIEW audit_log.events AS
SELECT e.id, e.tx_id::text::xid8 AS tx_id, e.tx_seq, e.recorded_at, e.statement_at,
       e.session_user_name, e.current_user_name, e.application_name,
       e.client_addr::inet AS client_addr, audit_log.canonical_json_text(e.context)::jsonb AS context,
       e.table_schema, e.table_name, e.op,
       audit_log.canonical_json_text(e.old_row)::jsonb AS old_row,
       audit_log.canonical_json_text(e.new_row)::jsonb AS new_row,
       e.prev_hash, e.hash, r.first_event AS tx_first, r.committed_at
  FROM audit_log.records r
 CROSS JOIN LATERAL audit_log.record_events(r.first_event, r.tx_id::text::bigint, r.segments, r.payload) e;
CREATE OR REPLACE VIEW audit_log.links AS
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

CREATE OR REPLACE FUNCTION audit_log.history(target regclass, key jsonb)
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
CREATE FUNCTION audit_log."row_key_in"("target" regclass, "row" bytea, "rest" bytea) RETURNS bigint
STABLE PARALLEL SAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'row_key_in_wrapper';
COMMENT ON FUNCTION audit_log.row_key_in(regclass, bytea, bytea) IS 'The events.row_key of a row of a table (in the canonical encoding; members it lacks taken from rest) under the table''s current primary key; NULL if it lacks a key column. Used by audit_log.index_history().';
CREATE FUNCTION audit_log."index_history"("target" regclass) RETURNS bigint
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'index_history_wrapper';
COMMENT ON FUNCTION audit_log.index_history(regclass) IS 'File every recorded change of a table enabled with history => true (every partition of its partitioned table) in audit_log.row_keys under its current primary key, and clear audited_tables.history_since, so that audit_log.history() finds them through the index. Reads the whole log once; recorded as an INDEX_HISTORY event. Returns the number of entries added. Requires audit_log_admin.';
REVOKE ALL ON FUNCTION audit_log.index_history(regclass), audit_log.row_key_in(regclass, bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.index_history(regclass) TO audit_log_admin;
DROP FUNCTION audit_log.record_events(bigint, integer, bytea);
DROP FUNCTION audit_log.record_last_hash(bigint, integer, bytea);
REVOKE ALL ON FUNCTION audit_log.record_events(bigint, bigint, integer, bytea),
    audit_log.record_last_hash(bigint, bigint, integer, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.record_events(bigint, bigint, integer, bytea),
    audit_log.record_last_hash(bigint, bigint, integer, bytea) TO audit_log_auditor;

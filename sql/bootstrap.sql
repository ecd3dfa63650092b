-- audit_log schema, part 1: tables, roles and privileges.
-- Runs before the extension's functions are created.

-- The log's text (names, rows as JSON) is UTF-8, as docs/FORMAT.md
-- requires and every verifier reads it: in a database of another encoding,
-- capture would store its bytes as they are, and a non-ASCII value would
-- make the rest of its transaction unreadable in audit_log.events.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'audit_log needs a database encoded in UTF8; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Create the database with ENCODING ''UTF8'' (and a UTF-8 locale, or TEMPLATE template0), then install audit_log there.';
    END IF;
END
$encoding$;

DO $roles$
BEGIN
    -- Roles are cluster-wide: a second database that installs the extension reuses them.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'audit_log_admin') THEN
        CREATE ROLE audit_log_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'audit_log_auditor') THEN
        CREATE ROLE audit_log_auditor NOLOGIN;
    END IF;
END
$roles$;

REVOKE ALL ON SCHEMA audit_log FROM PUBLIC;
-- USAGE lets any role call audit_log.set_context (its only PUBLIC function).
-- It grants nothing on the tables, sequence or other functions: each has its
-- privileges revoked from PUBLIC below and in finalize.sql.
GRANT USAGE ON SCHEMA audit_log TO PUBLIC;

-- No CACHE: ids must follow capture order across sessions, so that a row's
-- history reads in order by id (a later change to a row is captured after the
-- earlier one committed). A cache would save about 5% of a bulk insert and
-- break that; pg_test's replay check catches it.
CREATE SEQUENCE audit_log.events_id_seq AS bigint;
COMMENT ON SEQUENCE audit_log.events_id_seq IS 'Event ids, in capture order. Gaps are normal: rolled-back changes consume ids.';

-- Storage format v2 (docs/FORMAT.md): one record per committed transaction,
-- written at commit with its link. Its payload holds the transaction's
-- events, each in the canonical encoding that its hash covers.
-- audit_log.events and audit_log.links (finalize.sql) read them as rows.
CREATE TABLE audit_log.records (
    chain_id     integer     NOT NULL,
    seq          bigint      NOT NULL,
    tx_id        xid8        NOT NULL,
    first_event  bigint      NOT NULL,
    last_event   bigint      NOT NULL,
    event_count  bigint      NOT NULL,
    committed_at timestamptz NOT NULL,
    segments     integer     NOT NULL,
    link_hash    bytea       NOT NULL,
    payload      bytea       NOT NULL,
    -- verify() and the commit path read chains in this order.
    CONSTRAINT records_pkey PRIMARY KEY (chain_id, seq)
);
-- Large payloads (JSON rows) compress well; TOAST compresses every record
-- over ~2 kB inline, with lz4 where the server has it (src/store.rs).
-- Commit times and event ids grow with the log: a BRIN index finds a time
-- range or a transaction for a fraction of a btree's cost per commit. One
-- index over both columns (a query on either uses it): each commit then
-- opens and updates one BRIN index, not two (docs/PERFORMANCE.md).
-- autosummarize: once a range of 16 pages fills, autovacuum summarizes it
-- (a work item, not a VACUUM), so a lookup reads the newest range and the
-- ranges it matches, not every record written since the last VACUUM.
CREATE INDEX records_committed_at_first_event_idx ON audit_log.records USING brin (committed_at, first_event) WITH (pages_per_range = 16, autosummarize = on);

COMMENT ON TABLE audit_log.records IS 'Append-only: one record per committed transaction with audited changes, holding its events and its link into one of K chains. See docs/FORMAT.md.';
COMMENT ON COLUMN audit_log.records.chain_id IS 'Which of the K chains this transaction extends.';
COMMENT ON COLUMN audit_log.records.seq IS '1-based position in the chain.';
COMMENT ON COLUMN audit_log.records.tx_id IS 'Top-level transaction id (xid8). Not unique across clusters: a restored log can hold two transactions with the same tx_id.';
COMMENT ON COLUMN audit_log.records.first_event IS 'Id of the first event of the transaction: its key, which never repeats.';
COMMENT ON COLUMN audit_log.records.last_event IS 'Id of the last event of the transaction.';
COMMENT ON COLUMN audit_log.records.event_count IS 'Number of events of the transaction.';
COMMENT ON COLUMN audit_log.records.committed_at IS 'Clock time just before commit.';
COMMENT ON COLUMN audit_log.records.segments IS 'How many segments (audit_log.segments) a large transaction spilled before commit.';
COMMENT ON COLUMN audit_log.records.link_hash IS 'SHA-256 over a version tag, the previous record''s link_hash and this record''s link (docs/FORMAT.md), computed at commit.';
COMMENT ON COLUMN audit_log.records.payload IS 'The events still in memory at commit: each a u32 length and the event''s canonical encoding, in tx_seq order.';

-- Events that a large transaction wrote before commit, without any lock.
CREATE TABLE audit_log.segments (
    first_event bigint  NOT NULL,
    part        integer NOT NULL,
    payload     bytea   NOT NULL,
    CONSTRAINT segments_pkey PRIMARY KEY (first_event, part)
);
ALTER TABLE audit_log.records ALTER COLUMN payload SET STORAGE EXTENDED;
ALTER TABLE audit_log.segments ALTER COLUMN payload SET STORAGE EXTENDED;
DO $lz4$
BEGIN
    -- PostgreSQL 14+ built with lz4: cheaper to compress than pglz.
    ALTER TABLE audit_log.records ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE audit_log.segments ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN
    NULL;  -- pglz, the default
END
$lz4$;
COMMENT ON TABLE audit_log.segments IS 'Append-only: events of a large transaction spilled before commit; its record (same first_event) covers them by count and hash.';
COMMENT ON COLUMN audit_log.segments.part IS 'tx_seq of the segment''s first event; its events run on consecutively.';

-- A prepared transaction's events (PREPARE TRANSACTION), sealed by the
-- transaction itself: COMMIT PREPARED makes the row visible, ROLLBACK
-- PREPARED removes it. The next audited commit (or checkpoint()) links it
-- into a chain as a record and removes it from here, so that no chain ever
-- waits on a prepared transaction.
CREATE TABLE audit_log.prepared (
    first_event bigint  NOT NULL,
    tx_id       xid8    NOT NULL,
    last_event  bigint  NOT NULL,
    event_count bigint  NOT NULL,
    segments    integer NOT NULL,
    payload     bytea   NOT NULL,
    last_event_hash bytea,
    CONSTRAINT prepared_pkey PRIMARY KEY (first_event)
);
ALTER TABLE audit_log.prepared ALTER COLUMN payload SET STORAGE EXTENDED;
COMMENT ON TABLE audit_log.prepared IS 'Events of prepared transactions (two-phase commit) not yet linked into a chain; the next audited commit or audit_log.checkpoint() links each committed one as a record.';
COMMENT ON COLUMN audit_log.prepared.last_event_hash IS 'The hash of the transaction''s last event, computed as it was captured: its link covers it without hashing the events again. NULL in rows prepared before 0.3.0, which are hashed when linked.';

-- audit_log.history(): where a row's versions are, for tables enabled with
-- history => true (one index entry per row change; none for other tables).
CREATE TABLE audit_log.row_keys (
    row_key     bigint  NOT NULL,
    first_event bigint  NOT NULL,
    tx_seq      integer NOT NULL
);
CREATE INDEX row_keys_row_key_idx ON audit_log.row_keys (row_key);
COMMENT ON TABLE audit_log.row_keys IS 'Append-only lookup aid for audit_log.history(), not covered by any hash: a 64-bit hash of the table and the row''s primary key, and the event''s place (transaction, tx_seq).';

CREATE TABLE audit_log.audited_tables (
    relid      regclass    NOT NULL PRIMARY KEY,
    enabled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by text        NOT NULL DEFAULT pg_catalog."session_user"(),
    options    jsonb       NOT NULL DEFAULT '{}',
    history_since bigint
);
COMMENT ON COLUMN audit_log.audited_tables.options IS 'Capture options given to enable(): operations, exclude_columns, redact_columns, skip_unchanged_updates, notify. {} records everything.';
COMMENT ON COLUMN audit_log.audited_tables.history_since IS 'With history => true: the event (OPTIONS, or DDL that changed the primary key) from which audit_log.row_keys holds every change of the table; history() searches the events before it by content. NULL: since the table was enabled.';

CREATE TABLE audit_log.audited_schemas (
    nspname    text        NOT NULL PRIMARY KEY,
    enabled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by text        NOT NULL DEFAULT pg_catalog."session_user"()
);
COMMENT ON TABLE audit_log.audited_schemas IS 'Schemas given to audit_log.enable_schema(): tables created in them are audited from their creation.';

-- Retention: the minimum age of what purge() may remove (one row, or none).
CREATE TABLE audit_log.retention (
    id      boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (id),
    min_age interval    NOT NULL,
    set_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    set_by  text        NOT NULL DEFAULT pg_catalog."session_user"()
);
COMMENT ON TABLE audit_log.retention IS 'Set by audit_log.set_retention(): purge() never removes anything younger.';

-- Where each chain starts after a purge: its last purged link.
CREATE TABLE audit_log.anchors (
    chain_id   integer     NOT NULL PRIMARY KEY,
    seq        bigint      NOT NULL,
    link_hash  bytea       NOT NULL,
    last_event bigint      NOT NULL,
    purged_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE audit_log.anchors IS 'Written by audit_log.purge(): the last purged link of each chain, from which verify() continues. Each purge also records its anchors as an event.';

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

-- Secrets only the extension's owner reads: the salt of redacted columns.
CREATE TABLE audit_log.secrets (
    name  text  NOT NULL PRIMARY KEY,
    value bytea NOT NULL
);
COMMENT ON TABLE audit_log.secrets IS 'Readable by the extension owner only. redaction_salt salts the SHA-256 of redacted columns; pg_dump keeps it.';
-- The salt is made by the first enable() that redacts a column, not here, so
-- that pg_restore can bring the original one back without a conflict.
COMMENT ON TABLE audit_log.audited_tables IS 'Tables on which audit_log.enable() was called. The capture triggers themselves are the source of truth.';

-- Nobody but the owner (the superuser that created the extension) writes here.
REVOKE ALL ON ALL TABLES IN SCHEMA audit_log FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA audit_log FROM PUBLIC;
GRANT SELECT ON audit_log.records, audit_log.segments, audit_log.row_keys, audit_log.prepared, audit_log.audited_tables, audit_log.audited_schemas,
    audit_log.retention, audit_log.anchors, audit_log.source, audit_log.sources, audit_log.tiles TO audit_log_auditor;
GRANT SELECT ON audit_log.audited_tables, audit_log.audited_schemas, audit_log.retention, audit_log.anchors
    TO audit_log_admin;

-- pg_dump keeps the log, the links and the configuration.
SELECT pg_catalog.pg_extension_config_dump('audit_log.records', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.segments', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.row_keys', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.prepared', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.audited_tables', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.secrets', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.audited_schemas', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.retention', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.anchors', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.events_id_seq', '');
-- New in 0.3.0, after what 0.2.0 had, so that an upgraded database lists them alike.
SELECT pg_catalog.pg_extension_config_dump('audit_log.source', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.sources', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.tiles', '');

-- audit_log schema, part 1: tables, roles and privileges.
-- Runs before the extension's functions are created.

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

CREATE TABLE audit_log.events (
    id                bigint      NOT NULL,
    tx_id             xid8        NOT NULL,
    tx_seq            integer     NOT NULL,
    recorded_at       timestamptz NOT NULL,
    statement_at      timestamptz NOT NULL,
    session_user_name text        NOT NULL,
    current_user_name text        NOT NULL,
    application_name  text,
    client_addr       inet,
    context           jsonb,
    table_schema      text        NOT NULL,
    table_name        text        NOT NULL,
    op                text        NOT NULL,
    old_row           jsonb,
    new_row           jsonb,
    prev_hash         bytea       NOT NULL,
    hash              bytea       NOT NULL,
    -- Not hashed: derived from the table and the row's primary key, to find
    -- a row's history without scanning the log.
    row_key           bigint,
    -- Not hashed: the id of the first event of the same transaction. With
    -- tx_seq it is the event's place in the log. tx_id cannot be that key:
    -- after a restore into a new cluster, transaction ids start again and
    -- repeat those of restored events; event ids come from a sequence that
    -- pg_dump keeps, so they never repeat.
    tx_first          bigint      NOT NULL,
    -- verify() reads events in this order, and a position cannot repeat.
    CONSTRAINT events_pkey PRIMARY KEY (tx_first, tx_seq)
);
-- Ids grow with time, so a BRIN index finds them at a fraction of the cost of
-- a second btree on every insert.
CREATE INDEX events_id_idx ON audit_log.events USING brin (id) WITH (pages_per_range = 16);
-- audit_log.history(): a row's versions by table and primary key.
CREATE INDEX events_row_key_idx ON audit_log.events (row_key);

COMMENT ON TABLE audit_log.events IS 'Append-only audit events, one per captured row change or configuration change. Each hash chains to the previous event of the same transaction; see docs/FORMAT.md.';
COMMENT ON COLUMN audit_log.events.id IS 'Event id, unique and increasing within a transaction.';
COMMENT ON COLUMN audit_log.events.tx_id IS 'Top-level transaction id (xid8) of the change, as PostgreSQL logs it. Not unique across clusters: a restored log can hold two transactions with the same tx_id.';
COMMENT ON COLUMN audit_log.events.tx_seq IS '1-based position of the event within its transaction.';
COMMENT ON COLUMN audit_log.events.recorded_at IS 'Clock time at capture.';
COMMENT ON COLUMN audit_log.events.statement_at IS 'Start time of the statement that made the change.';
COMMENT ON COLUMN audit_log.events.session_user_name IS 'The role that logged in (session_user).';
COMMENT ON COLUMN audit_log.events.current_user_name IS 'The role whose privileges made the change (current_user).';
COMMENT ON COLUMN audit_log.events.application_name IS 'application_name of the session, NULL if empty.';
COMMENT ON COLUMN audit_log.events.client_addr IS 'Client address, NULL for Unix-socket connections.';
COMMENT ON COLUMN audit_log.events.context IS 'Application-supplied context (the end user behind a pool), or NULL.';
COMMENT ON COLUMN audit_log.events.table_schema IS 'Schema of the changed table at the time of the change.';
COMMENT ON COLUMN audit_log.events.table_name IS 'Name of the changed table at the time of the change.';
COMMENT ON COLUMN audit_log.events.op IS 'INSERT, UPDATE, DELETE, TRUNCATE, or a configuration kind: ENABLE, DISABLE, OPTIONS, DDL, DROP, ENABLE_SCHEMA, DISABLE_SCHEMA, RETENTION, PURGE.';
COMMENT ON COLUMN audit_log.events.old_row IS 'The row before the change (UPDATE, DELETE), as jsonb.';
COMMENT ON COLUMN audit_log.events.new_row IS 'The row after the change (INSERT, UPDATE), or details of a configuration change.';
COMMENT ON COLUMN audit_log.events.prev_hash IS 'Hash of the previous event of the same transaction; 32 zero bytes for the first.';
COMMENT ON COLUMN audit_log.events.hash IS 'SHA-256 over a version tag, prev_hash and the canonical encoding of this event.';
COMMENT ON COLUMN audit_log.events.tx_first IS 'Id of the first event of the same transaction: with tx_seq, the event''s unique place in the log. Not covered by the event hash; verify() checks it against the transaction''s first event and its link.';
COMMENT ON COLUMN audit_log.events.row_key IS 'A 64-bit hash of the table and the changed row''s primary key (the old row''s for UPDATE and DELETE); NULL without a primary key. Not covered by the event hash: a lookup aid for audit_log.history().';

CREATE TABLE audit_log.links (
    chain_id        integer     NOT NULL,
    seq             bigint      NOT NULL,
    tx_id           xid8        NOT NULL,
    event_count     bigint      NOT NULL,
    first_event     bigint      NOT NULL,
    last_event      bigint      NOT NULL,
    last_event_hash bytea       NOT NULL,
    committed_at    timestamptz NOT NULL,
    prev_link_hash  bytea       NOT NULL,
    link_hash       bytea       NOT NULL,
    CONSTRAINT links_pkey PRIMARY KEY (chain_id, seq)
);
-- verify() matches each transaction's events to its link by the first event.
CREATE INDEX links_first_event_idx ON audit_log.links (first_event);

COMMENT ON TABLE audit_log.links IS 'Append-only commit links: one per transaction with audited changes, appended at commit to one of K chains.';
COMMENT ON COLUMN audit_log.links.chain_id IS 'Which of the K chains this link extends.';
COMMENT ON COLUMN audit_log.links.seq IS '1-based position in the chain.';
COMMENT ON COLUMN audit_log.links.tx_id IS 'The transaction whose events this link commits.';
COMMENT ON COLUMN audit_log.links.event_count IS 'Number of events of the transaction.';
COMMENT ON COLUMN audit_log.links.first_event IS 'Id of the first event of the transaction.';
COMMENT ON COLUMN audit_log.links.last_event IS 'Id of the last event of the transaction.';
COMMENT ON COLUMN audit_log.links.last_event_hash IS 'Hash of the last event, which covers every earlier event of the transaction.';
COMMENT ON COLUMN audit_log.links.committed_at IS 'Clock time just before commit.';
COMMENT ON COLUMN audit_log.links.prev_link_hash IS 'link_hash of the previous link of the chain; 32 zero bytes for the first.';
COMMENT ON COLUMN audit_log.links.link_hash IS 'SHA-256 over a version tag, prev_link_hash and the canonical encoding of this link.';

CREATE TABLE audit_log.audited_tables (
    relid      regclass    NOT NULL PRIMARY KEY,
    enabled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by text        NOT NULL DEFAULT pg_catalog."session_user"(),
    options    jsonb       NOT NULL DEFAULT '{}'
);
COMMENT ON COLUMN audit_log.audited_tables.options IS 'Capture options given to enable(): operations, exclude_columns, redact_columns, skip_unchanged_updates, notify. {} records everything.';

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
GRANT SELECT ON audit_log.events, audit_log.links, audit_log.audited_tables, audit_log.audited_schemas,
    audit_log.retention, audit_log.anchors TO audit_log_auditor;
GRANT SELECT ON audit_log.audited_tables, audit_log.audited_schemas, audit_log.retention, audit_log.anchors
    TO audit_log_admin;

-- pg_dump keeps the log, the links and the configuration.
SELECT pg_catalog.pg_extension_config_dump('audit_log.events', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.links', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.audited_tables', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.secrets', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.audited_schemas', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.retention', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.anchors', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log.events_id_seq', '');

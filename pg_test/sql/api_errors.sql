-- Bad input gets a clear error with the right SQLSTATE, and changes nothing.
CREATE DATABASE al_errors;
\c al_errors
SET client_min_messages = warning;
SET audit_log.chains = 1;  -- deterministic chain ids in this output
CREATE EXTENSION audit_log;
\set VERBOSITY sqlstate
CREATE TABLE base (id int);
CREATE VIEW v AS SELECT 1 AS x;
CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x;
CREATE TEMP TABLE tmp (id int);
CREATE SEQUENCE s;
SELECT audit_log.enable(NULL);
SELECT audit_log.enable('v');
SELECT audit_log.enable('mv');
SELECT audit_log.enable('tmp');
SELECT audit_log.enable('s');
SELECT audit_log.enable('no_such_table');
SELECT audit_log.enable(424242::oid::regclass);
SELECT audit_log.enable('audit_log.records');
SELECT audit_log.enable('audit_log.events');
SELECT audit_log.enable('pg_class');
SELECT audit_log.disable(NULL);
SELECT * FROM audit_log.verify(NULL);
SELECT * FROM audit_log.verify('[]');
SELECT * FROM audit_log.verify('{"format": "something else", "chains": []}');
SELECT * FROM audit_log.verify('{"format": "audit_log.checkpoint.v1", "chains": [{"chain": 0, "seq": 1, "link_hash": "zz", "last_event": 1}]}');
SELECT * FROM audit_log.verify('{"format": "audit_log.checkpoint.v1", "chains": [{"chain": 0, "seq": 0, "link_hash": "00", "last_event": 1}]}');
-- A checkpoint nested far deeper than any real one: a clear error.
SELECT * FROM audit_log.verify((SELECT repeat('[', 5000) || repeat(']', 5000))::jsonb);
-- set_context: NULL is_local would silently make the context session-wide.
SELECT audit_log.set_context('{"user": "alice"}', NULL);
-- Roles: the admin configures, the auditor reads, redacted() is a superuser's.
DROP ROLE IF EXISTS al_errors_admin;
CREATE ROLE al_errors_admin IN ROLE audit_log_admin;
SET ROLE al_errors_admin;
\set VERBOSITY default
SELECT * FROM audit_log.verify();
SELECT audit_log.redacted('"123-45-6789"');
SELECT audit_log.capture_row();
\set VERBOSITY sqlstate
RESET ROLE;
DROP ROLE al_errors_admin;
-- A role holding neither role, on a table it owns: PostgreSQL refuses it
-- EXECUTE. Should a superuser grant EXECUTE outside the roles, each
-- function still checks the role itself, and the hint names the one missing.
DROP ROLE IF EXISTS al_errors_nobody;
CREATE ROLE al_errors_nobody;
GRANT CREATE ON SCHEMA public TO al_errors_nobody;
SET ROLE al_errors_nobody;
CREATE TABLE nobodys (id int);
\set VERBOSITY default
SELECT audit_log.enable('nobodys');
SELECT * FROM audit_log.verify();
RESET ROLE;
GRANT EXECUTE ON FUNCTION audit_log.enable(regclass, text[], text[], text[], boolean, boolean, boolean, boolean),
    audit_log.verify(), audit_log.checkpoint() TO al_errors_nobody;
SET ROLE al_errors_nobody;
SELECT audit_log.enable('nobodys');
SELECT * FROM audit_log.verify();
SELECT audit_log.checkpoint();
\set VERBOSITY sqlstate
RESET ROLE;
SELECT count(*) AS audited FROM audit_log.audited_tables WHERE relid = 'nobodys'::regclass;
DROP OWNED BY al_errors_nobody;
DROP ROLE al_errors_nobody;
SELECT audit_log.enable('base');
-- Two-phase commit: a prepared transaction's events wait, sealed, for
-- COMMIT PREPARED; ROLLBACK PREPARED leaves none; checkpoint() (or the next
-- audited commit) links the committed ones into a chain.
BEGIN;
INSERT INTO base VALUES (1);
PREPARE TRANSACTION 'p1';
BEGIN;
INSERT INTO base VALUES (2);
PREPARE TRANSACTION 'p3';
SELECT count(*) AS prepared, (SELECT count(*) FROM audit_log.prepared) AS sealed_visible FROM pg_prepared_xacts;
COMMIT PREPARED 'p1';
ROLLBACK PREPARED 'p3';
SELECT count(*) AS waiting_for_a_link FROM audit_log.prepared;
-- Not inside a transaction block, whose links would be the block's to
-- commit: a checkpoint that named them would describe a log that never was
-- once the block rolled back (or was prepared, then rolled back).
BEGIN;
SELECT audit_log.checkpoint() IS NOT NULL AS checkpoint_in_a_block;
SELECT count(*) AS still_waiting FROM audit_log.prepared;
ROLLBACK;
-- Nor may a transaction that took a checkpoint be prepared: it would keep
-- the log's locks for as long as it stayed prepared.
BEGIN;
SELECT audit_log.checkpoint() IS NOT NULL AS checkpoint_taken;
PREPARE TRANSACTION 'after_a_checkpoint';   -- 0A000
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid = 'after_a_checkpoint';
SELECT audit_log.checkpoint() IS NOT NULL AS checkpoint_taken;
SELECT count(*) AS waiting_for_a_link FROM audit_log.prepared;
-- The next audited commit links a committed prepared transaction whoever
-- commits: here an application role that may not read the log (it used to
-- fail with 42501 on audit_log.prepared, once the table had held a row).
CREATE ROLE al_errors_app;
GRANT INSERT ON base TO al_errors_app;
BEGIN;
INSERT INTO base VALUES (4);
PREPARE TRANSACTION 'p4';
COMMIT PREPARED 'p4';
SET ROLE al_errors_app;
INSERT INTO base VALUES (5);
SELECT count(*) FROM audit_log.prepared;   -- what it may not read
RESET ROLE;
SELECT count(*) AS waiting_for_a_link FROM audit_log.prepared;
DROP OWNED BY al_errors_app;
DROP ROLE al_errors_app;
BEGIN;
SELECT 1;
PREPARE TRANSACTION 'p2';   -- nothing audited
COMMIT PREPARED 'p2';
\set VERBOSITY default
SELECT audit_log.enable('v');
SELECT op FROM audit_log.events ORDER BY id;
SELECT ok, events_checked FROM audit_log.verify();
-- A PostgreSQL error raised while audit_log's Rust code runs (here a
-- statement timeout inside verify()'s scan) reaches the client as itself,
-- with no Rust backtrace, although the test cluster runs with RUST_BACKTRACE=1.
INSERT INTO base SELECT g FROM generate_series(1, 50000) g;
SET statement_timeout = '1ms';
SELECT ok FROM audit_log.verify();
RESET statement_timeout;
\c postgres
DROP DATABASE al_errors;
-- A database not encoded in UTF8 is refused: the log's text is UTF-8.
CREATE DATABASE al_errors_latin1 ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C';
\c al_errors_latin1
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE EXTENSION audit_log;
\set SHOW_CONTEXT errors
\c postgres
DROP DATABASE al_errors_latin1;
-- A value whose JSON text would pass 1 GB (a control character takes six
-- bytes as \u00XX) is recorded whole. The events view cannot show it as
-- jsonb: it says so for that value (54000, not an error from inside), and
-- the event's other columns read.
CREATE DATABASE al_errors_wide;
\c al_errors_wide
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE wide_text (id int, v text);
SELECT audit_log.enable('wide_text');
INSERT INTO wide_text VALUES (1, repeat(chr(1), 180000000));
SELECT op, tx_seq FROM audit_log.events WHERE table_name = 'wide_text';
\set VERBOSITY default
SELECT new_row->>'id' FROM audit_log.events WHERE table_name = 'wide_text';
SELECT ok, events_checked FROM audit_log.verify();
\c postgres
DROP DATABASE al_errors_wide;

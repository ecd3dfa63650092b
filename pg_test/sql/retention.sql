-- Retention that stays verifiable: set_retention() (raised by an admin,
-- lowered only by a superuser), purge() of whole expired transactions from
-- the oldest end of each chain, with an anchor so that verify() still
-- passes; tampering with what remains is still detected.
CREATE DATABASE al_retention;
\c al_retention
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT audit_log.enable('t');
INSERT INTO t VALUES (1, 'a');
INSERT INTO t VALUES (2, 'b');
UPDATE t SET v = 'c' WHERE id = 1;
SELECT audit_log.checkpoint() AS cp_before \gset
INSERT INTO t VALUES (3, 'd');
\set VERBOSITY sqlstate
SELECT * FROM audit_log.purge(now());                 -- no retention yet: 55000
SELECT audit_log.set_retention(NULL);
SELECT audit_log.set_retention('-1 day');
-- Mixed signs compare as long but cut off in the future; absurd lengths
-- leave the timestamp range.
SELECT audit_log.set_retention('-1000 years 362521 days');
SELECT audit_log.set_retention('1 year -1 second');
SELECT audit_log.set_retention('1000000 years');
SELECT audit_log.set_retention('201 years');
\set VERBOSITY default
SELECT * FROM audit_log.purge(now());
-- The first retention is a superuser's: without one nothing can be purged,
-- and an admin could otherwise set '0' and purge nearly everything.
CREATE ROLE al_dba;
GRANT audit_log_admin TO al_dba;
SET ROLE al_dba;
SELECT audit_log.set_retention('0');
RESET ROLE;
SELECT audit_log.set_retention('30 days');
SELECT * FROM audit_log.purge(now());                 -- younger than the retention: refused
-- An admin may raise it, not lower it; a superuser may lower it.
SET ROLE al_dba;
SELECT audit_log.set_retention('60 days');
SELECT audit_log.set_retention('1 day');
RESET ROLE;
-- Lower means an earlier cutoff, not a smaller interval: '364 days' orders
-- above '1 year' (twelve 30-day months) but cuts off later, so it is a
-- lowering; '366 days' cuts off earlier, so it is a raise. (In a transaction
-- rolled back after, so that the rest of this file sees the same log.)
BEGIN;
\set ON_ERROR_ROLLBACK on
SELECT audit_log.set_retention('1 year');
SELECT '364 days'::interval > '1 year'::interval AS orders_above;
SET ROLE al_dba;
SELECT audit_log.set_retention('364 days');
SELECT audit_log.set_retention('366 days');
SELECT min_age FROM audit_log.retention;
RESET ROLE;
\set ON_ERROR_ROLLBACK off
ROLLBACK;
SELECT audit_log.set_retention('0');
SELECT min_age FROM audit_log.retention;
-- purge() deletes what a snapshot taken under its lock sees: not under an
-- older transaction snapshot.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM audit_log.purge(now() - interval '1 day');
ROLLBACK;
SELECT op, new_row FROM audit_log.events WHERE op = 'RETENTION' ORDER BY id;
-- Purge everything committed so far: every chain keeps its newest link.
SELECT count(*) AS links_before, (SELECT count(*) FROM audit_log.events) AS events_before FROM audit_log.links;
SELECT * FROM audit_log.purge(clock_timestamp());
SELECT count(*) AS links_after, (SELECT count(*) FROM audit_log.events) AS events_after FROM audit_log.links;
SELECT chain_id, seq FROM audit_log.anchors;
SELECT op, new_row - 'older_than' - 'anchors' AS details FROM audit_log.events WHERE op = 'PURGE';
SELECT ok, events_checked, problem FROM audit_log.verify();
-- A checkpoint from before the purge still verifies.
SELECT ok, problem FROM audit_log.verify(:'cp_before');
-- Auditing goes on, and a second purge, by an admin who is not an auditor,
-- moves the anchors on.
INSERT INTO t VALUES (4, 'e');
SET ROLE al_dba;
SELECT * FROM audit_log.purge(clock_timestamp());
RESET ROLE;
SELECT chain_id, seq FROM audit_log.anchors;
SELECT ok, problem FROM audit_log.verify();
SELECT op, new_row->>'id' AS id FROM audit_log.history('t', '{"id": 4}');
-- Tampering with what remains is still detected (the WARNING names hashes
-- and times, so only its SQLSTATE is shown).
\set VERBOSITY sqlstate
BEGIN;
ALTER TABLE audit_log.records DISABLE TRIGGER USER;
UPDATE audit_log.records
   SET payload = decode(replace(encode(payload, 'hex'), encode('INSERT', 'hex'), encode('DELETE', 'hex')), 'hex');
SELECT ok, split_part(problem, ':', 1) AS kind FROM audit_log.verify();
ROLLBACK;
BEGIN;
ALTER TABLE audit_log.anchors DISABLE TRIGGER USER;
UPDATE audit_log.anchors SET link_hash = '\x00';
SELECT ok, split_part(problem, ':', 1) AS kind FROM audit_log.verify();
ROLLBACK;
\set VERBOSITY default
-- Nobody else may purge, or change the retention.
CREATE ROLE al_nobody;
SET ROLE al_nobody;
SELECT * FROM audit_log.purge(now());
SELECT audit_log.set_retention('1 year');
RESET ROLE;
DROP ROLE al_nobody;
DROP ROLE al_dba;
-- An anchor no PURGE event records (a truncated chain posing as a purged
-- one) is named.
BEGIN;
ALTER TABLE audit_log.anchors DISABLE TRIGGER USER;
INSERT INTO audit_log.anchors (chain_id, seq, link_hash, last_event)
VALUES (63, 5, decode(repeat('ab', 32), 'hex'), 99);
SELECT ok, split_part(problem, ':', 1) AS kind FROM audit_log.verify();
ROLLBACK;
\c postgres
DROP DATABASE al_retention;

-- A superuser who bypasses the guards: every kind of change is detected and
-- named. Each case runs in a transaction that is rolled back afterwards.
CREATE DATABASE al_tamper;
\c al_tamper
SET client_min_messages = warning;
SET audit_log.chains = 1;  -- deterministic chain ids in this output
CREATE EXTENSION audit_log;
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT audit_log.enable('t');
INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');   -- events 2..4, one transaction
INSERT INTO t VALUES (4, 'd');                        -- event 5
UPDATE t SET v = 'e' WHERE id = 4;                    -- event 6
INSERT INTO t VALUES (5, 'f'), (6, 'g');              -- events 7..8
-- Transaction ids differ from run to run: mask them in this output.
CREATE FUNCTION check_log(cp jsonb DEFAULT NULL)
RETURNS TABLE (ok bool, events_checked bigint, first_bad_event bigint, problem text)
LANGUAGE plpgsql AS $$ BEGIN
  IF cp IS NULL THEN
    RETURN QUERY SELECT v.ok, v.events_checked, v.first_bad_event, regexp_replace(v.problem, 'tx \d+', 'tx N', 'g') FROM audit_log.verify() v;
  ELSE
    RETURN QUERY SELECT v.ok, v.events_checked, v.first_bad_event, regexp_replace(v.problem, 'tx \d+', 'tx N', 'g') FROM audit_log.verify(cp) v;
  END IF;
END $$;
SELECT * FROM check_log();
CREATE TEMP TABLE cp AS SELECT audit_log.checkpoint() AS cp;

-- The guards refuse even the owner.
UPDATE audit_log.events SET op = 'x' WHERE id = 3;
DELETE FROM audit_log.links;
TRUNCATE audit_log.events;

-- session_replication_role = replica does not bypass them (they are ENABLE ALWAYS).
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM audit_log.events WHERE id = 3;
ROLLBACK;

-- A direct catalog trick hides the guards from the relation cache; verify()
-- still sees the edit.
BEGIN;
UPDATE pg_catalog.pg_class SET relhastriggers = false WHERE oid = 'audit_log.events'::regclass;
UPDATE audit_log.events SET op = 'DELETE' WHERE id = 5;
SELECT * FROM check_log(); ROLLBACK;

-- From here on, the guard triggers are disabled inside each transaction.
CREATE FUNCTION unguard() RETURNS void LANGUAGE sql AS $$
  ALTER TABLE audit_log.events DISABLE TRIGGER USER;
  ALTER TABLE audit_log.links DISABLE TRIGGER USER; $$;

BEGIN; SELECT unguard();
UPDATE audit_log.events SET new_row = '{"id": 2, "v": "forged"}' WHERE id = 3;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();
UPDATE audit_log.events SET recorded_at = recorded_at + interval '1 second' WHERE id = 5;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();
UPDATE audit_log.events SET session_user_name = 'mallory' WHERE id = 6;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();
UPDATE audit_log.events SET table_name = 'other' WHERE id = 2;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();
DELETE FROM audit_log.events WHERE id = 3;   -- middle of a transaction
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();
DELETE FROM audit_log.events WHERE id = 4;   -- end of a transaction
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- a forged event in a transaction of its own
INSERT INTO audit_log.events SELECT 1000, '999999', 1, recorded_at, statement_at, session_user_name,
  current_user_name, application_name, client_addr, context, table_schema, table_name, op, old_row,
  '{"id": 99}', prev_hash, hash, NULL, 1000 FROM audit_log.events WHERE id = 5;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- a forged event slipped into a committed transaction
INSERT INTO audit_log.events SELECT 1001, tx_id, 2, recorded_at, statement_at, session_user_name,
  current_user_name, application_name, client_addr, context, table_schema, table_name, op, old_row,
  new_row, hash, hash, NULL, tx_first FROM audit_log.events WHERE id = 5;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- an event moved into another transaction (its tx_first rewritten)
UPDATE audit_log.events SET tx_first = (SELECT min(tx_first) FROM audit_log.events) WHERE id = 8;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- swap two events' row data
UPDATE audit_log.events e SET new_row = s.new_row
  FROM (SELECT id, new_row FROM audit_log.events WHERE id IN (7, 8)) s
 WHERE e.id IN (7, 8) AND s.id <> e.id;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- delete a whole transaction and its link
DELETE FROM audit_log.links WHERE first_event = 5;
DELETE FROM audit_log.events WHERE id = 5;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- edit a link
UPDATE audit_log.links SET event_count = 2 WHERE first_event = 6;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- drop the newest transaction: only a checkpoint sees it
DELETE FROM audit_log.links WHERE first_event = 7;
DELETE FROM audit_log.events WHERE id IN (7, 8);
SELECT * FROM check_log();
SELECT * FROM check_log((SELECT cp FROM cp)); ROLLBACK;

BEGIN; SELECT unguard();   -- truncate everything
DELETE FROM audit_log.links; DELETE FROM audit_log.events;
SELECT * FROM check_log();
SELECT * FROM check_log((SELECT cp FROM cp)); ROLLBACK;

-- A damaged chain head is not extended: a writer that finds it refuses to
-- chain to a stand-in value (which would hide the damage behind a new link).
SELECT count(*) AS links_before FROM audit_log.links;
BEGIN; SELECT unguard();
UPDATE audit_log.links SET link_hash = '\x00' WHERE seq = (SELECT max(seq) FROM audit_log.links);
INSERT INTO t VALUES (8, 'i');
COMMIT;
SELECT count(*) AS links_after_refused_commit FROM audit_log.links;

-- Untouched, the log still verifies against the checkpoint, and after growing.
INSERT INTO t VALUES (7, 'h');
SELECT * FROM check_log((SELECT cp FROM cp));
\c postgres
DROP DATABASE al_tamper;

-- Large transactions: past 1 MB of unwritten events, a transaction writes
-- them as segments (audit_log.segments) during the transaction, without any
-- lock; its record at commit covers them. A savepoint rolled back, or a
-- PL/pgSQL exception block, drops exactly its events, whether they were
-- still in memory or already spilled.
CREATE DATABASE al_spill;
\c al_spill
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TABLE s (id int PRIMARY KEY, pad text);
SELECT audit_log.enable('s');
-- What the log holds of each transaction, and how it is stored.
CREATE FUNCTION shape() RETURNS TABLE (seq bigint, events bigint, segments int, spilled_rows bigint,
                                       first_id int, last_id int, ids bigint)
LANGUAGE sql AS $$
  SELECT r.seq, r.event_count, r.segments,
         (SELECT count(*) FROM audit_log.segments g WHERE g.first_event = r.first_event),
         min((e.new_row->>'id')::int), max((e.new_row->>'id')::int), count(DISTINCT e.new_row->>'id')
    FROM audit_log.records r JOIN audit_log.events e ON e.tx_first = r.first_event
   WHERE e.table_name = 's'
   GROUP BY r.seq, r.event_count, r.segments, r.first_event ORDER BY r.seq $$;

-- 1. One transaction of 12,000 rows of 200 bytes: it spills.
INSERT INTO s SELECT g, repeat('x', 200) FROM generate_series(1, 12000) g;
SELECT * FROM shape();

-- 2. A savepoint that spilled, rolled back: none of its events remain, the
--    rows before and after it do.
BEGIN;
INSERT INTO s VALUES (20001, 'before');
SAVEPOINT a;
INSERT INTO s SELECT g, repeat('y', 200) FROM generate_series(30001, 42000) g;
ROLLBACK TO a;
INSERT INTO s VALUES (20002, 'after');
COMMIT;
SELECT * FROM shape() WHERE seq > 2;

-- 3. Spilled before a savepoint, then more inside it, released: all kept,
--    in order; then a PL/pgSQL exception block that spilled: dropped.
BEGIN;
INSERT INTO s SELECT g, repeat('z', 200) FROM generate_series(50001, 62000) g;
SAVEPOINT b;
INSERT INTO s SELECT g, repeat('z', 200) FROM generate_series(62001, 74000) g;
RELEASE b;
DO $$ BEGIN
  INSERT INTO s SELECT g, repeat('w', 200) FROM generate_series(80001, 92000) g;
  RAISE EXCEPTION 'undo';
EXCEPTION WHEN raise_exception THEN NULL;
END $$;
INSERT INTO s VALUES (74001, 'last');
COMMIT;
SELECT * FROM shape() WHERE seq > 3;
SELECT count(*) AS rolled_back_rows_in_the_log FROM audit_log.events
 WHERE table_name = 's' AND (new_row->>'id')::int BETWEEN 30001 AND 42000
    OR (new_row->>'id')::int BETWEEN 80001 AND 92000;

-- 4. A transaction rolled back as a whole leaves no segment.
BEGIN;
INSERT INTO s SELECT g, repeat('v', 200) FROM generate_series(100001, 112000) g;
ROLLBACK;
SELECT count(*) AS orphan_segments FROM audit_log.segments g
 WHERE NOT EXISTS (SELECT 1 FROM audit_log.records r WHERE r.first_event = g.first_event);

-- 5. Events of a released savepoint, then of the transaction itself, stay
--    in memory while a savepoint nested deeper spills; rolling back the
--    savepoint around it drops exactly its events (spilled and not), and
--    keeps the earlier ones, in order.
BEGIN;
SAVEPOINT c;
INSERT INTO s VALUES (120001, 'released');
RELEASE c;
INSERT INTO s VALUES (120002, 'parent');
SAVEPOINT d;
SAVEPOINT e;
INSERT INTO s SELECT g, repeat('u', 200) FROM generate_series(130001, 142000) g;
RELEASE e;
INSERT INTO s VALUES (142001, 'in d');
ROLLBACK TO d;
INSERT INTO s VALUES (120003, 'after');
COMMIT;
SELECT * FROM shape() WHERE first_id >= 120001;
SELECT count(*) AS rolled_back_rows_in_the_log FROM audit_log.events
 WHERE table_name = 's' AND (new_row->>'id')::int BETWEEN 130001 AND 142001;

-- 6. An event kept in memory by the transaction, then a savepoint whose
--    events spill, released, then more events that spill at the
--    transaction's own level: what is written then is not one run of
--    tx_seq (the event before the savepoint, then the savepoint's last
--    events and those after it), so each run is a segment of its own (one
--    segment holding both read as if events were missing). The same with a
--    PL/pgSQL exception block that succeeds.
BEGIN;
INSERT INTO s VALUES (150001, 'kept');
SAVEPOINT f;
INSERT INTO s SELECT g, repeat('t', 200) FROM generate_series(150002, 162000) g;
RELEASE f;
INSERT INTO s SELECT g, repeat('t', 200) FROM generate_series(162001, 174000) g;
COMMIT;
BEGIN;
INSERT INTO s VALUES (180001, 'kept');
DO $$ BEGIN
  INSERT INTO s SELECT g, repeat('r', 200) FROM generate_series(180002, 192000) g;
EXCEPTION WHEN raise_exception THEN NULL;
END $$;
INSERT INTO s SELECT g, repeat('r', 200) FROM generate_series(192001, 204000) g;
COMMIT;
SELECT * FROM shape() WHERE first_id >= 150001;
SELECT ok, events_checked, problem FROM audit_log.verify();

-- 7. The same transaction as 0.2.0 laid it out: the kept event and a later
--    run in one segment (joined here by hand). Nothing changed, yet its
--    events merge out of order and verify() reports it changed.
--    repair_segments() (audit_log_admin) cuts that segment into runs: no
--    event changes (the view's hashes are the same), verify() holds, and a
--    REPAIR event records it. A second call has nothing to do.
CREATE TEMP TABLE before_repair AS
  SELECT e.id, e.hash FROM audit_log.events e JOIN audit_log.records r ON r.first_event = e.tx_first
   WHERE r.first_event = (SELECT tx_first FROM audit_log.events WHERE new_row->>'id' = '150001');
SELECT tx_first AS kept_tx FROM audit_log.events WHERE new_row->>'id' = '150001' \gset
SELECT max(part) AS last_part FROM audit_log.segments WHERE first_event = :kept_tx \gset
BEGIN;
ALTER TABLE audit_log.segments DISABLE TRIGGER USER;
ALTER TABLE audit_log.records DISABLE TRIGGER USER;
UPDATE audit_log.segments SET payload = payload ||
       (SELECT payload FROM audit_log.segments WHERE first_event = :kept_tx AND part = :last_part)
 WHERE first_event = :kept_tx AND part = 1;
DELETE FROM audit_log.segments WHERE first_event = :kept_tx AND part = :last_part;
UPDATE audit_log.records SET segments = segments - 1 WHERE first_event = :kept_tx;   -- as 0.2.0 counted them
ALTER TABLE audit_log.records ENABLE TRIGGER USER;
ALTER TABLE audit_log.segments ENABLE TRIGGER USER;
COMMIT;
SET client_min_messages = error;   -- verify()'s failure also raises a WARNING
SELECT ok, first_bad_event = :kept_tx AS at_that_transaction, split_part(problem, ':', 1) AS kind FROM audit_log.verify();
SET client_min_messages = warning;
CREATE ROLE al_spill_admin IN ROLE audit_log_admin;
SET ROLE al_spill_admin;
SELECT * FROM audit_log.repair_segments();
RESET ROLE;
SELECT count(*) AS changed_events FROM before_repair b
  FULL JOIN (SELECT id, hash FROM audit_log.events WHERE tx_first = :kept_tx) a USING (id)
 WHERE a.hash IS DISTINCT FROM b.hash;
SELECT ok, events_checked, problem FROM audit_log.verify();
SELECT op, table_schema, table_name, jsonb_array_length(new_row->'transactions') AS transactions
  FROM audit_log.events WHERE op = 'REPAIR';
SELECT * FROM audit_log.repair_segments();
-- A segment that is not a run and holds a changed event is left as it is:
-- cut into runs, it still does not recompute its record's link.
BEGIN;
ALTER TABLE audit_log.segments DISABLE TRIGGER USER;
SELECT max(part) AS last_part FROM audit_log.segments WHERE first_event = :kept_tx \gset
UPDATE audit_log.segments SET payload = payload ||
       (SELECT overlay(payload PLACING 'T'::bytea FROM octet_length(payload) - 2 FOR 1)
          FROM audit_log.segments WHERE first_event = :kept_tx AND part = :last_part)
 WHERE first_event = :kept_tx AND part = 1;
DELETE FROM audit_log.segments WHERE first_event = :kept_tx AND part = :last_part;
SELECT * FROM audit_log.repair_segments();
SELECT count(*) AS segments_left_joined FROM audit_log.segments WHERE first_event = :kept_tx AND part = 1 AND octet_length(payload) > 1000;
ROLLBACK;
-- Twice in one statement, where a repair is due: the second call sees
-- what the first rewrote.
BEGIN;
ALTER TABLE audit_log.segments DISABLE TRIGGER USER;
SELECT max(part) AS last_part FROM audit_log.segments WHERE first_event = :kept_tx \gset
UPDATE audit_log.segments SET payload = payload ||
       (SELECT payload FROM audit_log.segments WHERE first_event = :kept_tx AND part = :last_part)
 WHERE first_event = :kept_tx AND part = 1;
DELETE FROM audit_log.segments WHERE first_event = :kept_tx AND part = :last_part;
SELECT call, (audit_log.repair_segments()).transactions FROM generate_series(1, 2) call;
ROLLBACK;
-- An application role may not call it.
CREATE ROLE al_spill_app;
SET ROLE al_spill_app;
\set VERBOSITY sqlstate
SELECT * FROM audit_log.repair_segments();
\set VERBOSITY default
RESET ROLE;
DROP ROLE al_spill_app;
DROP ROLE al_spill_admin;

-- 8. Spilled events inside a savepoint leave the transaction's own unspilled
--    events in memory; counted against a flat 1 MB, they made every later
--    spill a small segment (29 of them here, most of 150 kB). A spill now
--    comes 1 MB after what the last one left in memory.
BEGIN;
INSERT INTO s SELECT g, repeat('u', 200) FROM generate_series(210001, 222000) g;
SAVEPOINT g;
INSERT INTO s SELECT g, repeat('u', 200) FROM generate_series(230001, 242000) g;
ROLLBACK TO g;
INSERT INTO s SELECT g, repeat('u', 200) FROM generate_series(250001, 262000) g;
COMMIT;
SELECT count(*) AS segments, min(octet_length(payload)) > 900000 AS each_about_1_mb
  FROM audit_log.segments
 WHERE first_event = (SELECT tx_first FROM audit_log.events WHERE new_row->>'id' = '210001');
SELECT * FROM shape() WHERE first_id >= 210001;

-- 9. Events that a transaction keeps in memory while its savepoints spill
--    (each spill leaves room for 1 MB more at its own level) are written
--    as segments at commit once they pass 1 MB: the record's own payload
--    stays under it, however many such rounds (here four of 3,000 rows
--    kept, 5,000 spilled), and the events stay complete and in order.
BEGIN;
DO $$
BEGIN
  FOR r IN 0..3 LOOP
    INSERT INTO s SELECT g, repeat('k', 200) FROM generate_series(300001 + r * 10000, 303000 + r * 10000) g;
    BEGIN
      INSERT INTO s SELECT g, repeat('k', 200) FROM generate_series(305001 + r * 10000, 310000 + r * 10000) g;
    EXCEPTION WHEN division_by_zero THEN NULL;  -- a subtransaction
    END;
  END LOOP;
END $$;
COMMIT;
SELECT octet_length(r.payload) < 1048576 AS record_under_1_mb
  FROM audit_log.records r
 WHERE r.first_event = (SELECT tx_first FROM audit_log.events WHERE new_row->>'id' = '300001');
SELECT * FROM shape() WHERE first_id >= 300001;
SELECT bool_and(ordered) AS ids_in_event_order FROM (
  SELECT (new_row->>'id')::int > lag((new_row->>'id')::int, 1, 0) OVER (ORDER BY id) AS ordered
    FROM audit_log.events WHERE table_name = 's' AND (new_row->>'id')::int >= 300001) x;

-- The table and the log agree, and the log verifies.
SELECT (SELECT count(*) FROM s) AS table_rows,
       (SELECT count(*) FROM audit_log.events WHERE table_name = 's' AND op = 'INSERT') AS insert_events;
SELECT ok, events_checked, problem FROM audit_log.verify();
\c postgres
DROP DATABASE al_spill;

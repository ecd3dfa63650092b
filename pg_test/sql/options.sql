-- Selective capture: operations, excluded and redacted columns, skipping
-- UPDATEs that change only excluded columns; options changed later are
-- events too. Bad options get clear errors and change nothing.
CREATE DATABASE al_options;
\c al_options
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TABLE people (id int PRIMARY KEY, name text, ssn text, last_seen timestamptz, notes text);
CREATE TABLE log_only_deletes (id int PRIMARY KEY, v text);
SELECT audit_log.enable('people', exclude_columns => '{last_seen}', redact_columns => '{ssn}',
                        skip_unchanged_updates => true);
SELECT audit_log.enable('log_only_deletes', operations => '{delete, TRUNCATE}');
SELECT relid, options FROM audit_log.audited_tables ORDER BY relid::text;
INSERT INTO people VALUES (1, 'Ann', '123-45-6789', now(), 'x'), (2, 'Bo', '123-45-6789', now(), 'y'),
                          (3, 'Cy', '999-99-9999', now(), NULL);
UPDATE people SET last_seen = now() + interval '1 day';     -- only an excluded column: skipped
UPDATE people SET notes = 'changed' WHERE id = 1;            -- recorded, without last_seen
UPDATE people SET ssn = '111-11-1111' WHERE id = 2;          -- recorded: the redacted value changed
SELECT op, new_row ? 'last_seen' AS has_last_seen, new_row->>'name' AS name,
       left(new_row->>'ssn', 7) AS ssn_prefix, new_row->>'ssn' = audit_log.redacted('"123-45-6789"') AS is_ann_ssn, length(new_row->>'ssn') AS ssn_len
  FROM audit_log.events WHERE table_name = 'people' AND op <> 'ENABLE' ORDER BY id;
-- Equal values hash equal; the value itself is nowhere in the log.
SELECT count(DISTINCT new_row->>'ssn') AS distinct_ssn_hashes FROM audit_log.events
 WHERE table_name = 'people' AND op = 'INSERT';
SELECT (SELECT new_row->>'ssn' FROM audit_log.events WHERE table_name = 'people' AND new_row->>'name' = 'Ann' LIMIT 1)
       = audit_log.redacted('"123-45-6789"') AS ann_had_that_ssn;
SELECT count(*) AS plaintext_ssn FROM audit_log.events WHERE new_row::text LIKE '%123-45%' OR old_row::text LIKE '%123-45%';
INSERT INTO log_only_deletes VALUES (1, 'a'), (2, 'b');
UPDATE log_only_deletes SET v = 'c';
DELETE FROM log_only_deletes WHERE id = 1;
TRUNCATE log_only_deletes;
SELECT op, old_row FROM audit_log.events WHERE table_name = 'log_only_deletes' ORDER BY id;
-- Changing the options is an event; enabling with the same ones is not.
SELECT audit_log.enable('log_only_deletes');
SELECT audit_log.enable('log_only_deletes');
INSERT INTO log_only_deletes VALUES (3, 'now recorded');
SELECT op, new_row FROM audit_log.events WHERE table_name = 'log_only_deletes' AND op IN ('OPTIONS', 'INSERT') ORDER BY id;
-- Partitions created later carry the options.
CREATE TABLE m (id int, region text, secret text) PARTITION BY LIST (region);
CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
SELECT audit_log.enable('m', exclude_columns => '{secret}', operations => '{INSERT}');
CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
INSERT INTO m VALUES (1, 'eu', 's1'), (2, 'us', 's2');
DELETE FROM m;
SELECT table_name, op, new_row FROM audit_log.events WHERE table_name LIKE 'm%' AND op <> 'ENABLE' ORDER BY id;
-- changed_only: an UPDATE's old row keeps only the columns it changed
-- (the new row stays whole); other operations are untouched.
CREATE TABLE wide3 (id int PRIMARY KEY, a text, b text, c jsonb);
SELECT audit_log.enable('wide3', changed_only => true, history => true);
INSERT INTO wide3 VALUES (1, 'x', 'y', '{"deep": [1, 2]}');
UPDATE wide3 SET b = 'z', c = '{"deep": [1, 3]}' WHERE id = 1;
UPDATE wide3 SET a = a WHERE id = 1;
DELETE FROM wide3;
SELECT op, old_row, new_row FROM audit_log.events WHERE table_name = 'wide3' ORDER BY id;
SELECT op, old_row FROM audit_log.history('wide3', '{"id": 1}');
-- The same options where capture encodes rows from their datums (no
-- redaction, no history): skipping, changed_only, and a value that takes
-- to_jsonb (NaN) beside one that does not, in one UPDATE's two rows.
CREATE TABLE plain (id int PRIMARY KEY, a text, n numeric, seen timestamptz);
SELECT audit_log.enable('plain', exclude_columns => '{seen}', skip_unchanged_updates => true);
CREATE TABLE plain2 (id int PRIMARY KEY, a text, n numeric);
SELECT audit_log.enable('plain2', changed_only => true);
INSERT INTO plain VALUES (1, 'x', 1.5, now()), (2, 'y', 2, now());
UPDATE plain SET seen = now() + interval '1 day';  -- only an excluded column: skipped
UPDATE plain SET n = 'NaN' WHERE id = 1;           -- old row from its datums, new row through to_jsonb
UPDATE plain SET n = 'NaN' WHERE id = 1;           -- unchanged, both through to_jsonb: skipped
UPDATE plain SET n = 3 WHERE id = 1;               -- and back
INSERT INTO plain2 VALUES (1, 'x', 1), (2, 'y', 'NaN');
UPDATE plain2 SET a = 'z' WHERE id = 1;            -- old row: only a
UPDATE plain2 SET n = 4 WHERE id = 2;              -- old row (NaN) through to_jsonb: only n
SELECT table_name, op, old_row, new_row FROM audit_log.events
 WHERE table_name IN ('plain', 'plain2') AND op <> 'ENABLE' ORDER BY id;
-- Each row's last event holds the row as to_jsonb has it.
SELECT t, bool_and(e.new_row = r) AS as_to_jsonb, count(*) FROM (
    SELECT 'plain' AS t, id, to_jsonb(p) - 'seen' AS r FROM plain p
    UNION ALL SELECT 'plain2', id, to_jsonb(p) FROM plain2 p) x
  CROSS JOIN LATERAL (SELECT new_row FROM audit_log.events
                       WHERE table_name = x.t AND (new_row->>'id')::int = x.id ORDER BY id DESC LIMIT 1) e
 GROUP BY t ORDER BY t;
-- skip_unchanged_updates compares stored values, not their rendering: a
-- change that to_jsonb cannot show (an array's lower bound, a float's -0,
-- a json value's spelling) is still an event, though its rows read alike;
-- an UPDATE that stores the same values (a toasted one too) is skipped.
CREATE TABLE lossy (id int PRIMARY KEY, a int[], f float8, j json, big text, seen timestamptz);
ALTER TABLE lossy ALTER big SET STORAGE EXTERNAL;
SELECT audit_log.enable('lossy', exclude_columns => '{seen}', skip_unchanged_updates => true);
INSERT INTO lossy VALUES (1, '{7,8}', 0, '{"amount": 1}', repeat('x', 10000), now());
UPDATE lossy SET a = '[5:6]={7,8}';                         -- recorded
UPDATE lossy SET f = '-0';                                  -- recorded
UPDATE lossy SET j = '{"amount": 999, "amount": 1}';        -- recorded
UPDATE lossy SET a = a, f = f, j = j, big = big;            -- skipped
UPDATE lossy SET big = repeat('x', 10000);                  -- skipped: a new toasted copy of the same value
UPDATE lossy SET seen = now() + interval '1 day';           -- skipped: only an excluded column
SELECT a[1] AS a1, a[5] AS a5 FROM lossy;
SELECT op, old_row = new_row AS rows_read_alike, new_row->'a' AS a, new_row->'f' AS f, new_row->'j' AS j
  FROM audit_log.events WHERE table_name = 'lossy' AND op <> 'ENABLE' ORDER BY id;
-- Bad options.
\set VERBOSITY sqlstate
SELECT audit_log.enable('people', operations => '{INSERT, MERGE}');
SELECT audit_log.enable('people', operations => '{}');
SELECT audit_log.enable('people', exclude_columns => '{nope}');
SELECT audit_log.enable('people', exclude_columns => '{ssn}', redact_columns => '{ssn}');
SELECT audit_log.enable('people', redact_columns => ARRAY[NULL]::text[]);
\set VERBOSITY default
SELECT audit_log.enable('people', operations => '{INSERT, MERGE}');
SELECT audit_log.enable('people', exclude_columns => '{nope}');
SELECT audit_log.redacted(NULL);
SELECT options FROM audit_log.audited_tables WHERE relid = 'people'::regclass;
SELECT ok, events_checked FROM audit_log.verify();
-- The redaction salt follows DROP and CREATE EXTENSION in the same session:
-- the new installation's salt is new, so the same value hashes differently
-- (a salt cached from the dropped installation would hash it the same).
SELECT new_row->>'ssn' AS old_install_ssn FROM audit_log.events
 WHERE table_name = 'people' AND new_row->>'name' = 'Ann' AND op = 'INSERT' \gset
DROP EXTENSION audit_log CASCADE;
CREATE EXTENSION audit_log;
CREATE TABLE people_again (id int PRIMARY KEY, ssn text);
SELECT audit_log.enable('people_again', redact_columns => '{ssn}');
INSERT INTO people_again VALUES (1, '123-45-6789');
SELECT new_row->>'ssn' <> :'old_install_ssn' AS new_salt_used,
       new_row->>'ssn' = audit_log.redacted('"123-45-6789"') AS redacted_agrees
  FROM audit_log.events WHERE table_name = 'people_again' AND op = 'INSERT';
\c postgres
DROP DATABASE al_options;

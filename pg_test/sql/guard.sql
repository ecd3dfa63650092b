-- DDL that would change recorded values, or move rows out of sight, tried
-- by the owner of an audited table; and what the same DDL by a superuser,
-- or the everyday partition and inheritance patterns, leave in the log.
CREATE DATABASE al_guard;
\c al_guard
SET client_min_messages = warning;
SET audit_log.chains = 1;  -- deterministic chain ids in this output
CREATE EXTENSION audit_log;
CREATE EXTENSION postgres_fdw;
CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'postgres');
DROP ROLE IF EXISTS al_guard_owner;
CREATE ROLE al_guard_owner LOGIN;
GRANT CREATE ON SCHEMA public TO al_guard_owner;
GRANT CREATE ON DATABASE al_guard TO al_guard_owner;
GRANT USAGE ON FOREIGN SERVER elsewhere TO al_guard_owner;
CREATE SCHEMA aud AUTHORIZATION al_guard_owner;
SELECT audit_log.enable_schema('aud');
SET ROLE al_guard_owner;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE t (id int PRIMARY KEY, v int, m mood, s varchar(10), r numeric(6,2), f real);
CREATE TABLE p (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);
CREATE TYPE comp AS (a int, b text);
CREATE TABLE typed OF comp;
CREATE TABLE tc (id int PRIMARY KEY, c comp);
-- The enum through a domain over it, and in an array.
CREATE DOMAIN mood_d AS mood;
CREATE TABLE t_dom (id int PRIMARY KEY, m mood_d);
CREATE TABLE t_arr (id int PRIMARY KEY, ms mood[]);
RESET ROLE;
SELECT audit_log.enable('t'), audit_log.enable('p'), audit_log.enable('typed'), audit_log.enable('tc');
SELECT audit_log.enable('t_dom'), audit_log.enable('t_arr');
SET ROLE al_guard_owner;
INSERT INTO t VALUES (1, 10, 'happy', 'x', 1.50, 0.1);

-- Column type changes that rewrite values are refused: USING, or a cast
-- that may change how a value reads (float4 to float8 shows 0.1 otherwise).
ALTER TABLE t ALTER COLUMN v TYPE int USING 999;
ALTER TABLE t ALTER COLUMN v TYPE int USING v;
ALTER TABLE t ALTER COLUMN f TYPE float8;
ALTER TABLE t ALTER COLUMN r TYPE numeric(8,4);
ALTER TABLE t ALTER COLUMN v TYPE text;
-- Those that keep every value are allowed, and recorded as DDL.
ALTER TABLE t ALTER COLUMN v TYPE bigint;
ALTER TABLE t ALTER COLUMN s TYPE varchar(20), ALTER COLUMN r TYPE numeric(8,2);
ALTER TABLE t ALTER COLUMN s TYPE text;
ALTER TABLE t ALTER COLUMN v SET DEFAULT 5;
-- USING the column itself, or cast to the new type, as ORMs write it.
ALTER TABLE t ALTER COLUMN v TYPE bigint USING v::bigint;
-- A column that does not exist gets PostgreSQL's own error.
ALTER TABLE t ALTER COLUMN nope TYPE int;
-- SET UNLOGGED would let a crash empty the table with no event.
ALTER TABLE t SET UNLOGGED;
-- A table turned into a view.
CREATE RULE "_RETURN" AS ON SELECT TO t DO INSTEAD SELECT * FROM t;
-- Capture triggers are audit_log's: not made, replaced or dropped by hand.
CREATE TABLE mine (id int);
CREATE TRIGGER audit_log_capture_row AFTER INSERT ON mine
    FOR EACH ROW EXECUTE FUNCTION audit_log.capture_row();
CREATE TRIGGER sneaky AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION audit_log.capture_row();
CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER audit_log_capture_row AFTER INSERT OR UPDATE OR DELETE ON t
    FOR EACH ROW EXECUTE FUNCTION nothing();
DROP TRIGGER audit_log_capture_stmt ON t;
ALTER TABLE p DISABLE TRIGGER audit_log_capture_row;   -- reaches the partitions' clones
-- An enum relabel changes how recorded values read: allowed, and recorded
-- on every audited table that holds the enum's values (t, and t_dom and
-- t_arr through the domain and the array).
ALTER TYPE mood RENAME VALUE 'happy' TO 'furious';
ALTER TYPE mood ADD VALUE 'calm';
-- A composite type: ALTER ATTRIBUTE ... TYPE would rewrite its audited typed
-- table; renaming or adding an attribute changes how its values read.
ALTER TYPE comp ALTER ATTRIBUTE a TYPE bigint CASCADE;
ALTER TYPE comp RENAME ATTRIBUTE b TO bb CASCADE;
ALTER TYPE comp ADD ATTRIBUTE z int CASCADE;

-- Inheritance: a child's rows show in t and change through it, so it is
-- audited like t, whether created so or attached later.
CREATE TABLE kid (extra int) INHERITS (t);
INSERT INTO kid VALUES (2, 20, 'sad', 'y', 2.00, 0.5, 7);
CREATE TABLE adopted (id int NOT NULL, v bigint, m mood, s text, r numeric(8,2), f real);
ALTER TABLE adopted INHERIT t;
INSERT INTO adopted VALUES (3, 30, 'sad', 'z', 3.00, 0.25);
UPDATE t SET v = v + 1;
-- A foreign child is audited as a foreign partition is.
CREATE FOREIGN TABLE fkid () INHERITS (kid) SERVER elsewhere;

-- Partitions, by the table's owner: created, attached, detached and
-- attached again, each audited once with the parent's options.
CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);
CREATE TABLE p3 (id int, k int);
ALTER TABLE p ATTACH PARTITION p3 FOR VALUES FROM (20) TO (30);
ALTER TABLE p DETACH PARTITION p3;
INSERT INTO p3 VALUES (1, 25);        -- still audited, on its own
ALTER TABLE p ATTACH PARTITION p3 FOR VALUES FROM (20) TO (30);
-- The bulk-load pattern in an audited schema: the new table is audited at
-- once, then attached.
CREATE TABLE aud.staging (id int, k int);
INSERT INTO aud.staging VALUES (1, 35);
ALTER TABLE p ATTACH PARTITION aud.staging FOR VALUES FROM (30) TO (40);
INSERT INTO p VALUES (1, 5), (2, 15), (3, 25), (4, 36);
-- A foreign partition: row changes are captured, TRUNCATE is the parent's.
CREATE FOREIGN TABLE pf PARTITION OF p FOR VALUES FROM (100) TO (200) SERVER elsewhere;
CREATE FOREIGN TABLE pf2 (id int, k int) SERVER elsewhere;
ALTER TABLE p ATTACH PARTITION pf2 FOR VALUES FROM (200) TO (300);
-- Moved into an audited schema: audited from then on.
CREATE TABLE loose (id int);
ALTER TABLE loose SET SCHEMA aud;
INSERT INTO aud.loose VALUES (1);
-- Dropping an audited table is allowed, and recorded.
DROP TABLE aud.loose;
-- DETACH ... CONCURRENTLY commits half-way: refused for an audited parent.
ALTER TABLE p DETACH PARTITION p2 CONCURRENTLY;
-- A partitioned table attached under an audited one: every level is audited.
CREATE TABLE sub (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE sub_1 PARTITION OF sub FOR VALUES FROM (300) TO (350);
ALTER TABLE p ATTACH PARTITION sub FOR VALUES FROM (300) TO (400);
INSERT INTO p VALUES (9, 310);
TRUNCATE sub_1;
-- Unlogged tables cannot join an audited table or schema.
CREATE UNLOGGED TABLE p_u PARTITION OF p FOR VALUES FROM (400) TO (500);
CREATE UNLOGGED TABLE aud.u (id int);
-- A column dropped by a CASCADE elsewhere is recorded.
CREATE DOMAIN cents AS int;
CREATE TABLE priced (id int PRIMARY KEY, price cents);
RESET ROLE;
SELECT audit_log.enable('priced');
SET ROLE al_guard_owner;
DROP DOMAIN cents CASCADE;
-- Options follow a renamed column: a redacted column stays redacted, an
-- excluded one excluded, whatever the names become.
CREATE TABLE people (id int PRIMARY KEY, ssn text, salary int, last_seen int);
INSERT INTO people VALUES (1, '123-45-6789', 5000, 0);
RESET ROLE;
SELECT audit_log.enable('people', exclude_columns => '{last_seen}', redact_columns => '{ssn}');
SET ROLE al_guard_owner;
ALTER TABLE people RENAME COLUMN ssn TO social_security_number;
ALTER TABLE people RENAME COLUMN last_seen TO seen_at;
ALTER TABLE people RENAME COLUMN salary TO last_seen;
UPDATE people SET social_security_number = '987-65-4321', last_seen = 9000;
RESET ROLE;
SELECT new_row->>'social_security_number' LIKE 'sha256:%' AS still_redacted,
       new_row ? 'seen_at' AS excluded_shown, new_row->>'last_seen' AS salary_recorded
  FROM audit_log.events WHERE table_name = 'people' AND op = 'UPDATE';
SELECT options FROM audit_log.audited_tables WHERE relid = 'people'::regclass;
-- enable() on a partitioned table whose partition is audited on its own.
CREATE TABLE q (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE aud.q1 PARTITION OF q FOR VALUES FROM (0) TO (10);
SELECT audit_log.enable('aud.q1');
SELECT audit_log.enable('q');
-- A cast to json decides how to_jsonb renders a type: reserved to superusers.
SET ROLE al_guard_owner;
CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE sql AS $$ SELECT '"sad"'::json $$;
CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);
-- USING a.b is column b of table a, not the column named "a.b".
CREATE TABLE a (id int PRIMARY KEY, "a.b" int, b int);
RESET ROLE;
SELECT audit_log.enable('a');
SET ROLE al_guard_owner;
ALTER TABLE a ALTER COLUMN "a.b" TYPE bigint USING a.b;
-- A table's row type used as a column type: its column changes are
-- recorded on the audited table that holds such values.
CREATE TABLE addr (street text, amount numeric);
CREATE TABLE t_comp (id int PRIMARY KEY, ad addr);
RESET ROLE;
SELECT audit_log.enable('t_comp');
SET ROLE al_guard_owner;
ALTER TABLE addr RENAME COLUMN amount TO amount_old;
-- A capture trigger made to depend on an extension would vanish with it.
ALTER TRIGGER audit_log_capture_row ON t DEPENDS ON EXTENSION postgres_fdw;
RESET ROLE;
-- CREATE TRIGGER by a role granted TRIGGER (not the owner) still works.
CREATE TABLE shared_t (id int);
GRANT TRIGGER ON shared_t TO al_guard_owner;
SET ROLE al_guard_owner;
CREATE TRIGGER mine_on_shared AFTER INSERT ON shared_t FOR EACH ROW EXECUTE FUNCTION nothing();
RESET ROLE;
-- Dropping and re-adding a column in one command replaces every value:
-- recorded, with what filled the new column.
SET ROLE al_guard_owner;
ALTER TABLE a DROP COLUMN b, ADD COLUMN b int DEFAULT 0;
-- Temporary objects are dropped without event triggers, and the drop
-- cascades: no permanent table or trigger may depend on one.
CREATE TYPE pg_temp.vt AS (id int);
CREATE TABLE victim (id int);
ALTER TABLE victim OF pg_temp.vt;
ALTER TABLE priced ADD COLUMN t pg_temp.vt;
-- Also through a permanent function or domain, and through a table's parts.
CREATE TEMP TABLE tmp (x int);
CREATE FUNCTION pk(int) RETURNS int IMMUTABLE LANGUAGE sql RETURN $1;
CREATE OR REPLACE FUNCTION pk(int) RETURNS int IMMUTABLE LANGUAGE sql
    BEGIN ATOMIC SELECT $1 + (SELECT count(*)::int FROM pg_temp.tmp); END;
CREATE TYPE pg_temp.te AS ENUM ('x');
CREATE DOMAIN dd AS pg_temp.te;
CREATE FUNCTION pg_temp.tf() RETURNS int LANGUAGE sql RETURN 1;
ALTER TABLE priced ALTER COLUMN id SET DEFAULT pg_temp.tf();
ALTER TABLE priced ADD CONSTRAINT c CHECK (id > pg_temp.tf() - 100);
CREATE VIEW vk AS SELECT pg_temp.tf() AS k;        -- a view is not made temporary by a function
CREATE TYPE payload AS (amount int, who pg_temp.te);
CREATE FUNCTION pg_temp.tchk(int) RETURNS bool LANGUAGE sql IMMUTABLE RETURN $1 > 0;
CREATE DOMAIN d1 AS int CHECK (pg_temp.tchk(VALUE));
-- What is temporary itself may use temporary things, and a temporary
-- table's parts that merely refer to a permanent object do not bind it.
CREATE TRIGGER on_tmp BEFORE INSERT ON tmp FOR EACH ROW EXECUTE FUNCTION nothing();
CREATE TEMP VIEW tv AS SELECT * FROM tmp;
CREATE SEQUENCE sq;
CREATE TEMP TABLE stg (id int DEFAULT nextval('sq'), c text);
CREATE POLICY pol ON stg USING (c IN (SELECT street FROM addr));
ALTER SEQUENCE sq CACHE 1;
ALTER TABLE addr ADD COLUMN n int;
-- Nothing goes into the audit schema, extensions included.
CREATE EXTENSION pgcrypto SCHEMA audit_log;
RESET ROLE;
-- A schema renamed: recorded, and enable_schema follows it.
ALTER SCHEMA aud RENAME TO aud2;
SELECT nspname FROM audit_log.audited_schemas;
CREATE TABLE aud2.later (id int);
ALTER SCHEMA aud2 RENAME TO aud;

SELECT c.relname, t.tgname, t.tgenabled, t.tgparentid <> 0 AS clone,
       pg_get_triggerdef(t.oid) LIKE '%TRUNCATE%' AS on_truncate
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE t.tgname LIKE 'audit_log%' ORDER BY 1, 2;
DROP FOREIGN TABLE fkid;  -- (a USING rewrite does not recurse into foreign tables)

-- A superuser may do what the owner may not; it is recorded.
ALTER TABLE t ALTER COLUMN v TYPE int USING v::int;
ALTER TABLE t DISABLE TRIGGER audit_log_capture_stmt;
ALTER TABLE t ENABLE ALWAYS TRIGGER audit_log_capture_stmt;
-- SET UNLOGGED: recorded with the persistence before and after (the table
-- stays audited); SET LOGGED back is recorded the same way.
ALTER TABLE t SET UNLOGGED;
SELECT relpersistence FROM pg_class WHERE oid = 't'::regclass;
INSERT INTO t VALUES (9, 90, 'sad', 'q', 9.00, 0.9);
ALTER TABLE t SET LOGGED;
SELECT new_row->'persistence' AS persistence FROM audit_log.events
 WHERE table_name = 't' AND new_row ? 'persistence' ORDER BY id;
-- A superuser's attribute type change of a composite type rewrites the
-- values of its typed tables: recorded there as a rewrite.
CREATE TYPE comp2 AS (a int, b text);
CREATE TABLE typed2 OF comp2;
SELECT audit_log.enable('typed2');
INSERT INTO typed2 VALUES (1, 'x');
ALTER TYPE comp2 ALTER ATTRIBUTE a TYPE text CASCADE;
SELECT table_name, new_row->>'command' AS command, new_row->'values_rewritten' AS values_rewritten
  FROM audit_log.events WHERE table_name = 'typed2' AND op = 'DDL';
-- A table turned into a view is refused for a superuser too.
CREATE RULE "_RETURN" AS ON SELECT TO t DO INSTEAD SELECT * FROM t;

SELECT op, table_schema || '.' || table_name AS tbl,
       coalesce(new_row->>'command', '') AS command,
       (SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(new_row) k) AS detail_keys,
       CASE WHEN op = 'DDL' THEN new_row->'after'->>'columns' END AS columns_after
  FROM audit_log.events WHERE op NOT IN ('ENABLE_SCHEMA') ORDER BY id;
SELECT ok, events_checked FROM audit_log.verify();
-- PostgreSQL 17 and later: ALTER COLUMN ... SET EXPRESSION recomputes every
-- stored value of a generated column. The owner is refused; a superuser's
-- is recorded as a rewrite. Earlier versions have no such command, so
-- there the block does nothing and no such event is expected.
DO $$
BEGIN
    IF current_setting('server_version_num')::int < 170000 THEN
        RETURN;
    END IF;
    SET LOCAL ROLE al_guard_owner;
    CREATE TABLE gen (id int PRIMARY KEY, v int, g int GENERATED ALWAYS AS (v + 1) STORED);
    RESET ROLE;
    PERFORM audit_log.enable('gen');
    INSERT INTO gen VALUES (1, 10);
    SET LOCAL ROLE al_guard_owner;
    BEGIN
        EXECUTE 'ALTER TABLE gen ALTER COLUMN g SET EXPRESSION AS (v * 100)';
        RAISE EXCEPTION 'SET EXPRESSION by the owner of an audited table was not refused';
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    RESET ROLE;
    EXECUTE 'ALTER TABLE gen ALTER COLUMN g SET EXPRESSION AS (v * 100)';
END
$$;
SELECT count(*) = CASE WHEN current_setting('server_version_num')::int >= 170000 THEN 1 ELSE 0 END
       AS set_expression_recorded_where_it_exists
  FROM audit_log.events
 WHERE table_name = 'gen' AND op = 'DDL' AND (new_row->>'values_rewritten')::boolean;
\c postgres
DROP DATABASE al_guard;
DROP ROLE al_guard_owner;

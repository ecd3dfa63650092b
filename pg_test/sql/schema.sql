-- audit_log.enable_schema(): every current table of a schema, and every
-- table created in it later, is audited; disable_schema() stops the latter.
CREATE DATABASE al_schema;
\c al_schema
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE SCHEMA app;
CREATE SCHEMA other;
CREATE TABLE app.a (id int PRIMARY KEY);
CREATE TABLE app.p (id int, region text) PARTITION BY LIST (region);
CREATE TABLE app.p_eu PARTITION OF app.p FOR VALUES IN ('eu');
CREATE TABLE app.custom (id int, secret text);
SELECT audit_log.enable('app.custom', exclude_columns => '{secret}');
SELECT audit_log.enable_schema('app');
SELECT audit_log.enable_schema('app');  -- idempotent
CREATE TABLE app.later (id int);
CREATE TABLE app.copied AS SELECT 1 AS id;
CREATE TEMP TABLE scratch (id int);
CREATE TABLE other.elsewhere (id int);
SELECT relid::text, options FROM audit_log.audited_tables ORDER BY 1;
INSERT INTO app.a VALUES (1); INSERT INTO app.p VALUES (1, 'eu'); INSERT INTO app.later VALUES (1);
INSERT INTO app.custom VALUES (1, 's'); INSERT INTO other.elsewhere VALUES (1);
SELECT table_schema, table_name, op, new_row FROM audit_log.events ORDER BY id;
SELECT audit_log.disable_schema('app');
CREATE TABLE app.after_disable (id int);
SELECT relid::text FROM audit_log.audited_tables WHERE relid::text LIKE 'app.after%';
SELECT nspname FROM audit_log.audited_schemas;
\set VERBOSITY sqlstate
SELECT audit_log.enable_schema('nope');
SELECT audit_log.enable_schema('audit_log');
SELECT audit_log.enable_schema('pg_catalog');
SELECT audit_log.enable_schema(NULL);
\set VERBOSITY default
SELECT audit_log.enable_schema('nope');
SELECT audit_log.disable_schema('other');
CREATE ROLE al_schema_app;
SET ROLE al_schema_app;
SELECT audit_log.enable_schema('app');
RESET ROLE;
DROP ROLE al_schema_app;
SELECT ok, events_checked FROM audit_log.verify();
\c postgres
DROP DATABASE al_schema;

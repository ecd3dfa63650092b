-- The application context: the end user behind a pooled connection, stored
-- in each event and covered by its hash. Malformed context fails the change
-- with a clear error; it never goes unrecorded or recorded without context.
CREATE DATABASE al_context;
\c al_context
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TABLE orders (id int PRIMARY KEY, amount numeric);
CREATE TABLE scratch (id int);
SELECT audit_log.enable('orders');
CREATE ROLE app_pool LOGIN;
GRANT INSERT, UPDATE, SELECT ON orders, scratch TO app_pool;
SET ROLE app_pool;
-- Per transaction, with SET LOCAL.
BEGIN;
SET LOCAL audit_log.context = '{"user": "alice", "request": "r-17"}';
INSERT INTO orders VALUES (1, 10.00);
COMMIT;
-- Per transaction, with the function; it ends with the transaction.
BEGIN;
SELECT audit_log.set_context('{"user": "bob", "roles": ["clerk"], "n": 1.50}');
UPDATE orders SET amount = 12.00 WHERE id = 1;
COMMIT;
INSERT INTO orders VALUES (2, 5.00);
-- Per session, until reset; a scalar is a valid context too.
SELECT audit_log.set_context('"batch-job"', false);
INSERT INTO orders VALUES (3, 1.00);
INSERT INTO orders VALUES (4, 1.00);
RESET audit_log.context;
INSERT INTO orders VALUES (5, 1.00);
SET audit_log.context = '';
INSERT INTO orders VALUES (6, 1.00);
RESET ROLE;
SELECT id, op, new_row->>'id' AS row_id, context FROM audit_log.events WHERE op <> 'ENABLE' ORDER BY id;
-- Malformed context: the change fails, loudly, and nothing is recorded.
SET ROLE app_pool;
\set VERBOSITY sqlstate
SET audit_log.context = '{"user": alice}';
INSERT INTO orders VALUES (7, 1.00);
\set VERBOSITY default
INSERT INTO orders VALUES (7, 1.00);
SET audit_log.context = '{"user": "nul\u0000"}';
INSERT INTO orders VALUES (7, 1.00);
-- JSON that only PostgreSQL itself refuses: its reason, named as a context error.
SET audit_log.context = '{"n": 1e1000000}';
INSERT INTO orders VALUES (7, 1.00);
-- A table that is not audited does not care.
INSERT INTO scratch VALUES (1);
RESET audit_log.context;
INSERT INTO orders VALUES (7, 1.00);
RESET ROLE;
SELECT count(*) AS orders, (SELECT count(*) FROM audit_log.events WHERE op = 'INSERT') AS insert_events FROM orders;
SELECT ok, events_checked FROM audit_log.verify();
-- The context is covered by the hash: a superuser who edits it is caught.
BEGIN;
ALTER TABLE audit_log.records DISABLE TRIGGER USER;
UPDATE audit_log.records
   SET payload = decode(replace(encode(payload, 'hex'), encode('alice', 'hex'), encode('malic', 'hex')), 'hex');
SET LOCAL client_min_messages = error;  -- the WARNING names a transaction id, which varies
SELECT ok, first_bad_event = (SELECT min(tx_first) FROM audit_log.events WHERE context->>'user' = 'malic') AS names_it,
       split_part(problem, ':', 1) AS kind FROM audit_log.verify();
ROLLBACK;
\c postgres
DROP DATABASE al_context;
DROP ROLE app_pool;

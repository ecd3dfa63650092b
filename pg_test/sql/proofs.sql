-- Merkle proofs (docs/FORMAT.md, "Merkle trees"): checkpoint() carries each
-- chain's tree; prove() shows one event in it and consistency() that a new
-- tree extends an old one, each in O(log n) hashes. Tiles are integrated by
-- checkpoint() and purge(), never at commit. Bad input, tampering and
-- purges get clear errors. (audit-log verify-proof and the witness check
-- these proofs offline: scenario merkle.sh.)
CREATE DATABASE al_proofs;
\c al_proofs
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT audit_log.enable('t', redact_columns => ARRAY['v']);
-- 600 one-event transactions, and one of three events.
DO $$ BEGIN FOR i IN 1..600 LOOP INSERT INTO t VALUES (i, 'v' || i); COMMIT; END LOOP; END $$;
BEGIN; INSERT INTO t VALUES (1001, 'a'); UPDATE t SET v = 'b' WHERE id = 1001; DELETE FROM t WHERE id = 1001; COMMIT;
-- Nothing is integrated at commit.
SELECT count(*) AS tiles_before_checkpoint FROM audit_log.tiles;
SELECT audit_log.checkpoint() AS cp1 \gset
SELECT :'cp1'::jsonb->>'format' AS format,
       jsonb_array_length(:'cp1'::jsonb->'trees') AS trees,
       (:'cp1'::jsonb#>>'{trees,0,size}')::int = (:'cp1'::jsonb#>>'{chains,0,seq}')::int AS size_is_seq,
       length(:'cp1'::jsonb#>>'{trees,0,root}') AS root_hex_digits;
-- Two complete tiles of 256 leaves; the rest of the tree is read from its records.
SELECT level, idx, width, length(hashes) AS bytes, length(root) AS root_bytes
  FROM audit_log.tiles ORDER BY level, idx;
-- A checkpoint taken again has the same tree, and integrates nothing new.
SELECT audit_log.checkpoint()->'trees' = :'cp1'::jsonb->'trees' AS same_trees;
SELECT count(*) AS tiles FROM audit_log.tiles;

-- The proof of the middle event of the three (enable() recorded event 1):
-- its record, and its paths in the transaction's events tree and in the
-- chain's tree.
SELECT audit_log.prove(603, :'cp1') AS p \gset
SELECT :'p'::jsonb->>'format' AS format, :'p'::jsonb->>'event_id' AS event_id,
       :'p'::jsonb#>>'{record,seq}' AS seq, :'p'::jsonb#>>'{record,event_count}' AS events,
       jsonb_array_length(:'p'::jsonb->'event_path') AS event_path,
       jsonb_array_length(:'p'::jsonb->'path') AS path,
       :'p'::jsonb->'tree' = :'cp1'::jsonb->'trees'->0 AS checkpoint_tree;
-- It reveals that event, and of the others hashes only: its bytes are one
-- of the record's three events, and the redacted column stays redacted.
SELECT length(decode(:'p'::jsonb->>'event', 'hex')) * 2 < length(payload) AS one_event_only,
       position(decode(:'p'::jsonb->>'event', 'hex') IN payload) > 0 AS from_the_record,
       position(convert_to('sha256:', 'UTF8') IN decode(:'p'::jsonb->>'event', 'hex')) > 0 AS redacted,
       :'p'::jsonb ? 'payload' AS has_payload
  FROM audit_log.records WHERE first_event = (:'p'::jsonb#>>'{record,first_event}')::bigint;
-- Every event proves, to the checkpoint and to the current tree.
SELECT count(*) FILTER (WHERE (audit_log.prove(id, :'cp1')->'tree') = (:'cp1'::jsonb->'trees'->0)) AS to_checkpoint,
       count(*) FILTER (WHERE (audit_log.prove(id)->>'event_id')::bigint = id) AS to_now
  FROM generate_series(1, 604) id;

-- More records; consistency() proves the new tree extends the old one.
DO $$ BEGIN FOR i IN 2001..2100 LOOP INSERT INTO t VALUES (i, 'w'); COMMIT; END LOOP; END $$;
SELECT audit_log.consistency(:'cp1') AS c \gset
SELECT :'c'::jsonb->>'format' AS format,
       :'c'::jsonb#>>'{proofs,0,old_size}' AS old_size, :'c'::jsonb#>>'{proofs,0,new_size}' AS new_size,
       jsonb_array_length(:'c'::jsonb#>'{proofs,0,path}') AS path,
       :'c'::jsonb#>>'{checkpoint,format}' AS new_checkpoint;
-- A proof to the old checkpoint still holds for it; the current tree is another.
SELECT audit_log.prove(100, :'cp1')->'tree' = :'cp1'::jsonb->'trees'->0 AS old_tree,
       audit_log.prove(100)->'tree' = :'c'::jsonb#>'{checkpoint,trees,0}' AS new_tree;

-- Bad input: a clear error and its SQLSTATE, never a crash.
\set VERBOSITY sqlstate
SELECT audit_log.prove(NULL);                                   -- 22004
SELECT audit_log.prove(999999);                                 -- unknown event: 42704
SELECT audit_log.prove(-5);                                     -- 42704
SELECT audit_log.prove(1, '{"format": "nope"}');                -- malformed checkpoint: 22023
SELECT audit_log.prove(1, '[1, 2');                             -- not JSON
SELECT audit_log.prove(1, (repeat('[', 5000) || repeat(']', 5000))::jsonb);  -- 22023
SELECT audit_log.prove(max(id), :'cp1') FROM audit_log.events;  -- recorded after the checkpoint: 22023
-- A checkpoint of another database (or a rewritten log): another root.
SELECT audit_log.prove(1, jsonb_set(:'cp1', '{trees,0,root}', to_jsonb(repeat('ab', 32))));
SELECT audit_log.consistency(jsonb_set(:'cp1', '{trees,0,root}', to_jsonb(repeat('ab', 32))));
-- A checkpoint ahead of this log (a longer chain): 22023.
SELECT audit_log.consistency(jsonb_set(jsonb_set(:'cp1', '{trees,0,size}', '9999'), '{chains,0,seq}', '9999'));
-- A tree that does not match its head, and a v1 checkpoint, which has no trees.
SELECT audit_log.consistency(jsonb_set(:'cp1', '{trees,0,size}', '3'));
SELECT audit_log.consistency(jsonb_set(:'cp1'::jsonb - 'trees', '{format}', '"audit_log.checkpoint.v1"'));
SELECT audit_log.consistency(NULL);                             -- 22004
\set VERBOSITY default
-- A checkpoint whose chain and tree claim 2^56 + 1 records: truncated, found
-- without reading the chain (and no overflow where its tiles would end).
SELECT ok, split_part(problem, ':', 1) AS kind
  FROM audit_log.verify(jsonb_set(jsonb_set(:'cp1', '{trees,0,size}', '72057594037927937'),
                                  '{chains,0,seq}', '72057594037927937'));
-- At REPEATABLE READ and SERIALIZABLE nothing is integrated (another
-- session's tiles may be missing from the snapshot); trees are read anyway.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT audit_log.checkpoint()->'trees' = audit_log.checkpoint()->'trees' AS rr_checkpoint,
       (audit_log.prove(5)->>'event_id')::int AS rr_proves;
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT jsonb_array_length(audit_log.consistency(:'cp1')->'proofs') AS serializable_consistency;
COMMIT;
-- The checkpoint's tree for a chain that is not in it.
SELECT audit_log.prove(1, jsonb_set(:'cp1', '{trees,0,chain}', '7'));

-- Only auditors prove; nobody writes tiles, not even the owner.
CREATE ROLE al_app;
GRANT SELECT, INSERT ON t TO al_app;
SET ROLE al_app;
\set VERBOSITY sqlstate
SELECT audit_log.prove(1);                                      -- 42501
SELECT audit_log.consistency(:'cp1');                           -- 42501
SELECT count(*) FROM audit_log.tiles;                           -- 42501
INSERT INTO audit_log.tiles VALUES (0, 9, 0, 1, '\x00', '\x00');  -- 42501
RESET ROLE;
UPDATE audit_log.tiles SET root = root;                         -- append-only: 42501
DELETE FROM audit_log.tiles;                                    -- 42501
TRUNCATE audit_log.tiles;                                       -- 42501
\set VERBOSITY default
CREATE ROLE al_aud;
GRANT audit_log_auditor TO al_aud;
SET ROLE al_aud;
SELECT (audit_log.prove(5)->>'event_id')::int AS auditor_proves;
RESET ROLE;

-- Tampering. A superuser's edit of an integrated record (its row value,
-- with the record's link hash left as it was): its proof is refused, and
-- verify(checkpoint) finds the tree changed as well as the record.
CREATE FUNCTION unguard() RETURNS void LANGUAGE sql AS $$
  ALTER TABLE audit_log.records DISABLE TRIGGER USER;
  ALTER TABLE audit_log.tiles DISABLE TRIGGER USER; $$;
BEGIN; SELECT unguard();
UPDATE audit_log.records SET payload = overlay(payload PLACING '\x00' FROM length(payload) - 1) WHERE seq = 10;
SET LOCAL client_min_messages = error;   -- the warnings name hashes
SELECT ok, first_bad_event, problem ~ 'more problem' AS tree_too FROM audit_log.verify(:'cp1');
-- checkpoint() still works: the tree comes from the tile, which holds the record as committed.
SELECT jsonb_array_length(audit_log.checkpoint()->'trees') AS trees_with_damage;
\set VERBOSITY sqlstate
SELECT audit_log.prove(10);                                     -- XX001
\set VERBOSITY default
ROLLBACK;
-- A forged tile: proofs through it are refused (XX001: the records give
-- the checkpoint's root), and verify(checkpoint), which recomputes the
-- tree from the records, passes.
BEGIN; SELECT unguard();
UPDATE audit_log.tiles SET root = sha256(root), hashes = overlay(hashes PLACING '\xff' FROM 1) WHERE idx = 0 AND level = 0;
SELECT ok, problem FROM audit_log.verify(:'cp1');
\set VERBOSITY sqlstate
SELECT audit_log.prove(3, :'cp1');                              -- XX001
\set VERBOSITY default
ROLLBACK;
-- A record removed after its tile was integrated: verify() reports it, and
-- the tile still proves its neighbours to the checkpoint's root. One
-- removed before integration leaves its part of the tree unbuildable.
BEGIN; SELECT unguard();
DELETE FROM audit_log.records WHERE seq IN (300, 650);
SELECT ok, first_bad_event, split_part(problem, ':', 1) AS kind FROM audit_log.verify(:'cp1');
SELECT audit_log.prove(303, :'cp1')->'tree' = :'cp1'::jsonb->'trees'->0 AS neighbour_proves;
\set VERBOSITY sqlstate
SELECT audit_log.prove(640);                                    -- XX001
\set VERBOSITY default
ROLLBACK;

-- The chain's newest record (in no tile yet) edited: the current checkpoint
-- has no tree for the chain, and consistency() says that a record is
-- damaged (XX001), not that the old checkpoint is of another log.
BEGIN; SELECT unguard();
UPDATE audit_log.records SET payload = overlay(payload PLACING '\x00' FROM length(payload) - 1)
 WHERE seq = (SELECT max(seq) FROM audit_log.records);
SET LOCAL client_min_messages = error;   -- checkpoint()'s warning names the record too
SELECT audit_log.consistency(:'cp1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- A purge keeps proofs working for what remains: tiles up to the anchor,
-- and the leaves of the tile it cuts through.
SELECT audit_log.set_retention('0');
SELECT audit_log.checkpoint() AS cp2 \gset
SELECT * FROM audit_log.purge(now() - interval '0 s') \gset
SELECT seq AS anchor FROM audit_log.anchors;
SELECT level, idx, width FROM audit_log.tiles ORDER BY level, idx, width;
\set VERBOSITY sqlstate
SELECT audit_log.prove(5);                                      -- purged: 55000
\set VERBOSITY default
SELECT (audit_log.prove(max(id))->>'event_id')::bigint = max(id) AS newest_proves FROM audit_log.events;
-- Consistency from checkpoints taken before the purge still holds, and
-- verify(checkpoint) still passes (it trusts tiles only where records were purged).
SELECT jsonb_array_length(audit_log.consistency(:'cp1')->'proofs') AS from_cp1,
       jsonb_array_length(audit_log.consistency(:'cp2')->'proofs') AS from_cp2;
SELECT ok, problem FROM audit_log.verify(audit_log.checkpoint());
SELECT ok, problem FROM audit_log.verify(:'cp2');
-- The tree after the purge is the tree before it, extended.
INSERT INTO t VALUES (5000, 'after');
SELECT audit_log.checkpoint()#>'{trees,0,size}' AS size_after_purge;

-- A tile half purged is integrated from the purge's leaves and the
-- records; a second purge cuts through a tile already integrated, and
-- verify(checkpoint) reads the purged leaves from that tile.
DO $$ BEGIN FOR i IN 3001..3600 LOOP INSERT INTO t VALUES (i, 'x'); COMMIT; END LOOP; END $$;
SELECT audit_log.checkpoint() AS cp3 \gset
SELECT level, idx, width FROM audit_log.tiles ORDER BY level, idx, width;
SELECT * FROM audit_log.purge((SELECT committed_at FROM audit_log.records WHERE seq = 900));
SELECT seq AS anchor FROM audit_log.anchors;
SELECT level, idx, width FROM audit_log.tiles WHERE width < 256 ORDER BY level, idx, width;
SELECT ok, problem FROM audit_log.verify(:'cp3');
SELECT ok, problem FROM audit_log.verify(:'cp2');
SELECT ok, problem FROM audit_log.verify(audit_log.checkpoint());
SELECT (audit_log.prove(min(id), :'cp3')->>'event_id')::bigint = min(id) AS oldest_left_proves FROM audit_log.events;
SELECT jsonb_array_length(audit_log.consistency(:'cp1')->'proofs') AS from_cp1;

-- checkpoint() keeps the leaves of an incomplete tile that took 8 MB of
-- events or more to hash (a partial tile), and reads them next time. A
-- tile integrated later, complete, still takes every leaf not purged from
-- the records: here a wrong partial tile (a superuser's insert), under a
-- purge that cuts through the same tile, does not reach it.
CREATE TABLE big (id int PRIMARY KEY, v text);
SELECT audit_log.enable('big');
SELECT max(seq) / 256 AS tile FROM audit_log.records \gset
DO $$ BEGIN FOR i IN 1..3 LOOP INSERT INTO t VALUES (6000 + i, 'x'); COMMIT; END LOOP; END $$;
INSERT INTO big SELECT g, repeat(chr(65 + g), 1000000) FROM generate_series(1, 9) g;
SELECT max(seq) - :tile * 256 AS big_leaf FROM audit_log.records \gset
INSERT INTO t VALUES (6010, 'x');
SELECT audit_log.checkpoint() AS cp4 \gset
SELECT idx = :tile AS this_tile, width = max_seq - :tile * 256 AS up_to_head
  FROM audit_log.tiles, (SELECT max(seq) AS max_seq FROM audit_log.records) h
 WHERE level = 0 AND width < 256 AND idx = :tile ORDER BY width DESC LIMIT 1;
-- (large_tx.sh shows that the next checkpoint reads them: it hashes nothing.)
SELECT audit_log.checkpoint()->'trees' = :'cp4'::jsonb->'trees' AS same_trees_with_kept_leaves;
SELECT * FROM audit_log.purge((SELECT committed_at FROM audit_log.records WHERE seq = :tile * 256 + 2)) \gset
INSERT INTO audit_log.tiles (chain_id, level, idx, width, hashes, root)
SELECT chain_id, 0, idx, width + 1,
       overlay(hashes PLACING '\xdeadbeef'::bytea FROM 32 * (:big_leaf - 1) + 1) || substr(hashes, 1, 32), root
  FROM audit_log.tiles WHERE level = 0 AND idx = :tile AND width < 256 ORDER BY width DESC LIMIT 1;
SET client_min_messages = error;   -- the failure's WARNING names hashes that vary
SELECT ok, split_part(problem, ':', 1) AS kind FROM audit_log.verify(audit_log.checkpoint());
SET client_min_messages = warning;
DO $$ BEGIN FOR i IN 1..260 LOOP INSERT INTO t VALUES (7000 + i, 'x'); COMMIT; END LOOP; END $$;
SELECT ok, problem FROM audit_log.verify(audit_log.checkpoint());
SELECT ok, problem FROM audit_log.verify(:'cp4');

\c postgres
DROP DATABASE al_proofs;
DROP ROLE al_app;
DROP ROLE al_aud;

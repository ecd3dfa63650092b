-- A superuser who bypasses the guards: every kind of change is detected and
-- named. Each case runs in a transaction that is rolled back afterwards.
-- Storage format v2: the log is audit_log.records, one row per committed
-- transaction, whose payload holds the packed frame of each of its events
-- (docs/FORMAT.md); audit_log.events and audit_log.links are views
-- over it. The tampering below is done to the records themselves, byte by
-- byte, as a forger who has read docs/FORMAT.md would do it.
CREATE DATABASE al_tamper;
\c al_tamper
SET client_min_messages = warning;
SET audit_log.chains = 1;  -- deterministic chain ids in this output
CREATE EXTENSION audit_log;
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT audit_log.enable('t');                         -- event 1: record 0/1
INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');   -- events 2..4, one transaction: record 0/2
INSERT INTO t VALUES (4, 'd');                        -- event 5: record 0/3
UPDATE t SET v = 'e' WHERE id = 4;                    -- event 6: record 0/4
INSERT INTO t VALUES (5, 'f'), (6, 'g');              -- events 7..8: record 0/5
SELECT chain_id, seq, first_event, last_event, event_count, segments FROM audit_log.records ORDER BY seq;
-- Transaction ids and hashes differ from run to run: mask them in this
-- output. (verify() also raises its problem as a WARNING, with both
-- unmasked: that is kept out of this output.)
CREATE FUNCTION check_log(cp jsonb DEFAULT NULL)
RETURNS TABLE (ok bool, events_checked bigint, first_bad_event bigint, problem text)
LANGUAGE plpgsql SET client_min_messages = error AS $$ BEGIN
  IF cp IS NULL THEN
    RETURN QUERY SELECT v.ok, v.events_checked, v.first_bad_event,
      regexp_replace(regexp_replace(v.problem, 'tx \d+', 'tx N', 'g'), '[0-9a-f]{12}…', 'H…', 'g') FROM audit_log.verify() v;
  ELSE
    RETURN QUERY SELECT v.ok, v.events_checked, v.first_bad_event,
      regexp_replace(regexp_replace(v.problem, 'tx \d+', 'tx N', 'g'), '[0-9a-f]{12}…', 'H…', 'g') FROM audit_log.verify(cp) v;
  END IF;
END $$;
SELECT * FROM check_log();
CREATE TEMP TABLE cp AS SELECT audit_log.checkpoint() AS cp;

-- What the events view showed before any tampering, and a function naming,
-- per event, the columns that read differently now (hashes aside), or that
-- the event is gone or new: it shows that each edit below did what it says.
CREATE TEMP TABLE shown AS SELECT * FROM audit_log.events;
CREATE FUNCTION changed() RETURNS TABLE (id bigint, change text) LANGUAGE sql AS $$
  SELECT coalesce(a.id, b.id),
         CASE WHEN b.id IS NULL THEN 'new' WHEN a.id IS NULL THEN 'gone'
              ELSE (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_each(to_jsonb(a)) j(k, v)
                     WHERE k NOT IN ('hash', 'prev_hash') AND v IS DISTINCT FROM to_jsonb(b) -> k) END
    FROM audit_log.events a FULL JOIN pg_temp.shown b ON a.id = b.id
   WHERE a.id IS NULL OR b.id IS NULL
      OR to_jsonb(a) - 'hash' - 'prev_hash' <> to_jsonb(b) - 'hash' - 'prev_hash'
   ORDER BY 1 $$;

-- The forger's tools, from docs/FORMAT.md. A payload is a run of packed
-- event frames: 0xA2, varints of the id's distance from the record's first
-- event (zigzag) and of tx_seq, the body's length as a varint, the body.
-- evs() splits one into its events, each its frame without the length
-- (head, then body); pack() frames such events again; put() replaces the
-- n-th event of a payload; head() makes the start of a frame.
CREATE FUNCTION varint(n bigint) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE out bytea := '';
BEGIN
  WHILE n >= 128 LOOP
    out := out || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::int);
    n := n >> 7;
  END LOOP;
  RETURN out || set_byte('\x00'::bytea, 0, n::int);
END $$;
-- The varint at pos (0-based, as get_byte counts), and where it ends.
CREATE FUNCTION get_varint(p bytea, pos int, OUT v bigint, OUT next int) LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE b int; s int := 0;
BEGIN
  v := 0; next := pos;
  LOOP
    b := get_byte(p, next); next := next + 1;
    v := v | ((b & 127)::bigint << s); s := s + 7;
    EXIT WHEN b < 128;
  END LOOP;
END $$;
-- How many bytes an event's head takes (0xA2, id, tx_seq): its body follows.
CREATE FUNCTION head_len(e bytea) RETURNS int LANGUAGE sql IMMUTABLE AS $$
  SELECT (get_varint(e, (get_varint(e, 1)).next)).next $$;
CREATE FUNCTION head(id_delta bigint, tx_seq bigint) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT '\xa2'::bytea || varint((id_delta << 1) # (id_delta >> 63)) || varint(tx_seq) $$;
CREATE FUNCTION body(e bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT substring(e FROM head_len(e) + 1) $$;
CREATE FUNCTION evs(p bytea) RETURNS bytea[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  out bytea[] := '{}';
  pos int := 0;
  h int;
  l record;
BEGIN
  WHILE pos < length(p) LOOP
    IF get_byte(p, pos) <> 162 THEN RAISE EXCEPTION 'evs: no frame at byte %', pos; END IF;
    h := head_len(substring(p FROM pos + 1)) + pos;
    l := get_varint(p, h);
    out := array_append(out, substring(p FROM pos + 1 FOR h - pos) || substring(p FROM l.next + 1 FOR l.v::int));
    pos := l.next + l.v::int;
  END LOOP;
  RETURN out;
END $$;
CREATE FUNCTION pack(e bytea[]) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(string_agg(substring(x FROM 1 FOR head_len(x)) || varint(length(x) - head_len(x)) || body(x),
                             ''::bytea ORDER BY i), ''::bytea)
    FROM unnest(e) WITH ORDINALITY AS u(x, i) $$;
CREATE FUNCTION put(p bytea, n int, e bytea) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE a bytea[] := evs(p);
BEGIN a[n] := e; RETURN pack(a); END $$;
-- A body starts with i64 recorded_at (µs since 1970), the statement's
-- start as a varint distance from it, then session_user_name as text and
-- the current user (0x00: the same).
CREATE FUNCTION set_i64(e bytea, at int, v bigint) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT overlay(e PLACING int8send(v) FROM at FOR 8) $$;
CREATE FUNCTION get_i64(e bytea, at int) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
  SELECT ('x' || encode(substring(e FROM at FOR 8), 'hex'))::bit(64)::bigint $$;
-- text: a varint byte length and UTF-8; a JSON string: tag 0x04, then text.
CREATE FUNCTION txt(s text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT varint(octet_length(s)) || convert_to(s, 'UTF8') $$;
CREATE FUNCTION jstr(s text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT '\x04'::bytea || txt(s) $$;
-- The first occurrence of old in b replaced by new (an error if there is none).
CREATE FUNCTION subst(b bytea, old bytea, new bytea) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE at int := position(old IN b);
BEGIN
  IF at = 0 THEN RAISE EXCEPTION 'subst: % not found', old; END IF;
  RETURN overlay(b PLACING new FROM at FOR length(old));
END $$;
-- Recompute the stored link hashes of chain 0 from seq s to seq u, in order,
-- as a commit computes them: SHA-256 over "audit_log:link:v1", a zero byte,
-- the previous record's stored link_hash and the record's canonical link.
CREATE FUNCTION relink(s bigint, u bigint DEFAULT NULL) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM audit_log.records WHERE chain_id = 0 AND seq >= s AND seq <= coalesce(u, seq) ORDER BY seq LOOP
    UPDATE audit_log.records SET link_hash = sha256('audit_log:link:v1'::bytea || '\x00'::bytea
        || coalesce((SELECT p.link_hash FROM audit_log.records p WHERE p.chain_id = 0 AND p.seq = r.seq - 1),
                    decode(repeat('00', 32), 'hex'))
        || int8send(r.chain_id) || int8send(r.seq) || int8send(r.tx_id::text::bigint)
        || int8send(r.event_count) || int8send(r.first_event) || int8send(r.last_event)
        || audit_log.record_last_hash(r.first_event, r.tx_id::text::bigint, r.segments, r.payload)
        || int8send((extract(epoch FROM r.committed_at) * 1000000)::bigint))
     WHERE chain_id = 0 AND seq = r.seq;
  END LOOP;
END $$;

-- The guards refuse even the owner: on the records, on what a large
-- transaction spills before commit (segments) and on the history index.
UPDATE audit_log.records SET committed_at = committed_at + interval '1 second' WHERE seq = 2;
DELETE FROM audit_log.records;
TRUNCATE audit_log.records;
TRUNCATE audit_log.segments;
TRUNCATE audit_log.row_keys;
-- The views change nothing: events cannot be updated at all, and a change
-- to links passes through to records, where the guards refuse it.
UPDATE audit_log.events SET op = 'x' WHERE id = 3;
DELETE FROM audit_log.links;

-- session_replication_role = replica does not bypass them (they are ENABLE ALWAYS).
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM audit_log.records WHERE seq = 2;
ROLLBACK;

-- A direct catalog trick hides the guards from the relation cache; verify()
-- still sees the edit (event 5's op, INSERT, made DELETE).
BEGIN;
UPDATE pg_catalog.pg_class SET relhastriggers = false WHERE oid = 'audit_log.records'::regclass;
UPDATE audit_log.records SET payload = subst(payload, txt('INSERT'), txt('DELETE')) WHERE seq = 3;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

-- From here on, the guard triggers are disabled inside each transaction.
CREATE FUNCTION unguard() RETURNS void LANGUAGE sql AS $$
  ALTER TABLE audit_log.records DISABLE TRIGGER USER;
  ALTER TABLE audit_log.segments DISABLE TRIGGER USER;
  ALTER TABLE audit_log.row_keys DISABLE TRIGGER USER; $$;

-- No event hash is stored any more: an edited event is caught by its
-- record's link hash, and reported at the record's first event.
BEGIN; SELECT unguard();   -- a row value: event 3's new row {"v": "b"} made {"v": "forged"}
UPDATE audit_log.records SET payload =
  put(payload, 2, subst((evs(payload))[2], txt('v') || jstr('b'), txt('v') || jstr('forged'))) WHERE seq = 2;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- a time: event 5 recorded a second later (and its statement start, stored as a distance from it)
UPDATE audit_log.records SET payload =
  put(payload, 1, set_i64((evs(payload))[1], head_len((evs(payload))[1]) + 1,
                          get_i64((evs(payload))[1], head_len((evs(payload))[1]) + 1) + 1000000)) WHERE seq = 3;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- an actor: event 6's session user made mallory (its current user stays postgres)
UPDATE audit_log.records SET payload =
  put(payload, 1, subst((evs(payload))[1], txt('postgres') || '\x00'::bytea,
                        txt('mallory') || '\x01'::bytea || txt('postgres'))) WHERE seq = 4;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- a table: event 2 made a change to public.other
UPDATE audit_log.records SET payload =
  put(payload, 1, subst((evs(payload))[1], txt('public') || txt('t'), txt('public') || txt('other'))) WHERE seq = 2;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- delete an event in the middle of a transaction (event 3), its count adjusted
UPDATE audit_log.records SET payload = pack(ARRAY[(evs(payload))[1], (evs(payload))[3]]), event_count = 2 WHERE seq = 2;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- delete the event at the end of a transaction (event 4), its count and last event adjusted
UPDATE audit_log.records SET payload = pack((evs(payload))[1:2]), event_count = 2, last_event = 3 WHERE seq = 2;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

-- Inserting into records needs no guard disabled (only the owner may), but
-- a forged record does not hash to the link hash it must carry. Here, a
-- transaction of its own (tx 999999) with one event (1000), a copy of event
-- 5 with another row, and a copy of the head's link hash. (A frame takes
-- its id and tx_id from its record: the copy is event 1000 of tx 999999.)
BEGIN;
INSERT INTO audit_log.records
SELECT 0, 6, '999999', 1000, 1000, 1, clock_timestamp(), 0, link_hash,
       pack(ARRAY[subst((evs(payload))[1], txt('v') || jstr('d'), txt('v') || jstr('forged'))])
  FROM audit_log.records WHERE seq = 3;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- a forged event (1001, a copy of event 5) slipped into a committed transaction
UPDATE audit_log.records SET payload = pack(ARRAY[(evs(payload))[1], head(1001 - 5, 2) || body((evs(payload))[1])]),
  event_count = 2, last_event = 1001 WHERE seq = 3;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- an event moved into another transaction: event 8 from record 0/5 to the end of 0/2
-- (as it was, id 8 at tx_seq 2; its tx_id is now its new record's)
UPDATE audit_log.records SET payload = payload || pack(ARRAY[head(8 - 2, 2) || body(e)]), event_count = 4, last_event = 8
  FROM (SELECT (evs(payload))[2] AS e FROM audit_log.records WHERE seq = 5) m WHERE seq = 2;
UPDATE audit_log.records SET payload = pack((evs(payload))[1:1]), event_count = 1, last_event = 7 WHERE seq = 5;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- swap two events' row data (events 7 and 8: v 'f' and 'g')
UPDATE audit_log.records SET payload =
  pack(ARRAY[subst((evs(payload))[1], txt('v') || jstr('f'), txt('v') || jstr('g')),
             subst((evs(payload))[2], txt('v') || jstr('g'), txt('v') || jstr('f'))]) WHERE seq = 5;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- reorder a transaction's events (8 before 7)
UPDATE audit_log.records SET payload = pack(ARRAY[(evs(payload))[2], (evs(payload))[1]]) WHERE seq = 5;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- reorder two transactions in the chain (records 0/3 and 0/4 swap seq)
UPDATE audit_log.records SET seq = -seq WHERE seq IN (3, 4);
UPDATE audit_log.records SET seq = 7 + seq WHERE seq IN (-3, -4);
SELECT seq, first_event FROM audit_log.records ORDER BY seq;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- delete a whole transaction (record 0/3, event 5)
DELETE FROM audit_log.records WHERE seq = 3;
SELECT * FROM changed();
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- the same, and the later records renumbered to close the gap
DELETE FROM audit_log.records WHERE seq = 3;
UPDATE audit_log.records SET seq = seq - 1 WHERE seq > 3;
SELECT * FROM check_log(); ROLLBACK;

-- Changes to a record's own columns (what format v1 kept in links).
BEGIN; SELECT unguard();   -- its commit time
UPDATE audit_log.records SET committed_at = committed_at + interval '1 second' WHERE seq = 4;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- its event count
UPDATE audit_log.records SET event_count = 2 WHERE first_event = 6;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- its payload cut short by one byte
UPDATE audit_log.records SET payload = substring(payload FROM 1 FOR length(payload) - 1) WHERE seq = 4;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- its stored link hash: it, and the record after it, break
UPDATE audit_log.records SET link_hash = sha256('forged'::bytea) WHERE seq = 3;
SELECT * FROM check_log(); ROLLBACK;

-- Recomputed hashes. relink() reproduces every stored hash of an untouched
-- log (so the cases below are real forgeries, not broken ones).
BEGIN; SELECT unguard();
CREATE TEMP TABLE stored ON COMMIT DROP AS SELECT seq, link_hash FROM audit_log.records;
SELECT relink(1);
SELECT count(*) AS records, count(*) FILTER (WHERE r.link_hash = s.link_hash) AS same_hash
  FROM audit_log.records r JOIN stored s USING (seq);
ROLLBACK;

BEGIN; SELECT unguard();   -- an edit of record 0/3 and its hash recomputed: the next record (0/4) breaks
UPDATE audit_log.records SET committed_at = committed_at + interval '1 second' WHERE seq = 3;
SELECT relink(3, 3);
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- an edit of event 3 and the whole chain recomputed from there: only a checkpoint sees it
UPDATE audit_log.records SET payload =
  put(payload, 2, subst((evs(payload))[2], txt('v') || jstr('b'), txt('v') || jstr('forged'))) WHERE seq = 2;
SELECT relink(2);
SELECT * FROM changed();
SELECT * FROM check_log();
SELECT * FROM check_log((SELECT cp FROM cp)); ROLLBACK;

BEGIN; SELECT unguard();   -- a transaction replayed at the tail, its hash recomputed: recorded twice
INSERT INTO audit_log.records
SELECT chain_id, 6, tx_id, first_event, last_event, event_count, committed_at, segments, link_hash, payload
  FROM audit_log.records WHERE seq = 2;
SELECT relink(6);
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- drop the newest transaction: only a checkpoint sees it
DELETE FROM audit_log.records WHERE seq = 5;
SELECT * FROM check_log();
SELECT * FROM check_log((SELECT cp FROM cp)); ROLLBACK;

BEGIN; SELECT unguard();   -- truncate everything
TRUNCATE audit_log.records, audit_log.segments, audit_log.row_keys;
SELECT * FROM check_log();
SELECT * FROM check_log((SELECT cp FROM cp)); ROLLBACK;

-- A damaged chain head is not extended: a writer that finds it refuses to
-- chain to a stand-in value (which would hide the damage behind a new link).
SELECT count(*) AS records_before FROM audit_log.records;
BEGIN; SELECT unguard();
UPDATE audit_log.records SET link_hash = '\x00' WHERE seq = (SELECT max(seq) FROM audit_log.records);
INSERT INTO t VALUES (8, 'i');
COMMIT;
SELECT count(*) AS records_after_refused_commit FROM audit_log.records;

-- Untouched, the log still verifies against the checkpoint, and after growing.
INSERT INTO t VALUES (7, 'h');
SELECT * FROM check_log((SELECT cp FROM cp));

-- A transaction too large to keep in memory writes its first events to
-- audit_log.segments before commit; its record covers them, and a change
-- to them is caught like one to the record.
INSERT INTO t SELECT g, repeat('x', 3000) FROM generate_series(100, 499) g;
SELECT r.event_count, r.segments, s.part, r.event_count - array_length(evs(r.payload), 1) AS events_in_segment
  FROM audit_log.records r JOIN audit_log.segments s USING (first_event);
SELECT * FROM check_log((SELECT cp FROM cp));

BEGIN; SELECT unguard();   -- a row value in the segment (the first event's)
UPDATE audit_log.segments SET payload = subst(payload, jstr(repeat('x', 3000)), jstr(repeat('y', 3000)));
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- the segment deleted
DELETE FROM audit_log.segments;
SELECT * FROM check_log(); ROLLBACK;

BEGIN; SELECT unguard();   -- the record made to forget its segment
UPDATE audit_log.records SET segments = 0 WHERE segments > 0;
SELECT * FROM check_log(); ROLLBACK;

SELECT * FROM check_log((SELECT cp FROM cp));
\c postgres
DROP DATABASE al_tamper;

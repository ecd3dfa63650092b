-- The raw storage of format v2 (docs/FORMAT.md, "Storage") as JSON lines for
-- format_v2.py, which verifies it without trusting the server: not the
-- audit_log.events and audit_log.links views, whose hashes the server
-- recomputes, but the bytes and the stored link hashes. Payloads and hashes
-- in hex, committed_at in integer microseconds since the Unix epoch.
SELECT json_build_object(
  'kind', 'record', 'chain_id', chain_id, 'seq', seq, 'tx_id', tx_id::text::numeric,
  'first_event', first_event, 'last_event', last_event, 'event_count', event_count,
  'committed_at', (extract(epoch FROM committed_at) * 1000000)::int8,
  'segments', segments, 'link_hash', encode(link_hash, 'hex'), 'payload', encode(payload, 'hex'))
FROM audit_log.records
UNION ALL
SELECT json_build_object(
  'kind', 'segment', 'first_event', first_event, 'part', part, 'payload', encode(payload, 'hex'))
FROM audit_log.segments
UNION ALL
SELECT json_build_object(
  'kind', 'anchor', 'chain_id', chain_id, 'seq', seq, 'link_hash', encode(link_hash, 'hex'),
  'last_event', last_event)
FROM audit_log.anchors;

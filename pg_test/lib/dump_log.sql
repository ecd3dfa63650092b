-- The log as JSON lines for format_v1.py: jsonb columns as their text,
-- timestamps as integer microseconds since the Unix epoch, hashes in hex.
SELECT json_build_object(
  'kind', 'event', 'id', id, 'tx_id', tx_id::text::int8, 'tx_seq', tx_seq, 'tx_first', tx_first,
  'recorded_at', (extract(epoch FROM recorded_at) * 1000000)::int8,
  'statement_at', (extract(epoch FROM statement_at) * 1000000)::int8,
  'session_user_name', session_user_name, 'current_user_name', current_user_name,
  'application_name', application_name, 'client_addr', inet_out(client_addr)::text,
  'context', context::text, 'table_schema', table_schema, 'table_name', table_name, 'op', op,
  'old_row', old_row::text, 'new_row', new_row::text,
  'prev_hash', encode(prev_hash, 'hex'), 'hash', encode(hash, 'hex'))
FROM audit_log.events
UNION ALL
SELECT json_build_object(
  'kind', 'link', 'chain_id', chain_id, 'seq', seq, 'tx_id', tx_id::text::int8,
  'event_count', event_count, 'first_event', first_event, 'last_event', last_event,
  'last_event_hash', encode(last_event_hash, 'hex'),
  'committed_at', (extract(epoch FROM committed_at) * 1000000)::int8,
  'prev_link_hash', encode(prev_link_hash, 'hex'), 'link_hash', encode(link_hash, 'hex'))
FROM audit_log.links;

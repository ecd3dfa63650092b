-- audit_log 0.2.0 -> 0.3.0: ALTER EXTENSION audit_log UPDATE.
--
-- What 0.3.0 adds is mostly in the library (the records export and the
-- report of the audit-log CLI, a faster single-core verify()), and the
-- storage format is still version 2 (docs/FORMAT.md). In SQL, verify() and
-- checkpoint() gain the comments every other function has.
-- pg_test/scenarios/upgrade.sh checks that the result equals a fresh
-- install of 0.3.0, object by object.
--
-- Complain if this script is sourced in psql rather than run by ALTER
-- EXTENSION.
\echo Use "ALTER EXTENSION audit_log UPDATE TO '0.3.0'" to load this file. \quit

COMMENT ON FUNCTION audit_log.verify() IS 'Recompute every event hash and link of the log; ok, or the first bad event and what is wrong with it. A failure also raises a WARNING and notifies audit_log_alert. Requires audit_log_auditor.';
COMMENT ON FUNCTION audit_log.checkpoint() IS 'Every chain''s head (seq, link hash, last event), to keep outside the database: audit_log.verify(checkpoint) later proves that the log extends it. Requires audit_log_auditor.';

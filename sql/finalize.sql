-- audit_log schema, part 2: guards and privileges on the functions.
-- Runs after every function of the extension exists.

-- Append-only, even for the owner: only a superuser who disables these
-- triggers can change history, and verify() detects what they change.
CREATE FUNCTION audit_log.reject_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_log.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit history cannot be changed. Retention is handled by audit_log itself.';
END
$fn$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.events
    FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_log.links
    FOR EACH ROW EXECUTE FUNCTION audit_log.reject_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit_log.links
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log.reject_change();
ALTER TABLE audit_log.events ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE audit_log.events ENABLE ALWAYS TRIGGER append_only_truncate;
ALTER TABLE audit_log.links ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE audit_log.links ENABLE ALWAYS TRIGGER append_only_truncate;

-- DDL guard: refuses, for anyone but a superuser, DDL on the audit schema and
-- switching off the capture triggers of an audited table; records what it allows.
CREATE FUNCTION audit_log.ddl_command_start() RETURNS event_trigger
LANGUAGE c SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_log_ddl_command_start';
CREATE FUNCTION audit_log.ddl_command_end() RETURNS event_trigger
LANGUAGE c SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_log_ddl_command_end';
CREATE EVENT TRIGGER audit_log_ddl_start ON ddl_command_start
    EXECUTE FUNCTION audit_log.ddl_command_start();
CREATE EVENT TRIGGER audit_log_ddl_end ON ddl_command_end
    EXECUTE FUNCTION audit_log.ddl_command_end();
ALTER EVENT TRIGGER audit_log_ddl_start ENABLE ALWAYS;
ALTER EVENT TRIGGER audit_log_ddl_end ENABLE ALWAYS;

-- Functions: nothing for PUBLIC; the two roles get what they need.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA audit_log FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log.enable(regclass), audit_log.disable(regclass)
    TO audit_log_admin;
GRANT EXECUTE ON FUNCTION audit_log.verify(), audit_log.verify(jsonb), audit_log.checkpoint()
    TO audit_log_auditor, audit_log_admin;

-- The application context, for any role: it only sets the caller's own
-- setting (audit_log.context), which every role may set anyway.
CREATE FUNCTION audit_log.set_context(context jsonb, is_local boolean DEFAULT true)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT pg_catalog.set_config('audit_log.context', context::pg_catalog.text, is_local) $$;
COMMENT ON FUNCTION audit_log.set_context(jsonb, boolean) IS
    'Set the application context recorded with each audited change: for this transaction (the default) or, with is_local => false, the session.';
GRANT EXECUTE ON FUNCTION audit_log.set_context(jsonb, boolean) TO PUBLIC;

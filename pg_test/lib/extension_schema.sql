-- Everything the audit_log extension defines in the current database, one
-- line per object or property, sorted: two databases print the same lines
-- when the extension's schema is the same, whatever path (a fresh CREATE
-- EXTENSION or ALTER EXTENSION UPDATE) got it there. OIDs never appear.
-- Used by pg_test/scenarios/upgrade.sh.
WITH ext AS (
    SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'audit_log'
), members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = ext.oid AND d.deptype = 'e'
), rels AS (
    SELECT c.oid, c.relname, c.relkind, c.relacl, c.reloptions
      FROM pg_catalog.pg_class c JOIN members m
        ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
), lines AS (
    -- Every member object, as PostgreSQL names it.
    SELECT 'member ' || pg_catalog.pg_describe_object(m.classid, m.objid, 0) AS line
      FROM members m
    -- Functions: their whole definition (language, volatility, SECURITY
    -- DEFINER, SET search_path, C symbol), privileges and comment.
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text || E'\n' || pg_catalog.pg_get_functiondef(p.oid)
      FROM pg_catalog.pg_proc p JOIN members m
        ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
     WHERE p.prokind <> 'a'
    UNION ALL
    SELECT 'function acl ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '(default)')
      FROM pg_catalog.pg_proc p JOIN members m
        ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT 'function comment ' || p.oid::regprocedure::text || ' ' || pg_catalog.obj_description(p.oid, 'pg_proc')
      FROM pg_catalog.pg_proc p JOIN members m
        ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
     WHERE pg_catalog.obj_description(p.oid, 'pg_proc') IS NOT NULL
    -- Relations: kind, options, privileges, comment; views' queries.
    UNION ALL
    SELECT 'relation ' || r.relname || ' kind ' || r.relkind::text || ' options ' || coalesce(r.reloptions::text, '-')
           || ' acl ' || coalesce(r.relacl::text, '(default)')
           || ' comment ' || coalesce(pg_catalog.obj_description(r.oid, 'pg_class'), '-')
      FROM rels r
    UNION ALL
    SELECT 'view ' || r.relname || E'\n' || pg_catalog.pg_get_viewdef(r.oid)
      FROM rels r WHERE r.relkind IN ('v', 'm')
    -- Columns: position, type, nullability, default, storage, compression,
    -- privileges and comment.
    UNION ALL
    SELECT pg_catalog.format('column %s.%s #%s %s%s default %s storage %s compression %s acl %s comment %s',
               r.relname, a.attname, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
               coalesce(pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '-'), a.attstorage,
               coalesce(nullif(a.attcompression, ''), '-'), coalesce(a.attacl::text, '-'),
               coalesce(pg_catalog.col_description(r.oid, a.attnum), '-'))
      FROM rels r
      JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
    -- Indexes, constraints and triggers of the extension's tables.
    UNION ALL
    SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM rels r JOIN pg_catalog.pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT 'constraint ' || r.relname || ' ' || c.conname || ' ' || pg_catalog.pg_get_constraintdef(c.oid)
      FROM rels r JOIN pg_catalog.pg_constraint c ON c.conrelid = r.oid
    UNION ALL
    SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
      FROM rels r JOIN pg_catalog.pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
    -- Sequences: their parameters.
    UNION ALL
    SELECT pg_catalog.format('sequence %s %s start %s increment %s min %s max %s cache %s cycle %s',
               r.relname, pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
               s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
      FROM rels r JOIN pg_catalog.pg_sequence s ON s.seqrelid = r.oid
    -- Event triggers: event, function, tags, enabled.
    UNION ALL
    SELECT pg_catalog.format('event trigger %s on %s executes %s tags %s enabled %s',
               e.evtname, e.evtevent, e.evtfoid::regproc, coalesce(e.evttags::text, '-'), e.evtenabled)
      FROM pg_catalog.pg_event_trigger e JOIN members m
        ON m.classid = 'pg_catalog.pg_event_trigger'::regclass AND m.objid = e.oid
    -- Types the extension defines (composite types of functions' results).
    UNION ALL
    SELECT 'type ' || t.typname || ' ' || t.typtype::text
      FROM pg_catalog.pg_type t JOIN members m
        ON m.classid = 'pg_catalog.pg_type'::regclass AND m.objid = t.oid
    -- The schema's privileges, and the extension's own settings.
    UNION ALL
    SELECT 'schema audit_log acl ' || coalesce(n.nspacl::text, '(default)')
      FROM pg_catalog.pg_namespace n WHERE n.nspname = 'audit_log'
    UNION ALL
    SELECT 'extension config ' || coalesce(x.extconfig::regclass[]::text, '-')
           || ' conditions ' || coalesce(x.extcondition::text, '-') || ' relocatable ' || x.extrelocatable
      FROM pg_catalog.pg_extension x WHERE x.extname = 'audit_log'
)
SELECT line FROM lines ORDER BY line;

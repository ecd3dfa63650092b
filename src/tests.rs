//! In-server tests (`cargo pgrx test`). Each runs inside one transaction that
//! is rolled back, so they test what happens before commit: capture, the
//! in-transaction hash chain, subtransaction rollback, and errors. Commit-time
//! records, several sessions and crashes are tested under pg_test/. A
//! transaction's events are written at its commit: until then they are
//! read here through `tests.pending()`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             SELECT audit_log.enable('t');",
        )
        .unwrap();
    }

    fn count(q: &str) -> i64 {
        Spi::get_one::<i64>(q).unwrap().unwrap()
    }

    /// The events this transaction holds in memory, decoded from the bytes
    /// that will be stored, with their hashes.
    #[allow(clippy::type_complexity)]
    #[pg_extern]
    fn pending() -> TableIterator<
        'static,
        (
            name!(tx_seq, i64),
            name!(op, String),
            name!(old_row, Option<String>),
            name!(new_row, Option<String>),
            name!(prev_hash, Vec<u8>),
            name!(hash, Vec<u8>),
            name!(current_user_name, String),
            name!(table_schema, String),
        ),
    > {
        use crate::errors::{AuditError, OrRaise};
        use audit_log_core::encoding::decode::Reader;
        use audit_log_core::model::Json;
        let text = |j: Option<Json>| match j {
            Some(Json::Encoded(b)) => Reader::new(&b).json_text().ok(),
            _ => None,
        };
        let mut rows = Vec::new();
        if let Some((first, payload)) = crate::txstate::pending_payload() {
            for e in audit_log_core::record::decoded([], &payload, first) {
                let e = e
                    .map_err(|m| AuditError::Internal(format!("pending events: {m}")))
                    .or_raise();
                rows.push((
                    e.tx_seq,
                    e.op,
                    text(e.old_row),
                    text(e.new_row),
                    e.prev_hash.to_vec(),
                    e.hash.to_vec(),
                    e.current_user_name,
                    e.table_schema,
                ));
            }
        }
        TableIterator::new(rows)
    }

    /// Every row of `rel`, encoded both ways: straight from its datums
    /// (rowenc) and through to_jsonb and jsonb_delete (what capture does
    /// otherwise). Returns (rows, rows rowenc took, rows that differ).
    #[pg_extern]
    fn row_encodings(
        rel: pg_sys::Oid,
        exclude: Vec<String>,
    ) -> TableIterator<'static, (name!(rows, i64), name!(direct, i64), name!(differ, i64))> {
        use crate::errors::OrRaise;
        let (mut rows, mut direct, mut differ) = (0i64, 0i64, 0i64);
        // SAFETY: a heap scan of one table under the active snapshot, each
        // tuple encoded while the scan holds it.
        unsafe {
            let r = pg_sys::table_open(rel, pg_sys::AccessShareLock as i32);
            let desc = (*r).rd_att;
            let scan =
                pg_sys::table_beginscan(r, pg_sys::GetActiveSnapshot(), 0, std::ptr::null_mut());
            loop {
                let t = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if t.is_null() {
                    break;
                }
                rows += 1;
                let mut d = crate::capture::row_to_jsonb(t, desc, crate::rendering::depends(desc));
                for c in &exclude {
                    d = pgrx::direct_function_call_as_datum(
                        pg_sys::jsonb_delete,
                        &[Some(d), c.as_str().into_datum()],
                    )
                    .ok_or_else(|| {
                        crate::errors::AuditError::Internal("jsonb_delete returned NULL".into())
                    })
                    .or_raise();
                }
                let via_jsonb = crate::capture::json_from_datum(d, false).encoded;
                // As capture calls it: in the session's own output settings,
                // which rowenc does not depend on.
                let plan = crate::rowenc::Plan::new(desc, &exclude);
                let straight = plan.as_ref().and_then(|p| p.encode(t, false));
                if let Some(e) = straight {
                    direct += 1;
                    // Packed, it is the packed form of the same encoding.
                    let mut packed = Vec::new();
                    let packs =
                        audit_log_core::encoding::packed::json_pack(&via_jsonb, &mut packed);
                    let straight_packed = plan.as_ref().and_then(|p| p.encode(t, true));
                    if e != via_jsonb || packs.is_err() || straight_packed != Some(packed) {
                        differ += 1;
                    }
                }
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(r, pg_sys::AccessShareLock as i32);
        }
        TableIterator::new(vec![(rows, direct, differ)])
    }

    /// Role names are cached per backend: a role renamed after its name was
    /// recorded is recorded by its new name from the next event on.
    #[pg_test]
    fn a_renamed_role_is_recorded_by_its_new_name() -> Result<(), pgrx::spi::Error> {
        setup();
        Spi::run(
            "CREATE ROLE al_before; GRANT ALL ON t TO al_before;
             SET ROLE al_before; INSERT INTO t VALUES (1, 'a'); RESET ROLE;
             ALTER ROLE al_before RENAME TO al_after;
             SET ROLE al_after; INSERT INTO t VALUES (2, 'b'); RESET ROLE;",
        )?;
        let who = Spi::get_one::<String>(
            "SELECT string_agg(current_user_name, ',' ORDER BY tx_seq)
               FROM tests.pending() WHERE op = 'INSERT'",
        )?;
        assert_eq!(who.as_deref(), Some("al_before,al_after"));
        Ok(())
    }

    /// Schema names are cached per backend too: a table whose schema is
    /// renamed is recorded under the new name from the next event on.
    #[pg_test]
    fn a_renamed_schema_is_recorded_by_its_new_name() -> Result<(), pgrx::spi::Error> {
        Spi::run(
            "CREATE SCHEMA al_s1; CREATE TABLE al_s1.t (id int PRIMARY KEY);
             SELECT audit_log.enable('al_s1.t');
             INSERT INTO al_s1.t VALUES (1);
             ALTER SCHEMA al_s1 RENAME TO al_s2;
             INSERT INTO al_s2.t VALUES (2);",
        )?;
        let schemas = Spi::get_one::<String>(
            "SELECT string_agg(table_schema, ',' ORDER BY tx_seq)
               FROM tests.pending() WHERE op = 'INSERT'",
        )?;
        assert_eq!(schemas.as_deref(), Some("al_s1,al_s2"));
        Ok(())
    }

    /// rowenc gives to_jsonb's own value, byte for byte, for every kind of
    /// value of the types it takes, in a session whose output settings are
    /// not the canonical ones; it declines NaN, the infinities of numeric,
    /// and any row with a column of another type.
    #[pg_test]
    fn rows_encoded_from_their_datums_are_to_jsonb_byte_for_byte() -> Result<(), pgrx::spi::Error> {
        Spi::run(
            "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, DMY';
             SET extra_float_digits = -3; SET IntervalStyle = 'sql_standard';
             CREATE TABLE enc (gone int, b boolean, s smallint, i integer, l bigint, t text,
                               v varchar(8), n numeric, n2 numeric(12,4), d date, ts timestamp,
                               tz timestamptz, \"Ünïcode key\" text, \" \" int);
             ALTER TABLE enc DROP COLUMN gone;
             ALTER TABLE enc ALTER COLUMN t SET STORAGE EXTERNAL;
             INSERT INTO enc VALUES
               (true, -32768, -2147483648, -9223372036854775808, '', 'Zoë ✓', 1.50, 1.5,
                '2026-11-29', '2026-11-29 12:34:56.123456', '2026-11-29 12:34:56.123456+05:30', 'k', 1),
               (false, 32767, 2147483647, 9223372036854775807, E'q\" b\\\\ t\t n\n c\\001', 'abcdefgh',
                -0.000001, -0.0001, 'infinity', '-infinity', 'infinity', NULL, NULL),
               (NULL, 0, 0, 0, repeat('abcdefghij', 20000), NULL, 1e20, 0, '4713-01-01 BC',
                '0001-01-01 00:00:00 BC', '1900-01-01 00:00:00+00', '', 0),
               (NULL, NULL, NULL, NULL, NULL, NULL, 0.000000000000000000000000000001, NULL,
                '-infinity', NULL, '2000-02-29 23:59:59.999999-12', NULL, NULL),
               (true, 1, 1, 1, 'x', 'y', 123456789012345678901234567890.123456789, 99999999.9999,
                '1999-12-31', '1999-12-31 23:59:59', 'epoch', 'z', 2),
               (true, 1, 1, 1, 'nan row', 'y', 'NaN', 1, NULL, NULL, NULL, NULL, NULL),
               (false, 2, 2, 2, 'inf row', 'w', '-Infinity', 0.00, NULL, NULL, NULL, NULL, NULL);
             -- Rows stored before the column existed: its default is read
             -- from the catalog, by both ways.
             ALTER TABLE enc ADD COLUMN added numeric DEFAULT 0.00;
             INSERT INTO enc (b, t, added) VALUES (true, 'after', -0.000);
             -- Values stored inline with a 4-byte header, uncompressed (t,
             -- and m in the second row) and compressed (m in the first):
             -- rowenc reads the first in place and detoasts the second.
             ALTER TABLE enc ADD COLUMN m text;
             INSERT INTO enc (b, t, m) VALUES (true, repeat('é', 300), repeat('ab', 3000)),
                                              (false, NULL, repeat('x', 500));
             -- char(n) with its padding, and uuids.
             ALTER TABLE enc ADD COLUMN ch char(5), ADD COLUMN u uuid;
             INSERT INTO enc (b, ch, u) VALUES
               (true, 'ab', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'),
               (false, '', '00000000-0000-0000-0000-000000000000'),
               (NULL, 'abcde', 'ffffffff-ffff-ffff-ffff-ffffffffffff');",
        )?;
        // A NULL (which row_encodings never returns) reads as -1, which
        // no assertion expects.
        let got = |sql: &str| -> Result<(i64, i64, i64), pgrx::spi::Error> {
            let (r, d, x) = Spi::get_three::<i64, i64, i64>(sql)?;
            let n = |v: Option<i64>| v.unwrap_or(-1);
            Ok((n(r), n(d), n(x)))
        };
        // The three kinds of stored values are there.
        assert_eq!(
            count(
                "SELECT count(*) FROM enc WHERE pg_column_compression(m) IS NOT NULL
                    AND pg_column_size(m) < 2000 AND pg_column_size(t) = 604"
            ),
            1
        );
        // Eleven rows taken straight, all equal; the NaN and -Infinity rows declined.
        assert_eq!(
            got("SELECT * FROM tests.row_encodings('enc'::regclass, '{}')")?,
            (13, 11, 0)
        );
        // Excluded columns are left out as jsonb_delete leaves them out.
        assert_eq!(
            got("SELECT * FROM tests.row_encodings('enc'::regclass, '{t,tz,nope}')")?,
            (13, 11, 0)
        );
        // A row past 16 MB takes to_jsonb, which refuses (past 256 MB) what
        // the views could not read back as jsonb.
        Spi::run(
            "CREATE TABLE big (t text); INSERT INTO big VALUES (repeat('x', 17 << 20)), ('small')",
        )?;
        assert_eq!(
            got("SELECT * FROM tests.row_encodings('big'::regclass, '{}')")?,
            (2, 1, 0)
        );
        // Another type anywhere in the row: to_jsonb for every row.
        Spi::run(
            "CREATE TABLE enc2 (i int, j jsonb); INSERT INTO enc2 VALUES (1, '{}'), (2, NULL)",
        )?;
        assert_eq!(
            got("SELECT * FROM tests.row_encodings('enc2'::regclass, '{}')")?,
            (2, 0, 0)
        );
        // And what capture records (under those settings) is to_jsonb's
        // value under the canonical ones.
        Spi::run(
            "SELECT audit_log.enable('enc'); UPDATE enc SET s = s WHERE b;
             SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1;",
        )?;
        assert_eq!(
            count(
                "SELECT count(*) FROM tests.pending() p
                  WHERE p.op = 'UPDATE' AND EXISTS (SELECT 1 FROM enc e
                        WHERE p.new_row::jsonb::text = to_jsonb(e)::text
                          AND p.old_row::jsonb::text = to_jsonb(e)::text)"
            ),
            count("SELECT count(*) FROM enc WHERE b")
        );
        assert_eq!(count("SELECT count(*) FROM enc WHERE b"), 6);
        Ok(())
    }

    #[pg_test]
    fn events_chain_within_a_transaction() {
        setup();
        Spi::run("INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2;")
            .unwrap();
        // Nothing is in the log before commit.
        assert_eq!(count("SELECT count(*) FROM audit_log.events"), 0);
        assert_eq!(count("SELECT count(*) FROM tests.pending()"), 5);
        // positions 1..5 without gaps, each chained to its predecessor
        assert_eq!(
            count(
                "SELECT count(*) FROM tests.pending() e JOIN tests.pending() p
                   ON p.tx_seq = e.tx_seq - 1 AND e.prev_hash = p.hash"
            ),
            4
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(op, ',' ORDER BY tx_seq) FROM tests.pending()"
            )
            .unwrap()
            .unwrap(),
            "ENABLE,INSERT,INSERT,UPDATE,DELETE"
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT (old_row::jsonb->>'v') || (new_row::jsonb->>'v') FROM tests.pending() WHERE op = 'UPDATE'"
            )
            .unwrap()
            .unwrap(),
            "ac"
        );
    }

    #[pg_test]
    fn rolled_back_subtransaction_leaves_no_event_and_no_gap() {
        setup();
        Spi::run(
            "DO $$ BEGIN
               INSERT INTO t VALUES (1, 'kept');
               BEGIN INSERT INTO t VALUES (2, 'undone'); PERFORM 1/0;
               EXCEPTION WHEN division_by_zero THEN NULL; END;
               INSERT INTO t VALUES (3, 'kept too');
             END $$",
        )
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM tests.pending() WHERE new_row::jsonb->>'v' = 'undone'"),
            0
        );
        assert_eq!(count("SELECT max(tx_seq) FROM tests.pending()"), 3);
        assert_eq!(
            count(
                "SELECT count(*) FROM tests.pending() e JOIN tests.pending() p
                   ON p.tx_seq = e.tx_seq - 1 AND e.prev_hash = p.hash"
            ),
            2
        );
    }

    #[pg_test]
    fn verify_ignores_the_callers_own_uncommitted_events() {
        setup();
        Spi::run("INSERT INTO t VALUES (1, 'a')").unwrap();
        let ok = Spi::get_one::<bool>("SELECT ok FROM audit_log.verify()")
            .unwrap()
            .unwrap();
        assert!(ok);
        assert_eq!(count("SELECT events_checked FROM audit_log.verify()"), 0);
    }

    /// The pure-Rust jsonb reader, PostgreSQL's own iterator, and the text
    /// route (what an independent verifier does with an export) must give
    /// the same bytes, always.
    #[pg_test]
    fn jsonb_walker_matches_the_text_route() {
        use crate::jsonb::CanonicalJsonb;
        let corpus = r#"
            SELECT v FROM (VALUES
              ('null'::jsonb), ('true'), ('false'), ('0'), ('-0'), ('1.50'), ('1e3'), ('-1.5E-7'),
              ('123456789012345678901234567890.123456789012345678901234567890'),
              ('"plain"'), ('""'), ('"é ✓ 😀 \u00e9 \t \n \\ \" \u0001"'), ('[]'), ('{}'),
              ('[1, [2, [3, []]], {"a": {}}]'),
              ('{"b": 1, "a": 2, "aa": 3, "ab": 4, "é": 5, "": 6, "Z": 7, "zz": {"y": [null]}}'),
              ('{"dup": 1, "dup": 2}'),
              ('{"k": "NaN", "n": 12.3400, "m": [0.1, 1.0, 10]}'),
              ('[0.0005, -0.000007, 1e-20, 1e20, 9999.9999, 10000, -10000.0001, 0.00]')
            ) AS c(v)
            UNION ALL
            -- More than 32 elements or members: some entries hold offsets, not lengths.
            SELECT jsonb_agg(g * 1.01) FROM generate_series(1, 100) g
            UNION ALL
            SELECT jsonb_object_agg('key' || g, jsonb_build_array(g, 'x')) FROM generate_series(1, 100) g
            UNION ALL
            SELECT to_jsonb(random()::numeric(30, 15) * 10 ^ (g % 40 - 20)) FROM generate_series(1, 200) g
            UNION ALL
            SELECT jsonb_build_object(
                     'i', g, 'f', g / 7.0, 's', md5(g::text), 'u', chr(160 + g % 5000),
                     'a', jsonb_build_array(g, g::text, g % 2 = 0, NULL),
                     repeat('k', g % 9), jsonb_build_object('n', -g * 1.5))
              FROM generate_series(1, 300) g"#;
        let rows = Spi::connect(|c| {
            let t = c
                .select(&format!("SELECT v, v::text FROM ({corpus}) x"), None, &[])
                .unwrap();
            t.map(|r| {
                (
                    r.get::<CanonicalJsonb>(1).unwrap().unwrap(),
                    r.get::<String>(2).unwrap().unwrap(),
                )
            })
            .collect::<Vec<_>>()
        });
        assert!(rows.len() > 500);
        for (CanonicalJsonb(walked, iterated), text) in rows {
            assert_eq!(
                walked, iterated,
                "jsonb {text}: pure reader and JsonbIteratorNext differ"
            );
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut via_text = Vec::new();
            audit_log_core::encoding::encode_json(&value, &mut via_text);
            assert_eq!(walked, via_text, "jsonb {text}");
        }
    }

    #[pg_test(
        error = "\"public.v\" is a view; audit_log can only audit ordinary and partitioned tables"
    )]
    fn enable_refuses_a_view() {
        Spi::run("CREATE VIEW public.v AS SELECT 1 AS x; SELECT audit_log.enable('public.v');")
            .unwrap();
    }

    #[pg_test(
        error = "invalid checkpoint: checkpoint format \"x\" is not supported; expected \"audit_log.checkpoint.v2\" or \"audit_log.checkpoint.v1\""
    )]
    fn verify_refuses_a_foreign_checkpoint() {
        Spi::run("SELECT * FROM audit_log.verify('{\"format\": \"x\", \"chains\": []}')").unwrap();
    }

    /// A DDL command that fails inside a subtransaction (a PL/pgSQL
    /// exception block) never reaches ddl_command_end: the guard forgets it
    /// when the subtransaction aborts, so failures do not pile up.
    #[pg_test]
    fn failed_ddl_in_subtransactions_leaves_nothing_in_progress() {
        setup();
        let before = crate::ddl_guard::commands_in_progress();
        Spi::run(
            "DO $$ BEGIN
                 FOR i IN 1..5 LOOP
                     BEGIN
                         ALTER TABLE t ADD COLUMN v int;
                     EXCEPTION WHEN duplicate_column THEN NULL;
                     END;
                 END LOOP;
             END $$;",
        )
        .unwrap();
        assert_eq!(crate::ddl_guard::commands_in_progress(), before);
    }

    /// tx_seq is stored as an integer: the event after 2^31 - 1 in one
    /// transaction is refused with a clear error, never wrapped.
    #[pg_test(
        error = "a transaction can record at most 2147483647 audited changes; this one has 2147483647"
    )]
    fn a_transaction_past_two_billion_events_is_refused() {
        setup();
        Spi::run("INSERT INTO t VALUES (1, 'a')").unwrap();
        crate::txstate::pretend_event_count(i64::from(i32::MAX) - 1);
        // The 2^31 - 1st event is still recorded, at that tx_seq.
        Spi::run("INSERT INTO t VALUES (2, 'b')").unwrap();
        let last = Spi::get_one::<i64>("SELECT max(tx_seq) FROM tests.pending()")
            .unwrap()
            .unwrap();
        assert_eq!(last, i64::from(i32::MAX));
        Spi::run("INSERT INTO t VALUES (3, 'c')").unwrap();
    }
}

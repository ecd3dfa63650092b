//! Sizes and costs of the two event encodings for the bench's events:
//! `cargo run --release -p audit_log_core --example packed_size`.
use std::time::Instant;

use audit_log_core::encoding::{encode_event, packed};
use audit_log_core::hash::{event_hash_from_encoding, event_hash_v2};
use audit_log_core::model::{Event, Json};
use audit_log_core::ZERO_HASH;

fn event(op: &str, old: Option<&str>, new: Option<&str>) -> Event {
    let json = |s: &str| Json::from(serde_json::from_str::<serde_json::Value>(s).unwrap());
    Event {
        id: 5_123_456,
        tx_id: 4_000_123,
        tx_seq: 1,
        tx_first: 5_123_456,
        recorded_at: 1_796_000_000_123_456,
        statement_at: 1_796_000_000_123_001,
        session_user_name: "postgres".into(),
        current_user_name: "postgres".into(),
        application_name: Some("pgbench".into()),
        client_addr: None,
        context: None,
        table_schema: "public".into(),
        table_name: "bench_t".into(),
        op: op.into(),
        old_row: old.map(json),
        new_row: new.map(json),
        prev_hash: ZERO_HASH,
        hash: ZERO_HASH,
    }
}

fn main() {
    let row = r#"{"id": 5000123, "a": 1, "b": "new customer", "c": 99.95, "d": "2026-11-30T16:40:01.123456+00:00"}"#;
    let row2 = r#"{"id": 5000123, "a": 2, "b": "new customer", "c": 99.96, "d": "2026-11-30T16:40:01.123456+00:00"}"#;
    for (name, e) in [
        ("insert", event("INSERT", None, Some(row))),
        ("update", event("UPDATE", Some(row), Some(row2))),
    ] {
        let mut c = Vec::new();
        encode_event(&e, &mut c);
        let mut f = Vec::new();
        packed::pack(&c, e.tx_first, &mut f).unwrap();
        let (frame, _) = packed::frame_at(&f, 0).unwrap();
        let base = packed::Base {
            first_event: e.tx_first,
            tx_id: e.tx_id,
        };
        let n = 2_000_000;
        let t = Instant::now();
        let mut h = ZERO_HASH;
        for _ in 0..n {
            h = event_hash_from_encoding(&h, std::hint::black_box(&c));
        }
        let v1 = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            h = event_hash_v2(
                &h,
                e.id,
                e.tx_id,
                e.tx_seq,
                std::hint::black_box(frame.body),
            );
        }
        let v2 = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        let mut out = Vec::with_capacity(512);
        for _ in 0..n {
            out.clear();
            packed::unpack(std::hint::black_box(&frame), base, &mut out).unwrap();
        }
        let un = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            out.clear();
            packed::pack(std::hint::black_box(&c), e.tx_first, &mut out).unwrap();
        }
        let pk = t.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{name}: v1 frame {} bytes (4 + {}), v2 frame {} bytes; hash v1 {v1:.0} ns, v2 {v2:.0} ns; unpack {un:.0} ns, pack {pk:.0} ns ({})",
            c.len() + 4,
            c.len(),
            f.len(),
            h[0]
        );
    }
}

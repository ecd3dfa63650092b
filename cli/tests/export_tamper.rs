//! Property tests of offline verification over the export format: random
//! logs, written as exports, then tampered with at random. An untouched
//! export verifies; every tampering is detected, including by an attacker
//! who rewrites the end line (counts, heads and digest) to match.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use audit_log_cli::format::{line, End, EventLine, Header, LinkLine, EXPORT_FORMAT};
use audit_log_cli::verify_file::verify_files;
use audit_log_core::model::Json;
use audit_log_core::{event_hash, link_hash, ChainHead, Checkpoint, Event, Link, ZERO_HASH};
use proptest::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A small deterministic generator, so that one u64 names a whole log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn row(r: &mut Rng) -> Value {
    json!({
        "id": r.below(1000),
        "name": format!("n{}", r.below(50)),
        "price": format!("{}.{:02}", r.below(100), r.below(100)).parse::<Value>().unwrap(),
        "flag": r.below(2) == 0,
        "note": if r.below(3) == 0 { Value::Null } else { json!(["a", r.below(9)]) },
    })
}

/// A consistent log: transactions of 1-4 events, linked into 1-3 chains in
/// commit order.
fn log(seed: u64) -> (Vec<Event>, Vec<Link>) {
    let mut r = Rng(seed);
    let chains = 1 + r.below(3) as i32;
    let n_tx = 1 + r.below(10);
    let mut events = Vec::new();
    let mut links: Vec<Link> = Vec::new();
    let mut id = 0i64;
    let mut heads = vec![(0i64, ZERO_HASH); chains as usize];
    for t in 0..n_tx {
        let tx_id = 700 + t * 3 + r.below(3);
        let mut prev = ZERO_HASH;
        let n = 1 + r.below(4) as i64;
        let first = id + 1;
        for seq in 1..=n {
            id += 1 + r.below(2) as i64; // ids can have gaps
            let op = ["INSERT", "UPDATE", "DELETE"][r.below(3) as usize];
            let mut e = Event {
                id,
                tx_id,
                tx_seq: seq,
                recorded_at: 1_700_000_000_000_000 + id * 17,
                statement_at: 1_700_000_000_000_000 + id * 13,
                session_user_name: "app".into(),
                current_user_name: if r.below(2) == 0 { "app".into() } else { "owner".into() },
                application_name: (r.below(2) == 0).then(|| "svc".to_string()),
                client_addr: (r.below(2) == 0).then(|| "10.0.0.7".to_string()),
                context: (r.below(4) == 0).then(|| Json::Value(json!({"user": "alice"}))),
                table_schema: "public".into(),
                table_name: "t".into(),
                op: op.into(),
                old_row: (op != "INSERT").then(|| Json::Value(row(&mut r))),
                new_row: (op != "DELETE").then(|| Json::Value(row(&mut r))),
                prev_hash: prev,
                hash: ZERO_HASH,
            };
            e.hash = event_hash(&e);
            prev = e.hash;
            events.push(e);
        }
        let c = r.below(chains as u64) as i32;
        let (seq, h) = heads[c as usize];
        let mut l = Link {
            chain_id: c,
            seq: seq + 1,
            tx_id,
            event_count: n,
            first_event: first.max(id - 3 * n),
            last_event: id,
            last_event_hash: prev,
            committed_at: 1_700_000_000_500_000 + t as i64,
            prev_link_hash: h,
            link_hash: ZERO_HASH,
        };
        l.first_event = events[events.len() - n as usize].id;
        l.link_hash = link_hash(&l);
        heads[c as usize] = (l.seq, l.link_hash);
        links.push(l);
    }
    events.sort_by_key(|e| (e.tx_id, e.tx_seq, e.id));
    links.sort_by_key(|l| (l.chain_id, l.seq));
    (events, links)
}

fn rows_of(e: &Event) -> [Option<Value>; 3] {
    let v = |j: &Option<Json>| match j {
        Some(Json::Value(v)) => Some(v.clone()),
        _ => None,
    };
    [v(&e.context), v(&e.old_row), v(&e.new_row)]
}

/// The body lines (events, then links) of an export.
fn body(events: &[Event], links: &[Link]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = events
        .iter()
        .map(|e| line(&EventLine::from_event(e, rows_of(e))).unwrap())
        .collect();
    out.extend(links.iter().map(|l| line(&LinkLine::from_link(l)).unwrap()));
    out
}

fn header() -> Vec<u8> {
    line(&Header {
        kind: "header".into(),
        format: EXPORT_FORMAT.into(),
        database: Some("db".into()),
        system_identifier: Some("1".into()),
        exported_at: "2026-11-22T00:00:00.000000Z".into(),
        snapshot: "1:1:".into(),
        anchors: vec![],
        continues: false,
    })
    .unwrap()
}

/// An end line that matches `lines` (header and body): what an attacker who
/// edits the body would write.
fn end_for(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut digest = Sha256::new();
    let (mut events, mut links) = (0, 0);
    let mut heads: std::collections::BTreeMap<i32, ChainHead> = Default::default();
    for l in lines {
        digest.update(l);
        if l.starts_with(br#"{"type":"event""#) {
            events += 1;
        } else if l.starts_with(br#"{"type":"link""#) {
            links += 1;
            if let Ok(k) = LinkLine::parse(l.strip_suffix(b"\n").unwrap_or(l)) {
                heads.insert(k.chain_id, ChainHead::from(&k));
            }
        }
    }
    line(&End {
        kind: "end".into(),
        events,
        links,
        heads: heads.into_values().collect(),
        sha256: hex::encode(digest.finalize()),
    })
    .unwrap()
}

static FILES: AtomicUsize = AtomicUsize::new(0);

fn write(lines: &[Vec<u8>]) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "audit_log_cli_test_{}_{}.jsonl",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, lines.concat()).unwrap();
    p
}

/// (intact?, first bad event) of a verification of `lines`.
fn verify(lines: &[Vec<u8>], cp: Option<&Checkpoint>) -> bool {
    let p = write(lines);
    let r = verify_files(std::slice::from_ref(&p), cp, 2);
    let _ = std::fs::remove_file(&p);
    // A file refused outright (not an export at all) counts as detected.
    r.map(|r| r.ok()).unwrap_or(false)
}

fn export(events: &[Event], links: &[Link]) -> Vec<Vec<u8>> {
    let mut lines = vec![header()];
    lines.extend(body(events, links));
    let end = end_for(&lines);
    lines.push(end);
    lines
}

/// Change one field of a record to a different value of the same shape.
fn edit_field(record: &[u8], pick: u64) -> Vec<u8> {
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_slice(record.strip_suffix(b"\n").unwrap_or(record)).unwrap();
    let keys: Vec<String> = v.keys().filter(|k| *k != "type").cloned().collect();
    let key = &keys[pick as usize % keys.len()];
    let old = v[key].clone();
    let new = match &old {
        Value::Null => json!("x"),
        Value::Bool(b) => json!(!b),
        Value::Number(n) => {
            let text = n.to_string();
            let bumped = match text.parse::<i64>() {
                Ok(i) => (i + 1).to_string(),
                Err(_) => format!("{text}1"),
            };
            bumped.parse::<Value>().unwrap()
        }
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            // Another hash: change one digit's value, not just its case.
            let mut b = s.clone().into_bytes();
            b[0] = if b[0] == b'0' { b'1' } else { b'0' };
            json!(String::from_utf8(b).unwrap())
        }
        Value::String(s) if s.ends_with('Z') && s.len() == 27 => {
            let mut b = s.clone().into_bytes();
            b[25] = if b[25] == b'0' { b'1' } else { b'0' };
            json!(String::from_utf8(b).unwrap())
        }
        Value::String(s) => json!(format!("{s}x")),
        Value::Array(_) | Value::Object(_) => json!({"changed": true}),
    };
    assert_ne!(old, new);
    v.insert(key.clone(), new);
    // Keep "type" first, as the exporter writes it.
    let kind = v.remove("type").unwrap();
    let mut out = format!("{{\"type\":{kind},").into_bytes();
    let rest = serde_json::to_vec(&v).unwrap();
    out.extend_from_slice(&rest[1..]);
    out.push(b'\n');
    out
}

#[test]
fn untouched_exports_verify() {
    for seed in 0..200 {
        let (events, links) = log(seed);
        assert!(verify(&export(&events, &links), None), "seed {seed}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any one byte changed anywhere, the end line left as it was.
    #[test]
    fn any_byte_edit_is_detected(seed in any::<u64>(), at in any::<u64>(), bit in 0u8..8) {
        let (events, links) = log(seed);
        let lines = export(&events, &links);
        let mut bytes = lines.concat();
        let i = (at % bytes.len() as u64) as usize;
        bytes[i] ^= 1 << bit;
        prop_assert!(!verify(&[bytes], None));
    }

    /// A field edited, a line deleted, or two lines swapped, by an attacker
    /// who then rewrites the end line to match: the hashes still tell.
    #[test]
    fn semantic_tampering_is_detected(seed in any::<u64>(), kind in 0u8..3, a in any::<u64>(), b in any::<u64>()) {
        let (events, links) = log(seed);
        let mut lines = vec![header()];
        lines.extend(body(&events, &links));
        let n = lines.len() - 1; // body lines are 1..=n
        let i = 1 + (a % n as u64) as usize;
        match kind {
            0 => lines[i] = edit_field(&lines[i], b),
            1 => { lines.remove(i); }
            _ => {
                let j = 1 + (b % n as u64) as usize;
                prop_assume!(i != j);
                lines.swap(i, j);
            }
        }
        let end = end_for(&lines);
        lines.push(end);
        prop_assert!(!verify(&lines, None));
    }

    /// Whole transactions cut off the end, end line rewritten: only a
    /// checkpoint taken before can tell, and it does.
    #[test]
    fn a_dropped_tail_is_detected_against_a_checkpoint(seed in any::<u64>(), cut in 1usize..4) {
        let (events, links) = log(seed);
        let cp = Checkpoint {
            format: "audit_log.checkpoint.v1".into(),
            database: None,
            system_identifier: None,
            taken_at: None,
            chains: {
                let mut h: std::collections::BTreeMap<i32, ChainHead> = Default::default();
                for l in &links {
                    h.insert(l.chain_id, ChainHead::from(l));
                }
                h.into_values().collect()
            },
        };
        // The transactions that committed last, by commit time.
        let mut by_commit: Vec<&Link> = links.iter().collect();
        by_commit.sort_by_key(|l| l.committed_at);
        let cut = cut.min(by_commit.len());
        let gone: Vec<u64> = by_commit[by_commit.len() - cut..].iter().map(|l| l.tx_id).collect();
        let kept_events: Vec<Event> = events.iter().filter(|e| !gone.contains(&e.tx_id)).cloned().collect();
        let kept_links: Vec<Link> = links.iter().filter(|l| !gone.contains(&l.tx_id)).cloned().collect();
        let lines = export(&kept_events, &kept_links);
        prop_assert!(verify(&lines, None), "a consistent prefix verifies on its own");
        prop_assert!(!verify(&lines, Some(&cp)));
    }
}

//! Property tests of offline verification over the export format: random
//! logs, written as exports, then tampered with at random. An untouched
//! export verifies; every tampering is detected, including by an attacker
//! who rewrites the end line (counts, heads and digest) to match. Then the
//! cases that need a log of their own: rows nested 100,000 deep, and
//! transactions that share a tx_id (as after a restore into a new cluster).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use audit_log_cli::format::{
    line, End, EventLine, Header, LinkLine, RecordLine, EXPORT_FORMAT, RECORDS_FORMAT,
};
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
/// commit order. Some reuse an earlier transaction's tx_id, as transactions
/// do after a restore into a new cluster.
fn log(seed: u64) -> (Vec<Event>, Vec<Link>) {
    let mut r = Rng(seed);
    let chains = 1 + r.below(3) as i32;
    let n_tx = 1 + r.below(10);
    let mut events = Vec::new();
    let mut links: Vec<Link> = Vec::new();
    let mut id = 0i64;
    let mut heads = vec![(0i64, ZERO_HASH); chains as usize];
    for t in 0..n_tx {
        let tx_id = match links.get(r.below(3 * t.max(1)) as usize) {
            Some(earlier) => earlier.tx_id,
            None => 700 + t * 3 + r.below(3),
        };
        let mut prev = ZERO_HASH;
        let n = 1 + r.below(4) as i64;
        let first = id + 1 + r.below(2) as i64; // ids can have gaps
        for seq in 1..=n {
            id = if seq == 1 {
                first
            } else {
                id + 1 + r.below(2) as i64
            };
            let op = ["INSERT", "UPDATE", "DELETE"][r.below(3) as usize];
            let mut e = Event {
                id,
                tx_id,
                tx_seq: seq,
                tx_first: first,
                recorded_at: 1_700_000_000_000_000 + id * 17,
                statement_at: 1_700_000_000_000_000 + id * 13,
                session_user_name: "app".into(),
                current_user_name: if r.below(2) == 0 {
                    "app".into()
                } else {
                    "owner".into()
                },
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
            first_event: first,
            last_event: id,
            last_event_hash: prev,
            committed_at: 1_700_000_000_500_000 + t as i64,
            prev_link_hash: h,
            link_hash: ZERO_HASH,
        };
        l.link_hash = link_hash(&l);
        heads[c as usize] = (l.seq, l.link_hash);
        links.push(l);
    }
    events.sort_by_key(|e| (e.tx_first, e.tx_seq, e.id));
    links.sort_by_key(|l| (l.chain_id, l.seq));
    (events, links)
}

/// The body lines (events, then links) of an export.
fn body(events: &[Event], links: &[Link]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = events
        .iter()
        .map(|e| line(&EventLine::from_event(e).unwrap()).unwrap())
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

/// A checkpoint of a log whose links these are: each chain's last link.
/// `log(seed)` without the `cut` transactions that committed last, and a
/// checkpoint of the whole log, taken before they were cut.
fn without_last(seed: u64, cut: usize) -> (Vec<Event>, Vec<Link>, Checkpoint) {
    let (events, links) = log(seed);
    let cp = checkpoint_of(&links);
    let mut by_commit: Vec<&Link> = links.iter().collect();
    by_commit.sort_by_key(|l| l.committed_at);
    let cut = cut.min(by_commit.len());
    let gone: Vec<i64> = by_commit[by_commit.len() - cut..]
        .iter()
        .map(|l| l.first_event)
        .collect();
    let events = events
        .into_iter()
        .filter(|e| !gone.contains(&e.tx_first))
        .collect();
    let links = links
        .into_iter()
        .filter(|l| !gone.contains(&l.first_event))
        .collect();
    (events, links, cp)
}

fn checkpoint_of(links: &[Link]) -> Checkpoint {
    let mut heads: std::collections::BTreeMap<i32, ChainHead> = Default::default();
    for l in links {
        if heads.get(&l.chain_id).is_none_or(|h| h.seq < l.seq) {
            heads.insert(l.chain_id, ChainHead::from(l));
        }
    }
    Checkpoint {
        format: "audit_log.checkpoint.v1".into(),
        database: None,
        system_identifier: None,
        taken_at: None,
        trees: vec![],
        chains: heads.into_values().collect(),
    }
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
        let (events, links, cp) = without_last(seed, cut);
        let lines = export(&events, &links);
        prop_assert!(verify(&lines, None), "a consistent prefix verifies on its own");
        prop_assert!(!verify(&lines, Some(&cp)));
    }
}

fn report(lines: &[Vec<u8>]) -> audit_log_cli::verify_file::Report {
    let p = write(lines);
    let r = verify_files(std::slice::from_ref(&p), None, 2).unwrap();
    let _ = std::fs::remove_file(&p);
    r
}

/// The log of `log(seed)` with one more transaction, on chain 0, of events
/// with these new_row values; and the id of its first event.
fn with_transaction(seed: u64, tx_id: u64, rows: Vec<Json>) -> (Vec<Event>, Vec<Link>, i64) {
    let (mut events, mut links) = log(seed);
    let first = events.iter().map(|e| e.id).max().unwrap_or(0) + 10;
    let mut prev = ZERO_HASH;
    for (i, row) in rows.into_iter().enumerate() {
        let mut e = events[0].clone();
        e.id = first + i as i64;
        e.tx_id = tx_id;
        e.tx_seq = i as i64 + 1;
        e.tx_first = first;
        e.op = "INSERT".into();
        e.old_row = None;
        e.new_row = Some(row);
        e.prev_hash = prev;
        e.hash = event_hash(&e);
        prev = e.hash;
        events.push(e);
    }
    let head = links
        .iter()
        .filter(|l| l.chain_id == 0)
        .max_by_key(|l| l.seq);
    let mut l = Link {
        chain_id: 0,
        seq: head.map_or(1, |h| h.seq + 1),
        tx_id,
        event_count: events.iter().filter(|e| e.tx_first == first).count() as i64,
        first_event: first,
        last_event: events.last().unwrap().id,
        last_event_hash: prev,
        committed_at: 1_700_000_000_900_000,
        prev_link_hash: head.map_or(ZERO_HASH, |h| h.link_hash),
        link_hash: ZERO_HASH,
    };
    l.link_hash = link_hash(&l);
    links.push(l);
    events.sort_by_key(|e| (e.tx_first, e.tx_seq, e.id));
    links.sort_by_key(|l| (l.chain_id, l.seq));
    (events, links, first)
}

const DEEP: usize = 100_000;

/// `[[[…[1]…]]]`, DEEP arrays around a number, as compact text and in the
/// canonical encoding, both written down from docs/FORMAT.md.
fn deep_row() -> (String, Vec<u8>) {
    let text = format!("{}1{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let mut enc = Vec::with_capacity(5 * DEEP + 6);
    for _ in 0..DEEP {
        enc.extend_from_slice(&[0x05, 0, 0, 0, 1]);
    }
    enc.extend_from_slice(&[0x03, 0, 0, 0, 1, b'1']);
    (text, enc)
}

#[test]
fn rows_nested_100000_deep_verify_offline() {
    let (text, enc) = deep_row();
    let (events, links, first) = with_transaction(
        7,
        9_000,
        vec![Json::Encoded(enc), Json::Value(json!({"n": 1}))],
    );
    let lines = export(&events, &links);
    let deep_line = lines
        .iter()
        .position(|l| l.windows(text.len()).any(|w| w == text.as_bytes()))
        .unwrap();
    assert!(
        lines[deep_line].starts_with(format!("{{\"type\":\"event\",\"id\":{first},").as_bytes())
    );
    let r = report(&lines);
    assert!(r.ok(), "{:?} {:?}", r.verdict.problems, r.file_problems);
    assert_eq!(r.verdict.events_checked as usize, events.len());

    // One byte of the deep row changed: 1 becomes 2, still valid JSON.
    let mut body = lines[..lines.len() - 1].to_vec();
    let at = body[deep_line]
        .windows(3)
        .position(|w| w == b"[1]")
        .unwrap()
        + 1;
    body[deep_line][at] = b'2';
    let mut kept_end = body.clone();
    kept_end.push(lines.last().unwrap().clone());
    assert!(!report(&kept_end).ok(), "the digest catches it");
    let end = end_for(&body);
    body.push(end);
    let r = report(&body);
    assert!(!r.ok());
    assert!(r.file_problems.is_empty(), "{:?}", r.file_problems);
    assert_eq!(r.first_bad_event(), Some(first));
    assert_eq!(
        r.verdict.first().unwrap().kind,
        audit_log_core::ProblemKind::ContentChanged
    );

    // A bracket changed: no longer JSON, a damaged line.
    let mut body = lines[..lines.len() - 1].to_vec();
    let at = body[deep_line].windows(2).position(|w| w == b"[[").unwrap() + 1;
    body[deep_line][at] = b'{';
    let end = end_for(&body);
    body.push(end);
    let r = report(&body);
    assert!(!r.ok());
    assert!(
        r.file_problems.iter().any(|p| p.contains("damaged event")),
        "{:?}",
        r.file_problems
    );
}

#[test]
fn transactions_sharing_a_tx_id_verify() {
    for seed in 0..50 {
        let reused = log(seed).1[0].tx_id;
        let (events, links, first) =
            with_transaction(seed, reused, vec![Json::Value(json!({"restored": true}))]);
        let r = report(&export(&events, &links));
        assert!(
            r.ok(),
            "seed {seed}: {:?} {:?}",
            r.verdict.problems,
            r.file_problems
        );
        assert!(links.iter().filter(|l| l.tx_id == reused).count() >= 2);
        assert!(events
            .iter()
            .any(|e| e.tx_first == first && e.tx_id == reused));
    }
}

/// The export of `events` after `edit`, in (tx_first, tx_seq) order as an
/// exporter would write it, with an end line to match.
fn edited(events: &[Event], links: &[Link], edit: impl Fn(&mut Event)) -> Vec<Vec<u8>> {
    let mut events = events.to_vec();
    events.iter_mut().for_each(edit);
    events.sort_by_key(|e| (e.tx_first, e.tx_seq, e.id));
    export(&events, links)
}

#[test]
fn tx_first_tampering_is_detected() {
    for seed in 0..50 {
        // Two transactions with one tx_id, the second of two events.
        let reused = log(seed).1[0].tx_id;
        let rows = vec![Json::Value(json!({"a": 1})), Json::Value(json!({"a": 2}))];
        let (events, links, first) = with_transaction(seed, reused, rows);
        let other = links
            .iter()
            .find(|l| l.tx_id == reused && l.first_event != first)
            .unwrap()
            .first_event;

        // The last event moved to the other transaction of its tx_id.
        let last = first + 1;
        let moved = edited(&events, &links, |e| {
            if e.id == last {
                e.tx_first = other;
            }
        });
        assert!(
            !verify(&moved, None),
            "seed {seed}: an event moved to another transaction"
        );

        // Every event of the transaction given another key.
        let rekeyed = edited(&events, &links, |e| {
            if e.tx_first == first {
                e.tx_first = first + 1;
            }
        });
        assert!(
            !verify(&rekeyed, None),
            "seed {seed}: a transaction with another key"
        );

        // One event of another tx_id moved into the transaction.
        if let Some(foreign) = events.iter().find(|e| e.tx_id != reused).map(|e| e.id) {
            let joined = edited(&events, &links, |e| {
                if e.id == foreign {
                    e.tx_first = first;
                    e.tx_seq = 3;
                }
            });
            assert!(
                !verify(&joined, None),
                "seed {seed}: an event of another tx_id joined"
            );
        }

        // The untouched export verifies.
        assert!(
            verify(&edited(&events, &links, |_| {}), None),
            "seed {seed}"
        );
    }
}

// Records exports (audit_log.export.v2): the same logs, written as the
// server stores them, one record line per transaction.

/// The record lines of a log: each link's transaction, its events packed
/// into one payload; with `split`, the first event of each transaction of
/// two or more goes to a segment, as a large transaction spills.
fn record_lines(events: &[Event], links: &[Link], split: bool) -> Vec<Vec<u8>> {
    use audit_log_core::record::{put_event, Record};
    links
        .iter()
        .map(|l| {
            let mut parts: Vec<Vec<u8>> = Vec::new();
            let mut payload = Vec::new();
            for (i, e) in events
                .iter()
                .filter(|e| e.tx_first == l.first_event)
                .enumerate()
            {
                let mut canonical = Vec::new();
                audit_log_core::encoding::encode_event(e, &mut canonical);
                if split && i == 0 && l.event_count > 1 {
                    let mut seg = Vec::new();
                    put_event(&mut seg, &canonical);
                    parts.push(seg);
                } else {
                    put_event(&mut payload, &canonical);
                }
            }
            let r = Record {
                chain_id: l.chain_id,
                seq: l.seq,
                tx_id: l.tx_id,
                first_event: l.first_event,
                last_event: l.last_event,
                event_count: l.event_count,
                committed_at: l.committed_at,
                link_hash: l.link_hash,
            };
            line(&RecordLine::from_record(&r, &parts, &payload)).unwrap()
        })
        .collect()
}

fn records_header() -> Vec<u8> {
    let mut h: Header = serde_json::from_slice(&header()).unwrap();
    h.format = RECORDS_FORMAT.into();
    line(&h).unwrap()
}

/// An end line that matches a records export's header and record lines.
fn records_end_for(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut digest = Sha256::new();
    let (mut events, mut links) = (0, 0);
    // Each chain's last record, or its anchor.
    let mut heads: std::collections::BTreeMap<i32, ChainHead> = lines
        .first()
        .and_then(|h| serde_json::from_slice::<Header>(h).ok())
        .map(|h| h.anchors.into_iter().map(|a| (a.chain, a)).collect())
        .unwrap_or_default();
    for l in lines {
        digest.update(l);
        if let Ok(r) = RecordLine::parse(l.strip_suffix(b"\n").unwrap_or(l)) {
            events += r.record.event_count as u64;
            links += 1;
            heads.insert(r.record.chain_id, ChainHead::from(&r.record));
        } else if l.starts_with(br#"{"type":"record""#) {
            links += 1;
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

fn records_export(events: &[Event], links: &[Link], split: bool) -> Vec<Vec<u8>> {
    let mut lines = vec![records_header()];
    lines.extend(record_lines(events, links, split));
    let end = records_end_for(&lines);
    lines.push(end);
    lines
}

/// `r` is intact, with the counts of `other`, a verification of the same
/// log in another form.
fn assert_intact_as(
    r: &audit_log_cli::verify_file::Report,
    other: &audit_log_cli::verify_file::Report,
    seed: u64,
) {
    assert!(
        r.ok(),
        "seed {seed}: {:?} {:?}",
        r.verdict.problems,
        r.file_problems
    );
    assert_eq!(r.events, other.events, "seed {seed}");
    assert_eq!(r.links, other.links, "seed {seed}");
    assert_eq!(r.verdict.events_checked, other.verdict.events_checked);
    assert_eq!(r.verdict.links_checked, other.verdict.links_checked);
}

#[test]
fn untouched_records_exports_verify_as_the_logical_ones_do() {
    for seed in 0..200 {
        let (events, links) = log(seed);
        let logical = report(&export(&events, &links));
        for split in [false, true] {
            let r = report(&records_export(&events, &links, split));
            assert_intact_as(&r, &logical, seed);
        }
    }
}

/// A records export's header and record lines (no end line) of
/// `log(seed)`, tampered with: a column edited (kind 0), a stored byte
/// changed (1), a record deleted (2) or two swapped (3), at places picked
/// by `a` and `b`. None where the tampering would not be one: a chain's
/// last record deleted leaves a consistent shorter log, which only a
/// checkpoint tells (tested apart), and a record swapped with itself.
fn tampered_records(seed: u64, split: bool, kind: u8, a: u64, b: u64) -> Option<Vec<Vec<u8>>> {
    let (events, links) = log(seed);
    let mut lines = vec![records_header()];
    lines.extend(record_lines(&events, &links, split));
    let n = lines.len() - 1;
    let i = 1 + (a % n as u64) as usize;
    let last_of_chain = |i: usize| {
        let r = RecordLine::parse(lines[i].strip_suffix(b"\n").unwrap())
            .unwrap()
            .record;
        !links
            .iter()
            .any(|l| l.chain_id == r.chain_id && l.seq > r.seq)
    };
    match kind {
        0 => lines[i] = edit_field(&lines[i], b),
        1 => lines[i] = edit_payload(&lines[i], b, (a % 8) as u8),
        2 if last_of_chain(i) => return None,
        2 => {
            lines.remove(i);
        }
        _ => {
            let j = 1 + (b % n as u64) as usize;
            if i == j {
                return None;
            }
            lines.swap(i, j);
        }
    }
    Some(lines)
}

/// One byte of one record's stored bytes changed, validly re-encoded.
fn edit_payload(record: &[u8], at: u64, bit: u8) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_slice(record.strip_suffix(b"\n").unwrap_or(record)).unwrap();
    let mut segments: Vec<Vec<u8>> = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| b64.decode(s.as_str().unwrap()).unwrap())
        .collect();
    let mut payload = b64.decode(v["payload"].as_str().unwrap()).unwrap();
    let total = payload.len() + segments.iter().map(Vec::len).sum::<usize>();
    let mut i = (at % total as u64) as usize;
    let mut target = &mut payload;
    for s in segments.iter_mut() {
        if i < s.len() {
            target = s;
            break;
        }
        i -= s.len();
    }
    target[i] ^= 1 << bit;
    v["segments"] = json!(segments.iter().map(|s| b64.encode(s)).collect::<Vec<_>>());
    v["payload"] = json!(b64.encode(&payload));
    let kind = v.remove("type").unwrap();
    let mut out = format!("{{\"type\":{kind},").into_bytes();
    out.extend_from_slice(&serde_json::to_vec(&v).unwrap()[1..]);
    out.push(b'\n');
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any one byte changed anywhere, the end line left as it was.
    #[test]
    fn any_byte_edit_of_a_records_export_is_detected(seed in any::<u64>(), split in any::<bool>(), at in any::<u64>(), bit in 0u8..8) {
        let (events, links) = log(seed);
        let mut bytes = records_export(&events, &links, split).concat();
        let i = (at % bytes.len() as u64) as usize;
        bytes[i] ^= 1 << bit;
        prop_assert!(!verify(&[bytes], None));
    }

    /// A column edited, a stored byte changed (valid base64), a record
    /// deleted, or two swapped, the end line rewritten to match.
    #[test]
    fn records_export_tampering_is_detected(seed in any::<u64>(), split in any::<bool>(), kind in 0u8..4, a in any::<u64>(), b in any::<u64>()) {
        let lines = tampered_records(seed, split, kind, a, b);
        prop_assume!(lines.is_some());
        let mut lines = lines.unwrap_or_default();
        let end = records_end_for(&lines);
        lines.push(end);
        prop_assert!(!verify(&lines, None));
    }

    /// Records cut off the end of their chains, end line rewritten: a
    /// checkpoint taken before tells.
    #[test]
    fn a_dropped_tail_of_records_is_detected_against_a_checkpoint(seed in any::<u64>(), cut in 1usize..4) {
        let (events, kept, cp) = without_last(seed, cut);
        let lines = records_export(&events, &kept, false);
        prop_assert!(verify(&lines, None), "a consistent prefix verifies on its own");
        prop_assert!(!verify(&lines, Some(&cp)));
    }
}

/// The record line of the transaction whose first event is `first`: its
/// place in `lines`, and the record it holds.
fn record_line_of(lines: &[Vec<u8>], first: i64) -> (usize, audit_log_cli::format::StoredRecord) {
    let parse = |l: &[u8]| RecordLine::parse(l.strip_suffix(b"\n").unwrap_or(l));
    let at = lines
        .iter()
        .position(|l| parse(l).is_ok_and(|r| r.record.first_event == first))
        .unwrap();
    (at, parse(&lines[at]).unwrap())
}

#[test]
fn rows_nested_100000_deep_verify_in_a_records_export() {
    let (_, enc) = deep_row();
    let (events, links, first) = with_transaction(
        7,
        9_000,
        vec![Json::Encoded(enc), Json::Value(json!({"n": 1}))],
    );
    let lines = records_export(&events, &links, true);
    let r = report(&lines);
    assert!(r.ok(), "{:?} {:?}", r.verdict.problems, r.file_problems);
    assert_eq!(r.verdict.events_checked as usize, events.len());
    // The deep row's innermost number changed, in its stored bytes.
    let (at, rec) = record_line_of(&lines, first);
    let mut body = lines[..lines.len() - 1].to_vec();
    let seg = &rec.segments[0];
    let one = seg
        .windows(6)
        .rposition(|w| w == [0x03, 0, 0, 0, 1, b'1'])
        .unwrap()
        + 5;
    body[at] = edit_payload(&body[at], one as u64, 0);
    let end = records_end_for(&body);
    body.push(end);
    let r = report(&body);
    assert!(!r.ok());
    assert!(r.file_problems.is_empty(), "{:?}", r.file_problems);
    assert_eq!(r.first_bad_event(), Some(first));
}

/// A damaged end line before the real one, in either kind of export: it is
/// reported, it is not under the digest (no end line is), and the lines
/// around it are, in both the logical reader and the records reader.
#[test]
fn a_damaged_end_line_is_reported_alike_in_both_kinds_of_export() {
    let (events, links) = log(7);
    let damaged = br#"{"type":"end" this is not JSON"#.to_vec();
    let logical = export(&events, &links);
    let records = records_export(&events, &links, true);
    for (kind, mut lines) in [("logical", logical), ("records", records)] {
        // The end line as exported covers every line before it; the damaged
        // line goes in the middle (and at the start of the body).
        for at in [1, lines.len() / 2] {
            let mut l = lines.clone();
            l.insert(at, [damaged.as_slice(), b"\n"].concat());
            let r = report(&l);
            let damaged_reported = r
                .file_problems
                .iter()
                .any(|p| p.contains("damaged end line"));
            let digest_reported = r
                .file_problems
                .iter()
                .any(|p| p.contains("content hashes to"));
            assert!(damaged_reported, "{kind}, at {at}: {:?}", r.file_problems);
            assert!(!digest_reported, "{kind}, at {at}: {:?}", r.file_problems);
        }
        // And with its bytes changed, the digest says so.
        let n = lines.len();
        lines[n / 2][2] ^= 1;
        let r = report(&lines);
        assert!(!r.ok(), "{kind}");
    }
}

// The binary records export (audit_log.export.v3): the records of a
// records export in frames, its larger payloads compressed.

/// A records export's header and record lines (no end line) as a binary
/// export, with an end line that matches it.
fn binary_from_records(lines: &[Vec<u8>]) -> Vec<u8> {
    use audit_log_cli::binary::{write_record, BINARY_FORMAT, END_OF_FRAMES};
    let mut h: Header = serde_json::from_slice(&lines[0]).unwrap();
    h.format = BINARY_FORMAT.into();
    let mut out = line(&h).unwrap();
    let (mut events, mut links) = (0u64, 0u64);
    let mut heads: std::collections::BTreeMap<i32, ChainHead> =
        h.anchors.iter().map(|a| (a.chain, a.clone())).collect();
    for l in &lines[1..] {
        let r = RecordLine::parse(l.strip_suffix(b"\n").unwrap()).unwrap();
        write_record(&mut out, &r.record, &r.segments, &r.payload).unwrap();
        events += r.record.event_count as u64;
        links += 1;
        heads.insert(r.record.chain_id, ChainHead::from(&r.record));
    }
    out.push(END_OF_FRAMES);
    let end = line(&End {
        kind: "end".into(),
        events,
        links,
        heads: heads.into_values().collect(),
        sha256: hex::encode(Sha256::digest(&out)),
    })
    .unwrap();
    out.extend_from_slice(&end);
    out
}

fn binary_export(events: &[Event], links: &[Link], split: bool) -> Vec<u8> {
    let mut lines = vec![records_header()];
    lines.extend(record_lines(events, links, split));
    binary_from_records(&lines)
}

#[test]
fn untouched_binary_exports_verify_as_the_records_exports_do() {
    for seed in 0..200 {
        let (events, links) = log(seed);
        for split in [false, true] {
            let records = report(&records_export(&events, &links, split));
            let r = report(&[binary_export(&events, &links, split)]);
            assert_intact_as(&r, &records, seed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any one byte changed anywhere (lengths, methods, compressed blocks,
    /// the end line), or the file cut anywhere: detected, never a panic.
    #[test]
    fn any_byte_edit_or_cut_of_a_binary_export_is_detected(seed in any::<u64>(), split in any::<bool>(), at in any::<u64>(), bit in 0u8..8) {
        let (events, links) = log(seed);
        let bytes = binary_export(&events, &links, split);
        let i = (at % bytes.len() as u64) as usize;
        let mut edited = bytes.clone();
        edited[i] ^= 1 << bit;
        prop_assert!(!verify(&[edited], None));
        prop_assert!(!verify(&[bytes[..i].to_vec()], None));
    }

    /// The records export's tamperings (a column, a stored byte, a record
    /// deleted, two swapped), written as a binary export whose end line
    /// matches.
    #[test]
    fn binary_export_tampering_is_detected(seed in any::<u64>(), split in any::<bool>(), kind in 0u8..4, a in any::<u64>(), b in any::<u64>()) {
        let lines = tampered_records(seed, split, kind, a, b);
        prop_assume!(lines.is_some());
        let lines = lines.unwrap_or_default();
        // An edited column that no longer reads as a record is left to the
        // records export's tests: a binary frame has no spelling to damage.
        prop_assume!(lines[1..].iter().all(|l| RecordLine::parse(l.strip_suffix(b"\n").unwrap()).is_ok()));
        prop_assert!(!verify(&[binary_from_records(&lines)], None));
    }

    /// Records cut off the end of their chains: a checkpoint taken before tells.
    #[test]
    fn a_dropped_tail_of_a_binary_export_is_detected_against_a_checkpoint(seed in any::<u64>(), cut in 1usize..4) {
        let (events, kept, cp) = without_last(seed, cut);
        let bytes = binary_export(&events, &kept, false);
        prop_assert!(verify(std::slice::from_ref(&bytes), None), "a consistent prefix verifies on its own");
        prop_assert!(!verify(&[bytes], Some(&cp)));
    }
}

/// Rows large enough to be compressed: the export verifies, is smaller
/// than the records export, and a change inside a compressed block is
/// caught by the hashes even with the end line rewritten to match.
#[test]
fn compressed_payloads_verify_and_their_tampering_is_detected() {
    let big = |i: u64| {
        Json::Value(json!({"id": i, "note": "x".repeat(3000), "tags": vec!["audit"; 200]}))
    };
    let (events, links, first) = with_transaction(11, 9_001, (0..6).map(big).collect());
    for split in [false, true] {
        let records = records_export(&events, &links, split);
        let bytes = binary_export(&events, &links, split);
        assert!(
            bytes.len() * 4 < records.concat().len(),
            "{} vs {}",
            bytes.len(),
            records.concat().len()
        );
        let r = report(&[bytes]);
        assert!(r.ok(), "{:?} {:?}", r.verdict.problems, r.file_problems);
        assert_eq!(r.verdict.events_checked as usize, events.len());
        // The big transaction's payload edited inside, then compressed anew.
        let mut lines = records[..records.len() - 1].to_vec();
        let (at, rec) = record_line_of(&lines, first);
        let x = rec.payload.iter().position(|&c| c == b'x').unwrap()
            + rec.segments.iter().map(Vec::len).sum::<usize>();
        lines[at] = edit_payload(&lines[at], x as u64, 1);
        let r = report(&[binary_from_records(&lines)]);
        assert!(!r.ok());
        assert!(r.file_problems.is_empty(), "{:?}", r.file_problems);
        assert!(
            r.first_bad_event().is_some_and(|e| e >= first),
            "{:?}",
            r.verdict.problems
        );
    }
}

/// A binary export read against a checkpoint as the first of two files
/// (its heads found by a pass of its own), and continued by a records
/// export and by another binary one.
#[test]
fn binary_exports_continue_and_are_continued_by_either_form() {
    let (events, links) = log(3);
    let cp = checkpoint_of(&links);
    // The first half of each chain in the first file, the rest after it.
    let half: Vec<Link> = links
        .iter()
        .filter(|l| {
            l.seq <= 1 + links.iter().filter(|k| k.chain_id == l.chain_id).count() as i64 / 2
        })
        .cloned()
        .collect();
    let rest: Vec<Link> = links
        .iter()
        .filter(|l| !half.contains(l))
        .cloned()
        .collect();
    let first = binary_export(&events, &half, true);
    let heads: Vec<ChainHead> = {
        let mut h: std::collections::BTreeMap<i32, ChainHead> = Default::default();
        for l in &half {
            h.insert(l.chain_id, ChainHead::from(l));
        }
        h.into_values().collect()
    };
    let mut h: Header = serde_json::from_slice(&records_header()).unwrap();
    h.continues = true;
    h.anchors = heads;
    let mut lines = vec![line(&h).unwrap()];
    lines.extend(record_lines(&events, &rest, false));
    let as_binary = binary_from_records(&lines);
    let end = records_end_for(&lines);
    lines.push(end);
    for second in [lines.concat(), as_binary] {
        let files: Vec<PathBuf> = [first.clone(), second]
            .iter()
            .map(|b| write(std::slice::from_ref(b)))
            .collect();
        let r = verify_files(&files, Some(&cp), 2).unwrap();
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        assert!(r.ok(), "{:?} {:?}", r.verdict.problems, r.file_problems);
        assert_eq!(r.verdict.events_checked as usize, events.len());
    }
}

// A checkpoint's Merkle trees (format v2), recomputed offline from records
// and binary exports.

/// `checkpoint_of(links)` with each chain's tree over its first `upto`
/// records (all if None), computed from the events as the server does:
/// one leaf per record, its link hash with the root of its event hashes.
fn checkpoint_with_trees(events: &[Event], links: &[Link], upto: Option<i64>) -> Checkpoint {
    use audit_log_core::{merkle, tree, TreeHead};
    let mut cp = checkpoint_of(links);
    cp.format = "audit_log.checkpoint.v2".into();
    let mut by_chain: std::collections::BTreeMap<i32, Vec<&Link>> = Default::default();
    for l in links {
        by_chain.entry(l.chain_id).or_default().push(l);
    }
    for (chain, mut ls) in by_chain {
        ls.sort_by_key(|l| l.seq);
        let n = upto.map_or(ls.len(), |u| (u.max(0) as usize).min(ls.len()));
        let leaves: Vec<_> = ls[..n]
            .iter()
            .map(|l| {
                let mut evs: Vec<&Event> = events
                    .iter()
                    .filter(|e| e.tx_first == l.first_event)
                    .collect();
                evs.sort_by_key(|e| e.tx_seq);
                let hashes: Vec<_> = evs.iter().map(|e| event_hash(e)).collect();
                tree::record_leaf(&l.link_hash, &tree::events_root(&hashes))
            })
            .collect();
        cp.trees.push(TreeHead {
            chain,
            size: n as i64,
            root: merkle::root(&leaves),
        });
        if upto.is_some() {
            // The heads of an older checkpoint: at the tree's size.
            if let Some(h) = cp.chains.iter_mut().find(|h| h.chain == chain) {
                if n > 0 {
                    *h = ChainHead::from(ls[n - 1]);
                }
            }
        }
    }
    cp.chains
        .retain(|h| cp.trees.iter().any(|t| t.chain == h.chain && t.size > 0));
    cp.trees.retain(|t| t.size > 0);
    cp
}

fn report_against(files: &[Vec<u8>], cp: &Checkpoint) -> audit_log_cli::verify_file::Report {
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|b| write(std::slice::from_ref(b)))
        .collect();
    let r = verify_files(&paths, Some(cp), 2).unwrap();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    r
}

#[test]
fn a_checkpoints_trees_are_recomputed_from_records_and_binary_exports() {
    for seed in 0..40 {
        let (events, links) = log(seed);
        for upto in [None, Some(1), Some(2)] {
            let cp = checkpoint_with_trees(&events, &links, upto);
            let records = records_export(&events, &links, seed % 2 == 0).concat();
            let binary = binary_export(&events, &links, seed % 2 == 1);
            for file in [records, binary] {
                let r = report_against(std::slice::from_ref(&file), &cp);
                assert!(
                    r.ok(),
                    "seed {seed}: {:?} {:?}",
                    r.verdict.problems,
                    r.trees_skipped
                );
                assert_eq!(r.trees_checked, cp.trees.len(), "seed {seed}");
                // One root changed: the offline verifier says so, as
                // verify(checkpoint) does.
                let mut bad = cp.clone();
                bad.trees[seed as usize % cp.trees.len()].root[0] ^= 1;
                let r = report_against(std::slice::from_ref(&file), &bad);
                assert!(!r.ok(), "seed {seed}");
                assert!(
                    r.verdict
                        .problems
                        .iter()
                        .any(|p| p.kind == audit_log_core::ProblemKind::ChainRewritten),
                    "seed {seed}: {:?}",
                    r.verdict.problems
                );
            }
            // A logical export cannot recompute them: said, not a problem.
            let r = report_against(&[export(&events, &links).concat()], &cp);
            assert!(r.ok());
            assert_eq!(r.trees_checked, 0);
            assert!(!r.trees_skipped.is_empty());
        }
    }
}

#[test]
fn trees_are_recomputed_across_an_export_and_its_continuation() {
    let (events, links) = log(5);
    let cp = checkpoint_with_trees(&events, &links, None);
    let half: Vec<Link> = links.iter().filter(|l| l.seq <= 2).cloned().collect();
    let rest: Vec<Link> = links.iter().filter(|l| l.seq > 2).cloned().collect();
    assert!(!rest.is_empty());
    let first = binary_export(&events, &half, false);
    let mut heads: std::collections::BTreeMap<i32, ChainHead> = Default::default();
    for l in &half {
        heads.insert(l.chain_id, ChainHead::from(l));
    }
    let mut h: Header = serde_json::from_slice(&records_header()).unwrap();
    h.continues = true;
    h.anchors = heads.into_values().collect();
    let mut lines = vec![line(&h).unwrap()];
    lines.extend(record_lines(&events, &rest, true));
    let second = binary_from_records(&lines);
    let r = report_against(&[first.clone(), second.clone()], &cp);
    assert!(r.ok(), "{:?} {:?}", r.verdict.problems, r.trees_skipped);
    assert_eq!(r.trees_checked, cp.trees.len());
    let mut bad = cp.clone();
    let last = bad.trees.len() - 1;
    bad.trees[last].root[31] ^= 0x80;
    assert!(!report_against(&[first, second], &bad).ok());
}

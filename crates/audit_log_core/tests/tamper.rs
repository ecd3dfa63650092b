//! Every kind of tampering is detected, classified, and reported at the right event.
mod common;

use audit_log_core::verify::ProblemKind;
use audit_log_core::{event_hash, link_hash};
use common::Log;
use proptest::prelude::*;
use serde_json::json;

fn first(log: &Log, cp: Option<&audit_log_core::Checkpoint>) -> (ProblemKind, Option<i64>) {
    let v = log.verify(cp);
    assert!(!v.ok(), "tampering went undetected");
    let p = v.first().unwrap();
    (p.kind, p.event_id)
}

#[test]
fn intact_log_verifies() {
    let log = Log::sample(40, 3);
    let v = log.verify(None);
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.events_checked as usize, log.events.len());
    assert_eq!(v.links_checked as usize, log.links.len());
    let cp = log.checkpoint();
    assert!(log.verify(Some(&cp)).ok());
}

#[test]
fn edited_row_data() {
    let mut log = Log::sample(10, 2);
    log.events[7].new_row = Some(json!({"id": 999}).into());
    assert_eq!(first(&log, None), (ProblemKind::ContentChanged, Some(8)));
}

#[test]
fn edited_actor_time_and_table() {
    for f in 0..3 {
        let mut log = Log::sample(10, 2);
        let e = &mut log.events[4];
        match f {
            0 => e.session_user_name = "mallory".into(),
            1 => e.recorded_at += 1,
            _ => e.table_name = "other".into(),
        }
        assert_eq!(first(&log, None), (ProblemKind::ContentChanged, Some(5)));
    }
}

#[test]
fn deleted_middle_event() {
    let mut log = Log::sample(10, 2);
    // tx 3 has 4 events (ids 7..10); remove the second one
    let pos = log.events.iter().position(|e| e.id == 8).unwrap();
    log.events.remove(pos);
    assert_eq!(first(&log, None), (ProblemKind::EventMissing, Some(9)));
}

#[test]
fn deleted_last_event_of_transaction() {
    let mut log = Log::sample(10, 2);
    let pos = log.events.iter().position(|e| e.id == 10).unwrap();
    log.events.remove(pos);
    assert_eq!(first(&log, None).0, ProblemKind::EventMissing);
}

#[test]
fn forged_event_in_new_transaction() {
    let mut log = Log::sample(10, 2);
    let mut forged = log.events[0].clone();
    forged.id = 500;
    forged.tx_id = 99_999;
    forged.tx_first = 500;
    forged.hash = event_hash(&forged);
    log.events.push(forged);
    assert_eq!(first(&log, None), (ProblemKind::EventNotLinked, Some(500)));
}

#[test]
fn forged_event_appended_to_transaction() {
    let mut log = Log::sample(10, 2);
    let last = log
        .events
        .iter()
        .rfind(|e| e.tx_id == log.events[6].tx_id)
        .unwrap()
        .clone();
    let mut forged = last.clone();
    forged.id = 501;
    forged.tx_seq += 1;
    forged.prev_hash = last.hash;
    forged.hash = event_hash(&forged);
    log.events.push(forged);
    assert_eq!(first(&log, None), (ProblemKind::EventInserted, Some(501)));
}

#[test]
fn swapped_contents() {
    let mut log = Log::sample(10, 2);
    let a = log.events[7].new_row.clone();
    log.events[7].new_row = log.events[8].new_row.clone();
    log.events[8].new_row = a;
    assert_eq!(first(&log, None), (ProblemKind::ContentChanged, Some(8)));
}

#[test]
fn recomputed_hash_after_edit_names_the_edited_event() {
    let mut log = Log::sample(10, 2);
    // id 8 is in the middle of its transaction
    let e = log.events.iter_mut().find(|e| e.id == 8).unwrap();
    e.new_row = Some(json!({"id": -1}).into());
    e.hash = event_hash(e);
    assert_eq!(first(&log, None), (ProblemKind::ContentChanged, Some(8)));
    // and for the last event of a transaction, the link catches it
    let mut log = Log::sample(10, 2);
    let e = log.events.iter_mut().find(|e| e.id == 10).unwrap();
    e.new_row = Some(json!({"id": -1}).into());
    e.hash = event_hash(e);
    assert_eq!(first(&log, None), (ProblemKind::ContentChanged, Some(10)));
}

#[test]
fn deleted_whole_transaction_with_link() {
    let mut log = Log::sample(12, 2);
    let victim = log.links[4].clone();
    log.links.retain(|l| l.tx_id != victim.tx_id);
    log.events.retain(|e| e.tx_id != victim.tx_id);
    let (kind, _) = first(&log, None);
    assert_eq!(kind, ProblemKind::LinkMissing);
}

#[test]
fn edited_link() {
    // A record's hash covers its link and its events alike: a changed link
    // field reads as verify() reads a changed record, and the link is named.
    let mut log = Log::sample(12, 2);
    log.links[3].committed_at += 1;
    let v = log.verify(None);
    assert_eq!(v.first().unwrap().kind, ProblemKind::ContentChanged);
    assert!(v.problems.iter().any(
        |p| p.kind == ProblemKind::LinkChanged && p.event_id == Some(log.links[3].first_event)
    ));
    let mut log = Log::sample(12, 2);
    log.links[3].committed_at += 1;
    let l = log.links[3].clone();
    log.links[3].link_hash = link_hash(&l);
    // a link rewritten and re-hashed is named through its successor's pointer
    assert_eq!(
        first(&log, None),
        (ProblemKind::LinkChanged, Some(l.first_event))
    );
}

#[test]
fn truncated_tail_needs_checkpoint() {
    let mut log = Log::sample(12, 2);
    let cp = log.checkpoint();
    let last = log.links.pop().unwrap();
    log.events.retain(|e| e.tx_id != last.tx_id);
    assert!(
        log.verify(None).ok(),
        "a clean truncation is only visible against a checkpoint"
    );
    assert_eq!(first(&log, Some(&cp)).0, ProblemKind::Truncated);
}

#[test]
fn truncate_everything() {
    let log = Log::sample(12, 2);
    let cp = log.checkpoint();
    let empty = Log::new();
    assert!(empty.verify(None).ok());
    assert_eq!(first(&empty, Some(&cp)).0, ProblemKind::Truncated);
}

#[test]
fn recomputed_chain_detected_by_checkpoint() {
    let log = Log::sample(12, 2);
    let cp = log.checkpoint();
    // Rebuild the same history with one changed row, hashes all recomputed.
    let mut forged = Log::new();
    for (i, l) in log.links.iter().enumerate() {
        let mut rows: Vec<_> = log
            .events
            .iter()
            .filter(|e| e.tx_id == l.tx_id)
            .map(|e| match e.new_row.clone() {
                Some(audit_log_core::model::Json::Value(v)) => v,
                other => panic!("sample rows are values: {other:?}"),
            })
            .collect();
        if i == 2 {
            rows[0] = json!({"id": "forged"});
        }
        forged.commit(l.chain_id, &rows);
    }
    assert!(forged.verify(None).ok());
    assert_eq!(first(&forged, Some(&cp)).0, ProblemKind::ChainRewritten);
}

#[test]
fn extended_log_still_matches_checkpoint() {
    let mut log = Log::sample(12, 2);
    let cp = log.checkpoint();
    log.commit(0, &[json!({"later": true})]);
    log.commit(5, &[json!({"new chain": true})]);
    assert!(log.verify(Some(&cp)).ok());
}

#[test]
fn two_transactions_with_one_tx_id_verify() {
    // After pg_dump and pg_restore into a new cluster, transaction ids start
    // again from small numbers: a new transaction can have an old one's tx_id.
    let mut log = Log::sample(6, 2);
    let old_tx = log.links[1].tx_id;
    log.commit_as(0, old_tx, &[json!({"after": "restore"}), json!({"n": 2})]);
    log.commit_as(1, old_tx, &[json!({"again": true})]);
    log.commit(1, &[json!({"later": 1})]);
    assert_eq!(log.links.iter().filter(|l| l.tx_id == old_tx).count(), 3);
    let v = log.verify(None);
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.events_checked as usize, log.events.len());
    assert!(log.verify(Some(&log.checkpoint())).ok());
}

/// A log in which one tx_id names two transactions: the fourth, and one of
/// two events committed last (as after a restore into a new cluster).
fn restored_log() -> (Log, u64) {
    let mut log = Log::sample(8, 2);
    let tx = log.links[3].tx_id;
    log.commit_as(1, tx, &[json!({"x": 1}), json!({"x": 2})]);
    assert!(log.verify(None).ok());
    (log, tx)
}

#[test]
fn moving_an_event_to_another_transaction_is_detected() {
    // The last event of the later transaction, moved into the earlier one
    // with the same tx_id: its hash still verifies, tx_first is not hashed.
    let (mut log, tx) = restored_log();
    let firsts: Vec<i64> = log
        .links
        .iter()
        .filter(|l| l.tx_id == tx)
        .map(|l| l.first_event)
        .collect();
    let last = log
        .events
        .iter_mut()
        .rfind(|e| e.tx_first == firsts[1])
        .unwrap();
    last.tx_first = firsts[0];
    let moved = last.id;
    let v = log.verify(None);
    assert!(!v.ok());
    // Its own transaction lacks it; the other has one event too many.
    let kinds: Vec<_> = v.problems.iter().map(|p| (p.kind, p.event_id)).collect();
    assert!(
        kinds.contains(&(ProblemKind::EventMissing, Some(moved - 1))),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|&(k, at)| k == ProblemKind::EventInserted && at == Some(moved)),
        "{kinds:?}"
    );

    // An event moved into a transaction of another tx_id.
    let (mut log, _) = restored_log();
    let e = log.events.iter_mut().find(|e| e.id == 2).unwrap();
    let own = e.tx_first;
    e.tx_first = 4;
    assert_ne!(own, 4);
    let v = log.verify(None);
    assert!(
        v.problems
            .iter()
            .any(|p| p.kind == ProblemKind::EventInserted
                && p.event_id == Some(2)
                && p.detail.contains("tx_first 4")),
        "{:?}",
        v.problems
    );
}

#[test]
fn a_wrong_tx_first_is_detected() {
    // Every event of a transaction given another key: no link covers them,
    // and the link's own events are gone.
    let (mut log, _) = restored_log();
    let victim = log.links[2].first_event;
    for e in log.events.iter_mut().filter(|e| e.tx_first == victim) {
        e.tx_first = 900;
    }
    let v = log.verify(None);
    assert_eq!(
        first(&log, None),
        (ProblemKind::ContentChanged, Some(victim))
    );
    let kinds: Vec<_> = v.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::EventNotLinked), "{kinds:?}");
    assert!(kinds.contains(&ProblemKind::EventMissing), "{kinds:?}");

    // A key that is not its first event's id, with the link to match: the
    // key must be the id of the event at position 1.
    let (mut log, _) = restored_log();
    let l = log
        .links
        .iter()
        .find(|l| l.event_count > 1)
        .unwrap()
        .clone();
    let second = l.first_event + 1;
    for e in log
        .events
        .iter_mut()
        .filter(|e| e.tx_first == l.first_event)
    {
        e.tx_first = second;
    }
    let li = log
        .links
        .iter()
        .position(|x| x.first_event == l.first_event)
        .unwrap();
    log.links[li].first_event = second;
    let v = log.verify(None);
    assert!(
        v.problems
            .iter()
            .any(|p| p.kind == ProblemKind::ContentChanged
                && p.event_id == Some(l.first_event)
                && p.detail.contains(&format!("records tx_first {second}"))),
        "{:?}",
        v.problems
    );
}

#[test]
fn a_link_of_another_tx_id_is_detected() {
    // A link whose tx_id is not its events', re-hashed with the rest of its
    // chain: consistent in itself, but not with the events it commits to.
    let mut log = Log::sample(6, 1);
    log.links[2].tx_id += 1;
    let mut prev = log.links[1].link_hash;
    for l in &mut log.links[2..] {
        l.prev_link_hash = prev;
        l.link_hash = link_hash(l);
        prev = l.link_hash;
    }
    let at = log.links[2].first_event;
    assert_eq!(first(&log, None), (ProblemKind::LinkChanged, Some(at)));
}

/// Apply tampering number `kind` at position `at` (some draws change nothing).
fn tamper(log: &mut Log, kind: u8, at: usize) {
    let n = log.events.len();
    if n == 0 {
        return;
    }
    let i = at % n;
    match kind % 9 {
        0 => log.events[i].new_row = Some(json!({"tampered": at}).into()),
        1 => log.events[i].current_user_name.push('x'),
        2 => log.events[i].hash[at % 32] ^= 1,
        3 => log.events[i].prev_hash[at % 32] ^= 0x80,
        4 => {
            log.events.remove(i);
        }
        5 => {
            let j = (at / 7) % n;
            if i == j {
                return;
            }
            let a = log.events[i].new_row.take();
            log.events[i].new_row = log.events[j].new_row.replace(a.unwrap());
        }
        6 => {
            let li = at % log.links.len();
            log.links[li].event_count += 1;
        }
        7 => {
            // Move an event to another transaction's group.
            let j = (at / 7) % n;
            log.events[i].tx_first = log.events[j].tx_first;
        }
        _ => {
            let mut e = log.events[i].clone();
            e.id = 1_000_000 + at as i64;
            e.hash = event_hash(&e);
            log.events.push(e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_tampering_is_always_detected(
        txs in 1usize..30,
        chains in 1i32..5,
        kinds in proptest::collection::vec((0u8..9, 0usize..10_000), 1..4),
    ) {
        let mut log = Log::sample(txs, chains);
        prop_assert!(log.verify(None).ok());
        let original = log.clone();
        for (k, at) in kinds {
            tamper(&mut log, k, at);
        }
        // Two tamperings can cancel out (forge a copy, then delete it).
        prop_assume!(log.events != original.events || log.links != original.links);
        let v = log.verify(None);
        prop_assert!(!v.ok());
        prop_assert!(v.first().unwrap().event_id.is_some());
    }
}

/// An anchor is proven only by a PURGE event that records it: one put in
/// by hand (a truncated chain posing as a purged one) is named.
#[test]
fn anchors_must_be_claimed_by_a_purge() {
    use audit_log_core::verify::{check_anchors, ProblemKind, Verdict};
    use audit_log_core::ChainHead;
    let anchor = ChainHead {
        chain: 3,
        seq: 7,
        link_hash: [7; 32],
        last_event: 70,
    };
    let mut v = Verdict::default();
    check_anchors(
        &mut v,
        std::slice::from_ref(&anchor),
        std::slice::from_ref(&anchor),
    );
    assert!(v.ok(), "a claimed anchor is proven: {:?}", v.problems);

    let mut other = anchor.clone();
    other.link_hash[0] ^= 1;
    for claimed in [vec![], vec![other]] {
        let mut v = Verdict::default();
        check_anchors(&mut v, std::slice::from_ref(&anchor), &claimed);
        assert_eq!(v.problem_count, 1);
        assert_eq!(v.problems[0].kind, ProblemKind::AnchorUnproven);
    }
}

/// A log whose events are hashed as stored packed (version 2), and one
/// transaction of both versions (a library updated inside it): the
/// logical form verifies, and an edit of either version's event is caught.
fn mixed_log() -> Log {
    let mut log = Log::new();
    for t in 0..6u64 {
        let rows: Vec<_> = (0..3).map(|r| json!({"id": t * 10 + r})).collect();
        // Transactions 0-1 version 1, 2-3 version 2, 4 mixed, 5 version 1.
        log.commit_versions(t as i32 % 2, 2000 + t, &rows, |i| match t {
            2 | 3 => true,
            4 => i == 1,
            _ => false,
        });
    }
    log
}

#[test]
fn packed_and_mixed_versions_verify() {
    let log = mixed_log();
    assert_ne!(log.events[6].hash, event_hash(&log.events[6]));
    assert_eq!(log.events[6].hash, common::packed_hash(&log.events[6]));
    let v = log.verify(None);
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.events_checked as usize, log.events.len());
    let cp = log.checkpoint();
    assert!(log.verify(Some(&cp)).ok());
}

#[test]
fn edits_of_either_version_are_detected() {
    // Event 7 (version 2); 13, 14 and 15 (version 1, 2 and 1 in one
    // transaction: 15 is version 1 after version 2); 16 (version 1 in a
    // transaction after that one).
    for id in [7, 13, 14, 15, 16] {
        let mut log = mixed_log();
        let e = log.events.iter_mut().find(|e| e.id == id).unwrap();
        e.new_row = Some(json!({"id": -1}).into());
        assert_eq!(
            first(&log, None),
            (ProblemKind::ContentChanged, Some(id)),
            "event {id}"
        );
    }
}

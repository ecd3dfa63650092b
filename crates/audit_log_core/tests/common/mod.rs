//! A builder for valid logs, shared by the integration tests.
#![allow(dead_code)]

use audit_log_core::model::{ChainHead, Checkpoint, CHECKPOINT_FORMAT};
use audit_log_core::verify::{verify_streams, Verdict};
use audit_log_core::{event_hash, link_hash, Event, Link, ZERO_HASH};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Log {
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    next_id: i64,
    next_tx: u64,
}

impl Log {
    pub fn new() -> Self {
        Log {
            events: vec![],
            links: vec![],
            next_id: 1,
            next_tx: 1000,
        }
    }

    /// Commit one transaction of `rows` events onto `chain`.
    pub fn commit(&mut self, chain: i32, rows: &[Value]) {
        let tx = self.next_tx;
        self.next_tx += 3;
        self.commit_as(chain, tx, rows);
    }

    /// Commit one transaction with the given `tx_id`, which may be one an
    /// earlier transaction had (as after a restore into a new cluster).
    pub fn commit_as(&mut self, chain: i32, tx: u64, rows: &[Value]) {
        self.commit_versions(chain, tx, rows, |_| false);
    }

    /// Commit one transaction whose event `i` is hashed as stored packed
    /// (event hash version 2) where `packed(i)`, else as version 1.
    pub fn commit_versions(
        &mut self,
        chain: i32,
        tx: u64,
        rows: &[Value],
        packed: impl Fn(usize) -> bool,
    ) {
        let mut prev = ZERO_HASH;
        let first = self.next_id;
        for (i, row) in rows.iter().enumerate() {
            let mut e = Event {
                id: self.next_id,
                tx_id: tx,
                tx_seq: i as i64 + 1,
                tx_first: first,
                recorded_at: 1_700_000_000_000_000 + self.next_id,
                statement_at: 1_700_000_000_000_000,
                session_user_name: "app".into(),
                current_user_name: "app".into(),
                application_name: Some("psql".into()),
                client_addr: None,
                context: None,
                table_schema: "public".into(),
                table_name: "orders".into(),
                op: "INSERT".into(),
                old_row: None,
                new_row: Some(row.clone().into()),
                prev_hash: prev,
                hash: ZERO_HASH,
            };
            e.hash = if packed(i) {
                packed_hash(&e)
            } else {
                event_hash(&e)
            };
            prev = e.hash;
            self.next_id += 1;
            self.events.push(e);
        }
        let (seq, prev_link) = self
            .links
            .iter()
            .filter(|l| l.chain_id == chain)
            .max_by_key(|l| l.seq)
            .map_or((1, ZERO_HASH), |l| (l.seq + 1, l.link_hash));
        let mut l = Link {
            chain_id: chain,
            seq,
            tx_id: tx,
            event_count: rows.len() as i64,
            first_event: first,
            last_event: self.next_id - 1,
            last_event_hash: prev,
            committed_at: 1_700_000_000_000_000 + self.next_id,
            prev_link_hash: prev_link,
            link_hash: ZERO_HASH,
        };
        l.link_hash = link_hash(&l);
        self.links.push(l);
    }

    pub fn sample(txs: usize, chains: i32) -> Self {
        let mut log = Log::new();
        for t in 0..txs {
            let rows: Vec<Value> = (0..(t % 4 + 1))
                .map(|r| json!({"id": t * 10 + r, "v": "x"}))
                .collect();
            log.commit((t as i32) % chains, &rows);
        }
        log
    }

    pub fn checkpoint(&self) -> Checkpoint {
        let mut chains: Vec<ChainHead> = vec![];
        for l in &self.links {
            match chains.iter_mut().find(|h| h.chain == l.chain_id) {
                Some(h) if h.seq >= l.seq => {}
                Some(h) => *h = head(l),
                None => chains.push(head(l)),
            }
        }
        Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            database: None,
            system_identifier: None,
            taken_at: None,
            trees: vec![],
            chains,
        }
    }

    pub fn verify(&self, cp: Option<&Checkpoint>) -> Verdict {
        let mut ev = self.events.clone();
        ev.sort_by_key(|e| (e.tx_first, e.tx_seq, e.id));
        verify_streams(ev.into_iter().map(Ok::<_, ()>), &self.links, cp).unwrap()
    }
}

/// An event's hash as stored packed: version 2, over its frame's body.
pub fn packed_hash(e: &Event) -> audit_log_core::Hash {
    let mut frame = Vec::new();
    let body_at = audit_log_core::encoding::packed::encode_event(e, e.tx_first, &mut frame)
        .expect("a well-formed event packs");
    audit_log_core::hash::event_hash_v2(&e.prev_hash, e.id, e.tx_id, e.tx_seq, &frame[body_at..])
}

fn head(l: &Link) -> ChainHead {
    ChainHead {
        chain: l.chain_id,
        seq: l.seq,
        link_hash: l.link_hash,
        last_event: l.last_event,
    }
}

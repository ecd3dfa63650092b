//! Verification of a whole log: every event hash, every in-transaction chain,
//! every commit link, every chain of links, and optionally that the log extends
//! a checkpoint. It consumes three sorted streams, so memory stays constant:
//! events ordered by (tx_first, tx_seq, id), links ordered by (first_event,
//! chain_id, seq), and links ordered by (chain_id, seq). A transaction is
//! known by the id of its first event (the events' `tx_first`, its link's
//! `first_event`), which never repeats; not by its `tx_id`, which starts
//! again from small numbers after a restore into a new cluster. Messages
//! still name a transaction by its `tx_id`, which is what an auditor knows.
//! The SQL function `audit_log.verify()` and the CLI drive the same
//! [`verify_streams`].

use std::collections::BTreeMap;
use std::fmt;

use crate::hash::{event_hash, link_hash, Hash, ZERO_HASH};
use crate::model::{ChainHead, Checkpoint, Event, Link};

/// The kinds of break, by the name `verify()` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// An event's content, or its stored hash, no longer matches what was committed.
    ContentChanged,
    /// A link's content or stored hash was altered. (Ordered before the kinds
    /// below: at the same event, a broken link explains what follows from it.)
    LinkChanged,
    /// An event that the chain or its link commits to is absent.
    EventMissing,
    /// An event is present that its transaction's chain or link does not contain.
    EventInserted,
    /// Events whose transaction has no committed link.
    EventNotLinked,
    /// A gap in a chain's sequence numbers: a whole transaction was removed.
    LinkMissing,
    /// A link does not point to the hash of its predecessor.
    LinkBroken,
    /// The chain is shorter than a checkpoint says it was.
    Truncated,
    /// The chain differs from a checkpoint at the checkpoint's head.
    ChainRewritten,
    /// A chain starts from an anchor that no intact PURGE event records.
    AnchorUnproven,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::ContentChanged => "content_changed",
            ProblemKind::EventMissing => "event_missing",
            ProblemKind::EventInserted => "event_inserted",
            ProblemKind::EventNotLinked => "event_not_linked",
            ProblemKind::LinkChanged => "link_changed",
            ProblemKind::LinkMissing => "link_missing",
            ProblemKind::LinkBroken => "link_broken",
            ProblemKind::Truncated => "truncated",
            ProblemKind::ChainRewritten => "chain_rewritten",
            ProblemKind::AnchorUnproven => "anchor_unproven",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The event the problem is reported at, when one can be named.
    pub event_id: Option<i64>,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    pub events_checked: i64,
    pub links_checked: i64,
    /// Every problem found, up to [`MAX_PROBLEMS`], in the order found.
    pub problems: Vec<Problem>,
    /// How many problems there were in all.
    pub problem_count: u64,
}

/// A tampered log can have millions of bad events; keeping the first ones is enough.
pub const MAX_PROBLEMS: usize = 1000;

impl Verdict {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    /// The problem at the lowest event id (problems without an event come last),
    /// which is what `verify()` reports as the first bad event.
    pub fn first(&self) -> Option<&Problem> {
        self.problems
            .iter()
            .min_by_key(|p| (p.event_id.is_none(), p.event_id, p.kind))
    }

    pub fn push(&mut self, kind: ProblemKind, event_id: Option<i64>, detail: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                kind,
                event_id,
                detail,
            });
        }
    }
}

fn short(h: &Hash) -> String {
    hex::encode(&h[..6])
}

/// What a transaction check remembers of an event: not its row data.
#[derive(Clone, Copy)]
struct Seen {
    id: i64,
    tx_id: u64,
    hash: Hash,
    hash_ok: bool,
}

/// Checks the events of one transaction (those with one `tx_first`), fed one
/// at a time in (tx_seq, id) order, then against the transaction's link.
/// Constant memory, so a transaction of ten million rows verifies like one
/// of ten.
struct TxCheck {
    /// The events' `tx_first`, which must be the id of the first of them.
    key: i64,
    /// The transaction's `tx_id`: as its link records it (hashed), or for
    /// a transaction without one, as its first event does.
    tx_id: Option<u64>,
    linked: bool,
    /// Events with the link's `tx_id`.
    with_link_tx: i64,
    /// Events of another `tx_id` (the first [`MAX_PROBLEMS`] of them, and
    /// how many): reported when the transaction ends, since if none has the
    /// link's `tx_id`, it is the link that is wrong.
    foreign: Vec<(i64, u64)>,
    foreign_count: u64,
    first: Option<Seen>,
    prev: Option<Seen>,
    count: i64,
    expected_seq: i64,
    gap_reported: bool,
    /// The first event's id differs from `key`, and that was reported.
    key_reported: bool,
}

impl TxCheck {
    fn new(key: i64, link: Option<&Link>) -> Self {
        TxCheck {
            key,
            tx_id: link.map(|l| l.tx_id),
            linked: link.is_some(),
            with_link_tx: 0,
            foreign: Vec::new(),
            foreign_count: 0,
            first: None,
            prev: None,
            count: 0,
            expected_seq: 1,
            gap_reported: false,
            key_reported: false,
        }
    }

    fn event(&mut self, v: &mut Verdict, e: &HashedEvent) {
        v.events_checked += 1;
        self.count += 1;
        // tx_first is not hashed, but derivable: the id of the event at
        // position 1. (A missing position 1 is reported as such below.)
        if self.first.is_none() && e.tx_seq == 1 && e.id != self.key {
            self.key_reported = true;
            v.push(
                ProblemKind::ContentChanged,
                Some(e.id),
                format!(
                    "event {} starts tx {} but records tx_first {}, not its own id",
                    e.id, e.tx_id, self.key
                ),
            );
        }
        // One transaction has one tx_id: an event of another one was moved here.
        let tx_id = *self.tx_id.get_or_insert(e.tx_id);
        if e.tx_id == tx_id {
            self.with_link_tx += 1;
        } else if !self.linked {
            push_foreign(v, e.id, e.tx_id, self.key, tx_id);
        } else {
            self.foreign_count += 1;
            if self.foreign.len() < MAX_PROBLEMS {
                self.foreign.push((e.id, e.tx_id));
            }
        }
        let own_ok = e.computed == e.hash;
        if !own_ok {
            v.push(
                ProblemKind::ContentChanged,
                Some(e.id),
                format!("event {} (tx {}) does not match its hash", e.id, e.tx_id),
            );
        }
        let expected_prev = self.prev.map_or(ZERO_HASH, |p| p.hash);
        if e.tx_seq > self.expected_seq {
            self.gap_reported = true;
            v.push(
                ProblemKind::EventMissing,
                Some(e.id),
                format!(
                    "tx {} lacks event position(s) {}..{} before event {}",
                    e.tx_id,
                    self.expected_seq,
                    e.tx_seq - 1,
                    e.id
                ),
            );
        } else if e.tx_seq < self.expected_seq {
            v.push(
                ProblemKind::EventInserted,
                Some(e.id),
                format!(
                    "event {} repeats position {} of tx {}",
                    e.id, e.tx_seq, e.tx_id
                ),
            );
        } else if e.prev_hash != expected_prev && own_ok && e.tx_id == tx_id {
            // This event verifies, so what it was chained to is the truth: a
            // predecessor that hashes otherwise had its hash recomputed after an
            // edit. (Not for an event of another transaction moved here: it is
            // reported as such, and its predecessor is innocent.)
            match self.prev {
                Some(p) if p.hash_ok => v.push(
                    ProblemKind::ContentChanged,
                    Some(p.id),
                    format!(
                        "event {} (tx {}) hashes to {}… but event {} was chained to {}…",
                        p.id,
                        p.tx_id,
                        short(&p.hash),
                        e.id,
                        short(&e.prev_hash)
                    ),
                ),
                Some(_) => {}
                None => v.push(
                    ProblemKind::ContentChanged,
                    Some(e.id),
                    format!(
                        "event {} starts tx {} but is chained to a predecessor",
                        e.id, e.tx_id
                    ),
                ),
            }
        }
        let seen = Seen {
            id: e.id,
            tx_id: e.tx_id,
            hash: e.hash,
            hash_ok: own_ok,
        };
        self.first.get_or_insert(seen);
        self.prev = Some(seen);
        self.expected_seq = e.tx_seq.max(self.expected_seq - 1) + 1;
    }

    fn finish(&self, v: &mut Verdict, links: &[Link], beyond_link: Option<i64>) {
        let (Some(first), Some(last)) = (self.first, self.prev) else {
            return;
        };
        let Some(link) = links.first() else {
            v.push(
                ProblemKind::EventNotLinked,
                Some(first.id),
                format!(
                    "{} event(s) of tx {} with tx_first {} are not covered by any committed link",
                    self.count, first.tx_id, self.key
                ),
            );
            return;
        };
        for extra in &links[1..] {
            v.push(
                ProblemKind::LinkChanged,
                Some(extra.first_event),
                format!(
                    "tx {} (first event {}) has a second link (chain {} seq {})",
                    extra.tx_id, extra.first_event, extra.chain_id, extra.seq
                ),
            );
        }
        if self.with_link_tx == 0 {
            v.push(
                ProblemKind::LinkChanged,
                Some(first.id),
                format!(
                    "link {}/{} names tx {} but the events with tx_first {} are of tx {}",
                    link.chain_id, link.seq, link.tx_id, self.key, first.tx_id
                ),
            );
        } else {
            for &(id, tx_id) in &self.foreign {
                push_foreign(v, id, tx_id, self.key, link.tx_id);
            }
            v.problem_count += self.foreign_count - self.foreign.len() as u64;
        }
        let n = self.count;
        if n < link.event_count {
            if self.gap_reported {
                return; // already reported where the gap is
            }
            v.push(
                ProblemKind::EventMissing,
                Some(if first.id != link.first_event {
                    first.id
                } else {
                    last.id
                }),
                format!(
                    "tx {} has {} event(s) but its link commits to {} ({}..{})",
                    link.tx_id, n, link.event_count, link.first_event, link.last_event
                ),
            );
        } else if n > link.event_count {
            let at = beyond_link.unwrap_or(last.id);
            v.push(
                ProblemKind::EventInserted,
                Some(at),
                format!(
                    "tx {} has {} event(s) but its link commits to {}",
                    link.tx_id, n, link.event_count
                ),
            );
        } else if (first.id != link.first_event && !self.key_reported) || last.id != link.last_event
        {
            v.push(
                ProblemKind::ContentChanged,
                Some(first.id.min(link.first_event)),
                format!(
                    "tx {} spans events {}..{} but its link commits to {}..{}",
                    link.tx_id, first.id, last.id, link.first_event, link.last_event
                ),
            );
        } else if last.hash != link.last_event_hash && last.hash_ok {
            v.push(
                ProblemKind::ContentChanged,
                Some(last.id),
                format!(
                    "event {} (tx {}) hashes to {}… but its link commits to {}…",
                    last.id,
                    link.tx_id,
                    short(&last.hash),
                    short(&link.last_event_hash)
                ),
            );
        }
    }
}

/// An event grouped, by its `tx_first`, with a transaction of another `tx_id`.
fn push_foreign(v: &mut Verdict, id: i64, tx_id: u64, key: i64, tx_of_key: u64) {
    v.push(
        ProblemKind::EventInserted,
        Some(id),
        format!(
            "event {id} of tx {tx_id} records tx_first {key}, the first event of tx {tx_of_key}"
        ),
    );
}

/// Anchors are where purged chains continue, and purge() records every
/// anchor in the PURGE event it writes (an event in the chain like any
/// other). An anchor that no PURGE event claims was put there by hand: a
/// truncated chain posing as a purged one. `claimed` are the anchors the
/// log's PURGE events record; their own integrity is the events' hashes.
pub fn check_anchors(v: &mut Verdict, anchors: &[ChainHead], claimed: &[ChainHead]) {
    for a in anchors {
        let proven = claimed
            .iter()
            .any(|c| c.chain == a.chain && c.seq == a.seq && c.link_hash == a.link_hash);
        if !proven {
            v.push(
                ProblemKind::AnchorUnproven,
                None,
                format!(
                    "chain {} starts from an anchor at seq {} that no PURGE event records",
                    a.chain, a.seq
                ),
            );
        }
    }
}

/// Links whose transaction has no events left.
fn check_orphan_links(v: &mut Verdict, links: &[Link]) {
    for l in links {
        v.push(
            ProblemKind::EventMissing,
            Some(l.first_event),
            format!(
                "all {} event(s) of tx {} ({}..{}) are missing",
                l.event_count, l.tx_id, l.first_event, l.last_event
            ),
        );
    }
}

/// Walks one chain's links in seq order.
struct ChainWalk {
    chain_id: i32,
    prev_seq: i64,
    prev_hash: Hash,
    prev_last_event: i64,
    /// The previous link, if its own hash verified: (seq, first_event).
    prev_ok: Option<(i64, i64)>,
    expect: Option<(i64, Hash)>,
    expect_met: bool,
    /// The next link must follow an anchor, not a link of the stream.
    at_anchor: bool,
}

impl ChainWalk {
    /// A walk from the start of a chain, or from an anchor: the (seq, hash,
    /// last event) of the link just before the first one to be walked.
    fn new(chain_id: i32, expect: Option<(i64, Hash)>, anchor: Option<&ChainHead>) -> Self {
        ChainWalk {
            chain_id,
            prev_seq: anchor.map_or(0, |a| a.seq),
            prev_hash: anchor.map_or(ZERO_HASH, |a| a.link_hash),
            prev_last_event: anchor.map_or(0, |a| a.last_event),
            prev_ok: None,
            at_anchor: anchor.is_some(),
            expect,
            // A checkpoint at or before the anchor was met before the anchor.
            expect_met: match (expect, anchor) {
                (Some((seq, _)), Some(a)) => seq <= a.seq,
                _ => false,
            },
        }
    }

    fn step(&mut self, v: &mut Verdict, l: &Link) {
        v.links_checked += 1;
        let recomputed = link_hash(l);
        if recomputed != l.link_hash {
            v.push(
                ProblemKind::LinkChanged,
                Some(l.first_event),
                format!(
                    "link {}/{} (tx {}) does not match its hash",
                    l.chain_id, l.seq, l.tx_id
                ),
            );
        }
        if l.seq > self.prev_seq + 1 {
            v.push(
                ProblemKind::LinkMissing,
                Some(l.first_event),
                format!(
                    "chain {} lacks links {}..{} (after event {})",
                    l.chain_id,
                    self.prev_seq + 1,
                    l.seq - 1,
                    self.prev_last_event
                ),
            );
        } else if l.seq <= self.prev_seq {
            v.push(
                ProblemKind::LinkChanged,
                Some(l.first_event),
                format!("chain {} repeats seq {}", l.chain_id, l.seq),
            );
        } else if l.prev_link_hash != self.prev_hash && recomputed == l.link_hash {
            // This link verifies, so what it was chained to is the truth: a
            // predecessor that hashes otherwise was rewritten and re-hashed.
            match self.prev_ok {
                Some((seq, first_event)) if l.seq == seq + 1 => v.push(
                    ProblemKind::LinkChanged,
                    Some(first_event),
                    format!(
                        "link {}/{} (from event {}) hashes to {}… but link {}/{} was chained to {}…: \
                         rewritten after commit",
                        l.chain_id,
                        seq,
                        first_event,
                        short(&self.prev_hash),
                        l.chain_id,
                        l.seq,
                        short(&l.prev_link_hash)
                    ),
                ),
                Some(_) => {}
                None if self.at_anchor => v.push(
                    ProblemKind::LinkBroken,
                    Some(l.first_event),
                    format!(
                        "link {}/{} is chained to {}… but the anchor it continues (seq {}) is {}…",
                        l.chain_id,
                        l.seq,
                        short(&l.prev_link_hash),
                        self.prev_seq,
                        short(&self.prev_hash)
                    ),
                ),
                None if self.prev_seq > 0 => {} // the predecessor is already reported
                None => v.push(
                    ProblemKind::LinkBroken,
                    Some(l.first_event),
                    format!(
                        "link {}/{} starts its chain but points to {}… instead of zero",
                        l.chain_id,
                        l.seq,
                        short(&l.prev_link_hash)
                    ),
                ),
            }
        }
        if let Some((seq, h)) = self.expect {
            if l.seq == seq {
                self.expect_met = true;
                if recomputed != h {
                    v.push(
                        ProblemKind::ChainRewritten,
                        Some(l.first_event),
                        format!(
                            "chain {} at seq {} hashes to {}… but the checkpoint holds {}…",
                            l.chain_id,
                            seq,
                            short(&recomputed),
                            short(&h)
                        ),
                    );
                }
            }
        }
        self.at_anchor = false;
        self.prev_ok = (recomputed == l.link_hash).then_some((l.seq, l.first_event));
        self.prev_seq = l.seq;
        self.prev_hash = recomputed;
        self.prev_last_event = l.last_event;
    }

    fn finish(&self, v: &mut Verdict, cp_last_event: i64) {
        if let Some((seq, _)) = self.expect {
            if !self.expect_met {
                v.push(
                    ProblemKind::Truncated,
                    Some(cp_last_event),
                    format!(
                        "chain {} ends at seq {} but the checkpoint holds seq {} (up to event {})",
                        self.chain_id, self.prev_seq, seq, cp_last_event
                    ),
                );
            }
        }
    }
}

fn next_link<E>(it: &mut impl Iterator<Item = Result<Link, E>>) -> Result<Option<Link>, E> {
    it.next().transpose()
}

/// What verification needs of an event once its hash is recomputed from its
/// content, which may be done ahead, on other threads ([`crate::parallel`]).
/// The row data is no longer needed, and not kept.
#[derive(Clone, Copy, Debug)]
pub struct HashedEvent {
    pub id: i64,
    pub tx_id: u64,
    pub tx_seq: i64,
    /// The transaction's key: see [`Event::tx_first`].
    pub tx_first: i64,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub computed: Hash,
}

impl HashedEvent {
    pub fn new(e: &Event) -> Self {
        HashedEvent {
            id: e.id,
            tx_id: e.tx_id,
            tx_seq: e.tx_seq,
            tx_first: e.tx_first,
            prev_hash: e.prev_hash,
            hash: e.hash,
            computed: event_hash(e),
        }
    }
}

/// Verify a whole log from three sorted streams (see the module comment).
/// Errors of the streams themselves (I/O, SPI) are passed through.
pub fn verify_streams<E>(
    events_by_tx: impl Iterator<Item = Result<Event, E>>,
    links_by_tx: impl Iterator<Item = Result<Link, E>>,
    links_by_chain: impl Iterator<Item = Result<Link, E>>,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verdict, E> {
    let hashed = events_by_tx.map(|r| r.map(|e| HashedEvent::new(&e)));
    verify_hashed_streams(hashed, links_by_tx, links_by_chain, checkpoint, &[])
}

/// [`verify_streams`], with each event's hash already recomputed, and with
/// chains that may start from anchors rather than from their first link: a
/// partial export starts where the previous one ended. An anchor is taken
/// as given; what vouches for it is the verification that produced it.
pub fn verify_hashed_streams<E>(
    events_by_tx: impl Iterator<Item = Result<HashedEvent, E>>,
    links_by_tx: impl Iterator<Item = Result<Link, E>>,
    links_by_chain: impl Iterator<Item = Result<Link, E>>,
    checkpoint: Option<&Checkpoint>,
    anchors: &[ChainHead],
) -> Result<Verdict, E> {
    let anchor = |chain: i32| anchors.iter().find(|a| a.chain == chain);
    let mut v = Verdict::default();
    let mut links = links_by_tx;
    let mut pending_link = next_link(&mut links)?;
    let mut events = events_by_tx.peekable();

    loop {
        let next_key = match events.peek() {
            Some(Ok(h)) => Some(h.tx_first),
            Some(Err(_)) => match events.next() {
                Some(Err(err)) => return Err(err),
                _ => unreachable!("peeked an error"),
            },
            None => None,
        };
        // Links of transactions that come before the next event's: orphans.
        while let Some(l) = pending_link.as_ref() {
            if next_key.is_some_and(|k| l.first_event >= k) {
                break;
            }
            check_orphan_links(&mut v, std::slice::from_ref(l));
            pending_link = next_link(&mut links)?;
        }
        let Some(key) = next_key else { break };
        let mut tx_links = Vec::new();
        while let Some(l) = pending_link.take() {
            if l.first_event != key {
                pending_link = Some(l);
                break;
            }
            tx_links.push(l);
            pending_link = next_link(&mut links)?;
        }
        let link_count = tx_links.first().map(|l| l.event_count);
        let mut check = TxCheck::new(key, tx_links.first());
        let mut beyond_link = None;
        while let Some(item) = events.next_if(|r| r.as_ref().map_or(true, |h| h.tx_first == key)) {
            let e = item?;
            check.event(&mut v, &e);
            if link_count.is_some_and(|n| check.count == n.saturating_add(1)) {
                beyond_link = Some(e.id);
            }
        }
        check.finish(&mut v, &tx_links, beyond_link);
    }

    // Chains of links, against the checkpoint where one is given.
    let mut expected: BTreeMap<i32, (i64, Hash, i64)> = checkpoint
        .map(|cp| {
            cp.chains
                .iter()
                .map(|h| (h.chain, (h.seq, h.link_hash, h.last_event)))
                .collect()
        })
        .unwrap_or_default();
    let mut walk: Option<(ChainWalk, i64)> = None;
    for item in links_by_chain {
        let l = item?;
        if walk.as_ref().is_none_or(|(w, _)| w.chain_id != l.chain_id) {
            if let Some((w, cp_last)) = walk.take() {
                w.finish(&mut v, cp_last);
            }
            let exp = expected.remove(&l.chain_id);
            walk = Some((
                ChainWalk::new(l.chain_id, exp.map(|(s, h, _)| (s, h)), anchor(l.chain_id)),
                exp.map_or(0, |e| e.2),
            ));
        }
        if let Some((w, _)) = walk.as_mut() {
            w.step(&mut v, &l);
        }
    }
    if let Some((w, cp_last)) = walk.take() {
        w.finish(&mut v, cp_last);
    }
    for (chain_id, (seq, h, last_event)) in expected {
        ChainWalk::new(chain_id, Some((seq, h)), anchor(chain_id)).finish(&mut v, last_event);
    }
    Ok(v)
}

//! What verification reports ([`Verdict`], [`ProblemKind`]), and the
//! verification of a log in its logical form (events and links, as the
//! views and an export show it): each link with its transaction's events is
//! the record that storage format 2 keeps, and is verified as one by
//! [`crate::record::verify_records`], the code `audit_log.verify()` runs.
//! What the logical form spells out that storage recomputes (each event's
//! `hash` and `prev_hash`, each link's `last_event_hash` and
//! `prev_link_hash`) is checked against the recomputed values too.
//!
//! A transaction is known by the id of its first event (the events'
//! `tx_first`, its link's `first_event`), which never repeats; not by its
//! `tx_id`, which starts again from small numbers after a restore into a new
//! cluster.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::encoding::encode_event;
use crate::hash::{Hash, ZERO_HASH};
use crate::model::{ChainHead, Checkpoint, Event, Link};
use crate::record::{verify_records, Base, DigestBuilder, Framed, Record};

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

/// An event of the logical form, encoded: what verification needs of it.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub id: i64,
    pub tx_first: i64,
    pub tx_seq: i64,
    /// The hashes the logical form states (recomputed, then compared).
    pub prev_hash: Hash,
    pub hash: Hash,
    pub canonical: Vec<u8>,
}

impl EncodedEvent {
    pub fn new(e: &Event) -> Self {
        let mut canonical = Vec::with_capacity(256);
        encode_event(e, &mut canonical);
        EncodedEvent {
            id: e.id,
            tx_first: e.tx_first,
            tx_seq: e.tx_seq,
            prev_hash: e.prev_hash,
            hash: e.hash,
            canonical,
        }
    }
}

/// Verify a log in its logical form: `events` ordered by (tx_first,
/// tx_seq), `links` in any order (they are kept: about 150 bytes per
/// transaction). Chains start from `anchors` (a whole log after a purge, or
/// a continuation), which the PURGE events' `claimed` anchors must prove.
pub fn verify_logical<E>(
    events: impl Iterator<Item = Result<EncodedEvent, E>>,
    links: &[Link],
    checkpoint: Option<&Checkpoint>,
    anchors: &[ChainHead],
    claimed: &[ChainHead],
) -> Result<Verdict, E> {
    let by_first: HashMap<i64, usize> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.first_event, i))
        .collect();
    let mut built: Vec<Option<DigestBuilder>> = vec![None; links.len()];
    // Transactions (by key) whose problems are named at an event already:
    // the record-level problem they cause says nothing more.
    let mut located: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut extra = Verdict::default();
    let mut tx = TxRead::default();
    for e in events {
        let e = e?;
        if tx.key != Some(e.tx_first) {
            tx.close(&by_first, &mut built, &mut located, &mut extra);
            tx = TxRead {
                key: Some(e.tx_first),
                link: by_first.get(&e.tx_first).copied(),
                packed: tx.packed,
                ..TxRead::default()
            };
            if e.id != e.tx_first {
                tx.problem(
                    &mut extra,
                    ProblemKind::ContentChanged,
                    e.id,
                    format!(
                        "event {} is the first of its transaction but records tx_first {}",
                        e.id, e.tx_first
                    ),
                );
            }
        }
        tx.event(&e, links, &mut extra);
    }
    tx.close(&by_first, &mut built, &mut located, &mut extra);
    // Each chain's links in seq order.
    let mut order: Vec<usize> = (0..links.len()).collect();
    order.sort_by_key(|&i| (links[i].chain_id, links[i].seq));
    let mut prev: BTreeMap<i32, (i64, Hash, i64)> = anchors
        .iter()
        .map(|a| (a.chain, (a.seq, a.link_hash, 0)))
        .collect();
    for &i in &order {
        let l = &links[i];
        // A link that does not hash to itself: its fields, or its events
        // (whose hashes an export recomputes), changed after commit. The
        // record reports it as verify() does; this says which link.
        if crate::hash::link_hash(l) != l.link_hash {
            extra.push(
                ProblemKind::LinkChanged,
                Some(l.first_event),
                format!(
                    "link {}/{} (tx {}) does not match its hash",
                    l.chain_id, l.seq, l.tx_id
                ),
            );
        }
        let before = match prev.insert(l.chain_id, (l.seq, l.link_hash, l.first_event)) {
            Some((s, h, first)) if s + 1 == l.seq => Some((h, Some(first))),
            None if l.seq == 1 => Some((ZERO_HASH, None)),
            _ => None,
        };
        match before {
            // Chained to another hash than its predecessor states: the
            // predecessor was rewritten and re-hashed after this committed.
            Some((h, Some(first))) if h != l.prev_link_hash => {
                located.insert(l.first_event);
                extra.push(
                    ProblemKind::LinkChanged,
                    Some(first),
                    format!(
                        "link {}/{} (from event {first}) was rewritten after link {}/{} was chained to it",
                        l.chain_id,
                        l.seq - 1,
                        l.chain_id,
                        l.seq
                    ),
                );
            }
            Some((h, None)) if h != l.prev_link_hash => extra.push(
                ProblemKind::LinkBroken,
                Some(l.first_event),
                format!(
                    "link {}/{} starts its chain but points to another link",
                    l.chain_id, l.seq
                ),
            ),
            _ => {}
        }
    }
    let records: Vec<(Record, crate::record::Digest)> = order
        .into_iter()
        .map(|i| {
            let l = &links[i];
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
            let d = built[i]
                .take()
                .unwrap_or_else(|| DigestBuilder::new(r.base()))
                .finish(&r);
            if d.fault.is_none() && d.last_hash != l.last_event_hash && !located.contains(&l.first_event) {
                // The link holds another hash of its last event: that event
                // was rewritten, its own hash recomputed.
                located.insert(l.first_event);
                extra.push(
                    ProblemKind::ContentChanged,
                    Some(l.last_event),
                    format!(
                        "event {} hashes otherwise than link {}/{} committed it: rewritten after commit",
                        l.last_event, l.chain_id, l.seq
                    ),
                );
            }
            (r, d)
        })
        .collect();
    let mut v = verify_records(
        records.into_iter().map(Ok::<_, E>),
        checkpoint,
        anchors,
        claimed,
    )?;
    // Problems of a record whose break is named at an event already.
    let before = v.problems.len();
    v.problems.retain(|p| {
        !(p.event_id.is_some_and(|id| located.contains(&id)) && p.detail.starts_with("record "))
    });
    v.problem_count -= (before - v.problems.len()) as u64;
    v.problem_count += extra.problem_count;
    for p in extra.problems {
        if v.problems.len() < MAX_PROBLEMS {
            v.problems.push(p);
        }
    }
    Ok(v)
}

/// One transaction of the logical form, as its events stream by.
#[derive(Default)]
struct TxRead {
    key: Option<i64>,
    /// Its link, by index.
    link: Option<usize>,
    /// Made at its first event.
    digest: Option<DigestBuilder>,
    /// The stated hash and id of the previous event.
    prev: Option<(Hash, i64)>,
    /// Its events of another tx_id than its link's, and whether any has
    /// the link's.
    foreign: Vec<(i64, String)>,
    native: bool,
    located: bool,
    /// The last event's hash, in this transaction or the one before, was
    /// of version 2.
    packed: bool,
}

impl TxRead {
    fn problem(&mut self, v: &mut Verdict, kind: ProblemKind, at: i64, detail: String) {
        self.located = true;
        v.push(kind, Some(at), detail);
    }

    fn event(&mut self, e: &EncodedEvent, links: &[Link], v: &mut Verdict) {
        let tx_id = crate::record::header(&e.canonical).map(|h| h.tx_id).ok();
        let digest = self.digest.get_or_insert_with(|| {
            DigestBuilder::new(Base {
                first_event: e.tx_first,
                tx_id: tx_id.unwrap_or(0),
            })
        });
        let position = digest.count() + 1;
        // The logical form does not say how its record stored the event:
        // packed (version 2) or not. Its stated hash is its own if it is
        // either version's, which no other content has (the two hash under
        // tags of their own). The version that matched the last event is
        // tried first.
        let is_v1 = || crate::hash::event_hash_from_encoding(&e.prev_hash, &e.canonical) == e.hash;
        let is_v2 = |frame: &mut Vec<u8>| {
            crate::encoding::packed::pack(&e.canonical, e.tx_first, frame).is_ok()
                && crate::encoding::packed::frame_at(frame, 0).is_ok_and(|(f, _)| {
                    let base = Base {
                        first_event: e.tx_first,
                        tx_id: tx_id.unwrap_or(0),
                    };
                    f.hash(&e.prev_hash, base) == e.hash
                })
        };
        let mut frame = Vec::new();
        // Which version's hash it is: Some(true) for version 2.
        let version2 = if self.packed {
            if is_v2(&mut frame) {
                Some(true)
            } else {
                is_v1().then_some(false)
            }
        } else if is_v1() {
            Some(false)
        } else {
            is_v2(&mut frame).then_some(true)
        };
        let matched = version2.is_some();
        let packed = version2 == Some(true);
        self.packed = version2.unwrap_or(self.packed);
        let recomputed_prev = digest.last_hash();
        if !matched {
            self.problem(
                v,
                ProblemKind::ContentChanged,
                e.id,
                format!("event {} does not match its hash", e.id),
            );
        } else if e.prev_hash != recomputed_prev {
            if e.tx_seq > position {
                self.problem(
                    v,
                    ProblemKind::EventMissing,
                    e.id,
                    format!(
                        "the events before event {} (tx_seq {position}..{}) are missing",
                        e.id,
                        e.tx_seq - 1
                    ),
                );
            } else if e.tx_seq < position {
                self.problem(
                    v,
                    ProblemKind::EventInserted,
                    e.id,
                    format!(
                        "event {} repeats tx_seq {} of its transaction",
                        e.id, e.tx_seq
                    ),
                );
            } else if let Some((_, id)) = self.prev.filter(|(h, _)| *h != e.prev_hash) {
                // It was chained to another hash than its predecessor now
                // states: the predecessor was rewritten, hash and all.
                self.problem(
                    v,
                    ProblemKind::ContentChanged,
                    id,
                    format!(
                        "event {id} was rewritten after event {} was chained to it",
                        e.id
                    ),
                );
            }
            // Otherwise the predecessor's own hash is wrong: reported there.
        }
        if let Some(l) = self.link.map(|i| &links[i]) {
            // An event of another tx_id than its link's was moved in; if
            // all of them differ, the link is what changed (the record
            // reports that), so these wait for the end of the transaction.
            match tx_id {
                Some(t) if t != l.tx_id => self.foreign.push((
                    e.id,
                    format!(
                        "event {} (tx {t}) is filed under tx_first {}, a transaction of tx {}",
                        e.id, l.first_event, l.tx_id
                    ),
                )),
                _ => self.native = true,
            }
            if position == l.event_count + 1 {
                self.problem(
                    v,
                    ProblemKind::EventInserted,
                    e.id,
                    format!(
                        "event {} is beyond the {} event(s) link {}/{} commits to",
                        e.id, l.event_count, l.chain_id, l.seq
                    ),
                );
            }
        }
        if let Some(d) = self.digest.as_mut() {
            match crate::encoding::packed::frame_at(&frame, 0) {
                Ok((f, _)) if packed => d.push(&Framed::V2(f)),
                _ => d.push(&Framed::V1(&e.canonical)),
            }
        }
        self.prev = Some((e.hash, e.id));
    }

    fn close(
        &mut self,
        by_first: &HashMap<i64, usize>,
        built: &mut [Option<DigestBuilder>],
        located: &mut std::collections::HashSet<i64>,
        v: &mut Verdict,
    ) {
        let Some(key) = self.key.take() else { return };
        if self.native {
            for (id, why) in std::mem::take(&mut self.foreign) {
                self.problem(v, ProblemKind::EventInserted, id, why);
            }
        }
        if self.located {
            located.insert(key);
        }
        let digest = self.digest.take().unwrap_or_else(|| {
            DigestBuilder::new(Base {
                first_event: key,
                tx_id: 0,
            })
        });
        match by_first.get(&key) {
            Some(&i) if built[i].is_none() => built[i] = Some(digest),
            Some(_) => v.push(
                ProblemKind::EventInserted,
                Some(key),
                format!("the events of the transaction whose first event is {key} appear twice"),
            ),
            None => v.push(
                ProblemKind::EventNotLinked,
                Some(key),
                format!("the events of the transaction whose first event is {key} have no link"),
            ),
        }
    }
}

/// [`verify_logical`] over whole events, from the start of every chain.
pub fn verify_streams<E>(
    events_by_tx: impl Iterator<Item = Result<Event, E>>,
    links: &[Link],
    checkpoint: Option<&Checkpoint>,
) -> Result<Verdict, E> {
    let encoded = events_by_tx.map(|r| r.map(|e| EncodedEvent::new(&e)));
    verify_logical(encoded, links, checkpoint, &[], &[])
}

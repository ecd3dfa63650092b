//! Storage format v2: one record per committed transaction.
//!
//! A record holds its transaction's events as one payload: each event is a
//! `u32` byte length followed by the event's canonical encoding
//! (docs/FORMAT.md), in `tx_seq` order. The bytes that are hashed are the
//! bytes that are stored, so verification hashes slices of the payload and
//! never re-encodes anything. A transaction too large to keep in memory
//! writes the first part of this stream as segments during the transaction;
//! the record's payload is the rest. The record also carries the link of
//! format v1 in its columns (chain, seq, tx_id, first and last event, event
//! count, commit time) and the link hash computed at commit. No other hash
//! is stored: an event's hash, its predecessor's and the last event's hash
//! are recomputed from the payload, and a link's predecessor is the stored
//! hash of the record before it in the chain.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use std::borrow::Cow;

use crate::encoding::decode::{Malformed, Reader};
pub use crate::encoding::packed::Base;
use crate::encoding::packed::{self, Frame};
use crate::encoding::put_len;
use crate::hash::{event_hash_from_encoding, Hash, ZERO_HASH};
use crate::model::{ChainHead, Checkpoint, Event, Json, Link};
use crate::verify::{Problem, ProblemKind, Verdict};

/// Append one event's canonical encoding to a payload.
pub fn put_event(payload: &mut Vec<u8>, canonical: &[u8]) {
    put_len(payload, canonical.len());
    payload.extend_from_slice(canonical);
}

/// Encode `e` at the end of a payload, after its length, without a buffer
/// of its own; returns where its canonical encoding starts in `payload`.
pub fn encode_event_into(payload: &mut Vec<u8>, e: &Event) -> usize {
    let len_at = payload.len();
    payload.extend_from_slice(&[0; 4]);
    crate::encoding::encode_event(e, payload);
    let len = payload.len() - len_at - 4;
    payload[len_at..len_at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    len_at + 4
}

/// One event as a payload frames it: version 1, its canonical encoding
/// after a `u32` length; or version 2, packed (`encoding::packed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed<'a> {
    V1(&'a [u8]),
    V2(Frame<'a>),
}

impl<'a> Framed<'a> {
    /// Its position in the transaction, which orders segments and payload.
    pub fn tx_seq(&self) -> Result<i64, Malformed> {
        match self {
            Framed::V1(c) => header(c).map(|h| h.tx_seq),
            Framed::V2(f) => Ok(f.tx_seq),
        }
    }

    /// Its ids: a version 2 frame takes its transaction's from `base`.
    pub fn header(&self, base: Base) -> Result<Header, Malformed> {
        match self {
            Framed::V1(c) => header(c),
            Framed::V2(f) => Ok(Header {
                id: f.id(base.first_event),
                tx_id: base.tx_id,
                tx_seq: f.tx_seq,
            }),
        }
    }

    /// Its event hash, chained on `prev`, by its version's rule.
    pub fn hash(&self, prev: &Hash, base: Base) -> Hash {
        match self {
            Framed::V1(c) => event_hash_from_encoding(prev, c),
            Framed::V2(f) => f.hash(prev, base),
        }
    }

    /// Its version 1 canonical encoding, which decoders read.
    pub fn canonical(&self, base: Base) -> Result<Cow<'a, [u8]>, Malformed> {
        match self {
            Framed::V1(c) => Ok(Cow::Borrowed(c)),
            Framed::V2(f) => {
                let mut out = Vec::new();
                packed::unpack(f, base, &mut out)?;
                Ok(Cow::Owned(out))
            }
        }
    }

    /// The version of its hash: 1 or 2.
    pub fn version(&self) -> u8 {
        match self {
            Framed::V1(_) => 1,
            Framed::V2(_) => 2,
        }
    }
}

/// The event framed at `at` in a payload or segment, and where the next one
/// starts; None at the end.
pub fn event_at(buf: &[u8], at: usize) -> Option<Result<(Framed<'_>, usize), Malformed>> {
    if at >= buf.len() {
        return None;
    }
    if buf[at] == packed::FRAME {
        return Some(packed::frame_at(buf, at).map(|(f, next)| (Framed::V2(f), next)));
    }
    let Some(len) = buf.get(at..at + 4) else {
        return Some(Err(Malformed(at)));
    };
    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let end = (at + 4).saturating_add(n);
    Some(match buf.get(at + 4..end) {
        Some(e) => Ok((Framed::V1(e), end)),
        None => Err(Malformed(at)),
    })
}

/// A payload's events, in order.
pub fn events(payload: &[u8]) -> impl Iterator<Item = Result<Framed<'_>, Malformed>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || match event_at(payload, pos)? {
        Ok((e, next)) => {
            pos = next;
            Some(Ok(e))
        }
        Err(m) => {
            pos = payload.len();
            Some(Err(m))
        }
    })
}

/// The leading fields of an event's canonical encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: i64,
    pub tx_id: u64,
    pub tx_seq: i64,
}

pub fn header(canonical: &[u8]) -> Result<Header, Malformed> {
    let mut r = Reader::new(canonical);
    Ok(Header {
        id: r.i64()?,
        tx_id: r.i64()? as u64,
        tx_seq: r.i64()?,
    })
}

fn opt<'a, T>(
    r: &mut Reader<'a>,
    f: impl FnOnce(&mut Reader<'a>) -> Result<T, Malformed>,
) -> Result<Option<T>, Malformed> {
    match r.u8()? {
        0 => Ok(None),
        1 => f(r).map(Some),
        _ => Err(Malformed(0)),
    }
}

/// An event read back from its canonical encoding, with its JSON values as
/// canonical items, and the hashes given by its place in the transaction.
/// `tx_first` is the id of the transaction's first event.
pub fn decode_event(canonical: &[u8], tx_first: i64, prev_hash: Hash) -> Result<Event, Malformed> {
    let mut e = decode_fields(canonical, tx_first, prev_hash)?;
    e.hash = event_hash_from_encoding(&prev_hash, canonical);
    Ok(e)
}

/// [`decode_event`] but for its hash, left zero.
fn decode_fields(canonical: &[u8], tx_first: i64, prev_hash: Hash) -> Result<Event, Malformed> {
    let mut r = Reader::new(canonical);
    let json = |r: &mut Reader| r.json().map(|b| Json::Encoded(b.to_vec()));
    let id = r.i64()?;
    let tx_id = r.i64()? as u64;
    let tx_seq = r.i64()?;
    let recorded_at = r.i64()?;
    let statement_at = r.i64()?;
    let session_user_name = r.text()?;
    let current_user_name = r.text()?;
    let application_name = opt(&mut r, Reader::text)?;
    let client_addr = opt(&mut r, Reader::text)?;
    let context = opt(&mut r, json)?;
    let table_schema = r.text()?;
    let table_name = r.text()?;
    let op = r.text()?;
    let old_row = opt(&mut r, json)?;
    let new_row = opt(&mut r, json)?;
    if !r.is_empty() {
        return Err(Malformed(canonical.len()));
    }
    Ok(Event {
        id,
        tx_id,
        tx_seq,
        tx_first,
        recorded_at,
        statement_at,
        session_user_name,
        current_user_name,
        application_name,
        client_addr,
        context,
        table_schema,
        table_name,
        op,
        old_row,
        new_row,
        prev_hash,
        hash: ZERO_HASH,
    })
}

/// An event read back from its frame, with the hash its version gives it.
pub fn decode_framed(f: &Framed, base: Base, prev_hash: Hash) -> Result<Event, Malformed> {
    match f {
        Framed::V1(c) => decode_event(c, base.first_event, prev_hash),
        Framed::V2(v2) => {
            let c = f.canonical(base)?;
            let mut e = decode_fields(&c, base.first_event, prev_hash)?;
            e.hash = v2.hash(&prev_hash, base);
            Ok(e)
        }
    }
}

/// A transaction's events decoded, in tx_seq order (segments merged with
/// the payload), each with the hash chained on the one before: the rows of
/// the events view. Stops after the first unreadable event.
pub fn decoded<'a>(
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
    base: Base,
) -> impl Iterator<Item = Result<Event, Malformed>> + 'a {
    let segments: Vec<&'a [u8]> = segments.into_iter().collect();
    let mut prev = Some(ZERO_HASH);
    merged(segments, payload).map_while(move |e| {
        let p = prev.take()?;
        let ev = e.and_then(|e| decode_framed(&e, base, p));
        if let Ok(ev) = &ev {
            prev = Some(ev.hash);
        }
        Some(ev)
    })
}

/// A record's columns other than its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub chain_id: i32,
    pub seq: i64,
    pub tx_id: u64,
    pub first_event: i64,
    pub last_event: i64,
    pub event_count: i64,
    pub committed_at: i64,
    /// The link hash stored at commit.
    pub link_hash: Hash,
}

impl From<&Record> for ChainHead {
    /// The head a chain has when `r` is its last record.
    fn from(r: &Record) -> Self {
        ChainHead {
            chain: r.chain_id,
            seq: r.seq,
            link_hash: r.link_hash,
            last_event: r.last_event,
        }
    }
}

impl Record {
    /// What its events' frames take from it.
    pub fn base(&self) -> Base {
        Base {
            first_event: self.first_event,
            tx_id: self.tx_id,
        }
    }

    /// The v1 link this record stands for, chained to `prev` and holding
    /// `last_event_hash`, with its hash recomputed.
    pub fn link(&self, prev: Hash, last_event_hash: Hash) -> Link {
        let mut l = Link {
            chain_id: self.chain_id,
            seq: self.seq,
            tx_id: self.tx_id,
            event_count: self.event_count,
            first_event: self.first_event,
            last_event: self.last_event,
            last_event_hash,
            committed_at: self.committed_at,
            prev_link_hash: prev,
            link_hash: ZERO_HASH,
        };
        l.link_hash = self.link_hash_after(&prev, &last_event_hash);
        l
    }

    /// The hash of [`Record::link`], without the link.
    pub fn link_hash_after(&self, prev: &Hash, last_event_hash: &Hash) -> Hash {
        crate::hash::link_hash_of(
            prev,
            [
                i64::from(self.chain_id),
                self.seq,
                self.tx_id as i64,
                self.event_count,
                self.first_event,
                self.last_event,
            ],
            last_event_hash,
            self.committed_at,
        )
    }
}

/// What a transaction's payload shows, hashed: everything verification needs
/// of it. Computed on worker threads, independent of other records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub count: i64,
    pub first_id: Option<i64>,
    pub last_id: Option<i64>,
    pub last_hash: Hash,
    /// The first thing wrong with the payload's structure, if any, and
    /// what kind of break it is (boxed: every record's digest is moved
    /// several times on its way to the walk, and few have one).
    pub fault: Option<Box<(ProblemKind, String)>>,
}

/// The events of a transaction in tx_seq order: its segments' (each a run
/// of consecutive tx_seq, read in order of their first tx_seq) merged with
/// its record's payload (the events still in memory at commit, in order).
/// A savepoint can keep events of an outer level in memory while later ones
/// are spilled, so the two interleave; each is sorted.
pub fn merged<'a>(
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
) -> impl Iterator<Item = Result<Framed<'a>, Malformed>> {
    let key = |e: &Result<Framed, Malformed>| match e {
        Ok(f) => f.tx_seq().unwrap_or(i64::MIN),
        Err(_) => i64::MIN,
    };
    // A segment holds at least one event: its part is its first event's
    // tx_seq. The server never writes an empty one.
    let mut a = segments
        .into_iter()
        .flat_map(|s| {
            let empty = s.is_empty().then_some(Err(Malformed(0)));
            empty.into_iter().chain(events(s))
        })
        .peekable();
    let mut b = events(payload).peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if key(y) < key(x) => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// A segment as stored: its `part` (the `tx_seq` of its first event) and
/// its framed events.
pub type Segment = (i32, Vec<u8>);

/// A transaction's segments (`part`, bytes), in order of `part`, laid out
/// as FORMAT.md requires: each one run of consecutive `tx_seq` starting at
/// its `part`. None if they already are. Otherwise the same events with
/// every segment that is not a run cut where its `tx_seq` jumps, each
/// piece its own segment, named by its first `tx_seq`: before 0.3.0, a
/// transaction that kept an event in memory, spilled inside a savepoint it
/// then released, and spilled again, wrote the kept event and the later
/// ones as one segment. No event changes, so no hash does; the caller
/// checks that the new layout recomputes the record's link before it
/// writes it. An error if a segment is empty or unreadable, or two pieces
/// would start at the same `tx_seq`.
pub fn runs_layout(segments: &[Segment]) -> Result<Option<Vec<Segment>>, Malformed> {
    // Per segment: the byte offsets where a new run starts, with its tx_seq.
    let mut cuts: Vec<Vec<(usize, i64)>> = Vec::with_capacity(segments.len());
    let mut all_runs = true;
    for (part, bytes) in segments {
        let mut starts = Vec::new();
        let mut expect: Option<i64> = None;
        let mut at = 0usize;
        while let Some(e) = event_at(bytes, at) {
            let (framed, next) = e?;
            let seq = framed.tx_seq()?;
            if expect != Some(seq) {
                starts.push((at, seq));
            }
            expect = seq.checked_add(1);
            at = next;
        }
        match starts.first() {
            None => return Err(Malformed(0)),
            Some(&(_, first)) => {
                all_runs &= starts.len() == 1 && first == i64::from(*part);
            }
        }
        cuts.push(starts);
    }
    if all_runs {
        return Ok(None);
    }
    let mut out = Vec::new();
    for ((_, bytes), starts) in segments.iter().zip(&cuts) {
        for (i, &(from, seq)) in starts.iter().enumerate() {
            let to = starts.get(i + 1).map_or(bytes.len(), |&(next, _)| next);
            let part = i32::try_from(seq).map_err(|_| Malformed(from))?;
            out.push((part, bytes[from..to].to_vec()));
        }
    }
    out.sort_by_key(|(part, _)| *part);
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Malformed(0));
    }
    Ok(Some(out))
}

/// A transaction's events in the order of [`merged`], pulled one at a time
/// from owned segments given one at a time: no more than one segment is
/// held, however large the transaction. For readers that cannot hold a
/// borrow across events (a set-returning function, called once per row);
/// [`for_each_merged`] drives one with a callback.
pub struct Cursor<P> {
    payload: P,
    at: usize,
    segment: Vec<u8>,
    seg_at: usize,
    /// An empty segment was given: no segment is ever empty.
    empty_segment: bool,
    segments_done: bool,
}

impl<P: AsRef<[u8]>> Cursor<P> {
    /// A transaction's payload, and whether it has segments to come.
    pub fn new(payload: P, has_segments: bool) -> Self {
        Cursor {
            payload,
            at: 0,
            segment: Vec::new(),
            seg_at: 0,
            empty_segment: false,
            segments_done: !has_segments,
        }
    }

    /// The segment given last is used up: give the next one (or None)
    /// before asking for the next event.
    pub fn wants_segment(&self) -> bool {
        !self.segments_done && self.seg_at >= self.segment.len()
    }

    /// The next segment in order of `part`, or None when there is no other.
    pub fn give_segment(&mut self, segment: Option<Vec<u8>>) {
        match segment {
            Some(s) => {
                self.empty_segment |= s.is_empty();
                self.segment = s;
                self.seg_at = 0;
            }
            None => {
                self.segment = Vec::new();
                self.seg_at = 0;
                self.segments_done = true;
            }
        }
    }

    /// The next event, or the first part that is not one (after which
    /// readers stop). Call only when no segment is wanted.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Framed<'_>, Malformed>> {
        if std::mem::take(&mut self.empty_segment) {
            return Some(Err(Malformed(0)));
        }
        let key = |e: &Option<Result<(Framed, usize), Malformed>>| match e {
            Some(Ok((f, _))) => f.tx_seq().unwrap_or(i64::MIN),
            _ => i64::MIN,
        };
        let payload = self.payload.as_ref();
        let from_segment = event_at(&self.segment, self.seg_at);
        let from_payload = event_at(payload, self.at);
        // As merged(): the payload's event first only if strictly lower.
        let take_segment = match (&from_segment, &from_payload) {
            (Some(_), Some(_)) => key(&from_payload) >= key(&from_segment),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let (taken, pos, end) = if take_segment {
            (from_segment?, &mut self.seg_at, self.segment.len())
        } else {
            (from_payload?, &mut self.at, payload.len())
        };
        Some(match taken {
            Ok((e, next)) => {
                *pos = next;
                Ok(e)
            }
            Err(m) => {
                *pos = end;
                Err(m)
            }
        })
    }
}

/// A transaction's events decoded one at a time, as [`decoded`] gives
/// them (each with its hash chained on the one before, stopping after the
/// first unreadable one), from segments given one at a time as the
/// [`Cursor`] within asks for them.
pub struct DecodedCursor<P> {
    cursor: Cursor<P>,
    base: Base,
    /// The hash of the last event decoded; None once an event was
    /// unreadable or the events ended.
    prev: Option<Hash>,
}

impl<P: AsRef<[u8]>> DecodedCursor<P> {
    /// A transaction's payload, whether it has segments to come, and what
    /// its frames take from its record.
    pub fn new(payload: P, has_segments: bool, base: Base) -> Self {
        DecodedCursor {
            cursor: Cursor::new(payload, has_segments),
            base,
            prev: Some(ZERO_HASH),
        }
    }

    /// See [`Cursor::wants_segment`].
    pub fn wants_segment(&self) -> bool {
        self.prev.is_some() && self.cursor.wants_segment()
    }

    /// See [`Cursor::give_segment`].
    pub fn give_segment(&mut self, segment: Option<Vec<u8>>) {
        self.cursor.give_segment(segment);
    }

    /// The next event, or why it cannot be read (the last item then).
    pub fn next_event(&mut self) -> Option<Result<Event, Malformed>> {
        let prev = self.prev.take()?;
        let ev = self
            .cursor
            .next()?
            .and_then(|e| decode_framed(&e, self.base, prev));
        if let Ok(ev) = &ev {
            self.prev = Some(ev.hash);
        }
        Some(ev)
    }
}

/// The events of a transaction in the order of [`merged`], when its
/// segments come one at a time and are owned (read from storage as they
/// are needed): no more than one segment is held, however large the
/// transaction. `each` gets every event, or the first part that is not an
/// event, and can stop the walk with `ControlFlow::Break`. An error of the
/// segment stream is returned as it is.
pub fn for_each_merged<E>(
    segments: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    payload: &[u8],
    mut each: impl FnMut(Result<Framed, Malformed>) -> ControlFlow<()>,
) -> Result<(), E> {
    let mut segments = segments.into_iter();
    let mut c = Cursor::new(payload, true);
    loop {
        if c.wants_segment() {
            c.give_segment(segments.next().transpose()?);
        }
        match c.next() {
            None => return Ok(()),
            Some(e) => {
                if each(e).is_break() {
                    return Ok(());
                }
            }
        }
    }
}

/// [`digest`] of a transaction whose segments come one at a time (see
/// [`for_each_merged`]).
pub fn digest_streamed<E>(
    r: &Record,
    segments: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    payload: &[u8],
) -> Result<Digest, E> {
    Ok(digest_each_streamed(r, segments, payload, |_| {})?.0)
}

/// [`digest_and_hashes`] of a transaction whose segments come one at a
/// time, with the root of its events' Merkle tree (`tree::events_root`)
/// instead of every event's hash: None if the payload is not a sequence of
/// events.
pub fn digest_and_root_streamed<E>(
    r: &Record,
    segments: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    payload: &[u8],
) -> Result<(Digest, Option<Hash>), E> {
    let mut tree = crate::merkle::Builder::default();
    let (d, whole) = digest_each_streamed(r, segments, payload, |h| {
        tree.push(crate::merkle::leaf_hash(&h))
    })?;
    Ok((d, whole.then(|| tree.root())))
}

/// As `digest_each`, over segments that come one at a time.
fn digest_each_streamed<E>(
    r: &Record,
    segments: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    payload: &[u8],
    mut each: impl FnMut(Hash),
) -> Result<(Digest, bool), E> {
    let mut b = DigestBuilder::new(r.base());
    let mut whole = true;
    for_each_merged(segments, payload, |e| match e {
        Ok(e) => {
            b.push(&e);
            each(b.last_hash());
            ControlFlow::Continue(())
        }
        Err(_) => {
            b.malformed("its payload is not a sequence of events");
            whole = false;
            ControlFlow::Break(())
        }
    })?;
    Ok((b.finish(r), whole))
}

fn note(f: &mut Option<Box<(ProblemKind, String)>>, kind: ProblemKind, why: String) {
    if f.is_none() {
        *f = Some(Box::new((kind, why)));
    }
}

/// A [`Digest`] built one event at a time, in tx_seq order: for readers
/// that have a transaction's events as a stream (an export) rather than as
/// a record's bytes.
#[derive(Debug, Clone)]
pub struct DigestBuilder {
    d: Digest,
    tx_id: Option<u64>,
    /// What version 2 frames take from the transaction's record.
    base: Base,
}

impl DigestBuilder {
    /// For the transaction `base` names (its link's first event and tx_id).
    pub fn new(base: Base) -> Self {
        DigestBuilder {
            d: Digest {
                count: 0,
                first_id: None,
                last_id: None,
                last_hash: ZERO_HASH,
                fault: None,
            },
            tx_id: None,
            base,
        }
    }

    /// The next event.
    pub fn push(&mut self, e: &Framed) {
        let d = &mut self.d;
        d.count += 1;
        match e.header(self.base) {
            Ok(h) => {
                if h.tx_seq != d.count {
                    // A later position: events before it are gone; an
                    // earlier one: it is one too many.
                    let kind = if h.tx_seq > d.count {
                        ProblemKind::EventMissing
                    } else {
                        ProblemKind::EventInserted
                    };
                    note(
                        &mut d.fault,
                        kind,
                        format!(
                            "event {} is at tx_seq {} in position {}",
                            h.id, h.tx_seq, d.count
                        ),
                    );
                }
                match self.tx_id {
                    Some(t) if t != h.tx_id => note(
                        &mut d.fault,
                        ProblemKind::EventInserted,
                        format!("event {} belongs to tx {}", h.id, h.tx_id),
                    ),
                    _ => self.tx_id = Some(h.tx_id),
                }
                if let Some(l) = d.last_id.filter(|&l| l >= h.id) {
                    note(
                        &mut d.fault,
                        ProblemKind::ContentChanged,
                        format!("event {} follows event {l}", h.id),
                    );
                }
                d.first_id.get_or_insert(h.id);
                d.last_id = Some(h.id);
            }
            Err(_) => note(
                &mut d.fault,
                ProblemKind::ContentChanged,
                format!("event {} of the payload is unreadable", d.count),
            ),
        }
        d.last_hash = e.hash(&d.last_hash, self.base);
    }

    /// How many events were pushed.
    pub fn count(&self) -> i64 {
        self.d.count
    }

    /// The hash of the last event pushed (zero before the first).
    pub fn last_hash(&self) -> Hash {
        self.d.last_hash
    }

    /// A part of the stream that is not a sequence of events.
    pub fn malformed(&mut self, why: &str) {
        note(
            &mut self.d.fault,
            ProblemKind::ContentChanged,
            why.to_string(),
        );
    }

    /// The digest, checked against the record's own columns.
    pub fn finish(self, r: &Record) -> Digest {
        let mut d = self.d;
        if let Some(t) = self.tx_id.filter(|&t| t != r.tx_id) {
            note(
                &mut d.fault,
                ProblemKind::LinkChanged,
                format!("its events belong to tx {t}"),
            );
        }
        if d.count != r.event_count {
            let kind = if d.count > r.event_count {
                ProblemKind::EventInserted
            } else {
                ProblemKind::EventMissing
            };
            note(
                &mut d.fault,
                kind,
                format!("it holds {} event(s), not {}", d.count, r.event_count),
            );
        }
        if d.first_id.is_some_and(|f| f != r.first_event)
            || d.last_id.is_some_and(|l| l != r.last_event)
        {
            note(
                &mut d.fault,
                ProblemKind::LinkChanged,
                format!(
                    "its events run {}..{}, not {}..{}",
                    d.first_id.unwrap_or(0),
                    d.last_id.unwrap_or(0),
                    r.first_event,
                    r.last_event
                ),
            );
        }
        d
    }
}

/// Hash a transaction's events and check their structure against the
/// record's own columns.
pub fn digest<'a>(
    r: &Record,
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
) -> Digest {
    digest_each(r, segments, payload, |_| {}).0
}

/// As [`digest`], with each event's hash too, in order (for the record's
/// leaf in its chain's Merkle tree): None if the payload is not a
/// sequence of events.
pub fn digest_and_hashes<'a>(
    r: &Record,
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
) -> (Digest, Option<Vec<Hash>>) {
    let mut hashes = Vec::new();
    let (d, whole) = digest_each(r, segments, payload, |h| hashes.push(h));
    (d, whole.then_some(hashes))
}

/// The digest, handing each event's hash to `each`; and whether the
/// payload was a whole sequence of events.
fn digest_each<'a>(
    r: &Record,
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
    mut each: impl FnMut(Hash),
) -> (Digest, bool) {
    let mut b = DigestBuilder::new(r.base());
    for e in merged(segments, payload) {
        match e {
            Ok(e) => {
                b.push(&e);
                each(b.last_hash());
            }
            Err(_) => {
                b.malformed("its payload is not a sequence of events");
                return (b.finish(r), false);
            }
        }
    }
    (b.finish(r), true)
}

fn short(h: &Hash) -> String {
    hex::encode(&h[..6])
}

/// One chain's walk, in seq order.
struct Walk {
    chain_id: i32,
    prev_seq: i64,
    prev_hash: Hash,
    prev_last_event: i64,
    expect: Option<ChainHead>,
    expect_met: bool,
    /// The next record continues an anchor that no PURGE event records.
    at_unproven_anchor: bool,
}

impl Walk {
    fn new(
        chain_id: i32,
        expect: Option<ChainHead>,
        anchor: Option<&ChainHead>,
        claimed: &[ChainHead],
    ) -> Self {
        Walk {
            chain_id,
            prev_seq: anchor.map_or(0, |a| a.seq),
            prev_hash: anchor.map_or(ZERO_HASH, |a| a.link_hash),
            prev_last_event: anchor.map_or(0, |a| a.last_event),
            // A checkpoint at the anchor must name the anchor's hash; one
            // before it was met before the purge.
            expect_met: match (&expect, anchor) {
                (Some(e), Some(a)) => {
                    e.seq < a.seq || (e.seq == a.seq && e.link_hash == a.link_hash)
                }
                _ => false,
            },
            expect,
            at_unproven_anchor: anchor.is_some_and(|a| !claimed.contains(a)),
        }
    }

    fn step(&mut self, v: &mut Verdict, r: &Record, d: &Digest) {
        v.links_checked += 1;
        v.events_checked += d.count;
        let at = Some(r.first_event);
        // Only a problem needs the record's name: not formatted otherwise.
        let name = || {
            format!(
                "record {}/{} (tx {}, events {}..{})",
                r.chain_id, r.seq, r.tx_id, r.first_event, r.last_event
            )
        };
        if r.seq > self.prev_seq + 1 {
            v.push(
                ProblemKind::LinkMissing,
                at,
                format!(
                    "chain {} lacks records {}..{} (after event {})",
                    r.chain_id,
                    self.prev_seq + 1,
                    r.seq - 1,
                    self.prev_last_event
                ),
            );
        } else if r.seq <= self.prev_seq {
            v.push(
                ProblemKind::LinkChanged,
                at,
                format!("chain {} repeats seq {}", r.chain_id, r.seq),
            );
        } else if let Some(fault) = &d.fault {
            let (kind, why) = &**fault;
            v.push(*kind, at, format!("{}: {why}", name()));
        } else {
            let link_hash = r.link_hash_after(&self.prev_hash, &d.last_hash);
            if link_hash != r.link_hash && self.at_unproven_anchor {
                v.push(
                    ProblemKind::LinkBroken,
                    at,
                    format!(
                        "{} does not hash to what was committed when chained to the anchor it continues (seq {}, {}…): it or the anchor was changed",
                        name(),
                        self.prev_seq,
                        short(&self.prev_hash)
                    ),
                );
            } else if link_hash != r.link_hash {
                v.push(
                    ProblemKind::ContentChanged,
                    at,
                    format!(
                        "{} hashes to {}… but was committed as {}…: it, or the hash of the record before it, was changed after commit",
                        name(),
                        short(&link_hash),
                        short(&r.link_hash)
                    ),
                );
            }
        }
        if let Some(e) = &self.expect {
            if r.seq == e.seq {
                self.expect_met = true;
                if r.link_hash != e.link_hash {
                    v.push(
                        ProblemKind::ChainRewritten,
                        at,
                        format!(
                            "chain {} at seq {} hashes to {}… but the checkpoint holds {}…",
                            r.chain_id,
                            e.seq,
                            short(&r.link_hash),
                            short(&e.link_hash)
                        ),
                    );
                }
            }
        }
        self.at_unproven_anchor = false;
        self.prev_seq = r.seq;
        self.prev_hash = r.link_hash;
        self.prev_last_event = r.last_event;
    }

    fn finish(&self, v: &mut Verdict) {
        match &self.expect {
            Some(e) if !self.expect_met => {
                let (kind, detail) = if e.seq <= self.prev_seq {
                    (
                        ProblemKind::ChainRewritten,
                        format!(
                            "chain {} has no record or anchor at the checkpoint's seq {} (up to event {}) with the checkpoint's hash",
                            self.chain_id, e.seq, e.last_event
                        ),
                    )
                } else {
                    (
                        ProblemKind::Truncated,
                        format!(
                            "chain {} ends at seq {} but the checkpoint holds seq {} (up to event {})",
                            self.chain_id, self.prev_seq, e.seq, e.last_event
                        ),
                    )
                };
                v.push(kind, Some(e.last_event), detail)
            }
            _ => {}
        }
    }
}

/// One chain's walk, and its records that came before their predecessors.
struct ChainState {
    walk: Walk,
    /// Records ahead of the walk, by seq: (record, digest).
    ahead: BTreeMap<i64, (Record, Digest)>,
}

impl ChainState {
    fn feed(&mut self, v: &mut Verdict, r: Record, d: Digest) {
        if r.seq > self.walk.prev_seq + 1 {
            // Its predecessor may come later; a duplicate seq is reported
            // when it is walked.
            if let Some((r, d)) = self.ahead.insert(r.seq, (r, d)) {
                self.walk.step(v, &r, &d);
            }
            return;
        }
        self.walk.step(v, &r, &d);
        self.drain(v, false);
    }

    /// Walk the records that now follow on; with `all`, every one left,
    /// in seq order (the gaps before them are reported as missing).
    fn drain(&mut self, v: &mut Verdict, all: bool) {
        while let Some(entry) = self.ahead.first_entry() {
            if !all && *entry.key() != self.walk.prev_seq + 1 {
                break;
            }
            let (r, d) = entry.remove();
            self.walk.step(v, &r, &d);
        }
    }
}

/// Chains followed forward from known heads, one record at a time: what a
/// live reader (`audit-log tail`) checks before it hands a record on. Each
/// chain's records must come in seq order; a head is trusted as given (it
/// was checked when it was reached), and a chain with no head starts at its
/// first record.
pub struct Follower {
    walks: BTreeMap<i32, Walk>,
}

impl Follower {
    pub fn new(heads: &[ChainHead]) -> Self {
        let walks = heads
            .iter()
            .map(|h| {
                let w = Walk::new(h.chain, None, Some(h), std::slice::from_ref(h));
                (h.chain, w)
            })
            .collect();
        Follower { walks }
    }

    /// Check `r`, whose events hash to `d`, as the next record of its chain:
    /// the first problem found, or its new head.
    pub fn step(&mut self, r: &Record, d: &Digest) -> Result<ChainHead, Problem> {
        let w = self
            .walks
            .entry(r.chain_id)
            .or_insert_with(|| Walk::new(r.chain_id, None, None, &[]));
        let mut v = Verdict::default();
        // A record out of order is not walked: the chain stays where it was.
        let saved = (w.prev_seq, w.prev_hash, w.prev_last_event);
        w.step(&mut v, r, d);
        match v.problems.into_iter().next() {
            Some(p) => {
                (w.prev_seq, w.prev_hash, w.prev_last_event) = saved;
                Err(p)
            }
            None => Ok(ChainHead::from(r)),
        }
    }

    /// Continue a chain from `head` (an anchor a purge left), whatever was
    /// followed of it before.
    pub fn restart(&mut self, head: &ChainHead) {
        self.walks.insert(
            head.chain,
            Walk::new(head.chain, None, Some(head), std::slice::from_ref(head)),
        );
    }

    /// Every chain's head, in chain order.
    pub fn heads(&self) -> Vec<ChainHead> {
        self.walks
            .values()
            .filter(|w| w.prev_seq > 0)
            .map(|w| ChainHead {
                chain: w.chain_id,
                seq: w.prev_seq,
                link_hash: w.prev_hash,
                last_event: w.prev_last_event,
            })
            .collect()
    }
}

/// Where each chain's state is, by chain id: in a table for the ids
/// `audit_log.chains` gives (0 to 1023), without a map lookup per record;
/// in a map for any other.
#[derive(Default)]
struct ChainIndex {
    direct: Vec<Option<usize>>,
    other: BTreeMap<i32, usize>,
}

impl ChainIndex {
    const DIRECT: usize = 1024;

    fn direct_slot(chain: i32) -> Option<usize> {
        usize::try_from(chain).ok().filter(|&c| c < Self::DIRECT)
    }

    fn get(&self, chain: i32) -> Option<usize> {
        match Self::direct_slot(chain) {
            Some(c) => self.direct.get(c).copied().flatten(),
            None => self.other.get(&chain).copied(),
        }
    }

    fn insert(&mut self, chain: i32, at: usize) {
        match Self::direct_slot(chain) {
            Some(c) => {
                if self.direct.len() <= c {
                    self.direct.resize(c + 1, None);
                }
                self.direct[c] = Some(at);
            }
            None => {
                self.other.insert(chain, at);
            }
        }
    }
}

/// Verify a log of records, each with the digest of its events, in any
/// order: a sequential scan reads them in the order they lie on disk, which
/// within a chain is almost always seq order, so the records held back
/// waiting for a predecessor stay few. Chains that purge() shortened start
/// from their anchors, each of which some PURGE event must record
/// (`claimed`: the anchors the log's PURGE events record). Errors of the
/// stream itself are passed through.
pub fn verify_records<E>(
    records: impl Iterator<Item = Result<(Record, Digest), E>>,
    checkpoint: Option<&Checkpoint>,
    anchors: &[ChainHead],
    claimed: &[ChainHead],
) -> Result<Verdict, E> {
    let anchor = |chain: i32| anchors.iter().find(|a| a.chain == chain);
    let mut expected: BTreeMap<i32, ChainHead> = checkpoint
        .map(|cp| cp.chains.iter().map(|h| (h.chain, h.clone())).collect())
        .unwrap_or_default();
    let mut v = Verdict::default();
    // Each chain's state, found by its id: directly for the ids
    // `audit_log.chains` gives (0 to 1023), through a map for any other.
    let mut chains: Vec<ChainState> = Vec::new();
    let mut index = ChainIndex::default();
    // Each transaction's key, to find one stored twice (a replayed record,
    // its hash recomputed at the tail of a chain): 8 bytes per transaction.
    let mut keys: Vec<i64> = Vec::new();
    for item in records {
        let (r, d) = item?;
        keys.push(r.first_event);
        let at = match index.get(r.chain_id) {
            Some(at) => at,
            None => {
                chains.push(ChainState {
                    walk: Walk::new(
                        r.chain_id,
                        expected.remove(&r.chain_id),
                        anchor(r.chain_id),
                        claimed,
                    ),
                    ahead: BTreeMap::new(),
                });
                index.insert(r.chain_id, chains.len() - 1);
                chains.len() - 1
            }
        };
        chains[at].feed(&mut v, r, d);
    }
    // Problems at the end come in chain order, whatever order chains came in.
    chains.sort_unstable_by_key(|c| c.walk.chain_id);
    for state in &mut chains {
        state.drain(&mut v, true);
        state.walk.finish(&mut v);
    }
    for (chain_id, e) in expected {
        Walk::new(chain_id, Some(e), anchor(chain_id), claimed).finish(&mut v);
    }
    keys.sort_unstable();
    for w in keys.windows(2).filter(|w| w[0] == w[1]) {
        v.push(
            ProblemKind::EventInserted,
            Some(w[0]),
            format!(
                "the transaction whose first event is {} is recorded more than once",
                w[0]
            ),
        );
    }
    crate::verify::check_anchors(&mut v, anchors, claimed);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1 frame's canonical encoding (these tests build v1).
    fn v1(f: Framed<'_>) -> &[u8] {
        match f {
            Framed::V1(c) => c,
            Framed::V2(_) => panic!("a version 2 frame"),
        }
    }

    const BASE: Base = Base {
        first_event: 10,
        tx_id: 77,
    };

    use crate::encoding::encode_event;

    fn event(id: i64, tx_seq: i64) -> Event {
        Event {
            id,
            tx_id: 77,
            tx_seq,
            tx_first: 10,
            recorded_at: 1,
            statement_at: 2,
            session_user_name: "alice".into(),
            current_user_name: "app".into(),
            application_name: None,
            client_addr: Some("10.0.0.1".into()),
            context: None,
            table_schema: "public".into(),
            table_name: "t".into(),
            op: "INSERT".into(),
            old_row: None,
            new_row: Some(Json::Value(serde_json::json!({"id": id, "v": "x"}))),
            prev_hash: ZERO_HASH,
            hash: ZERO_HASH,
        }
    }

    #[test]
    fn an_event_encoded_in_place_is_framed_as_put_event_frames_it() {
        let mut e = event(12, 3);
        // The rows as capture hands them: already encoded.
        let mut row = Vec::new();
        crate::encoding::encode_json(&serde_json::json!({"id": 12, "v": "x"}), &mut row);
        e.new_row = Some(Json::Encoded(row.clone()));
        e.old_row = Some(Json::Encoded(row));
        e.application_name = Some("psql".into());
        let mut canonical = Vec::new();
        crate::encoding::encode_event(&e, &mut canonical);
        let mut want = b"prefix".to_vec();
        put_event(&mut want, &canonical);
        let mut got = b"prefix".to_vec();
        let at = encode_event_into(&mut got, &e);
        assert_eq!(got, want);
        assert_eq!(&got[at..], &canonical[..]);
        // The size hint is exact for an event whose JSON is encoded.
        assert_eq!(crate::encoding::event_size_hint(&e), canonical.len());
    }
    /// Packed (version 2) frames of the events of `tx_seq` values `seqs`
    /// (ids 100 + tx_seq) of a transaction whose first event is 101.
    fn packed_frames(seqs: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &s in seqs {
            let mut c = Vec::new();
            encode_event(&event(100 + s, s), &mut c);
            crate::encoding::packed::pack(&c, 101, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn packed_payloads_hash_decode_and_merge_like_framed_ones() {
        let base = Base {
            first_event: 101,
            tx_id: 77,
        };
        let n = 6;
        let mut want = Vec::new();
        let mut prev = ZERO_HASH;
        for s in 1..=n {
            let e = event(100 + s, s);
            let mut c = Vec::new();
            encode_event(&e, &mut c);
            let mut f = Vec::new();
            crate::encoding::packed::pack(&c, 101, &mut f).unwrap();
            // 0xA2, the id's and tx_seq's varints and the body's length,
            // one byte each here, then the body.
            assert_eq!(f[0], crate::encoding::packed::FRAME);
            assert_eq!(usize::from(f[3]), f.len() - 4);
            prev = crate::hash::event_hash_v2(&prev, 100 + s, 77, s, &f[4..]);
            want.push(Event {
                tx_first: 101,
                prev_hash: if s == 1 {
                    ZERO_HASH
                } else {
                    want.last().map_or(ZERO_HASH, |w: &Event| w.hash)
                },
                hash: prev,
                ..e
            });
        }
        let r = Record {
            chain_id: 0,
            seq: 1,
            tx_id: 77,
            first_event: 101,
            last_event: 100 + n,
            event_count: n,
            committed_at: 5,
            link_hash: ZERO_HASH,
        };
        let whole = packed_frames(&(1..=n).collect::<Vec<_>>());
        // The packed form is smaller than the canonical one it stands for.
        assert!(whole.len() + 30 * n as usize <= framed(&(1..=n).collect::<Vec<_>>()).len());
        let d = digest(&r, [], &whole);
        assert!(d.fault.is_none(), "{:?}", d.fault);
        assert_eq!(
            (d.count, d.first_id, d.last_id),
            (n, Some(101), Some(100 + n))
        );
        assert_eq!(d.last_hash, prev);
        // Spilled in two segments, merged with the rest in memory.
        let segs = [packed_frames(&[1, 2]), packed_frames(&[4, 5])];
        let rest = packed_frames(&[3, 6]);
        assert_eq!(digest(&r, segs.iter().map(Vec::as_slice), &rest), d);
        let got: Vec<Event> = decoded(segs.iter().map(Vec::as_slice), &rest, base)
            .collect::<Result<_, _>>()
            .unwrap();
        // The same fields (rows compared encoded) and hashes.
        let key = |e: &Event| {
            let mut c = Vec::new();
            encode_event(e, &mut c);
            (c, e.tx_first, e.prev_hash, e.hash)
        };
        assert_eq!(
            got.iter().map(key).collect::<Vec<_>>(),
            want.iter().map(key).collect::<Vec<_>>()
        );
        // Not knowing the tx_id, a reader cannot decode them.
        let blind = Base::without_tx_id(101);
        assert!(decoded([], &whole, blind).next().unwrap().is_err());
        // Any byte changed: the digest sees it (a fault, or another hash).
        for i in 0..whole.len() {
            let mut bad = whole.clone();
            bad[i] ^= 0x01;
            let b = digest(&r, [], &bad);
            assert!(b.fault.is_some() || b.last_hash != d.last_hash, "byte {i}");
        }
        // Another tx_id or first event in the record: other hashes.
        let other = Record {
            tx_id: 78,
            ..r.clone()
        };
        assert_ne!(digest(&other, [], &whole).last_hash, d.last_hash);
        let moved = Record {
            first_event: 102,
            ..r.clone()
        };
        assert!(digest(&moved, [], &whole).fault.is_some());
    }

    /// Framed events of `tx_seq` values `seqs`, as a segment holds them.
    fn framed(seqs: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &s in seqs {
            encode_event_into(&mut out, &event(100 + s, s));
        }
        out
    }

    #[test]
    fn runs_layout_leaves_runs_alone_and_cuts_a_segment_that_is_not_one() {
        // As capture writes them now: runs, in order of part.
        let good = vec![(1, framed(&[1, 2, 3])), (4, framed(&[4, 5]))];
        assert_eq!(runs_layout(&good), Ok(None));
        // As 0.2.0 wrote them: event 3 kept in memory while 4..6 spilled in
        // a savepoint (segment 4), then 3 and 7..9 spilled as one (segment 3).
        let bad = vec![(3, framed(&[3, 7, 8, 9])), (4, framed(&[4, 5, 6]))];
        let fixed = runs_layout(&bad).unwrap().unwrap();
        assert_eq!(
            fixed,
            vec![
                (3, framed(&[3])),
                (4, framed(&[4, 5, 6])),
                (7, framed(&[7, 8, 9]))
            ]
        );
        assert_eq!(runs_layout(&fixed), Ok(None));
        // The events, merged with a payload, come out in tx_seq order, as
        // those of the layout capture would have written.
        let payload = framed(&[1, 2, 10]);
        let order = |segs: &[(i32, Vec<u8>)]| -> Vec<i64> {
            merged(segs.iter().map(|(_, b)| b.as_slice()), &payload)
                .map(|e| e.unwrap().tx_seq().unwrap())
                .collect()
        };
        assert_eq!(order(&fixed), (1..=10).collect::<Vec<_>>());
        assert_ne!(order(&bad), (1..=10).collect::<Vec<_>>());
        // A segment whose part is not its first tx_seq is cut too.
        assert_eq!(
            runs_layout(&[(2, framed(&[3, 4]))]),
            Ok(Some(vec![(3, framed(&[3, 4]))]))
        );
        // Refused: an empty or unreadable segment, and two pieces that
        // would start at the same tx_seq (an event twice).
        assert!(runs_layout(&[(1, Vec::new())]).is_err());
        assert!(runs_layout(&[(1, vec![0, 0, 0, 9, 1])]).is_err());
        assert!(runs_layout(&[(1, framed(&[1, 5])), (5, framed(&[5, 6]))]).is_err());
    }

    /// A record of `n` events with ids 100·seq + 10, + 12, + 14, … and its payload.
    fn record(chain: i32, seq: i64, prev: Hash, n: i64) -> (Record, Vec<u8>) {
        let base = 1000 * i64::from(chain) + 100 * seq + 10;
        let mut payload = Vec::new();
        let mut h = ZERO_HASH;
        for i in 0..n {
            let mut e = event(base + 2 * i, i + 1);
            e.prev_hash = h;
            let mut buf = Vec::new();
            encode_event(&e, &mut buf);
            h = crate::hash::event_hash(&e);
            put_event(&mut payload, &buf);
        }
        let mut r = Record {
            chain_id: chain,
            seq,
            tx_id: 77,
            first_event: base,
            last_event: base + 2 * (n - 1),
            event_count: n,
            committed_at: 5,
            link_hash: ZERO_HASH,
        };
        r.link_hash = r.link(prev, h).link_hash;
        (r, payload)
    }

    fn chain(n: i64) -> Vec<(Record, Vec<u8>)> {
        let mut out: Vec<(Record, Vec<u8>)> = Vec::new();
        for s in 1..=n {
            let prev = out.last().map_or(ZERO_HASH, |(r, _)| r.link_hash);
            out.push(record(0, s, prev, s));
        }
        out
    }

    fn check(log: &[(Record, Vec<u8>)], cp: Option<&Checkpoint>) -> Verdict {
        let it = log
            .iter()
            .map(|(r, p)| Ok::<_, ()>((r.clone(), digest(r, [], p))));
        verify_records(it, cp, &[], &[]).unwrap()
    }

    /// Chain ids in the table, past it and negative, arriving in any
    /// order: each chain is walked on its own, and what the end of the walk
    /// finds (here, each chain lacks its first record) comes in chain order.
    #[test]
    fn chains_of_any_id_are_walked_apart() {
        let ids = [-5, 0, 1023, 1024, i32::MAX];
        let mut log = Vec::new();
        for &c in &ids {
            let first = record(c, 1, ZERO_HASH, 1).0;
            let second = record(c, 2, first.link_hash, 2);
            let third = record(c, 3, second.0.link_hash, 1);
            log.push(second);
            log.push(third);
        }
        let forward = check(&log, None);
        log.reverse();
        let backward = check(&log, None);
        assert_eq!(forward, backward);
        assert_eq!((forward.links_checked, forward.events_checked), (10, 15));
        let missing: Vec<&str> = forward.problems.iter().map(|p| p.detail.as_str()).collect();
        assert_eq!(missing.len(), ids.len(), "{missing:?}");
        for (p, c) in missing.iter().zip(ids) {
            assert!(
                p.starts_with(&format!("chain {c} lacks records 1..1")),
                "{p}"
            );
        }
    }

    #[test]
    fn an_intact_log_verifies_and_its_hashes_are_v1s() {
        let log = chain(4);
        let v = check(&log, None);
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!((v.events_checked, v.links_checked), (10, 4));
        // The payload hashes to what format v1 stored for the same events.
        let (r, p) = &log[2];
        let evs: Vec<Event> = {
            let mut prev = ZERO_HASH;
            events(p)
                .map(|e| {
                    let e = decode_event(v1(e.unwrap()), r.first_event, prev).unwrap();
                    prev = e.hash;
                    e
                })
                .collect()
        };
        let mut orig = event(314, 3);
        orig.prev_hash = evs[1].hash;
        assert_eq!(evs[2].hash, crate::hash::event_hash(&orig));
        assert_eq!(
            evs[2].new_row,
            Some(Json::Encoded({
                let mut b = Vec::new();
                crate::encoding::encode_json(&serde_json::json!({"id": 314, "v": "x"}), &mut b);
                b
            }))
        );
    }

    #[test]
    fn every_edit_is_caught() {
        let log = chain(4);
        // A byte of a row changed.
        let mut t = log.clone();
        let n = t[2].1.len();
        t[2].1[n - 1] ^= 1;
        let v = check(&t, None);
        assert_eq!(
            v.first().map(|p| (p.kind, p.event_id)),
            Some((ProblemKind::ContentChanged, Some(310)))
        );
        // A record removed from the middle.
        let mut t = log.clone();
        t.remove(1);
        assert_eq!(
            check(&t, None).first().unwrap().kind,
            ProblemKind::LinkMissing
        );
        // An event dropped from a payload, the count adjusted.
        let mut t = log.clone();
        let first = v1(events(&t[2].1).next().unwrap().unwrap()).len() + 4;
        t[2].1.drain(..first);
        t[2].0.event_count -= 1;
        assert_eq!(
            check(&t, None).first().unwrap().kind,
            ProblemKind::EventMissing
        );
        // A column of the record changed.
        let mut t = log.clone();
        t[3].0.committed_at += 1;
        assert_eq!(
            check(&t, None).first().unwrap().kind,
            ProblemKind::ContentChanged
        );
        // A stored hash recomputed after an edit: the next record breaks.
        let mut t = log.clone();
        t[1].0.committed_at += 1;
        t[1].0.link_hash = t[1]
            .0
            .link(t[0].0.link_hash, digest(&t[1].0, [], &t[1].1).last_hash)
            .link_hash;
        let v = check(&t, None);
        assert!(!v.ok());
        assert!(v.problems[0].detail.contains("record 0/3"));
        // A record replayed at the tail, its hash recomputed.
        let mut t = log.clone();
        let mut again = t[1].clone();
        again.0.seq = 5;
        again.0.link_hash = again
            .0
            .link(t[3].0.link_hash, digest(&again.0, [], &again.1).last_hash)
            .link_hash;
        t.push(again);
        let v = check(&t, None);
        assert_eq!(v.problem_count, 1, "{:?}", v.problems);
        assert_eq!(v.first().unwrap().kind, ProblemKind::EventInserted);
        // A truncated payload.
        let mut t = log.clone();
        t[3].1.pop();
        assert_eq!(
            check(&t, None).first().unwrap().kind,
            ProblemKind::ContentChanged
        );
    }

    #[test]
    fn any_reading_order_gives_the_same_verdict() {
        let log = chain(6);
        let mut shuffled = log.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        assert!(check(&shuffled, None).ok());
        // A removed record is reported the same way in any order.
        let mut t = log.clone();
        t.remove(2);
        let ordered = check(&t, None);
        t.reverse();
        assert_eq!(check(&t, None).first(), ordered.first());
        // Two chains, interleaved.
        let mut two: Vec<(Record, Vec<u8>)> = Vec::new();
        for s in 1..=3 {
            let prev = two
                .iter()
                .rev()
                .find(|(r, _)| r.chain_id == 1)
                .map_or(ZERO_HASH, |(r, _)| r.link_hash);
            two.push(record(1, s, prev, 1));
        }
        let mut all = log.clone();
        for (i, x) in two.into_iter().rev().enumerate() {
            all.insert(i * 2, x);
        }
        let v = check(&all, None);
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.links_checked, 9);
    }

    #[test]
    fn checkpoints_catch_truncation_and_rewrites() {
        let log = chain(4);
        let cp = Checkpoint {
            format: crate::model::CHECKPOINT_FORMAT.into(),
            database: None,
            system_identifier: None,
            taken_at: None,
            trees: vec![],
            chains: vec![ChainHead {
                chain: 0,
                seq: 3,
                link_hash: log[2].0.link_hash,
                last_event: 14,
            }],
        };
        assert!(check(&log, Some(&cp)).ok());
        assert_eq!(
            check(&log[..2], Some(&cp)).first().unwrap().kind,
            ProblemKind::Truncated
        );
        // The whole chain recomputed with one edit: only the checkpoint sees it.
        let mut t: Vec<(Record, Vec<u8>)> = Vec::new();
        for (r, p) in &log {
            let mut r = r.clone();
            r.committed_at += 1;
            let prev = t.last().map_or(ZERO_HASH, |(r, _)| r.link_hash);
            r.link_hash = r.link(prev, digest(&r, [], p).last_hash).link_hash;
            t.push((r, p.clone()));
        }
        assert!(check(&t, None).ok());
        assert_eq!(
            check(&t, Some(&cp)).first().unwrap().kind,
            ProblemKind::ChainRewritten
        );
    }

    #[test]
    fn segments_and_payload_hash_as_one_stream() {
        let (r, p) = record(0, 1, ZERO_HASH, 5);
        let cut = {
            let mut it = events(&p);
            it.next();
            it.next();
            p.len() - it.map(|e| v1(e.unwrap()).len() + 4).sum::<usize>()
        };
        let whole = digest(&r, [], &p);
        assert!(whole.fault.is_none());
        // A spilled prefix.
        assert_eq!(digest(&r, [&p[..cut]], &p[cut..]), whole);
        // Spilled in two runs.
        let mid = cut + v1(events(&p[cut..]).next().unwrap().unwrap()).len() + 4;
        assert_eq!(digest(&r, [&p[..cut], &p[mid..]], &p[cut..mid]), whole);
        // A run that a savepoint left in memory between two spilled ones.
        assert_eq!(
            digest(&r, [&p[cut..mid]], &[&p[..cut], &p[mid..]].concat()),
            whole
        );
        // A segment lost.
        assert!(digest(&r, [], &p[cut..]).fault.is_some());
        // An empty segment beside the events (no segment is ever empty).
        assert!(digest(&r, [&p[..0]], &p).fault.is_some());
        assert!(digest(&r, [&p[..cut], &p[..0]], &p[cut..]).fault.is_some());
    }

    /// Every way of putting six events into segments and a payload, and of
    /// cutting the spilled ones into segments: read one segment at a time,
    /// the events come as `merged` gives them, and hash to the same digest;
    /// a damaged stream stops where `merged`'s reader stops.
    #[test]
    fn segments_read_one_at_a_time_merge_as_when_held_whole() {
        let (r, p) = record(0, 1, ZERO_HASH, 6);
        let each: Vec<&[u8]> = events(&p)
            .map(|e| e.map(v1))
            .collect::<Result<_, _>>()
            .unwrap();
        let framed = |es: &[&[u8]]| {
            let mut out = Vec::new();
            for e in es {
                put_event(&mut out, e);
            }
            out
        };
        let streamed = |segs: &[Vec<u8>], payload: &[u8]| {
            let mut got: Vec<Result<Vec<u8>, Malformed>> = Vec::new();
            let owned = segs.iter().cloned().map(Ok::<_, ()>);
            for_each_merged(owned, payload, |e| {
                let stop = e.is_err();
                got.push(e.map(|e| v1(e).to_vec()));
                if stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
            got
        };
        let held = |segs: &[Vec<u8>], payload: &[u8]| {
            let mut got: Vec<Result<Vec<u8>, Malformed>> = Vec::new();
            for e in merged(segs.iter().map(Vec::as_slice), payload) {
                let stop = e.is_err();
                got.push(e.map(|e| v1(e).to_vec()));
                if stop {
                    break;
                }
            }
            got
        };
        let whole = digest(&r, [], &p);
        let mut cases = 0;
        for spilled in 0u32..64 {
            let (seg_events, pay_events): (Vec<_>, Vec<_>) =
                (0..6).partition(|i| spilled & (1 << i) != 0);
            let payload = framed(&pay_events.iter().map(|&i| each[i]).collect::<Vec<_>>());
            let cuts = seg_events.len().saturating_sub(1);
            for cut in 0u32..(1 << cuts) {
                let mut segs: Vec<Vec<u8>> = Vec::new();
                let mut run: Vec<&[u8]> = Vec::new();
                for (n, &i) in seg_events.iter().enumerate() {
                    run.push(each[i]);
                    if n == seg_events.len() - 1 || cut & (1 << n) != 0 {
                        segs.push(framed(&run));
                        run.clear();
                    }
                }
                assert_eq!(streamed(&segs, &payload), held(&segs, &payload));
                assert_eq!(
                    digest_streamed(&r, segs.iter().cloned().map(Ok::<_, ()>), &payload),
                    Ok(digest(&r, segs.iter().map(Vec::as_slice), &payload))
                );
                if segs.is_empty() {
                    assert_eq!(digest(&r, [], &payload).fault.is_none(), spilled == 0);
                }
                // Damaged: an empty segment first, or a torn one last.
                let mut bad = segs.clone();
                bad.insert(0, Vec::new());
                assert_eq!(streamed(&bad, &payload), held(&bad, &payload));
                let mut bad = segs.clone();
                bad.push(vec![0, 0, 0, 9, 1]);
                assert_eq!(streamed(&bad, &payload), held(&bad, &payload));
                let (d, hashes) = digest_and_hashes(&r, segs.iter().map(Vec::as_slice), &payload);
                assert_eq!(
                    digest_and_root_streamed(&r, segs.iter().cloned().map(Ok::<_, ()>), &payload),
                    Ok((d, hashes.map(|h| crate::tree::events_root(&h))))
                );
                let torn = digest_streamed(&r, bad.iter().cloned().map(Ok::<_, ()>), &payload);
                let (d, hashes) = digest_and_hashes(&r, bad.iter().map(Vec::as_slice), &payload);
                assert_eq!(
                    digest_and_root_streamed(&r, bad.iter().cloned().map(Ok::<_, ()>), &payload),
                    Ok((d, hashes.map(|h| crate::tree::events_root(&h))))
                );
                assert!(torn.is_ok_and(|d| d.fault.is_some()));
                cases += 1;
            }
        }
        assert_eq!(cases, 365);
        // Decoded one at a time, as decoded() decodes them whole: whole,
        // spilled in two, and torn.
        let list: Vec<&[u8]> = events(&p)
            .map(|e| e.map(v1))
            .collect::<Result<_, _>>()
            .unwrap();
        let spills = [
            (vec![], p.clone()),
            (
                vec![framed(&list[..2]), framed(&list[2..4])],
                framed(&list[4..]),
            ),
            (
                vec![framed(&list[..2]), vec![0, 0, 0, 9, 1]],
                framed(&list[4..]),
            ),
        ];
        for (segs, payload) in spills {
            let want: Vec<_> = decoded(segs.iter().map(Vec::as_slice), &payload, BASE).collect();
            let mut c = DecodedCursor::new(&payload, !segs.is_empty(), BASE);
            let mut given = segs.into_iter();
            let mut got = Vec::new();
            loop {
                if c.wants_segment() {
                    c.give_segment(given.next());
                }
                match c.next_event() {
                    Some(e) => got.push(e),
                    None => break,
                }
            }
            assert_eq!(got, want);
        }
        // The tree's summary, streamed, for transactions of 0 to 9 events
        // (each size a different shape of tree), in two segments and a payload.
        for n in 0..10 {
            let (_, p) = record(0, 1, ZERO_HASH, n);
            let hashes = crate::tree::event_hashes([], &p, BASE).unwrap();
            let list: Vec<&[u8]> = events(&p)
                .map(|e| e.map(v1))
                .collect::<Result<_, _>>()
                .unwrap();
            let a = list.len() / 3;
            let b = 2 * list.len() / 3;
            let segs = [framed(&list[..a]), framed(&list[a..b])]
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(Ok::<_, ()>);
            assert_eq!(
                crate::tree::summary_streamed(segs, &framed(&list[b..]), BASE),
                Ok(Ok(crate::tree::summary(&hashes)))
            );
        }
        let torn = [Ok::<_, ()>(vec![0, 0, 0, 9, 1])];
        assert!(crate::tree::summary_streamed(torn, &p, BASE)
            .unwrap()
            .is_err());
        assert!(whole.fault.is_none());
        // An error reading a segment is the caller's, not a verdict.
        let failing = [Ok(p.clone()), Err("lost the connection")];
        assert_eq!(
            digest_streamed(&r, failing, &[]),
            Err("lost the connection")
        );
    }

    #[test]
    fn a_follower_continues_from_a_head_and_stops_at_a_break() {
        let log = chain(5);
        let d = |(r, p): &(Record, Vec<u8>)| digest(r, [], p);
        // Started at the head after record 2: records 3..5 follow on.
        let mut f = Follower::new(&[ChainHead::from(&log[1].0)]);
        for x in &log[2..] {
            assert_eq!(f.step(&x.0, &d(x)), Ok(ChainHead::from(&x.0)));
        }
        assert_eq!(f.heads(), vec![ChainHead::from(&log[4].0)]);
        // A chain it has no head for starts at seq 1.
        let mut f = Follower::new(&[]);
        assert!(f.step(&log[0].0, &d(&log[0])).is_ok());
        // A gap, a repeat, an edit and a head from another log each refuse
        // the record and leave the chain where it was.
        let mut f = Follower::new(&[ChainHead::from(&log[0].0)]);
        let gap = f.step(&log[2].0, &d(&log[2])).unwrap_err();
        assert_eq!(gap.kind, ProblemKind::LinkMissing);
        let again = f.step(&log[0].0, &d(&log[0])).unwrap_err();
        assert_eq!(again.kind, ProblemKind::LinkChanged);
        let mut edited = log[1].clone();
        let n = edited.1.len();
        edited.1[n - 1] ^= 1;
        let e = f.step(&edited.0, &d(&edited)).unwrap_err();
        assert_eq!(e.kind, ProblemKind::ContentChanged);
        assert_eq!(f.heads(), vec![ChainHead::from(&log[0].0)]);
        assert!(f.step(&log[1].0, &d(&log[1])).is_ok());
        let mut other = ChainHead::from(&log[0].0);
        other.link_hash[0] ^= 1;
        let mut f = Follower::new(&[other]);
        assert_eq!(
            f.step(&log[1].0, &d(&log[1])).unwrap_err().kind,
            ProblemKind::ContentChanged
        );
    }
}

#[cfg(test)]
mod logical_tests {
    use super::*;

    /// Events stored packed, read back through the logical form (as an
    /// export gives them): their version 2 hashes verify.
    #[test]
    fn packed_events_verify_in_the_logical_form() {
        use crate::encoding::packed;
        let base = Base {
            first_event: 101,
            tx_id: 77,
        };
        let mut payload = Vec::new();
        for s in 1..=3i64 {
            let e = Event {
                id: 100 + s,
                tx_id: 77,
                tx_seq: s,
                tx_first: 101,
                recorded_at: 5,
                statement_at: 2,
                session_user_name: "alice".into(),
                current_user_name: "alice".into(),
                application_name: None,
                client_addr: None,
                context: None,
                table_schema: "public".into(),
                table_name: "t".into(),
                op: "INSERT".into(),
                old_row: None,
                new_row: Some(Json::Value(serde_json::json!({"id": s}))),
                prev_hash: ZERO_HASH,
                hash: ZERO_HASH,
            };
            packed::encode_event(&e, 101, &mut payload).unwrap();
        }
        let events: Vec<Event> = decoded([], &payload, base)
            .collect::<Result<_, _>>()
            .unwrap();
        let r = Record {
            chain_id: 0,
            seq: 1,
            tx_id: 77,
            first_event: 101,
            last_event: 103,
            event_count: 3,
            committed_at: 9,
            link_hash: ZERO_HASH,
        };
        let d = digest(&r, [], &payload);
        let link = r.link(ZERO_HASH, d.last_hash);
        let v = crate::verify::verify_streams(events.into_iter().map(Ok::<_, ()>), &[link], None)
            .unwrap();
        assert!(v.ok(), "{:?}", v.problems);
    }
}

//! Offline verification of exports, with no database: the same checks as
//! `audit_log.verify()`, by the same code (`audit_log_core::record`: each
//! link line with its transaction's events is the record the server
//! stores), plus the checks of the file itself (its end line, counts, heads
//! and digest) and of the hashes an export spells out that the server
//! recomputes (each event's `hash` and `prev_hash`, each link's
//! `last_event_hash` and `prev_link_hash`).
//!
//! Two passes over each file. The first hashes the bytes, reads the header,
//! the end line and every link (links are kept: about 150 bytes per
//! transaction). The second streams the events: the calling thread reads
//! lines, worker threads parse and encode them, in order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use audit_log_core::encoding::encode_event;
use audit_log_core::parallel::map_ordered;
use audit_log_core::record::{verify_records, DigestBuilder, Record};
use audit_log_core::verify::{ProblemKind, Verdict};
use audit_log_core::{ChainHead, Checkpoint, Hash, Link, ZERO_HASH};
use sha2::{Digest, Sha256};

use crate::format::{
    End, EventLine, Header, LinkLine, END_PREFIX, EVENT_PREFIX, EXPORT_FORMAT, HEADER_PREFIX,
    LINK_PREFIX,
};

/// What verification of one or more files found.
#[derive(Debug, Default)]
pub struct Report {
    /// The chain checks, exactly as `audit_log.verify()` makes them.
    pub verdict: Verdict,
    /// Problems of the files themselves: damaged lines, a missing or
    /// inconsistent end line, a continuation that does not continue.
    pub file_problems: Vec<String>,
    pub events: u64,
    pub links: u64,
    pub seconds: f64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.verdict.ok() && self.file_problems.is_empty()
    }

    pub fn first_bad_event(&self) -> Option<i64> {
        self.verdict.first().and_then(|p| p.event_id)
    }
}

/// Usage or I/O trouble: the verification could not be carried out.
#[derive(Debug)]
pub enum Error {
    Io(PathBuf, io::Error),
    Usage(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(p, e) => write!(f, "{}: {e}", p.display()),
            Error::Usage(m) => f.write_str(m),
        }
    }
}

/// The first pass over one file.
struct Scan {
    header: Option<Header>,
    end: Option<End>,
    links: Vec<Link>,
    event_lines: u64,
    link_lines: u64,
    problems: Vec<String>,
}

fn read_lines(path: &Path) -> Result<impl Iterator<Item = io::Result<(u64, Vec<u8>)>>, Error> {
    let f = File::open(path).map_err(|e| Error::Io(path.into(), e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::with_capacity(512);
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                n += 1;
                Some(Ok((n, buf)))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

fn trim(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

fn scan(path: &Path) -> Result<Scan, Error> {
    let mut s = Scan {
        header: None,
        end: None,
        links: Vec::new(),
        event_lines: 0,
        link_lines: 0,
        problems: Vec::new(),
    };
    let mut digest = Sha256::new();
    let name = path.display();
    for item in read_lines(path)? {
        let (n, raw) = item.map_err(|e| Error::Io(path.into(), e))?;
        let line = trim(&raw);
        if s.end.is_some() {
            s.problems
                .push(format!("{name}:{n}: a line after the end line"));
            continue;
        }
        if line.starts_with(END_PREFIX) {
            match serde_json::from_slice::<End>(line) {
                // Only the exporter's own spelling: the end line is not under the digest.
                Ok(e) if crate::format::line(&e).is_ok_and(|l| l == raw) => s.end = Some(e),
                Ok(e) => {
                    s.problems.push(format!(
                        "{name}:{n}: the end line is not as the exporter writes it"
                    ));
                    s.end = Some(e);
                }
                Err(e) => s
                    .problems
                    .push(format!("{name}:{n}: damaged end line: {e}")),
            }
            continue;
        }
        digest.update(&raw);
        if n == 1 {
            match serde_json::from_slice::<Header>(line) {
                Ok(h) if h.kind == "header" && h.format == EXPORT_FORMAT => s.header = Some(h),
                Ok(h) => {
                    return Err(Error::Usage(format!(
                        "{name}: format {:?} is not supported; expected {EXPORT_FORMAT:?}",
                        h.format
                    )))
                }
                Err(_) if !line.starts_with(HEADER_PREFIX) => {
                    return Err(Error::Usage(format!(
                        "{name} is not an audit_log export (no header line)"
                    )))
                }
                Err(e) => s.problems.push(format!("{name}:1: damaged header: {e}")),
            }
        } else if line.starts_with(EVENT_PREFIX) {
            s.event_lines += 1;
            if s.link_lines > 0 {
                s.problems
                    .push(format!("{name}:{n}: an event after the links"));
            }
        } else if line.starts_with(LINK_PREFIX) {
            s.link_lines += 1;
            match LinkLine::parse(line) {
                Ok(l) => {
                    if s.links
                        .last()
                        .is_some_and(|p| (p.chain_id, p.seq) >= (l.chain_id, l.seq))
                    {
                        s.problems
                            .push(format!("{name}:{n}: links out of (chain_id, seq) order"));
                    }
                    s.links.push(l)
                }
                Err(e) => s.problems.push(format!("{name}:{n}: damaged link: {e}")),
            }
        } else {
            s.problems
                .push(format!("{name}:{n}: not an event, link or end record"));
        }
    }
    let digest = hex::encode(digest.finalize());
    match &s.end {
        None => s.problems.push(format!(
            "{name} has no end line: the export is incomplete or its tail was cut off"
        )),
        Some(end) => {
            if end.sha256 != digest {
                s.problems.push(format!(
                    "{name}: the content hashes to {}… but the end line records {}…",
                    &digest[..12],
                    end.sha256.get(..12).unwrap_or(&end.sha256)
                ));
            }
            if end.events != s.event_lines || end.links != s.link_lines {
                s.problems.push(format!(
                    "{name}: the end line counts {} events and {} links; the file holds {} and {}",
                    end.events, end.links, s.event_lines, s.link_lines
                ));
            }
        }
    }
    Ok(s)
}

/// The last link of each chain, over the anchors.
fn heads(anchors: &[ChainHead], links: &[Link]) -> BTreeMap<i32, ChainHead> {
    let mut out: BTreeMap<i32, ChainHead> = anchors.iter().map(|a| (a.chain, a.clone())).collect();
    for l in links {
        if out.get(&l.chain_id).is_none_or(|h| l.seq >= h.seq) {
            out.insert(l.chain_id, ChainHead::from(l));
        }
    }
    out
}

/// The part of a checkpoint that falls within one file: chains past the
/// file's anchors, and (unless it is the last file) not past its heads.
fn checkpoint_within(
    cp: &Checkpoint,
    anchors: &[ChainHead],
    heads: Option<&BTreeMap<i32, ChainHead>>,
) -> Checkpoint {
    let from = |c: i32| anchors.iter().find(|a| a.chain == c).map_or(0, |a| a.seq);
    let mut within = cp.clone();
    within.chains.retain(|h| {
        h.seq > from(h.chain)
            && heads.is_none_or(|hs| hs.get(&h.chain).is_some_and(|t| h.seq <= t.seq))
    });
    within
}

/// Verify files that together hold a log: a whole export, then any number
/// of continuations (`export --since`), in order. With a checkpoint, also
/// prove that the log extends it.
pub fn verify_files(
    paths: &[PathBuf],
    cp: Option<&Checkpoint>,
    threads: usize,
) -> Result<Report, Error> {
    let started = Instant::now();
    let mut report = Report::default();
    let mut previous_heads: Option<BTreeMap<i32, ChainHead>> = None;
    for (i, path) in paths.iter().enumerate() {
        let last = i + 1 == paths.len();
        let s = scan(path)?;
        let name = path.display().to_string();
        report.file_problems.extend(s.problems);
        let anchors = s
            .header
            .as_ref()
            .map(|h| h.anchors.clone())
            .unwrap_or_default();
        let continues = s.header.as_ref().is_some_and(|h| h.continues);
        // A continuation must start exactly where the file before it ended.
        match &previous_heads {
            Some(_) if !continues => report.file_problems.push(format!(
                "{name} is a whole export, not a continuation of the file before it"
            )),
            Some(prev) => {
                let want: Vec<&ChainHead> = prev.values().collect();
                let got: Vec<&ChainHead> = anchors.iter().collect();
                if want != got {
                    report.file_problems.push(format!(
                        "{name} does not continue the file before it: its anchors differ from that file's heads"
                    ));
                }
            }
            None if continues => report.file_problems.push(format!(
                "{name} is a continuation; verify it after the export it continues"
            )),
            None => {}
        }
        // A whole export that starts from anchors (the log was purged) must
        // hold the PURGE event that recorded them; a continuation's anchors
        // are the heads of the file before it, checked above.
        let claimed = if !continues && !anchors.is_empty() {
            purge_claims(path)?
        } else {
            anchors.clone()
        };
        let file_heads = heads(&anchors, &s.links);
        if let Some(end) = &s.end {
            let recorded: BTreeMap<i32, ChainHead> =
                end.heads.iter().map(|h| (h.chain, h.clone())).collect();
            if recorded != file_heads {
                report.file_problems.push(format!(
                    "{name}: the end line's chain heads differ from the file's last links"
                ));
            }
        }
        let cp_here = cp.map(|c| checkpoint_within(c, &anchors, (!last).then_some(&file_heads)));
        let verdict = verify_one(
            path,
            &s.links,
            &anchors,
            &claimed,
            cp_here.as_ref(),
            threads,
            &mut report.file_problems,
        )?;
        merge(&mut report.verdict, verdict);
        report.events += s.event_lines;
        report.links += s.link_lines;
        previous_heads = Some(file_heads);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The anchors that the PURGE events of a file record.
fn purge_claims(path: &Path) -> Result<Vec<ChainHead>, Error> {
    #[derive(serde::Deserialize)]
    struct Details {
        #[serde(default)]
        anchors: Vec<serde_json::Value>,
    }
    let mut out = Vec::new();
    for item in read_lines(path)? {
        let (_, raw) = item.map_err(|e| Error::Io(path.to_path_buf(), e))?;
        if !raw.starts_with(EVENT_PREFIX) {
            continue;
        }
        let Ok(e) = EventLine::parse(trim(&raw)) else {
            continue; // a damaged line is reported by the second pass
        };
        if e.op != "PURGE" || e.table_schema != "audit_log" {
            continue;
        }
        let Some(row) = e.new_row else { continue };
        let Ok(d) = serde_json::from_str::<Details>(row.get()) else {
            continue;
        };
        for a in d.anchors {
            if let Ok(h) = serde_json::from_value::<ChainHead>(a) {
                out.push(h);
            }
        }
    }
    Ok(out)
}

fn merge(into: &mut Verdict, v: Verdict) {
    into.events_checked += v.events_checked;
    into.links_checked += v.links_checked;
    into.problem_count += v.problem_count;
    into.problems.extend(v.problems);
}

/// One event line, parsed and encoded on a worker thread.
struct Encoded {
    id: i64,
    tx_first: i64,
    prev_hash: Hash,
    hash: Hash,
    canonical: Vec<u8>,
}

/// The second pass: stream the events of one file, build each
/// transaction's digest, and verify the links as the records they stand for.
#[allow(clippy::too_many_arguments)]
fn verify_one(
    path: &Path,
    links: &[Link],
    anchors: &[ChainHead],
    claimed: &[ChainHead],
    cp: Option<&Checkpoint>,
    threads: usize,
    problems: &mut Vec<String>,
) -> Result<Verdict, Error> {
    let by_first: std::collections::HashMap<i64, usize> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.first_event, i))
        .collect();
    let mut built: Vec<Option<DigestBuilder>> = vec![None; links.len()];
    let mut extra = Verdict::default();
    let damaged: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let name = path.display().to_string();
    let lines = read_lines(path)?.filter_map(|item| match item {
        Ok((n, raw)) if raw.starts_with(EVENT_PREFIX) => Some(Ok((n, raw))),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    });
    let parse = |(n, raw): (u64, Vec<u8>)| -> Result<(Encoded, i64), String> {
        let e = EventLine::parse(trim(&raw))
            .and_then(EventLine::into_event)
            .map_err(|m| format!("{name}:{n}: damaged event: {m}"))?;
        let mut canonical = Vec::with_capacity(256);
        encode_event(&e, &mut canonical);
        Ok((
            Encoded {
                id: e.id,
                tx_first: e.tx_first,
                prev_hash: e.prev_hash,
                hash: e.hash,
                canonical,
            },
            e.tx_seq,
        ))
    };
    let mut last_key: Option<(i64, i64)> = None;
    // The transaction being read: its key and its digest so far.
    let mut current: Option<(i64, DigestBuilder)> = None;
    let mut close = |cur: Option<(i64, DigestBuilder)>, extra: &mut Verdict| {
        let Some((key, b)) = cur else { return };
        match by_first.get(&key) {
            Some(&i) => built[i] = Some(b),
            None => extra.push(
                ProblemKind::EventNotLinked,
                Some(key),
                format!("the events of the transaction whose first event is {key} have no link"),
            ),
        }
    };
    std::thread::scope(|scope| -> Result<(), io::Error> {
        let events = map_ordered(scope, lines, threads, || {}, parse);
        for item in events {
            let (e, tx_seq) = match item? {
                Ok(x) => x,
                // A damaged line is reported, and the verification goes on
                // without it: what it held shows up as missing.
                Err(m) => {
                    damaged.borrow_mut().push(m);
                    continue;
                }
            };
            if last_key.is_some_and(|k| k >= (e.tx_first, tx_seq)) {
                damaged.borrow_mut().push(format!(
                    "{name}: event {} is out of (tx_first, tx_seq) order",
                    e.id
                ));
            }
            last_key = Some((e.tx_first, tx_seq));
            if current.as_ref().is_none_or(|(k, _)| *k != e.tx_first) {
                close(current.take(), &mut extra);
                current = Some((e.tx_first, DigestBuilder::default()));
                if e.id != e.tx_first {
                    extra.push(
                        ProblemKind::EventMissing,
                        Some(e.tx_first),
                        format!(
                            "the transaction whose first event is {} starts at event {}",
                            e.tx_first, e.id
                        ),
                    );
                }
            }
            if let Some((_, b)) = current.as_mut() {
                // What the file spells out must be what the events hash to.
                if e.prev_hash != b.last_hash() {
                    extra.push(
                        ProblemKind::ContentChanged,
                        Some(e.id),
                        format!(
                            "event {}: its prev_hash is not its predecessor's hash",
                            e.id
                        ),
                    );
                }
                b.push(&e.canonical);
                if e.hash != b.last_hash() {
                    extra.push(
                        ProblemKind::ContentChanged,
                        Some(e.id),
                        format!("event {} does not match its hash", e.id),
                    );
                }
            }
        }
        close(current.take(), &mut extra);
        Ok(())
    })
    .map_err(|e| Error::Io(path.into(), e))?;
    problems.extend(damaged.into_inner());
    // The links, in the file's (chain_id, seq) order, as records.
    let mut prev: BTreeMap<i32, (i64, Hash)> = anchors
        .iter()
        .map(|a| (a.chain, (a.seq, a.link_hash)))
        .collect();
    let records = links.iter().zip(built).map(|(l, b)| {
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
        let d = b.unwrap_or_default().finish(&r);
        if d.fault.is_none() && d.last_hash != l.last_event_hash {
            extra.push(
                ProblemKind::LinkChanged,
                Some(l.first_event),
                format!(
                    "link {}/{}: its last_event_hash is not its last event's hash",
                    l.chain_id, l.seq
                ),
            );
        }
        let before = match prev.insert(l.chain_id, (l.seq, l.link_hash)) {
            Some((s, h)) if s + 1 == l.seq => Some(h),
            None if l.seq == 1 => Some(ZERO_HASH),
            _ => None,
        };
        if before.is_some_and(|h| h != l.prev_link_hash) {
            extra.push(
                ProblemKind::LinkChanged,
                Some(l.first_event),
                format!(
                    "link {}/{}: its prev_link_hash is not its predecessor's link_hash",
                    l.chain_id, l.seq
                ),
            );
        }
        Ok::<_, ()>((r, d))
    });
    let mut verdict = verify_records(records, cp, anchors, claimed).unwrap_or_default();
    merge(&mut verdict, extra);
    Ok(verdict)
}

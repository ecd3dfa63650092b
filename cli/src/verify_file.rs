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
use std::sync::{mpsc, Arc};
use std::time::Instant;

use audit_log_core::parallel::map_ordered_bounded;
use audit_log_core::verify::ProblemKind;
use audit_log_core::verify::{verify_logical, EncodedEvent, Verdict};
use audit_log_core::{merkle, ChainHead, Checkpoint, Hash, Link, TreeHead};
use sha2::{Digest, Sha256};

use audit_log_core::record::{self, Digest as RecordDigest, Record};

use crate::binary::{self, Next, BINARY_FORMAT};
use crate::error::Error;
use crate::format::{
    End, EventLine, Header, LinkLine, RecordLine, END_PREFIX, EVENT_PREFIX, EXPORT_FORMAT,
    HEADER_PREFIX, LINK_PREFIX, RECORDS_FORMAT, RECORD_PREFIX,
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
    /// A checkpoint's trees (format v2) whose root was recomputed and matches.
    pub trees_checked: usize,
    /// Trees that could not be recomputed, and why, one line per reason
    /// (not a problem: a purged log, a logical export).
    pub trees_skipped: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.verdict.ok() && self.file_problems.is_empty()
    }

    pub fn first_bad_event(&self) -> Option<i64> {
        self.verdict.first().and_then(|p| p.event_id)
    }
}

/// The first pass over one file.
struct Scan {
    header: Option<Header>,
    /// A records export (`audit_log.export.v2` or `.v3`) rather than a
    /// logical one.
    records: bool,
    /// A binary records export (`audit_log.export.v3`): places in it are
    /// byte offsets, not line numbers.
    binary: bool,
    /// A binary export's frames could not be read past a damaged one:
    /// neither its end line nor its counts can be checked.
    cut: bool,
    end: Option<End>,
    /// A logical export's links.
    links: Vec<Link>,
    /// A records export's last record of each chain.
    record_heads: BTreeMap<i32, ChainHead>,
    /// Events: event lines, or the event counts of record lines.
    event_lines: u64,
    /// Link lines, or record lines.
    link_lines: u64,
    problems: Vec<String>,
}

fn read_lines(path: &Path) -> Result<impl Iterator<Item = io::Result<(u64, Vec<u8>)>>, Error> {
    let f = File::open(path).map_err(|e| Error::Io(path.into(), e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::with_capacity(1024);
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

/// The first pass's checks, one line at a time: `Scanner::line` takes
/// each line of a file in order, `Scanner::finish` checks the end line.
struct Scanner<'a> {
    s: Scan,
    /// The digest of the lines before the end line, or None when the
    /// caller digests them (see `stream_records`).
    digest: Option<Sha256>,
    /// Whether the digest covers the last line `line` took: every line
    /// but end lines (damaged ones too) and what follows a valid one.
    digested: bool,
    name: &'a str,
}

impl<'a> Scanner<'a> {
    /// A scanner whose caller digests the lines before the end line itself.
    fn without_digest(name: &'a str) -> Self {
        Scanner {
            digest: None,
            ..Scanner::new(name)
        }
    }

    fn new(name: &'a str) -> Self {
        Scanner {
            s: Scan {
                header: None,
                records: false,
                binary: false,
                cut: false,
                end: None,
                links: Vec::new(),
                record_heads: BTreeMap::new(),
                event_lines: 0,
                link_lines: 0,
                problems: Vec::new(),
            },
            digest: Some(Sha256::new()),
            digested: false,
            name,
        }
    }

    /// Check line `n`. With `defer_records`, a record line is handed
    /// back unparsed, for the caller to parse and pass to `record`.
    fn line(&mut self, n: u64, raw: &[u8], defer_records: bool) -> Result<bool, Error> {
        let line = trim(raw);
        self.digested = false;
        if self.s.end.is_some() {
            let at = self.at(n);
            self.s
                .problems
                .push(format!("{at}: a line after the end line"));
            return Ok(false);
        }
        if line.starts_with(END_PREFIX) {
            self.end_line(n, raw);
            return Ok(false);
        }
        let (s, name) = (&mut self.s, self.name);
        self.digested = true;
        if let Some(d) = &mut self.digest {
            d.update(raw);
        }
        if n == 1 {
            match parse_header(name, line)? {
                Ok(h) => {
                    s.binary = h.format == BINARY_FORMAT;
                    s.records = h.format == RECORDS_FORMAT || s.binary;
                    s.header = Some(h)
                }
                Err(e) => s.problems.push(e),
            }
        } else if s.records && line.starts_with(RECORD_PREFIX) {
            if defer_records {
                return Ok(true);
            }
            match RecordLine::parse_head(line) {
                Ok((head, event_count)) => self.record(n, head, event_count),
                Err(e) => {
                    s.link_lines += 1;
                    s.problems.push(format!("{name}:{n}: damaged record: {e}"))
                }
            }
        } else if s.records {
            s.problems
                .push(format!("{name}:{n}: not a record or end line"));
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
        Ok(false)
    }

    /// Where line `n` (or, in a binary export, byte `n`) is, for a problem.
    fn at(&self, n: u64) -> String {
        if self.s.binary {
            format!("{}, byte {n}", self.name)
        } else {
            format!("{}:{n}", self.name)
        }
    }

    /// An end line: only the exporter's own spelling of it, since it is
    /// not under the digest.
    fn end_line(&mut self, n: u64, raw: &[u8]) {
        let at = self.at(n);
        let s = &mut self.s;
        match serde_json::from_slice::<End>(trim(raw)) {
            // (A binary export's frames are followed by whatever line is there.)
            Ok(e) if e.kind != "end" => s.problems.push(format!(
                "{at}: a line of type {:?} where the end line was expected",
                e.kind
            )),
            Ok(e) if crate::format::line(&e).is_ok_and(|l| l == raw) => s.end = Some(e),
            Ok(e) => {
                s.problems.push(format!(
                    "{at}: the end line is not as the exporter writes it"
                ));
                s.end = Some(e);
            }
            Err(e) => s.problems.push(format!("{at}: damaged end line: {e}")),
        }
    }

    /// A binary export's frame that cannot be read: what follows it cannot be either.
    fn damaged_frame(&mut self, n: u64, why: &str) {
        let at = self.at(n);
        self.s.problems.push(format!(
            "{at}: damaged record frame: {why}; nothing after it can be read"
        ));
        self.s.cut = true;
    }

    /// A record line of a records export (or a binary export's record
    /// frame), in file order.
    fn record(&mut self, n: u64, head: ChainHead, event_count: i64) {
        self.s.link_lines += 1;
        let last = self
            .s
            .record_heads
            .last_key_value()
            .map(|(_, h)| (h.chain, h.seq));
        if last.is_some_and(|p| p >= (head.chain, head.seq)) {
            // (The place is only spelled out for a problem: this runs for
            // every record.)
            let at = self.at(n);
            self.s
                .problems
                .push(format!("{at}: records out of (chain_id, seq) order"));
        }
        let s = &mut self.s;
        s.event_lines += u64::try_from(event_count).unwrap_or(0);
        s.record_heads.insert(head.chain, head);
    }

    /// A record line that could not be read (the second pass reports why).
    fn damaged_record(&mut self) {
        self.s.link_lines += 1;
    }

    fn finish(mut self) -> Scan {
        let digest = self.digest.take().unwrap_or_default().finalize();
        self.finish_with(digest.into())
    }

    /// Finish with the digest of the lines before the end line.
    fn finish_with(self, digest: [u8; 32]) -> Scan {
        let (mut s, name) = (self.s, self.name);
        let digest = hex::encode(digest);
        match &s.end {
            // The damaged frame is the problem reported.
            None if s.cut => {}
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
        s
    }
}

/// A file's first line as a header: an error if the file is not an export
/// at all or of a format this version does not read; a problem if it is a
/// damaged header.
fn parse_header(name: &str, line: &[u8]) -> Result<Result<Header, String>, Error> {
    match serde_json::from_slice::<Header>(line) {
        // FORMAT.md: every line starts with its type, written first.
        Ok(h) if h.kind == "header" && !line.starts_with(HEADER_PREFIX) => Ok(Err(format!(
            "{name}:1: the header is not as the exporter writes it (\"type\" first, no spaces)"
        ))),
        Ok(h)
            if h.kind == "header"
                && [EXPORT_FORMAT, RECORDS_FORMAT, BINARY_FORMAT].contains(&h.format.as_str()) =>
        {
            Ok(Ok(h))
        }
        Ok(h) => Err(Error::Trouble(format!(
            "{name}: format {:?} is not supported; expected {EXPORT_FORMAT:?}, {RECORDS_FORMAT:?} or {BINARY_FORMAT:?}",
            h.format
        ))),
        Err(_) if !line.starts_with(HEADER_PREFIX) => Err(Error::Trouble(format!(
            "{name} is not an audit_log export (no header line)"
        ))),
        Err(e) => Ok(Err(format!("{name}:1: damaged header: {e}"))),
    }
}

/// The header of a file, read alone (None if it is damaged: the scan reports it).
fn read_header(path: &Path) -> Result<Option<Header>, Error> {
    let name = path.display().to_string();
    match read_lines(path)?.next() {
        None => Err(Error::Trouble(format!(
            "{name} is not an audit_log export (no header line)"
        ))),
        Some(item) => {
            let (_, raw) = item.map_err(|e| Error::Io(path.into(), e))?;
            Ok(parse_header(&name, trim(&raw))?.ok())
        }
    }
}

fn scan(path: &Path) -> Result<Scan, Error> {
    let name = path.display().to_string();
    let mut scanner = Scanner::new(&name);
    for item in read_lines(path)? {
        let (n, raw) = item.map_err(|e| Error::Io(path.into(), e))?;
        scanner.line(n, &raw, false)?;
    }
    Ok(scanner.finish())
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
    let mut trees = cp.and_then(Trees::new);
    for (i, path) in paths.iter().enumerate() {
        let last = i + 1 == paths.len();
        let name = path.display().to_string();
        let header = read_header(path)?;
        let binary = header.as_ref().is_some_and(|h| h.format == BINARY_FORMAT);
        let records = binary || header.as_ref().is_some_and(|h| h.format == RECORDS_FORMAT);
        let anchors = header
            .as_ref()
            .map(|h| h.anchors.clone())
            .unwrap_or_default();
        let continues = header.as_ref().is_some_and(|h| h.continues);
        // A continuation must start exactly where the file before it ended
        // (reported after the file's own problems).
        let mut continuity = Vec::new();
        match &previous_heads {
            Some(_) if !continues => continuity.push(format!(
                "{name} is a whole export, not a continuation of the file before it"
            )),
            Some(prev) => {
                let want: Vec<&ChainHead> = prev.values().collect();
                let got: Vec<&ChainHead> = anchors.iter().collect();
                if want != got {
                    continuity.push(format!(
                        "{name} does not continue the file before it: its anchors differ from that file's heads"
                    ));
                }
            }
            None if continues => continuity.push(format!(
                "{name} is a continuation; verify it after the export it continues"
            )),
            None => {}
        }
        // A whole export that starts from anchors (the log was purged) must
        // hold the PURGE event that recorded them; a continuation's anchors
        // are the heads of the file before it, checked above.
        let claimed = if !continues && !anchors.is_empty() {
            if records {
                purge_claims_records(path)?
            } else {
                purge_claims(path)?
            }
        } else {
            anchors.clone()
        };
        let file_heads = |s: &Scan| {
            if s.records {
                let mut h: BTreeMap<i32, ChainHead> =
                    anchors.iter().map(|a| (a.chain, a.clone())).collect();
                h.extend(s.record_heads.clone());
                h
            } else {
                heads(&anchors, &s.links)
            }
        };
        if let Some(t) = &mut trees {
            let chains: Vec<i32> = t.want.keys().copied().collect();
            for c in chains {
                if !records {
                    t.skip(c, format!("{name} is a logical export: trees are recomputed from a records or binary export"));
                } else if let Some(a) = anchors
                    .iter()
                    .find(|a| a.chain == c && !continues && a.seq > 0)
                {
                    t.skip(c, format!("{name} starts it after seq {} (a purge): the records before are not here", a.seq));
                }
            }
        }
        // A records export is checked and verified in one pass.
        let (s, verdict) = if records {
            // Only a checkpoint cut at the heads of a file before the last
            // needs those heads before the one pass; a scan finds them.
            let heads_first = match cp {
                Some(_) if !last && binary => Some(file_heads(&scan_binary(path)?)),
                Some(_) if !last => Some(file_heads(&scan(path)?)),
                _ => None,
            };
            let cp_here = cp.map(|c| checkpoint_within(c, &anchors, heads_first.as_ref()));
            stream_records(
                path,
                binary,
                (&anchors, &claimed),
                cp_here.as_ref(),
                threads,
                trees.as_mut(),
            )?
        } else {
            let mut s = scan(path)?;
            let cp_here = cp
                .map(|c| checkpoint_within(c, &anchors, (!last).then(|| file_heads(&s)).as_ref()));
            let mut problems = Vec::new();
            let verdict = verify_one(
                path,
                &s.links,
                (&anchors, &claimed),
                cp_here.as_ref(),
                threads,
                &mut problems,
            )?;
            s.problems.extend(problems);
            (s, verdict)
        };
        let file_heads = file_heads(&s);
        if let Some(end) = &s.end {
            let recorded: BTreeMap<i32, ChainHead> =
                end.heads.iter().map(|h| (h.chain, h.clone())).collect();
            if recorded != file_heads {
                report.file_problems.push(format!(
                    "{name}: the end line's chain heads differ from the file's last links"
                ));
            }
        }
        report.file_problems.extend(s.problems);
        report.file_problems.extend(continuity);
        merge(&mut report.verdict, verdict);
        report.events += s.event_lines;
        report.links += s.link_lines;
        previous_heads = Some(file_heads);
    }
    if let Some(t) = trees {
        for why in t.problems {
            report.verdict.push(ProblemKind::ChainRewritten, None, why);
        }
        report.trees_checked = t.checked;
        // One line per reason, with its chains.
        let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (c, why) in t.skipped {
            by_reason.entry(why).or_default().push(c.to_string());
        }
        report.trees_skipped = by_reason
            .into_iter()
            .map(|(why, chains)| format!("chain(s) {}: {why}", chains.join(", ")))
            .collect();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The anchors that the PURGE events of a file record.
fn purge_claims(path: &Path) -> Result<Vec<ChainHead>, Error> {
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
        out.extend(anchors_of_purge(row.get()));
    }
    Ok(out)
}

/// The anchors that the PURGE events of a records export record: every
/// record's events are decoded (only logs that purge() shortened need this).
fn purge_claims_records(path: &Path) -> Result<Vec<ChainHead>, Error> {
    let mut out = Vec::new();
    // A damaged record is reported by the second pass.
    for_each_event(path, |e| {
        let Some(e) = e else { return };
        if e.op != "PURGE" || e.table_schema != "audit_log" {
            return;
        }
        let Some(audit_log_core::model::Json::Encoded(row)) = &e.new_row else {
            return;
        };
        if let Ok(text) = audit_log_core::encoding::decode::Reader::new(row).json_text() {
            out.extend(anchors_of_purge(&text));
        }
    })
    .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    Ok(out)
}

/// The events of a records export of either form, record after record in
/// file order, each record's in tx_seq order: `each` gets Some(event), or
/// None for a record that cannot be read and for the first unreadable
/// event of a record (whose other events are then passed over). A binary
/// export's transactions are read one segment at a time.
pub fn for_each_event(
    path: &Path,
    mut each: impl FnMut(Option<&audit_log_core::Event>),
) -> io::Result<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut header = Vec::new();
    r.read_until(b'\n', &mut header)?;
    let binary =
        serde_json::from_slice::<Header>(trim(&header)).is_ok_and(|h| h.format == BINARY_FORMAT);
    if binary {
        for f in binary::frames(r) {
            let f = f?;
            let read = binary::parse(&f).and_then(|f| {
                f.for_each_event(|e| match e {
                    Ok(e) => {
                        each(Some(&e));
                        Continue(())
                    }
                    Err(_) => {
                        each(None);
                        Break(())
                    }
                })
            });
            if read.is_err() {
                each(None);
            }
        }
        return Ok(());
    }
    for l in r.split(b'\n') {
        let l = l?;
        if !l.starts_with(RECORD_PREFIX) {
            continue;
        }
        let Ok(r) = RecordLine::parse(&l) else {
            each(None);
            continue;
        };
        let segments = r.segments.iter().map(Vec::as_slice);
        for e in record::decoded(segments, &r.payload, r.record.base()) {
            match e {
                Ok(e) => each(Some(&e)),
                Err(_) => {
                    each(None);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The anchors a PURGE event's details record.
fn anchors_of_purge(details: &str) -> Vec<ChainHead> {
    #[derive(serde::Deserialize)]
    struct Details {
        #[serde(default)]
        anchors: Vec<serde_json::Value>,
    }
    let Ok(d) = serde_json::from_str::<Details>(details) else {
        return Vec::new();
    };
    d.anchors
        .into_iter()
        .filter_map(|a| serde_json::from_value::<ChainHead>(a).ok())
        .collect()
}

/// Bytes of whole lines handed to a worker at once.
const BLOCK: usize = 16 << 10;

/// Lines of a records export, and where its record lines lie in them (line
/// number, start, end).
struct Block {
    data: Arc<Vec<u8>>,
    records: Vec<(u64, usize, usize)>,
}

impl Block {
    /// Never zero: a block always goes to a worker.
    fn weight(&self) -> usize {
        self.data.len().max(1)
    }
}

/// Bytes of blocks handed to a worker at once: a batch of one large
/// transaction's frame (a bulk load's) keeps the other workers busy with
/// the next ones, instead of 512 of them going to one worker.
const BATCH_BYTES: usize = 1 << 20;

/// Bytes handed to the digest's thread at once (in blocks; one send per
/// block cost more in wake-ups than the thread saved).
const DIGEST_BATCH: usize = 1 << 20;

/// A records export checked and verified in one pass: the calling thread
/// reads lines and keeps the scan's checks; a thread of its own digests the
/// file (the end line's SHA-256, over a file about three times the size of
/// the payloads); worker threads parse and hash records; the results come
/// back in file order.
fn stream_records(
    path: &Path,
    binary: bool,
    (anchors, claimed): (&[ChainHead], &[ChainHead]),
    cp: Option<&Checkpoint>,
    threads: usize,
    mut trees: Option<&mut Trees>,
) -> Result<(Scan, Verdict), Error> {
    let name = path.display().to_string();
    let scanner = RefCell::new(Scanner::without_digest(&name));
    let sizes = trees.as_deref().map(Trees::sizes);
    let failed: RefCell<Option<Error>> = RefCell::new(None);
    let file = File::open(path).map_err(|e| Error::Io(path.into(), e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut n = 0u64;
    // Blocks, and the runs of their bytes that the digest covers (the lines
    // Scanner::line digests), for the digest's thread.
    type ToDigest = Vec<(Arc<Vec<u8>>, Vec<(usize, usize)>)>;
    let (to_digest, digest_rx) = mpsc::sync_channel::<ToDigest>(4);
    let (mut pending, mut pending_bytes): (ToDigest, usize) = (Vec::new(), 0);
    let (scanner_in, failed_in) = (&scanner, &failed);
    // Blocks of whole lines: each line is checked here in place (no copy of
    // its own), and a worker gets a block's record lines at once. The
    // iterator owns the digest's sender: once it is dropped (at the end of
    // the verification, or on the way out of a panic), the digest's thread
    // ends.
    let to_verify = std::iter::from_fn(move || {
        let (scanner, failed) = (scanner_in, failed_in);
        let mut data = Vec::with_capacity(BLOCK + 4096);
        let mut records = Vec::new();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        if binary {
            // Every byte a step appends is digested.
            let mut sc = scanner.borrow_mut();
            while data.len() < BLOCK {
                match binary_step(&mut reader, &mut n, &mut sc, &mut data) {
                    Err(e) => {
                        *failed.borrow_mut() = Some(e);
                        return None;
                    }
                    Ok(Step::Record(at, from, to)) => records.push((at, from, to)),
                    Ok(Step::Other) => {}
                    Ok(Step::Done) => break,
                }
            }
            if !data.is_empty() {
                runs.push((0, data.len()));
            }
        }
        while !binary && data.len() < BLOCK {
            let start = data.len();
            match reader.read_until(b'\n', &mut data) {
                Err(e) => return Some(Err(e)),
                Ok(0) => break,
                Ok(_) => {}
            }
            n += 1;
            let mut sc = scanner.borrow_mut();
            match sc.line(n, &data[start..], true) {
                Ok(true) => records.push((n, start, data.len())),
                Ok(false) => {}
                Err(e) => {
                    *failed.borrow_mut() = Some(e);
                    return None;
                }
            }
            if sc.digested {
                match runs.last_mut() {
                    Some(run) if run.1 == start => run.1 = data.len(),
                    _ => runs.push((start, data.len())),
                }
            }
        }
        let data = Arc::new(data);
        if !runs.is_empty() {
            pending_bytes += runs.iter().map(|(a, b)| b - a).sum::<usize>();
            pending.push((Arc::clone(&data), runs));
        }
        if pending_bytes >= DIGEST_BATCH || data.is_empty() {
            // The digest's thread only ends once this sender is gone.
            let _ = to_digest.send(std::mem::take(&mut pending));
            pending_bytes = 0;
        }
        (!data.is_empty()).then_some(Ok(Block { data, records }))
    });
    type Parsed = (Record, RecordDigest, ChainHead, Option<Hash>);
    let parse_one = |raw: &[u8], scratch: &mut Vec<u8>| -> Result<Parsed, String> {
        // A leaf, from the same pass over the events, only for a record
        // that a checkpoint's tree covers.
        let covered = |r: &Record| {
            sizes
                .as_ref()
                .is_some_and(|s| s.get(&r.chain_id).is_some_and(|&size| r.seq <= size))
        };
        let digested = if binary {
            binary::digest(raw, scratch, covered)
        } else {
            RecordLine::digest(trim(raw), scratch, covered)
        };
        digested.map(|(r, d, leaf)| {
            let head = ChainHead::from(&r);
            (r, d, head, leaf)
        })
    };
    let parse = |b: Block| -> Vec<(u64, Result<Parsed, String>)> {
        let mut scratch = Vec::new();
        b.records
            .iter()
            .map(|&(n, from, to)| (n, parse_one(&b.data[from..to], &mut scratch)))
            .collect()
    };
    let (verdict, digest) = std::thread::scope(|scope| {
        let digester = scope.spawn(move || {
            let mut d = Sha256::new();
            for batch in digest_rx {
                for (data, runs) in batch {
                    for (from, to) in runs {
                        d.update(&data[from..to]);
                    }
                }
            }
            <[u8; 32]>::from(d.finalize())
        });
        let records = map_ordered_bounded(
            scope,
            to_verify,
            threads,
            || {},
            parse,
            Block::weight,
            BATCH_BYTES,
        )
        .flat_map(|r| match r {
            Ok(parsed) => parsed.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
        .filter_map(|r| match r {
            Ok((n, Ok((record, digest, head, leaf)))) => {
                scanner.borrow_mut().record(n, head, record.event_count);
                if let Some(t) = trees.as_deref_mut() {
                    t.push(record.chain_id, record.seq, leaf);
                }
                Some(Ok((record, digest)))
            }
            // A damaged line is reported, and the verification goes on
            // without it: its transaction shows up as missing.
            Ok((n, Err(m))) => {
                let mut sc = scanner.borrow_mut();
                sc.damaged_record();
                let at = sc.at(n);
                sc.s.problems.push(format!("{at}: damaged record: {m}"));
                None
            }
            Err(e) => Some(Err(e)),
        });
        // verify_records consumes (and drops) the records, and so the sender.
        let verdict = record::verify_records(records, cp, anchors, claimed);
        (verdict, digester.join())
    });
    let verdict = verdict.map_err(|e| Error::Io(path.into(), e))?;
    let digest = digest.map_err(|_| {
        Error::Io(
            path.into(),
            io::Error::other("the thread digesting the file failed"),
        )
    })?;
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    Ok((scanner.into_inner().finish_with(digest), verdict))
}

/// A checkpoint's Merkle trees (format v2), recomputed offline from the
/// records of records or binary exports: each chain's leaves in seq order,
/// across the files, compared with the checkpoint's root at its size, as
/// `audit_log.verify(checkpoint)` compares them.
pub struct Trees {
    want: BTreeMap<i32, TreeHead>,
    building: BTreeMap<i32, merkle::Builder>,
    /// Chains whose tree cannot be recomputed here, and why.
    skipped: BTreeMap<i32, String>,
    /// Trees whose root differs, said as the server says it.
    problems: Vec<String>,
    checked: usize,
}

impl Trees {
    fn new(cp: &Checkpoint) -> Option<Trees> {
        if cp.trees.is_empty() {
            return None;
        }
        // (Checkpoint::parse refuses a tree of no records.)
        Some(Trees {
            want: cp.trees.iter().map(|h| (h.chain, h.clone())).collect(),
            building: BTreeMap::new(),
            skipped: BTreeMap::new(),
            problems: Vec::new(),
            checked: 0,
        })
    }

    fn skip(&mut self, chain: i32, why: String) {
        let done = self.building.get(&chain).map_or(0, |b| b.size() as i64);
        // (A tree already compared in an earlier file is not skipped.)
        if self.want.get(&chain).is_some_and(|w| w.size > done) {
            self.skipped.entry(chain).or_insert(why);
        }
    }

    /// Each chain's tree size, for the workers: a record's leaf is only
    /// computed if a tree covers it.
    fn sizes(&self) -> BTreeMap<i32, i64> {
        self.want
            .iter()
            .filter(|(c, _)| !self.skipped.contains_key(c))
            .map(|(&c, w)| (c, w.size))
            .collect()
    }

    /// The next record of a file, in file order.
    fn push(&mut self, chain: i32, seq: i64, leaf: Option<Hash>) {
        let Some(size) = self.want.get(&chain).map(|w| w.size) else {
            return;
        };
        if self.skipped.contains_key(&chain) {
            return;
        }
        let b = self.building.entry(chain).or_default();
        let done = b.size() as i64;
        if done >= size {
            return; // past the checkpoint's tree
        }
        let Some(leaf) = leaf.filter(|_| seq == done + 1) else {
            // A gap, a repeat or an unreadable record: the chain's own
            // checks report it, and no root can be recomputed past it.
            let why = format!(
                "its record {} is not readable or not in seq order",
                done + 1
            );
            self.skip(chain, why);
            return;
        };
        b.push(leaf);
        if b.size() as i64 == size {
            let b = b.clone();
            self.compare(chain, &b);
        }
    }

    fn compare(&mut self, chain: i32, b: &merkle::Builder) {
        let Some(want) = self.want.get(&chain) else {
            return;
        };
        let root = b.root();
        if root == want.root {
            self.checked += 1;
        } else {
            self.problems.push(format!(
                "chain {}'s first {} records have root {}, the checkpoint says {}",
                chain,
                want.size,
                hex::encode(&root[..6]),
                hex::encode(&want.root[..6])
            ));
        }
    }
}

/// What one step through a binary export read.
enum Step {
    /// A record frame, at this byte offset, appended to the data here.
    Record(u64, usize, usize),
    /// The header line, or the end of the frames (the end line was read and
    /// checked; it is not appended).
    Other,
    /// Nothing more to read: the file ended, or a frame was damaged.
    Done,
}

/// Read the next piece of a binary export onto `data`, where `at` is the
/// byte offset of what comes next (0 before the header line), and tell
/// the scanner what it is. Everything appended is under the digest.
fn binary_step(
    r: &mut impl BufRead,
    at: &mut u64,
    sc: &mut Scanner,
    data: &mut Vec<u8>,
) -> Result<Step, Error> {
    let io = |e: io::Error| Error::Io(sc.name.into(), e);
    let start = data.len();
    if *at == 0 {
        r.read_until(b'\n', data).map_err(io)?;
        if data.len() == start {
            return Ok(Step::Done);
        }
        sc.line(1, &data[start..], true)?;
        *at = (data.len() - start) as u64;
        return Ok(Step::Other);
    }
    if sc.s.end.is_some() || sc.s.cut {
        return Ok(Step::Done);
    }
    let next = binary::read_frame(r, data).map_err(io)?;
    let here = *at;
    *at += (data.len() - start) as u64;
    match next {
        Next::Record => Ok(Step::Record(here, start, data.len())),
        Next::End => {
            let mut end = Vec::new();
            r.read_until(b'\n', &mut end).map_err(io)?;
            sc.end_line(*at, &end);
            *at += end.len() as u64;
            if !r.fill_buf().map_err(io)?.is_empty() {
                let where_ = sc.at(*at);
                sc.s.problems
                    .push(format!("{where_}: bytes after the end line"));
            }
            Ok(Step::Other)
        }
        Next::Eof => Ok(Step::Done),
        Next::Damaged(why) => {
            sc.damaged_frame(here, &why);
            Ok(Step::Done)
        }
    }
}

/// The first pass over a binary export alone: its checks, and each
/// record's head, read without its payloads' decompression or hashing.
fn scan_binary(path: &Path) -> Result<Scan, Error> {
    let name = path.display().to_string();
    let mut sc = Scanner::without_digest(&name);
    let file = File::open(path).map_err(|e| Error::Io(path.into(), e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut at, mut data, mut digest) = (0u64, Vec::new(), Sha256::new());
    loop {
        data.clear();
        let step = binary_step(&mut reader, &mut at, &mut sc, &mut data)?;
        digest.update(&data);
        match step {
            Step::Record(n, from, to) => match binary::parse(&data[from..to]) {
                Ok(f) => sc.record(n, ChainHead::from(&f.record), f.record.event_count),
                Err(m) => {
                    sc.damaged_record();
                    let where_ = sc.at(n);
                    sc.s.problems.push(format!("{where_}: damaged record: {m}"));
                }
            },
            Step::Other => {}
            Step::Done => break,
        }
    }
    Ok(sc.finish_with(digest.finalize().into()))
}

fn merge(into: &mut Verdict, v: Verdict) {
    into.events_checked += v.events_checked;
    into.links_checked += v.links_checked;
    into.problem_count += v.problem_count;
    into.problems.extend(v.problems);
}

/// Bytes of event lines handed to a worker in one batch.
const LINE_BYTES: usize = 8 << 20;

/// The second pass: stream the events of one file (parsed and encoded on
/// worker threads, in order) into the verifier of the logical form.
fn verify_one(
    path: &Path,
    links: &[Link],
    (anchors, claimed): (&[ChainHead], &[ChainHead]),
    cp: Option<&Checkpoint>,
    threads: usize,
    problems: &mut Vec<String>,
) -> Result<Verdict, Error> {
    let damaged: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let name = path.display().to_string();
    let lines = read_lines(path)?.filter_map(|item| match item {
        Ok((n, raw)) if raw.starts_with(EVENT_PREFIX) => Some(Ok((n, raw))),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    });
    let parse = |(n, raw): (u64, Vec<u8>)| -> Result<EncodedEvent, String> {
        EventLine::parse(trim(&raw))
            .and_then(EventLine::into_event)
            .map(|e| EncodedEvent::new(&e))
            .map_err(|m| format!("{name}:{n}: damaged event: {m}"))
    };
    let mut last_key: Option<(i64, i64)> = None;
    let verdict = std::thread::scope(|scope| {
        // Batches bounded by bytes too: an event line can be of any size
        // (a row of 1 GB), and a batch of a thousand of them would be held
        // at once.
        let weigh = |(_, raw): &(u64, Vec<u8>)| raw.len();
        let events = map_ordered_bounded(scope, lines, threads, || {}, parse, weigh, LINE_BYTES);
        let events = events.filter_map(|r| match r {
            Ok(Ok(e)) => {
                if last_key.is_some_and(|k| k >= (e.tx_first, e.tx_seq)) {
                    damaged.borrow_mut().push(format!(
                        "{name}: event {} is out of (tx_first, tx_seq) order",
                        e.id
                    ));
                }
                last_key = Some((e.tx_first, e.tx_seq));
                Some(Ok(e))
            }
            // A damaged line is reported, and the verification goes on
            // without it: what it held shows up as missing.
            Ok(Err(m)) => {
                damaged.borrow_mut().push(m);
                None
            }
            Err(e) => Some(Err(e)),
        });
        verify_logical(events, links, cp, anchors, claimed)
    })
    .map_err(|e| Error::Io(path.into(), e))?;
    problems.extend(damaged.into_inner());
    Ok(verdict)
}

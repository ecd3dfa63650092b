//! `audit-log tail`: committed events as JSON Lines as they commit, for a
//! SIEM (Elastic, Splunk, OpenSearch, Sentinel) or any log shipper.
//!
//! Each poll reads, per chain, the records committed after the chain's head
//! in the state file, checks that each one continues its chain (the same
//! check as `verify`: seq, payload and link hash), writes its events, and
//! then saves the new heads. A record that does not continue its chain is
//! never written: the tail stops with exit 1 and says why.
//!
//! Delivery: with `--out FILE` the state file also holds the length of FILE
//! after the last saved poll, and a restart cuts anything written after it,
//! so FILE holds every event exactly once whatever stopped the tail (kill -9
//! included). On standard output, which cannot be cut, a kill between the
//! write and the save repeats that one poll after a restart: each line has a
//! stable unique id (the event's hash) to deduplicate on.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use audit_log_core::record::{digest, digest_streamed, DecodedCursor, Follower, Record};
use audit_log_core::time::format_rfc3339;
use audit_log_core::verify::ProblemKind;
use audit_log_core::{ChainHead, Checkpoint, Event};
use postgres::{Client, GenericClient};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::export::{connect, current_checkpoint, hash, micros, snapshot};
use crate::format::EventLine;
use crate::siem::{ecs, ocsf, Source};

pub const STATE_FORMAT: &str = "audit_log.tail.v1";

/// The shape of each line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    /// The export's event line, with the record's chain, seq and commit time.
    Native,
    /// Elastic Common Schema 8.x.
    Ecs,
    /// OCSF 1.1: Datastore Activity (6005) for row changes, API Activity
    /// (6003) for configuration changes.
    Ocsf,
}

impl Feed {
    pub fn name(self) -> &'static str {
        match self {
            Feed::Native => "native",
            Feed::Ecs => "ecs",
            Feed::Ocsf => "ocsf",
        }
    }
}

pub struct Options {
    pub dsn: String,
    pub state: PathBuf,
    pub out: Option<PathBuf>,
    pub feed: Feed,
    /// Wait between polls that found nothing new.
    pub interval: Duration,
    /// Records read per chain and poll.
    pub batch: i64,
    /// Stop once caught up.
    pub once: bool,
    /// Stop after this long.
    pub seconds: Option<f64>,
    /// With no state file: start at the log's current end instead of its start.
    pub from_now: bool,
}

/// Where the feed is: saved after every poll that wrote something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: String,
    feed: Feed,
    database: Option<String>,
    system_identifier: Option<String>,
    /// The output file's length after the last saved poll.
    out_bytes: Option<u64>,
    /// Events written so far.
    events: u64,
    heads: Vec<ChainHead>,
}

pub struct Stats {
    pub events: u64,
    pub records: u64,
    pub seconds: f64,
    lags: Lags,
}

/// How many of the latest lags the percentiles are taken over: a tail runs
/// for months, and must not keep one sample per transaction.
const LAG_SAMPLES: usize = 100_000;

/// From commit to the line's write, in milliseconds: the latest
/// [`LAG_SAMPLES`], and the largest ever.
#[derive(Default)]
struct Lags {
    recent: std::collections::VecDeque<f64>,
    max: f64,
}

impl Lags {
    fn push(&mut self, ms: f64) {
        if self.recent.len() == LAG_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
        self.max = self.max.max(ms);
    }

    /// The q-quantile of the latest samples.
    fn quantile(&self, q: f64) -> f64 {
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            n => sorted[((n - 1) as f64 * q).round() as usize],
        }
    }
}

impl Stats {
    /// One line for the operator: throughput and lag.
    pub fn summary(&self) -> String {
        let rate = self.events as f64 / self.seconds.max(1e-6);
        format!(
            "shipped {} events ({} transactions) in {:.1} s: {:.0} events/s; lag from commit to output: median {:.0} ms, p99 {:.0} ms (latest 100,000 transactions), max {:.0} ms",
            self.events,
            self.records,
            self.seconds,
            rate,
            self.lags.quantile(0.5),
            self.lags.quantile(0.99),
            self.lags.max
        )
    }
}

fn io(p: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::Io(p.to_path_buf(), e)
}

fn read_state(path: &Path) -> Result<Option<State>, Error> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io(path.to_path_buf(), e)),
    };
    let s: State = serde_json::from_slice(&text).map_err(|e| {
        Error::trouble(format!(
            "{}: not a tail state file ({e}); give another --state, or move it away to start over",
            path.display()
        ))
    })?;
    if s.format != STATE_FORMAT {
        return Err(Error::trouble(format!(
            "{}: state format {:?} is not {STATE_FORMAT:?}",
            path.display(),
            s.format
        )));
    }
    Ok(Some(s))
}

/// Write the state beside its file, flush it to disk, and rename it over
/// the old one: a crash leaves the old state or the new, never half of one.
fn save_state(path: &Path, s: &State) -> Result<(), Error> {
    // A name of this process's own, made new: never a file (or a link to
    // one) that was there before.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut bytes = serde_json::to_vec_pretty(s).map_err(|e| Error::trouble(e.to_string()))?;
    bytes.push(b'\n');
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn anchors(client: &mut Client) -> Result<Vec<ChainHead>, Error> {
    let rows = client
        .query(
            "SELECT chain_id, seq, link_hash, last_event FROM audit_log.anchors ORDER BY chain_id",
            &[],
        )
        .map_err(|e| {
            Error::trouble(format!(
                "reading audit_log.anchors: {}",
                crate::error::db_message(&e)
            ))
        })?;
    rows.iter()
        .map(|r| {
            Ok(ChainHead {
                chain: r.get(0),
                seq: r.get(1),
                link_hash: hash(r.get(2)),
                last_event: r.get(3),
            })
        })
        .collect()
}

/// A state file belongs to this log if each head in it is a record here
/// with the same hash (or lies inside what purge() removed): a state from
/// another database, or a log rewritten since, is refused.
fn check_heads(client: &mut Client, s: &State, cp: &Checkpoint, path: &Path) -> Result<(), Error> {
    if s.heads.is_empty() {
        if (&s.database, &s.system_identifier) != (&cp.database, &cp.system_identifier) {
            return Err(Error::trouble(format!(
                "{} was started on database {:?} (system {:?}), not this one ({:?}, system {:?})",
                path.display(),
                s.database,
                s.system_identifier,
                cp.database,
                cp.system_identifier
            )));
        }
        return Ok(());
    }
    let chains: Vec<i32> = s.heads.iter().map(|h| h.chain).collect();
    let seqs: Vec<i64> = s.heads.iter().map(|h| h.seq).collect();
    let rows = client
        .query(
            "SELECT h.chain_id, h.seq, r.link_hash, a.seq, a.link_hash
               FROM unnest($1::int[], $2::bigint[]) AS h(chain_id, seq)
               LEFT JOIN audit_log.records r ON r.chain_id = h.chain_id AND r.seq = h.seq
               LEFT JOIN audit_log.anchors a ON a.chain_id = h.chain_id",
            &[&chains, &seqs],
        )
        .map_err(|e| {
            Error::trouble(format!(
                "reading the heads of {}: {}",
                path.display(),
                crate::error::db_message(&e)
            ))
        })?;
    let by_chain: BTreeMap<i32, &ChainHead> = s.heads.iter().map(|h| (h.chain, h)).collect();
    for r in rows {
        let (chain, seq): (i32, i64) = (r.get(0), r.get(1));
        let here: Option<Vec<u8>> = r.get(2);
        let anchor: Option<(i64, Vec<u8>)> = r.get::<_, Option<i64>>(3).map(|a| (a, r.get(4)));
        let stored = by_chain[&chain].link_hash;
        let found = match (here, anchor) {
            (Some(h), _) => Some(h),
            (None, Some((a, h))) if a == seq => Some(h),
            // Purged since: what follows is checked against the anchor.
            (None, Some((a, _))) if a > seq => continue,
            _ => None,
        };
        match found {
            Some(h) if h.as_slice() == stored => {}
            Some(h) => {
                return Err(Error::Refused(format!(
                    "{} is not a position in this log: chain {chain} at seq {seq} hashes to {}… here, but to {}… in the state (a state file from another database, or a chain rewritten since)",
                    path.display(),
                    &hex::encode(&h)[..12.min(2 * h.len())],
                    &hex::encode(stored)[..12]
                )))
            }
            None => {
                return Err(Error::Refused(format!(
                    "{} is not a position in this log: it has no record at chain {chain}, seq {seq} (a state file from another database, or a log that lost records)",
                    path.display()
                )))
            }
        }
    }
    if s.system_identifier != cp.system_identifier || s.database != cp.database {
        eprintln!(
            "audit-log tail: the log is now in database {:?} (system {:?}), was {:?} (system {:?}); its chains continue the state's, so the feed goes on",
            cp.database, cp.system_identifier, s.database, s.system_identifier
        );
    }
    Ok(())
}

/// Where lines go: a file that a restart can cut back to the last saved
/// poll, or standard output.
enum Sink {
    File(File, PathBuf, u64),
    Stdout(io::Stdout),
}

impl Sink {
    fn open(out: Option<&Path>, state: Option<&State>, state_path: &Path) -> Result<Sink, Error> {
        let Some(p) = out else {
            return Ok(Sink::Stdout(io::stdout()));
        };
        // A regular file only: a link could point the cut-back below at
        // another file, and a FIFO or device cannot be synced or cut.
        match fs::symlink_metadata(p) {
            Ok(m) if !m.file_type().is_file() => {
                return Err(Error::trouble(format!(
                    "{}: --out must be a regular file (not a link, FIFO, device or directory)",
                    p.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io(p.to_path_buf(), e)),
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(p)
            .map_err(io(p))?;
        let len = f.metadata().map_err(io(p))?.len();
        let keep = match state.map(|s| s.out_bytes) {
            Some(Some(n)) if len >= n => n,
            Some(Some(n)) => {
                return Err(Error::trouble(format!(
                    "{} has {len} bytes, but {} says {n} were written: it was truncated or replaced; give the file back, or start a new feed with a new state file",
                    p.display(),
                    state_path.display()
                )))
            }
            Some(None) => {
                return Err(Error::trouble(format!(
                    "{} was saved by a tail writing to standard output; it cannot continue into a file",
                    state_path.display()
                )))
            }
            None if len > 0 => {
                return Err(Error::trouble(format!(
                    "{} already holds {len} bytes but there is no state file {}: a new feed starts with an empty file",
                    p.display(),
                    state_path.display()
                )))
            }
            None => 0,
        };
        if keep > 0 {
            // The state's length must end a line of this file.
            let mut last = [0u8; 1];
            f.read_exact_at(&mut last, keep - 1).map_err(io(p))?;
            if last[0] != b'\n' {
                return Err(Error::trouble(format!(
                    "{}: byte {keep}, where {} says the feed ended, does not end a line: the state does not belong to this file",
                    p.display(),
                    state_path.display()
                )));
            }
        }
        if len > keep {
            // Written after the last save: the next poll writes it again.
            f.set_len(keep).map_err(io(p))?;
            f.sync_all().map_err(io(p))?;
        }
        Ok(Sink::File(f, p.to_path_buf(), keep))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Sink::File(f, p, len) => {
                f.write_all(bytes).map_err(io(p))?;
                f.sync_data().map_err(io(p))?;
                *len += bytes.len() as u64;
                Ok(())
            }
            Sink::Stdout(o) => {
                let mut o = o.lock();
                o.write_all(bytes)
                    .and_then(|()| o.flush())
                    .map_err(|e| Error::trouble(format!("writing to standard output: {e}")))
            }
        }
    }

    fn bytes(&self) -> Option<u64> {
        match self {
            Sink::File(_, _, n) => Some(*n),
            Sink::Stdout(_) => None,
        }
    }
}

/// Follow the log until stopped (or caught up, with `once`).
pub fn run(o: &Options) -> Result<Stats, Error> {
    let started = Instant::now();
    // One tail per state file: two would ship the same events twice.
    let mut lock_path = o.state.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.try_lock().map_err(|_| {
        Error::trouble(format!(
            "another audit-log tail is running with {} (it holds {})",
            o.state.display(),
            lock_path.display()
        ))
    })?;
    let old = read_state(&o.state)?;
    if let Some(s) = &old {
        if s.feed != o.feed {
            return Err(Error::trouble(format!(
                "{} belongs to a {} feed; this one was asked for {}",
                o.state.display(),
                s.feed.name(),
                o.feed.name()
            )));
        }
    }
    let mut client = connect(&o.dsn)?;
    // Each poll is a short query the planner may cost high enough to JIT
    // compile, which takes longer than running it (150 ms against 50 ms).
    client
        .batch_execute("SET jit = off")
        .map_err(|e| Error::trouble(format!("SET jit = off: {}", crate::error::db_message(&e))))?;
    let (_, cp) = current_checkpoint(&mut client)?;
    let mut state = match old {
        Some(s) => {
            check_heads(&mut client, &s, &cp, &o.state)?;
            s
        }
        None => State {
            format: STATE_FORMAT.into(),
            feed: o.feed,
            database: cp.database.clone(),
            system_identifier: cp.system_identifier.clone(),
            out_bytes: None,
            events: 0,
            heads: if o.from_now {
                cp.chains.clone()
            } else {
                anchors(&mut client)?
            },
        },
    };
    let exists = o.state.exists();
    let mut sink = Sink::open(o.out.as_deref(), exists.then_some(&state), &o.state)?;
    state.out_bytes = sink.bytes();
    state.database = cp.database.clone();
    state.system_identifier = cp.system_identifier.clone();
    save_state(&o.state, &state)?;

    let source = Source {
        database: cp.database.clone().unwrap_or_default(),
        system_identifier: cp.system_identifier.clone().unwrap_or_default(),
    };
    let mut follower = Follower::new(&state.heads);
    let mut stats = Stats {
        events: 0,
        records: 0,
        seconds: 0.0,
        lags: Lags::default(),
    };
    loop {
        // One snapshot for a poll: a record's segments are read twice (to
        // check the record, then to ship its events), and must be the same.
        let mut tx = snapshot(&mut client)?;
        let records = poll(&mut tx, &follower.heads(), o.batch)?;
        let found = records.len();
        let mut buf = Vec::new();
        let mut shipped = 0u64;
        let mut committed = Vec::with_capacity(found);
        for (r, segments, payload) in merge_by_time(records) {
            // A transaction's segments are read one at a time, never whole:
            // a table's owner can make one larger than this process's memory.
            let d = if segments == 0 {
                digest(&r, [], &payload)
            } else {
                digest_streamed(&r, segment_rows(&mut tx, r.first_event)?, &payload)?
            };
            let mut stepped = follower.step(&r, &d);
            // Records purged before they were shipped: the chain goes on
            // from the anchor the purge left, and the gap is said.
            if stepped
                .as_ref()
                .is_err_and(|p| p.kind == ProblemKind::LinkMissing)
            {
                if let Some(a) = anchor_before(&mut tx, &r)? {
                    let from = follower
                        .heads()
                        .iter()
                        .find(|h| h.chain == r.chain_id)
                        .map_or(0, |h| h.seq);
                    eprintln!(
                        "audit-log tail: chain {} records {}..{} were purged before this feed shipped them; it goes on from the purge's anchor",
                        r.chain_id,
                        from + 1,
                        a.seq
                    );
                    follower.restart(&a);
                    stepped = follower.step(&r, &d);
                }
            }
            stepped.map_err(|p| {
                Error::Refused(format!(
                    "chain {} seq {} does not continue its chain, so it was not shipped: {p}",
                    r.chain_id, r.seq
                ))
            })?;
            let unreadable = |m| Error::Refused(format!("record {}/{}: {m:?}", r.chain_id, r.seq));
            let mut events = DecodedCursor::new(&payload[..], segments != 0, r.base());
            let mut parts = match segments {
                0 => None,
                _ => Some(segment_rows(&mut tx, r.first_event)?),
            };
            let mut last = None;
            loop {
                if events.wants_segment() {
                    events.give_segment(parts.as_mut().and_then(Iterator::next).transpose()?);
                }
                let Some(e) = events.next_event() else { break };
                let e = e.map_err(unreadable)?;
                write_line(&mut buf, o.feed, &source, &r, &e)?;
                last = Some(e.hash);
                stats.events += 1;
                // A large transaction's lines go out as they are made; the
                // state is saved after the poll, as for any other.
                if buf.len() >= FLUSH_BYTES {
                    shipped += lines(&buf);
                    sink.write(&buf)?;
                    buf.clear();
                }
            }
            // The events shipped are those the record was checked against.
            if last.unwrap_or(audit_log_core::ZERO_HASH) != d.last_hash {
                return Err(Error::Refused(format!(
                    "record {}/{} read otherwise the second time: not shipped",
                    r.chain_id, r.seq
                )));
            }
            stats.records += 1;
            committed.push(r.committed_at);
        }
        tx.commit().map_err(|e| {
            Error::trouble(format!("ending a poll: {}", crate::error::db_message(&e)))
        })?;
        if shipped > 0 || !buf.is_empty() {
            shipped += lines(&buf);
            sink.write(&buf)?;
            let written_at = micros(SystemTime::now());
            for c in &committed {
                stats.lags.push((written_at - c).max(0) as f64 / 1000.0);
            }
            state.events += shipped;
            state.heads = follower.heads();
            state.out_bytes = sink.bytes();
            save_state(&o.state, &state)?;
        }
        let out_of_time = o
            .seconds
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        if out_of_time || (o.once && found == 0) {
            break;
        }
        if found == 0 {
            sleep(o.interval);
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// A record, how many segments it has, and its payload.
type Fetched = (Record, i32, Vec<u8>);

/// Lines of a large transaction written before the poll ends.
const FLUSH_BYTES: usize = 8 << 20;

fn lines(buf: &[u8]) -> u64 {
    buf.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The payloads of the segments of the transaction `first_event`, in order,
/// read as they are taken.
fn segment_rows(
    client: &mut impl GenericClient,
    first_event: i64,
) -> Result<impl Iterator<Item = Result<Vec<u8>, Error>> + '_, Error> {
    let db = |e: postgres::Error| {
        Error::trouble(format!(
            "reading segments: {}",
            crate::error::db_message(&e)
        ))
    };
    let mut rows = client
        .query_raw(
            "SELECT coalesce(payload, ''::bytea) FROM audit_log.segments
              WHERE first_event = $1 ORDER BY part",
            [&first_event as &(dyn postgres::types::ToSql + Sync)],
        )
        .map_err(db)?;
    Ok(std::iter::from_fn(move || {
        use postgres::fallible_iterator::FallibleIterator;
        rows.next().map_err(db).transpose()
    })
    .map(|row| row.map(|row| row.get(0))))
}

/// The anchor a purge left just before `r` in its chain, if there is one.
fn anchor_before(client: &mut impl GenericClient, r: &Record) -> Result<Option<ChainHead>, Error> {
    let row = client
        .query_opt(
            "SELECT seq, link_hash, last_event FROM audit_log.anchors WHERE chain_id = $1 AND seq = $2",
            &[&r.chain_id, &(r.seq - 1)],
        )
        .map_err(|e| Error::trouble(format!("reading audit_log.anchors: {}", crate::error::db_message(&e))))?;
    row.map(|row| {
        Ok(ChainHead {
            chain: r.chain_id,
            seq: row.get(0),
            link_hash: hash(row.get(1)),
            last_event: row.get(2),
        })
    })
    .transpose()
}

/// Up to `batch` records of each chain after its head, in seq order per
/// chain. Chains are found by a skip scan of the records' primary key, so a
/// poll costs a few index probes per chain whatever the log's size.
fn poll(
    client: &mut impl GenericClient,
    heads: &[ChainHead],
    batch: i64,
) -> Result<Vec<Fetched>, Error> {
    let chains: Vec<i32> = heads.iter().map(|h| h.chain).collect();
    let seqs: Vec<i64> = heads.iter().map(|h| h.seq).collect();
    let rows = client
        .query(
            "WITH RECURSIVE c(id) AS (
                 SELECT min(chain_id) FROM audit_log.records
                 UNION ALL
                 SELECT (SELECT min(chain_id) FROM audit_log.records WHERE chain_id > c.id)
                   FROM c WHERE c.id IS NOT NULL)
             SELECT r.chain_id, r.seq, r.tx_id::text, r.first_event, r.last_event, r.event_count,
                    r.committed_at, r.link_hash, r.payload,
                    CASE WHEN r.segments <> 0 THEN (
                        SELECT count(*) FROM audit_log.segments s
                         WHERE s.first_event = r.first_event)::int ELSE 0 END
               FROM c
               LEFT JOIN unnest($1::int[], $2::bigint[]) AS h(chain_id, seq) ON h.chain_id = c.id
              CROSS JOIN LATERAL (
                    SELECT * FROM audit_log.records r
                     WHERE r.chain_id = c.id AND r.seq > coalesce(h.seq, 0)
                     ORDER BY r.seq LIMIT $3) r
              WHERE c.id IS NOT NULL
              ORDER BY r.chain_id, r.seq",
            &[&chains, &seqs, &batch],
        )
        .map_err(|e| {
            Error::trouble(format!(
                "reading new records: {}",
                crate::error::db_message(&e)
            ))
        })?;
    rows.iter()
        .map(|row| {
            let tx_text: String = row.get(2);
            let r = Record {
                chain_id: row.get(0),
                seq: row.get(1),
                tx_id: tx_text
                    .parse()
                    .map_err(|_| Error::trouble(format!("tx_id {tx_text:?}")))?,
                first_event: row.get(3),
                last_event: row.get(4),
                event_count: row.get(5),
                committed_at: micros(row.get(6)),
                link_hash: hash(row.get(7)),
            };
            Ok((r, row.get(9), row.get(8)))
        })
        .collect()
}

/// Records of several chains, each chain's in seq order, merged by commit
/// time: the order a reader expects, and each chain's order kept even if
/// the clock went back.
fn merge_by_time(records: Vec<Fetched>) -> Vec<Fetched> {
    let mut per_chain: BTreeMap<i32, std::collections::VecDeque<Fetched>> = BTreeMap::new();
    for f in records {
        per_chain.entry(f.0.chain_id).or_default().push_back(f);
    }
    let mut out = Vec::new();
    loop {
        let next = per_chain
            .iter()
            .filter_map(|(c, q)| q.front().map(|f| (f.0.committed_at, *c)))
            .min();
        let Some((_, c)) = next else { break };
        if let Some(f) = per_chain.get_mut(&c).and_then(|q| q.pop_front()) {
            out.push(f);
        }
    }
    out
}

/// The native line: the export's event line with the record's place.
#[derive(Serialize)]
struct NativeLine<'a> {
    #[serde(flatten)]
    event: &'a EventLine,
    chain_id: i32,
    seq: i64,
    committed_at: String,
    database: &'a str,
    system_identifier: &'a str,
}

fn write_line(
    buf: &mut Vec<u8>,
    feed: Feed,
    source: &Source,
    r: &Record,
    e: &Event,
) -> Result<(), Error> {
    let line =
        EventLine::from_event(e).map_err(|m| Error::Refused(format!("event {}: {m}", e.id)))?;
    let committed_at = format_rfc3339(r.committed_at);
    let res = match feed {
        Feed::Native => serde_json::to_writer(
            &mut *buf,
            &NativeLine {
                event: &line,
                chain_id: r.chain_id,
                seq: r.seq,
                committed_at,
                database: &source.database,
                system_identifier: &source.system_identifier,
            },
        ),
        Feed::Ecs => serde_json::to_writer(&mut *buf, &ecs(&line, r, source, &committed_at)),
        Feed::Ocsf => serde_json::to_writer(&mut *buf, &ocsf(&line, r, source, &committed_at)),
    };
    res.map_err(|e| Error::trouble(format!("writing a line: {e}")))?;
    buf.push(b'\n');
    Ok(())
}

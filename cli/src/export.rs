//! `audit-log export`: stream the log to JSON Lines (`crate::format`) from
//! one REPEATABLE READ snapshot, in constant memory: rows are written as they
//! arrive, never collected.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use audit_log_core::json_text::encode_json_text;
use audit_log_core::model::Json;
use audit_log_core::record::Record;
use audit_log_core::time::format_rfc3339;
use audit_log_core::{ChainHead, Checkpoint, Event, Hash, Link};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, NoTls, Row};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::binary::BINARY_FORMAT;
use crate::format::{
    line, End, EventLine, Header, LinkLine, RecordLine, END_PREFIX, EXPORT_FORMAT, RECORDS_FORMAT,
};

/// What an export holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `audit_log.export.v1`: every event spelled out, then the links.
    Logical,
    /// `audit_log.export.v2`: each transaction's record as stored.
    Records,
    /// `audit_log.export.v3`: the records in binary frames, larger
    /// payloads compressed.
    Binary,
}

/// A read-only transaction with one snapshot for all it reads.
pub fn snapshot(client: &mut Client) -> Result<postgres::Transaction<'_>, String> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| {
            format!(
                "cannot start a read-only transaction: {}",
                crate::error::db_message(&e)
            )
        })
}

pub fn connect(dsn: &str) -> Result<Client, String> {
    Client::connect(dsn, NoTls)
        .map_err(|e| format!("cannot connect: {}", crate::error::db_message(&e)))
}

/// Microseconds since the Unix epoch (negative before it).
pub fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// A stored hash. One of the wrong length (or missing) becomes a value
/// nothing hashes to, so verification reports it where it is, as the
/// server's verify() does.
pub fn hash(bytes: Option<Vec<u8>>) -> Hash {
    match bytes {
        Some(b) => <[u8; 32]>::try_from(b.as_slice())
            .unwrap_or_else(|_| audit_log_core::hash::event_hash_from_encoding(&[0xFF; 32], &b)),
        None => [0xFF; 32],
    }
}

/// A jsonb column, which the server sends as `jsonb_out` text, in its
/// canonical encoding: with no `serde_json::Value`, whatever its depth.
fn json(row: &Row, i: usize) -> Result<Option<Json>, String> {
    let text: Option<String> = row.try_get(i).map_err(|e| e.to_string())?;
    text.map(|t| {
        encode_json_text(&t)
            .map(Json::Encoded)
            .map_err(|e| format!("jsonb text the server sent: {e}"))
    })
    .transpose()
}

/// The server's current checkpoint: as the JSON it returned (what a
/// signature covers) and parsed.
pub fn current_checkpoint(client: &mut Client) -> Result<(Value, Checkpoint), crate::error::Error> {
    use crate::error::Error;
    let text: String = client
        .query_one("SELECT audit_log.checkpoint()::text", &[])
        .map_err(|e| {
            Error::trouble(format!(
                "audit_log.checkpoint() (is audit_log installed, and may this role use it?): {}",
                crate::error::db_message(&e)
            ))
        })?
        .get(0);
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::trouble(format!("audit_log.checkpoint(): {e}")))?;
    let cp = Checkpoint::parse(&value)
        .map_err(|e| Error::trouble(format!("audit_log.checkpoint(): {e}")))?;
    Ok((value, cp))
}

/// The end line of an earlier export: where a continuation starts.
pub fn previous_heads(path: &Path) -> Result<Vec<ChainHead>, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut last = None;
    // The end line is the file's last line (a binary export's frames may
    // hold anything before it).
    for l in BufReader::new(f).split(b'\n') {
        let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
        last = l.starts_with(END_PREFIX).then_some(l);
    }
    let end = last.ok_or_else(|| {
        format!(
            "{} has no end line: it is not a complete export to continue",
            path.display()
        )
    })?;
    let end: End = serde_json::from_slice(&end)
        .map_err(|e| format!("{}: damaged end line: {e}", path.display()))?;
    Ok(end.heads)
}

/// Writes lines, hashing every byte for the end line.
struct Out {
    w: BufWriter<Box<dyn Write>>,
    digest: Sha256,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.digest.update(bytes);
        self.w
            .write_all(bytes)
            .map_err(|e| format!("writing the export: {e}"))
    }
}

struct Progress {
    on: bool,
    total: i64,
    done: i64,
    started: Instant,
    shown: Instant,
}

impl Progress {
    fn tick(&mut self) {
        self.advance(1);
    }

    fn advance(&mut self, n: i64) {
        self.done += n;
        if self.on && self.shown.elapsed().as_millis() >= 200 {
            self.shown = Instant::now();
            self.show();
        }
    }

    fn show(&self) {
        let pct = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64).round().min(width as f64) as usize;
        eprint!(
            "\r[{}{}] {}/{} events {:5.1}% {:.0}/s ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.done,
            self.total,
            pct,
            rate
        );
    }
}

pub struct Summary {
    pub events: u64,
    pub links: u64,
    pub seconds: f64,
}

/// Export every transaction not in `since` (all of them without it).
pub fn export(
    dsn: &str,
    since: Option<&Path>,
    out: Option<&Path>,
    format: Format,
    source: Option<&str>,
) -> Result<Summary, crate::error::Error> {
    let started = Instant::now();
    // A source collected by logical replication: its log is in a schema of
    // its own at the collector, in the records' layout.
    let schema = match source {
        None => "audit_log".to_string(),
        Some(_) if format == Format::Logical => {
            return Err(crate::error::Error::trouble(
                "--source exports the records formats only: add --format records or --format binary",
            ))
        }
        Some(name) if valid_source_name(name) => format!("audit_log_source_{name}"),
        Some(name) => {
            return Err(crate::error::Error::trouble(format!(
                "--source {name:?}: a source name is 1 to 40 lower-case letters, digits or _, starting with a letter"
            )))
        }
    };
    if format == Format::Binary && out.is_none() && io::stdout().is_terminal() {
        return Err(crate::error::Error::trouble(
            "a binary export is not for a terminal: give --out FILE or redirect standard output",
        ));
    }
    let continued = since.map(previous_heads).transpose()?;
    let mut client = connect(dsn)?;
    let mut tx = snapshot(&mut client)?;
    let meta = match source {
        None => tx.query_one(
            "SELECT pg_current_snapshot()::text, audit_log.checkpoint()::text",
            &[],
        ),
        Some(name) => tx.query_one(
            "SELECT pg_current_snapshot()::text, audit_log.source_checkpoint($1)::text",
            &[&name],
        ),
    }
    .map_err(|e| {
        format!(
            "reading the log's identity (is audit_log installed, and may this role use it?): {}",
            crate::error::db_message(&e)
        )
    })?;
    let snapshot: String = meta.get(0);
    let cp_text: String = meta.get(1);
    let cp_value: Value = serde_json::from_str(&cp_text).map_err(|e| e.to_string())?;
    let cp = Checkpoint::parse(&cp_value).map_err(|e| e.to_string())?;
    // A whole export starts where purge() left each chain.
    let anchors = match &continued {
        Some(heads) => heads.clone(),
        None => {
            let mut out = Vec::new();
            for r in tx
                .query(
                    &format!("SELECT chain_id, seq, link_hash, last_event FROM {schema}.anchors ORDER BY chain_id"),
                    &[],
                )
                .map_err(|e| format!("reading {schema}.anchors: {}", crate::error::db_message(&e)))?
            {
                out.push(ChainHead {
                    chain: r.get(0),
                    seq: r.get(1),
                    link_hash: hash(r.get(2)),
                    last_event: r.get(3),
                });
            }
            out
        }
    };

    // Links past the anchors; events of those transactions, and the events
    // of any transaction with no link at all (which verification will
    // report) that began after the anchors. Without anchors: everything.
    // A transaction is known by its first event (tx_first, a link's
    // first_event): its tx_id can repeat after a restore into a new cluster.
    let chains: Vec<i32> = anchors.iter().map(|a| a.chain).collect();
    let seqs: Vec<i64> = anchors.iter().map(|a| a.seq).collect();
    let after_event: i64 = anchors.iter().map(|a| a.last_event).max().unwrap_or(0);
    // The records export reads the records table itself, not the links view.
    let source = match format {
        Format::Logical => "audit_log.links",
        Format::Records | Format::Binary => &format!("{schema}.records"),
    };
    let (new_links, event_filter) = if continued.is_none() {
        (format!("SELECT l.* FROM {source} l WHERE $1::int[] IS NOT NULL AND $2::bigint[] IS NOT NULL AND $3::bigint IS NOT NULL"), "")
    } else {
        (
            format!("SELECT l.* FROM {source} l
               LEFT JOIN unnest($1::int[], $2::bigint[]) AS a(chain_id, seq) ON a.chain_id = l.chain_id
              WHERE l.seq > coalesce(a.seq, 0) AND $3::bigint IS NOT NULL"),
            "WHERE e.tx_first IN (SELECT first_event FROM new_links)
                OR (e.tx_first > $3
                    AND NOT EXISTS (SELECT 1 FROM audit_log.links k WHERE k.first_event = e.tx_first))",
        )
    };
    let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&chains, &seqs, &after_event];
    let total: i64 = tx
        .query_one(
            &format!("WITH new_links AS ({new_links}) SELECT coalesce(sum(event_count), 0)::bigint FROM new_links"),
            &params,
        )
        .map_err(|e| crate::error::db_message(&e))?
        .get(0);

    let sink: Box<dyn Write> = match out {
        Some(p) => Box::new(File::create(partial(p)).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(io::stdout().lock()),
    };
    let mut w = Out {
        w: BufWriter::with_capacity(1 << 20, sink),
        digest: Sha256::new(),
    };
    let header = Header {
        kind: "header".into(),
        format: match format {
            Format::Logical => EXPORT_FORMAT,
            Format::Records => RECORDS_FORMAT,
            Format::Binary => BINARY_FORMAT,
        }
        .into(),
        database: cp.database.clone(),
        system_identifier: cp.system_identifier.clone(),
        exported_at: format_rfc3339(micros(SystemTime::now())),
        snapshot,
        anchors: anchors.clone(),
        continues: continued.is_some(),
    };
    w.put(&line(&header).map_err(|e| e.to_string())?)?;

    let mut progress = Progress {
        on: io::stderr().is_terminal(),
        total,
        done: 0,
        started: Instant::now(),
        shown: Instant::now(),
    };
    let mut heads: BTreeMap<i32, ChainHead> =
        anchors.iter().map(|a| (a.chain, a.clone())).collect();
    let (events, links) = match format {
        Format::Records | Format::Binary => write_records(
            &mut tx,
            format == Format::Binary,
            &schema,
            (&new_links, &params),
            &mut w,
            &mut progress,
            &mut heads,
        )?,
        Format::Logical => write_logical(
            &mut tx,
            (&new_links, event_filter),
            &params,
            &mut w,
            &mut progress,
            &mut heads,
        )?,
    };
    tx.commit().map_err(|e| crate::error::db_message(&e))?;

    let end = End {
        kind: "end".into(),
        events,
        links,
        heads: heads.into_values().collect(),
        sha256: hex::encode(w.digest.clone().finalize()),
    };
    let end_line = line(&end).map_err(|e| e.to_string())?;
    w.w.write_all(&end_line)
        .map_err(|e| format!("writing the export: {e}"))?;
    w.w.flush()
        .map_err(|e| format!("writing the export: {e}"))?;
    drop(w);
    if let Some(p) = out {
        fs::rename(partial(p), p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if progress.on {
        progress.show();
        eprintln!();
    }
    Ok(Summary {
        events,
        links,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Params<'a> = [&'a (dyn postgres::types::ToSql + Sync); 3];

/// The records export: each new record as stored, with its segments, in
/// (chain_id, seq) order. Returns the number of events and of records.
fn write_records(
    tx: &mut postgres::Transaction<'_>,
    binary: bool,
    schema: &str,
    (new_records, params): (&str, &Params<'_>),
    w: &mut Out,
    progress: &mut Progress,
    heads: &mut BTreeMap<i32, ChainHead>,
) -> Result<(u64, u64), String> {
    // The binary export writes a record's segments one at a time, as it
    // reads them, so that no transaction is held whole (here or in the
    // server); the records export has them on the record's one line.
    let segments_sql = if binary {
        format!(
            "(SELECT count(*) FROM {schema}.segments s WHERE s.first_event = r.first_event)::int"
        )
    } else {
        format!(
            "ARRAY(SELECT s.payload FROM {schema}.segments s
                    WHERE s.first_event = r.first_event ORDER BY s.part)"
        )
    };
    let sql = format!(
        "SELECT r.chain_id, r.seq, r.tx_id::text, r.first_event, r.last_event, r.event_count,
                r.committed_at, r.link_hash, coalesce(r.payload, ''::bytea),
                CASE WHEN r.segments <> 0 THEN {segments_sql} END
           FROM ({new_records}) r ORDER BY r.chain_id, r.seq"
    );
    let parts_sql = format!(
        "SELECT coalesce(s.payload, ''::bytea) FROM {schema}.segments s
          WHERE s.first_event = $1 ORDER BY s.part"
    );
    let db = |e: postgres::Error| format!("reading records: {}", crate::error::db_message(&e));
    // Read in batches through a portal: between two, the segments of a
    // batch's records are read with queries of their own.
    let portal = tx.bind(sql.as_str(), &params[..]).map_err(db)?;
    let (mut events, mut records) = (0u64, 0u64);
    let mut frame = Vec::new();
    loop {
        let batch = tx.query_portal(&portal, 64).map_err(db)?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let tx_text: String = row.get(2);
            let r = Record {
                chain_id: row.get(0),
                seq: row.get(1),
                tx_id: tx_text.parse().map_err(|_| format!("tx_id {tx_text:?}"))?,
                first_event: row.get(3),
                last_event: row.get(4),
                event_count: row.get(5),
                committed_at: micros(row.get(6)),
                link_hash: hash(row.get(7)),
            };
            let payload: Vec<u8> = row.get(8);
            if binary {
                let count: Option<i32> = row.get(9);
                let count = u32::try_from(count.unwrap_or(0)).unwrap_or(0);
                frame.clear();
                crate::binary::write_head(&mut frame, &r, count);
                w.put(&frame)?;
                if count > 0 {
                    let mut written = 0u32;
                    let mut parts = tx
                        .query_raw(
                            parts_sql.as_str(),
                            [&r.first_event as &(dyn postgres::types::ToSql + Sync)],
                        )
                        .map_err(db)?;
                    while let Some(part) = parts.next().map_err(db)? {
                        frame.clear();
                        crate::binary::write_blob(&mut frame, &r, part.get(0))?;
                        w.put(&frame)?;
                        written += 1;
                    }
                    if written != count {
                        return Err(format!(
                            "record {}/{}: {written} segments read where {count} were counted",
                            r.chain_id, r.seq
                        ));
                    }
                }
                frame.clear();
                crate::binary::write_blob(&mut frame, &r, &payload)?;
                w.put(&frame)?;
            } else {
                let segments: Option<Vec<Option<Vec<u8>>>> = row.get(9);
                let segments: Vec<Vec<u8>> = segments
                    .unwrap_or_default()
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect();
                w.put(
                    &line(&RecordLine::from_record(&r, &segments, &payload))
                        .map_err(|e| e.to_string())?,
                )?;
            }
            heads.insert(r.chain_id, ChainHead::from(&r));
            events += u64::try_from(r.event_count).unwrap_or(0);
            records += 1;
            progress.advance(r.event_count.max(0));
        }
    }
    if binary {
        w.put(&[crate::binary::END_OF_FRAMES])?;
    }
    Ok((events, records))
}

/// The logical export: every new event spelled out, then the new links.
/// Returns the number of events and of links.
fn write_logical(
    tx: &mut postgres::Transaction<'_>,
    (new_links, event_filter): (&str, &str),
    params: &Params<'_>,
    w: &mut Out,
    progress: &mut Progress,
    heads: &mut BTreeMap<i32, ChainHead>,
) -> Result<(u64, u64), String> {
    let events_sql = format!(
        "WITH new_links AS ({new_links})
         SELECT e.id, e.tx_id::text, e.tx_seq, e.recorded_at, e.statement_at, e.session_user_name,
                e.current_user_name, e.application_name, inet_out(e.client_addr)::text, e.context::text,
                e.table_schema, e.table_name, e.op, e.old_row::text, e.new_row::text,
                e.prev_hash, e.hash, e.tx_first
           FROM audit_log.events e {event_filter}
          ORDER BY e.tx_first, e.tx_seq"
    );
    let mut rows = tx
        .query_raw(events_sql.as_str(), params.iter().copied())
        .map_err(|e| format!("reading events: {}", crate::error::db_message(&e)))?;
    let mut events = 0u64;
    while let Some(r) = rows
        .next()
        .map_err(|e| format!("reading events: {}", crate::error::db_message(&e)))?
    {
        let tx_text: String = r.get(1);
        let e = Event {
            id: r.get(0),
            tx_id: tx_text.parse().map_err(|_| format!("tx_id {tx_text:?}"))?,
            tx_seq: i64::from(r.get::<_, i32>(2)),
            tx_first: r.get(17),
            recorded_at: micros(r.get(3)),
            statement_at: micros(r.get(4)),
            session_user_name: r.get(5),
            current_user_name: r.get(6),
            application_name: r.get(7),
            client_addr: r.get(8),
            context: json(&r, 9)?,
            table_schema: r.get(10),
            table_name: r.get(11),
            op: r.get(12),
            old_row: json(&r, 13)?,
            new_row: json(&r, 14)?,
            prev_hash: hash(r.get(15)),
            hash: hash(r.get(16)),
        };
        let event_line = EventLine::from_event(&e).map_err(|m| format!("event {}: {m}", e.id))?;
        w.put(&line(&event_line).map_err(|e| e.to_string())?)?;
        events += 1;
        progress.tick();
    }
    drop(rows);

    let links_sql = format!(
        "SELECT chain_id, seq, tx_id::text, event_count, first_event, last_event, last_event_hash,
                committed_at, prev_link_hash, link_hash
           FROM ({new_links}) n ORDER BY chain_id, seq"
    );
    let mut rows = tx
        .query_raw(links_sql.as_str(), params.iter().copied())
        .map_err(|e| format!("reading links: {}", crate::error::db_message(&e)))?;
    let mut links = 0u64;
    while let Some(r) = rows
        .next()
        .map_err(|e| format!("reading links: {}", crate::error::db_message(&e)))?
    {
        let tx_text: String = r.get(2);
        let l = Link {
            chain_id: r.get(0),
            seq: r.get(1),
            tx_id: tx_text.parse().map_err(|_| format!("tx_id {tx_text:?}"))?,
            event_count: r.get(3),
            first_event: r.get(4),
            last_event: r.get(5),
            last_event_hash: hash(r.get(6)),
            committed_at: micros(r.get(7)),
            prev_link_hash: hash(r.get(8)),
            link_hash: hash(r.get(9)),
        };
        heads.insert(l.chain_id, ChainHead::from(&l));
        w.put(&line(&LinkLine::from_link(&l)).map_err(|e| e.to_string())?)?;
        links += 1;
    }
    Ok((events, links))
}

/// A collected source's name, as audit_log.collect() accepts it.
fn valid_source_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Where an export is written until it is complete.
fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

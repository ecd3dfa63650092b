//! `audit-log report`: one self-contained HTML file for an auditor. The
//! verdict comes first (the offline verification of the export, with the
//! checkpoint and its signature), then a timeline of events per day by
//! table and operation, every configuration change, the most active roles
//! and applications, and, when verification fails, the first bad event
//! with its neighbours.
//!
//! The report aggregates: its size depends on the number of days, tables and
//! configuration changes (the latter capped), not on the number of events.
//! Everything in it that comes from the log (names, rows, details) is
//! attacker-controlled text: it is escaped, and the page carries a Content
//! Security Policy that allows no script at all.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use audit_log_core::encoding::decode::Reader;
use audit_log_core::model::Json;
use audit_log_core::time::format_rfc3339;
use audit_log_core::Event;

use crate::binary::BINARY_FORMAT;
use crate::format::{EventLine, Header, EVENT_PREFIX, RECORDS_FORMAT};
use crate::verify_file::Report as Verification;

/// Configuration changes listed in full; past this, only counted.
pub const MAX_CHANGES: usize = 2000;
/// Series in the timeline: the busiest (table, operation) pairs; the rest
/// are drawn together as "other".
pub const MAX_SERIES: usize = 8;
/// Bars in the timeline: days, or weeks or months when there are more days.
pub const MAX_BARS: usize = 200;
/// Events shown on each side of the first bad one.
pub const NEIGHBOURS: i64 = 3;

/// What the checkpoint given to `report` came to.
#[derive(Debug, Clone)]
pub enum CheckpointStatus {
    NotGiven,
    /// A plain (unsigned) checkpoint, taken at that time.
    Unsigned(Option<String>),
    /// Signed, and the signature verifies with the key of this id.
    Signed {
        taken_at: Option<String>,
        key: String,
    },
    /// Unusable, or its signature does not verify: the message.
    Refused(String),
}

/// One event, as much of it as the report shows.
#[derive(Debug, Clone)]
pub struct Shown {
    pub id: i64,
    pub tx_id: u64,
    pub recorded_at: i64,
    pub user: String,
    pub application: Option<String>,
    pub table: String,
    pub op: String,
    pub row: String,
}

fn json_text(j: &Option<Json>) -> String {
    match j {
        None => String::new(),
        Some(Json::Encoded(b)) => Reader::new(b)
            .json_text()
            .unwrap_or_else(|_| "(unreadable)".into()),
        Some(Json::Value(v)) => v.to_string(),
    }
}

fn table_of(e: &Event) -> String {
    if e.table_name.is_empty() {
        e.table_schema.clone()
    } else {
        format!("{}.{}", e.table_schema, e.table_name)
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

impl Shown {
    fn of(e: &Event) -> Shown {
        let row = if e.new_row.is_some() {
            &e.new_row
        } else {
            &e.old_row
        };
        Shown {
            id: e.id,
            tx_id: e.tx_id,
            recorded_at: e.recorded_at,
            user: e.current_user_name.clone(),
            application: e.application_name.clone(),
            table: table_of(e),
            op: e.op.clone(),
            row: clip(&json_text(row), 300),
        }
    }
}

/// Row changes; every other operation is a configuration change.
fn is_row_change(op: &str) -> bool {
    matches!(op, "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE")
}

/// Everything the report shows of the events, gathered in one pass.
#[derive(Debug, Default)]
pub struct Aggregates {
    pub events: u64,
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    /// Per day (days since the Unix epoch), per (table, operation).
    pub per_day: BTreeMap<i64, HashMap<(String, String), u64>>,
    pub per_series: HashMap<(String, String), u64>,
    pub users: HashMap<String, u64>,
    pub applications: HashMap<String, u64>,
    pub changes: Vec<Shown>,
    pub changes_total: u64,
    /// Events with an id near the first bad event's.
    pub around_bad: Vec<Shown>,
    /// Lines that could not be read as events (verification reports them).
    pub unreadable: u64,
}

const DAY_US: i64 = 86_400_000_000;

impl Aggregates {
    pub fn add(&mut self, e: &Event, bad: Option<i64>) {
        self.events += 1;
        self.first_at = Some(
            self.first_at
                .map_or(e.recorded_at, |t| t.min(e.recorded_at)),
        );
        self.last_at = Some(self.last_at.map_or(e.recorded_at, |t| t.max(e.recorded_at)));
        let key = (table_of(e), e.op.clone());
        *self
            .per_day
            .entry(e.recorded_at.div_euclid(DAY_US))
            .or_default()
            .entry(key.clone())
            .or_default() += 1;
        *self.per_series.entry(key).or_default() += 1;
        *self.users.entry(e.current_user_name.clone()).or_default() += 1;
        *self
            .applications
            .entry(e.application_name.clone().unwrap_or_default())
            .or_default() += 1;
        if !is_row_change(&e.op) {
            self.changes_total += 1;
            // The earliest MAX_CHANGES by id: events come in chain order,
            // not id order, so keep twice as many and cut back now and then.
            self.changes.push(Shown::of(e));
            if self.changes.len() >= 2 * MAX_CHANGES {
                self.trim_changes();
            }
        }
        if let Some(b) = bad {
            if (e.id - b).abs() <= NEIGHBOURS {
                self.around_bad.push(Shown::of(e));
            }
        }
    }
}

impl Aggregates {
    /// The configuration changes in id order, at most MAX_CHANGES.
    fn trim_changes(&mut self) {
        self.changes.sort_by_key(|c| c.id);
        self.changes.truncate(MAX_CHANGES);
    }
}

/// Every event of an export (either form), in file order, to `f`. Damaged
/// lines are counted, not fatal: verification has reported them.
pub fn for_each_event(path: &Path, mut f: impl FnMut(&Event)) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::with_capacity(1 << 20, file).split(b'\n');
    let header: Option<Header> = match lines.next() {
        Some(Ok(l)) => serde_json::from_slice(&l).ok(),
        _ => None,
    };
    let records = header.is_some_and(|h| h.format == RECORDS_FORMAT || h.format == BINARY_FORMAT);
    let mut unreadable = 0u64;
    if records {
        crate::verify_file::for_each_event(path, |e| match e {
            Some(e) => f(e),
            None => unreadable += 1,
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(unreadable);
    }
    for line in lines {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.starts_with(EVENT_PREFIX) {
            match EventLine::parse(&line).and_then(EventLine::into_event) {
                Ok(e) => f(&e),
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok(unreadable)
}

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab and newline show as U+FFFD.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn date(day: i64) -> String {
    format_rfc3339(day * DAY_US)[..10].to_string()
}

fn time(us: i64) -> String {
    let t = format_rfc3339(us);
    format!("{} {}", &t[..10], &t[11..19])
}

/// The most frequent keys, busiest first (ties by name), at most `n`.
fn top<K: Clone + Ord>(m: &HashMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut v: Vec<(K, u64)> = m.iter().map(|(k, c)| (k.clone(), *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

const COLORS: [&str; MAX_SERIES + 1] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c9c9c",
];

/// The timeline: stacked bars per day (or per 7 or 30 days), by series.
fn timeline(a: &Aggregates) -> String {
    let (Some(&first), Some(&last)) = (a.per_day.keys().next(), a.per_day.keys().next_back())
    else {
        return "<p>No events.</p>".into();
    };
    let days = last - first + 1;
    let width = if days <= MAX_BARS as i64 {
        1
    } else if days <= 7 * MAX_BARS as i64 {
        7
    } else {
        30
    };
    let series: Vec<(String, String)> = top(&a.per_series, MAX_SERIES)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let bars = ((days + width - 1) / width) as usize;
    // Per bar, per series (the last one is "other").
    let mut counts = vec![vec![0u64; series.len() + 1]; bars];
    for (day, m) in &a.per_day {
        let bar = ((day - first) / width) as usize;
        for (k, c) in m {
            let s = series.iter().position(|x| x == k).unwrap_or(series.len());
            counts[bar][s] += c;
        }
    }
    let max = counts
        .iter()
        .map(|b| b.iter().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (w, h, left, bottom) = (960.0f64, 260.0f64, 60.0f64, 30.0f64);
    let bar_w = (w - left) / bars as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="timeline" viewBox="0 0 {w} {}" width="{w}" height="{}" role="img" aria-label="events per {} by table and operation">"#,
        h + bottom,
        h + bottom,
        match width {
            1 => "day",
            7 => "week",
            _ => "30 days",
        }
    );
    let _ = write!(
        svg,
        r##"<text x="0" y="12" class="axis">{max}</text><text x="0" y="{h}" class="axis">0</text><line x1="{left}" y1="{h}" x2="{w}" y2="{h}" stroke="#888"/>"##
    );
    for (i, b) in counts.iter().enumerate() {
        let mut y = h;
        for (s, &c) in b.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let bh = c as f64 / max as f64 * (h - 16.0);
            y -= bh;
            let label = match series.get(s) {
                Some((t, o)) => format!("{t} {o}"),
                None => "other".into(),
            };
            let _ = write!(
                svg,
                r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{}"><title>{}: {} {}</title></rect>"#,
                left + i as f64 * bar_w,
                y,
                (bar_w - 1.0).max(0.5),
                bh,
                COLORS[s.min(MAX_SERIES)],
                esc(&date(first + i as i64 * width)),
                c,
                esc(&label)
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{}" class="axis">{}</text><text x="{w}" y="{}" class="axis" text-anchor="end">{}</text></svg>"#,
        h + 20.0,
        esc(&date(first)),
        h + 20.0,
        esc(&date(last))
    );
    let mut legend = String::from(r#"<ul class="legend">"#);
    for (s, (t, o)) in series.iter().enumerate() {
        let _ = write!(
            legend,
            r#"<li><span style="background:{}"></span>{} {}</li>"#,
            COLORS[s],
            esc(t),
            esc(o)
        );
    }
    if a.per_series.len() > series.len() {
        let _ = write!(
            legend,
            r#"<li><span style="background:{}"></span>other ({} more)</li>"#,
            COLORS[MAX_SERIES],
            a.per_series.len() - series.len()
        );
    }
    legend.push_str("</ul>");
    svg + &legend
}

/// Rows of a change to audit_log's own objects (a superuser's: no one else
/// may) are marked, as are the rows `mark` names.
fn events_table(rows: &[Shown], mark: Option<i64>) -> String {
    let mut t = String::from(
        "<table><tr><th>event</th><th>tx</th><th>recorded (UTC)</th><th>role</th><th>application</th><th>table</th><th>operation</th><th>row or details</th></tr>",
    );
    for r in rows {
        let class = if Some(r.id) == mark {
            " class=\"bad\""
        } else if r.table.starts_with("audit_log.") && !is_row_change(&r.op) {
            " class=\"audit\""
        } else {
            ""
        };
        let _ = write!(
            t,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"row\">{}</td></tr>",
            r.id,
            r.tx_id,
            esc(&time(r.recorded_at)),
            esc(&r.user),
            esc(r.application.as_deref().unwrap_or("")),
            esc(&r.table),
            esc(&r.op),
            esc(&r.row)
        );
    }
    t.push_str("</table>");
    t
}

fn counts_table(title: &str, m: &HashMap<String, u64>, total: u64) -> String {
    let mut t = format!(
        "<table><tr><th>{}</th><th>events</th><th>share</th></tr>",
        esc(title)
    );
    for (k, c) in top(m, 15) {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{c}</td><td>{:.1}%</td></tr>",
            if k.is_empty() {
                "<i>(none)</i>".to_string()
            } else {
                esc(&k)
            },
            100.0 * c as f64 / total.max(1) as f64
        );
    }
    if m.len() > 15 {
        let _ = write!(t, "<tr><td colspan=\"3\">{} more</td></tr>", m.len() - 15);
    }
    t.push_str("</table>");
    t
}

/// What the page is about.
pub struct Source {
    pub description: String,
    pub database: Option<String>,
    pub system_identifier: Option<String>,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}\
.verdict{border-radius:6px;padding:1em 1.5em;margin:1.5em 0;border:2px solid}\
.verdict.ok{background:#eef8ee;border-color:#3a8a3a}.verdict.bad{background:#fbeeee;border-color:#b33}\
.verdict h2{margin:0 0 .5em 0;font-size:1.6em}\
table{border-collapse:collapse;margin:.5em 0 1.5em 0;font-size:.9em}\
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}tr.bad td{background:#fdd;font-weight:bold}tr.audit td{background:#fff3cd}\
td.row{font-family:monospace;max-width:420px;word-break:break-all}\
.axis{font-size:11px;fill:#555}.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.2em}\
.legend span{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}\
.warn{color:#b33;font-weight:bold}";

/// The whole page.
pub fn render(
    source: &Source,
    v: &Verification,
    cp: &CheckpointStatus,
    a: &Aggregates,
    generated_at: i64,
) -> String {
    let cp_ok = !matches!(cp, CheckpointStatus::Refused(_));
    let ok = v.ok() && cp_ok;
    let mut p = String::with_capacity(64 * 1024);
    p.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    // No script, no network: everything is inline, and nothing may load.
    p.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">");
    let _ = write!(
        p,
        "<title>audit_log report: {}</title><style>{STYLE}</style></head><body>",
        if ok { "INTACT" } else { "NOT INTACT" }
    );
    let _ = write!(
        p,
        "<h1>audit_log report</h1><p class=\"sub\">{} · database {} · system identifier {} · generated {} UTC</p>",
        esc(&source.description),
        esc(source.database.as_deref().unwrap_or("?")),
        esc(source.system_identifier.as_deref().unwrap_or("?")),
        esc(&time(generated_at))
    );

    // The verdict.
    let _ = write!(
        p,
        "<section id=\"verdict\" class=\"verdict {}\"><h2>{}</h2><ul>",
        if ok { "ok" } else { "bad" },
        if ok {
            "Verdict: INTACT"
        } else {
            "Verdict: NOT INTACT"
        }
    );
    let _ = write!(
        p,
        "<li>{} events in {} transactions checked, offline, by the audit-log verifier</li>",
        v.verdict.events_checked, v.verdict.links_checked
    );
    match cp {
        CheckpointStatus::NotGiven => {
            p.push_str("<li>No checkpoint given: a log cut short at its end would verify. Give one (<code>--checkpoint</code>) to prove it extends what a witness saw.</li>")
        }
        CheckpointStatus::Unsigned(at) => {
            let _ = write!(
                p,
                "<li>{} the checkpoint taken at {} (unsigned)</li>",
                if v.ok() { "The log extends" } else { "Checked against" },
                esc(at.as_deref().unwrap_or("?"))
            );
        }
        CheckpointStatus::Signed { taken_at, key } => {
            let _ = write!(
                p,
                "<li>{} the checkpoint taken at {}, its signature valid (key {})</li>",
                if v.ok() { "The log extends" } else { "Checked against" },
                esc(taken_at.as_deref().unwrap_or("?")),
                esc(key)
            );
        }
        CheckpointStatus::Refused(m) => {
            let _ = write!(
                p,
                "<li class=\"warn\">Checkpoint refused: {}</li>",
                esc(m)
            );
        }
    }
    // A checkpoint's trees (format v2), recomputed from the export's records.
    if v.trees_checked > 0 || !v.trees_skipped.is_empty() {
        let _ = write!(
            p,
            "<li>The checkpoint's Merkle trees recomputed from the records: {}</li>",
            v.trees_checked
        );
    }
    for why in &v.trees_skipped {
        let _ = write!(
            p,
            "<li class=\"warn\">A tree of the checkpoint not recomputed here (its chain's head was checked): {}</li>",
            esc(why)
        );
    }
    if let Some(first) = v.verdict.first() {
        let _ = write!(
            p,
            "<li class=\"warn\">{} problem(s); the first: {}</li>",
            v.verdict.problem_count,
            esc(&first.to_string())
        );
    }
    for f in v.file_problems.iter().take(20) {
        let _ = write!(p, "<li class=\"warn\">File: {}</li>", esc(f));
    }
    if v.file_problems.len() > 20 {
        let _ = write!(
            p,
            "<li class=\"warn\">and {} more problems of the file</li>",
            v.file_problems.len() - 20
        );
    }
    if let (Some(f), Some(l)) = (a.first_at, a.last_at) {
        let _ = write!(
            p,
            "<li>Events recorded from {} to {} UTC</li>",
            esc(&time(f)),
            esc(&time(l))
        );
    }
    p.push_str("</ul></section>");

    // The first bad event and its neighbours.
    if let Some(first) = v.verdict.first() {
        p.push_str("<section id=\"first-bad\"><h2>First bad event</h2>");
        let _ = write!(p, "<p>{}</p>", esc(&first.to_string()));
        match first.event_id {
            Some(id) if !a.around_bad.is_empty() => {
                let mut rows = a.around_bad.clone();
                rows.sort_by_key(|r| r.id);
                let _ = write!(
                    p,
                    "<p>Event {id} (marked) and the events with ids within {NEIGHBOURS} of it, as the export holds them (their content is what verification found altered, or next to it):</p>"
                );
                p.push_str(&events_table(&rows, Some(id)));
            }
            Some(id) => {
                let _ = write!(
                    p,
                    "<p>Event {id} is not in the export: it, and what was around it, is missing.</p>"
                );
            }
            None => {}
        }
        p.push_str("</section>");
    }

    // Timeline.
    p.push_str("<section id=\"timeline\"><h2>Events over time</h2>");
    p.push_str(&timeline(a));
    p.push_str("</section>");

    // Configuration changes.
    let _ = write!(
        p,
        "<section id=\"changes\"><h2>Configuration changes ({})</h2><p>Auditing switched on or off, options, DDL on audited tables (including a superuser's value rewrites and trigger changes), retention and purges: every event that is not a row change, by event id. Changes to audit_log's own objects, which only a superuser can make, are highlighted.</p>",
        a.changes_total
    );
    let mut changes = a.changes.clone();
    changes.sort_by_key(|c| c.id);
    changes.truncate(MAX_CHANGES);
    if changes.is_empty() {
        p.push_str("<p>None.</p>");
    } else {
        p.push_str(&events_table(&changes, None));
        if a.changes_total > changes.len() as u64 {
            let _ = write!(
                p,
                "<p class=\"warn\">Only the first {} are listed; {} more are in the log.</p>",
                changes.len(),
                a.changes_total - changes.len() as u64
            );
        }
    }
    p.push_str("</section>");

    // Roles and applications.
    p.push_str("<section id=\"actors\"><h2>Most active roles and applications</h2>");
    p.push_str(&counts_table("role (current_user)", &a.users, a.events));
    p.push_str(&counts_table("application", &a.applications, a.events));
    p.push_str("</section>");
    if a.unreadable > 0 {
        let _ = write!(
            p,
            "<p class=\"warn\">{} line(s) of the export could not be read as events.</p>",
            a.unreadable
        );
    }
    p.push_str("</body></html>\n");
    p
}

/// Build the report of export files already verified.
pub fn build(
    files: &[PathBuf],
    source: &Source,
    v: &Verification,
    cp: &CheckpointStatus,
    generated_at: i64,
) -> Result<String, String> {
    let bad = v.first_bad_event();
    let mut a = Aggregates::default();
    for f in files {
        a.unreadable += for_each_event(f, |e| a.add(e, bad))?;
    }
    Ok(render(source, v, cp, &a, generated_at))
}

/// The header of an export file (for the page's title line).
pub fn header_of(path: &Path) -> Option<Header> {
    let file = std::fs::File::open(path).ok()?;
    let mut first = Vec::new();
    std::io::BufReader::new(file)
        .read_until(b'\n', &mut first)
        .ok()?;
    serde_json::from_slice(first.strip_suffix(b"\n").unwrap_or(&first)).ok()
}

/// Where the report's log comes from.
pub enum Input {
    /// A live database: exported first (records form) to a temporary file.
    Dsn(String),
    /// Export files: a whole export, then any continuations, in order.
    Files(Vec<PathBuf>),
}

/// Removes a temporary export when the report is done with it.
struct Temporary(Option<PathBuf>);

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Verify the log, aggregate it and write the report to `out`. Returns
/// whether the log is intact (and the checkpoint, if given, holds), and a
/// one-line summary.
pub fn run(
    input: Input,
    out: &Path,
    checkpoint: Option<&Path>,
    public: Option<&Path>,
    threads: usize,
) -> Result<(bool, String), crate::error::Error> {
    let mut temporary = Temporary(None);
    let (files, description) = match input {
        Input::Files(files) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (files, format!("export {}", names.join(", ")))
        }
        Input::Dsn(dsn) => {
            let tmp = std::env::temp_dir().join(format!(
                "audit-log-report-{}-{}.jsonl",
                std::process::id(),
                crate::sign::now_micros()
            ));
            temporary.0 = Some(tmp.clone());
            crate::export::export(&dsn, None, Some(&tmp), crate::export::Format::Records, None)?;
            // The connection string is not shown: it may hold a password.
            (
                vec![tmp],
                "exported from the live database for this report".into(),
            )
        }
    };
    let (cp, status) = match checkpoint {
        None => (None, CheckpointStatus::NotGiven),
        Some(path) => match crate::sign::load_checkpoint(path, public) {
            Ok((cp, None)) => {
                let at = cp.taken_at.clone();
                (Some(cp), CheckpointStatus::Unsigned(at))
            }
            Ok((cp, Some(key))) => {
                let taken_at = cp.taken_at.clone();
                (Some(cp), CheckpointStatus::Signed { taken_at, key })
            }
            Err(e) => (None, CheckpointStatus::Refused(e.to_string())),
        },
    };
    let v = crate::verify_file::verify_files(&files, cp.as_ref(), threads)
        .map_err(|e| e.to_string())?;
    let header = header_of(&files[0]);
    let source = Source {
        description,
        database: header.as_ref().and_then(|h| h.database.clone()),
        system_identifier: header.as_ref().and_then(|h| h.system_identifier.clone()),
    };
    let html = build(&files, &source, &v, &status, crate::sign::now_micros())?;
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, html.as_bytes())
        .map_err(|e| crate::error::Error::Io(out.to_path_buf(), e))?;
    std::fs::rename(&partial, out).map_err(|e| crate::error::Error::Io(out.to_path_buf(), e))?;
    let intact = v.ok() && !matches!(status, CheckpointStatus::Refused(_));
    let summary = format!(
        "{}: {} events in {} transactions, {}; {} bytes written to {}",
        if intact { "intact" } else { "NOT intact" },
        v.verdict.events_checked,
        v.verdict.links_checked,
        match &status {
            CheckpointStatus::NotGiven => "no checkpoint".to_string(),
            CheckpointStatus::Unsigned(_) => "against an unsigned checkpoint".to_string(),
            CheckpointStatus::Signed { key, .. } => format!("against a checkpoint signed by {key}"),
            CheckpointStatus::Refused(m) => format!("checkpoint refused: {m}"),
        },
        html.len(),
        out.display()
    );
    Ok((intact, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_log_core::ZERO_HASH;

    fn event(id: i64, day: i64, table: &str, op: &str, user: &str, app: &str) -> Event {
        Event {
            id,
            tx_id: id as u64,
            tx_seq: 1,
            tx_first: id,
            recorded_at: day * DAY_US + id,
            statement_at: day * DAY_US,
            session_user_name: user.into(),
            current_user_name: user.into(),
            application_name: Some(app.into()),
            client_addr: None,
            context: None,
            table_schema: "public".into(),
            table_name: table.into(),
            op: op.into(),
            old_row: None,
            new_row: Some(Json::Value(serde_json::json!({"v": id}))),
            prev_hash: ZERO_HASH,
            hash: ZERO_HASH,
        }
    }

    fn page(a: &Aggregates, v: &Verification) -> String {
        let src = Source {
            description: "test".into(),
            database: Some("db".into()),
            system_identifier: Some("1".into()),
        };
        render(&src, v, &CheckpointStatus::NotGiven, a, 0)
    }

    #[test]
    fn hostile_text_is_escaped_and_no_script_can_run() {
        let mut a = Aggregates::default();
        let evil = r#"<script>alert(1)</script><img src=x onerror="alert(2)">"#;
        let mut e = event(1, 20_000, evil, "DDL", evil, evil);
        e.new_row = Some(Json::Value(serde_json::json!({"x": evil})));
        a.add(&e, None);
        let html = page(&a, &Verification::default());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("default-src 'none'"));
        // Control characters do not reach the page.
        assert_eq!(esc("a\u{0}b\u{1b}c"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn a_large_log_is_aggregated_not_listed() {
        // 3 years of events on 500 tables, with 5,000 configuration changes.
        let mut a = Aggregates::default();
        let mut id = 0;
        for day in 19_000..19_000 + 3 * 365 {
            for t in 0..500 {
                id += 1;
                let op = if id % 100 == 0 { "DDL" } else { "UPDATE" };
                a.add(
                    &event(
                        id,
                        day,
                        &format!("t{t}"),
                        op,
                        &format!("role{}", t % 40),
                        "app",
                    ),
                    None,
                );
            }
        }
        assert!(a.changes_total > MAX_CHANGES as u64);
        let html = page(&a, &Verification::default());
        assert!(html.len() < 3 << 20, "{} bytes", html.len());
        // Bars: 1,095 days drawn as weeks, at most MAX_BARS of them, each
        // at most MAX_SERIES + 1 rectangles.
        let rects = html.matches("<rect ").count();
        assert!(rects <= MAX_BARS * (MAX_SERIES + 1), "{rects} rectangles");
        assert!(rects >= 150, "{rects} rectangles");
        assert!(html.contains("Only the first 2000 are listed"));
        assert!(
            html.contains("25 more"),
            "the role list is capped at 15 of 40"
        );
    }

    #[test]
    fn the_first_bad_event_is_shown_with_its_neighbours() {
        let mut a = Aggregates::default();
        for id in 1..=20 {
            a.add(&event(id, 20_000, "t", "INSERT", "app", "svc"), Some(10));
        }
        let ids: Vec<i64> = a.around_bad.iter().map(|s| s.id).collect();
        assert_eq!(ids, (7..=13).collect::<Vec<_>>());
        let mut v = Verification::default();
        v.verdict.push(
            audit_log_core::ProblemKind::ContentChanged,
            Some(10),
            "event 10 was changed".into(),
        );
        let html = page(&a, &v);
        assert!(html.contains("Verdict: NOT INTACT"));
        assert!(html.contains("<tr class=\"bad\"><td>10</td>"));
        assert!(html.contains("event 10 was changed"));
    }
}

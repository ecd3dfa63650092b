//! audit-log: export an audit_log, verify it offline, sign checkpoints,
//! witness, prove one event.
//!
//! Exit codes: 0 intact (or done), 1 tampered or refused, 2 usage or I/O error.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use audit_log_cli::error::Error;
use audit_log_cli::sign::{self, load_public, load_secret, read_signed, verify_signed};
use audit_log_cli::{export, prove, report, tail, verify_file, witness};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "audit-log",
    version,
    about = "Export, verify offline, sign checkpoints and witness an audit_log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What verify and report check a log against, and with how many threads.
#[derive(clap::Args)]
struct Proof {
    /// Also prove the log extends this checkpoint (plain or signed).
    #[arg(long, value_name = "CP")]
    checkpoint: Option<PathBuf>,
    /// The public key that must have signed the checkpoint.
    #[arg(long = "pub", value_name = "PUB")]
    public: Option<PathBuf>,
    /// Worker threads for parsing and hashing (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    Logical,
    Records,
    Binary,
}

#[derive(Subcommand)]
enum Command {
    /// Stream the log to JSON Lines (docs/FORMAT.md, "Export").
    Export {
        /// libpq-style connection string or URL.
        #[arg(long)]
        dsn: String,
        /// Continue an earlier export: write only what came after it.
        #[arg(long, value_name = "EARLIER_EXPORT")]
        since: Option<PathBuf>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// logical: every event spelled out as JSON (audit_log.export.v1);
        /// records: each transaction's record as stored, in base64
        /// (audit_log.export.v2), several times faster to verify;
        /// binary: the records in binary frames, larger payloads
        /// compressed (audit_log.export.v3), the smallest and fastest.
        #[arg(long, value_enum, default_value_t = ExportFormat::Logical)]
        format: ExportFormat,
        /// At a collector: export the log of this collected source
        /// (audit_log.collect()), in the records or binary format.
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
    },
    /// Verify exports offline, with no database: an export, then any continuations, in order.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        proof: Proof,
    },
    /// Create an Ed25519 key pair: KEY (secret) and KEY.pub.
    Keygen {
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// Fetch the current checkpoint and sign it.
    Checkpoint {
        #[arg(long)]
        dsn: String,
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(long, value_name = "CP")]
        out: PathBuf,
    },
    /// Check a signed checkpoint's signature.
    VerifyCheckpoint {
        #[arg(value_name = "CP")]
        checkpoint: PathBuf,
        #[arg(long = "pub", value_name = "PUB")]
        public: PathBuf,
    },
    /// Write one self-contained HTML report for an auditor: the verdict, a
    /// timeline, configuration changes, the most active roles, the first bad event.
    Report {
        /// Read the log from this database (exported to a temporary file first).
        #[arg(long, conflicts_with = "files")]
        dsn: Option<String>,
        /// Or from these exports: a whole export, then any continuations.
        #[arg(required_unless_present = "dsn")]
        files: Vec<PathBuf>,
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        proof: Proof,
    },
    /// Prove the log extends the last witnessed checkpoint, then sign and store the new one.
    Witness {
        #[arg(long)]
        dsn: String,
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// An export of the whole log, to verify offline against the last checkpoint too.
        #[arg(long = "export", value_name = "FILE")]
        export_file: Option<PathBuf>,
        /// Have the server verify every event against the last checkpoint
        /// (audit_log.verify(checkpoint)), instead of checking its Merkle
        /// consistency proofs (O(chains x log n) hashes).
        #[arg(long)]
        full: bool,
    },
    /// Fetch the proof that one event is in the log whose tree a checkpoint
    /// holds (audit_log.prove()), check it, and write it.
    Prove {
        #[arg(long)]
        dsn: String,
        #[arg(long, value_name = "ID")]
        event: i64,
        /// The checkpoint to prove against (plain or signed).
        #[arg(long, value_name = "CP")]
        checkpoint: PathBuf,
        /// The public key that must have signed the checkpoint.
        #[arg(long = "pub", value_name = "PUB")]
        public: Option<PathBuf>,
        #[arg(long, value_name = "PROOF")]
        out: PathBuf,
    },
    /// Check an event's proof offline, trusting only the checkpoint: prints
    /// the proven event.
    VerifyProof {
        #[arg(value_name = "PROOF")]
        proof: PathBuf,
        /// The checkpoint whose tree the proof leads to (plain or signed).
        #[arg(long, value_name = "CP")]
        checkpoint: PathBuf,
        /// The public key that must have signed the checkpoint.
        #[arg(long = "pub", value_name = "PUB")]
        public: Option<PathBuf>,
    },
    /// Print committed events as JSON Lines as they commit, each chain's in
    /// order, checked against its chain; resumes from STATE after any stop.
    Tail {
        #[arg(long)]
        dsn: String,
        /// Where the feed is: created on the first run, saved after each write.
        #[arg(long, value_name = "STATE")]
        state: PathBuf,
        /// Append to this file, exactly once across restarts (default:
        /// standard output, where a restart after kill -9 can repeat the
        /// last poll's lines).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = tail::Feed::Native)]
        format: tail::Feed,
        /// Milliseconds between polls that found nothing new.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Transactions read per chain and poll.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch: i64,
        /// Stop once caught up with the log.
        #[arg(long)]
        once: bool,
        /// Stop after this many seconds.
        #[arg(long, value_parser = seconds)]
        seconds: Option<f64>,
        /// With no state file yet, start at the log's current end, not its start.
        #[arg(long)]
        from_now: bool,
    },
}

/// A number of seconds: finite and not negative.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds")),
    }
}

const INTACT: u8 = 0;
const TAMPERED: u8 = 1;

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("audit-log: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Run one command: its exit code (0 intact or done, 1 not intact), or the
/// error that stopped it (which says its own code).
fn run(command: Command) -> Result<u8, Error> {
    match command {
        Command::Export {
            dsn,
            since,
            out,
            format,
            source,
        } => {
            let (format, what) = match format {
                ExportFormat::Logical => (export::Format::Logical, "links"),
                ExportFormat::Records => (export::Format::Records, "records"),
                ExportFormat::Binary => (export::Format::Binary, "records"),
            };
            let s = export::export(
                &dsn,
                since.as_deref(),
                out.as_deref(),
                format,
                source.as_deref(),
            )?;
            eprintln!(
                "exported {} events and {} {what} in {:.1} s",
                s.events, s.links, s.seconds
            );
            Ok(INTACT)
        }
        Command::Verify {
            files,
            proof:
                Proof {
                    checkpoint,
                    public,
                    threads,
                },
        } => {
            let cp = checkpoint
                .as_ref()
                .map(|p| sign::load_checkpoint(p, public.as_deref()).map(|(cp, _)| cp))
                .transpose()?;
            let threads = threads.unwrap_or_else(witness::threads);
            let report = verify_file::verify_files(&files, cp.as_ref(), threads)?;
            println!("ok: {}", report.ok());
            println!(
                "events checked: {}, links checked: {}",
                report.verdict.events_checked, report.verdict.links_checked
            );
            if let Some(p) = report.verdict.first() {
                if let Some(id) = p.event_id {
                    println!("first bad event: {id}");
                }
                println!("problem: {p}");
                if report.verdict.problem_count > 1 {
                    println!("and {} more problem(s)", report.verdict.problem_count - 1);
                }
            }
            for p in &report.file_problems {
                println!("file problem: {p}");
            }
            if cp.as_ref().is_some_and(|c| !c.trees.is_empty()) {
                println!(
                    "trees checked: {} of the checkpoint's {}",
                    report.trees_checked,
                    cp.as_ref().map_or(0, |c| c.trees.len())
                );
                for why in &report.trees_skipped {
                    println!("tree not recomputed here: {why}");
                }
            }
            if cp.is_some() && report.ok() {
                if report.trees_skipped.is_empty() {
                    println!("the log extends the checkpoint");
                } else {
                    // Not a problem, but not the whole claim either.
                    println!(
                        "the log extends the checkpoint's chain heads (not every tree was recomputed: see above)"
                    );
                }
            }
            eprintln!(
                "verified {} events in {:.2} s: {:.0} events/s with {} worker thread(s)",
                report.events,
                report.seconds,
                report.events as f64 / report.seconds.max(1e-6),
                threads
            );
            Ok(if report.ok() { INTACT } else { TAMPERED })
        }
        Command::Keygen { out } => {
            eprintln!("{}", sign::keygen(&out)?);
            Ok(INTACT)
        }
        Command::Checkpoint { dsn, key, out } => {
            let key = load_secret(&key)?;
            let mut client = export::connect(&dsn)?;
            let (value, _) = export::current_checkpoint(&mut client)?;
            let signed = sign::sign(value, &key)?;
            sign::write_signed(&signed, &out)?;
            eprintln!(
                "signed checkpoint written to {} (key {})",
                out.display(),
                signed.key_id
            );
            Ok(INTACT)
        }
        Command::VerifyCheckpoint { checkpoint, public } => {
            let key = load_public(&public)?;
            let signed = read_signed(&checkpoint)?;
            let cp = verify_signed(&signed, &key)
                .map_err(|e| Error::Refused(format!("{}: {e}", checkpoint.display())))?;
            println!(
                "signature ok: key {}, signed at {}, database {:?}, {} chain(s)",
                signed.key_id,
                signed.signed_at,
                cp.database.unwrap_or_default(),
                cp.chains.len()
            );
            Ok(INTACT)
        }
        Command::Report {
            dsn,
            files,
            out,
            proof:
                Proof {
                    checkpoint,
                    public,
                    threads,
                },
        } => {
            let input = match dsn {
                Some(dsn) => report::Input::Dsn(dsn),
                None => report::Input::Files(files),
            };
            let threads = threads.unwrap_or_else(witness::threads);
            let (intact, summary) = report::run(
                input,
                &out,
                checkpoint.as_deref(),
                public.as_deref(),
                threads,
            )?;
            println!("{summary}");
            Ok(if intact { INTACT } else { TAMPERED })
        }
        Command::Tail {
            dsn,
            state,
            out,
            format,
            interval_ms,
            batch,
            once,
            seconds,
            from_now,
        } => {
            let stats = tail::run(&tail::Options {
                dsn,
                state,
                out,
                feed: format,
                interval: std::time::Duration::from_millis(interval_ms),
                batch,
                once,
                seconds,
                from_now,
            })?;
            eprintln!("{}", stats.summary());
            Ok(INTACT)
        }
        Command::Prove {
            dsn,
            event,
            checkpoint,
            public,
            out,
        } => {
            let p = prove::fetch(&dsn, event, &checkpoint, public.as_deref(), &out)?;
            eprintln!("{}; written to {}", p.summary, out.display());
            Ok(INTACT)
        }
        Command::VerifyProof {
            proof,
            checkpoint,
            public,
        } => {
            let p = prove::verify_proof(&proof, &checkpoint, public.as_deref())?;
            println!("{}", p.event_line);
            eprintln!("{}", p.summary);
            Ok(INTACT)
        }
        Command::Witness {
            dsn,
            state,
            key,
            export_file,
            full,
        } => {
            let key = load_secret(&key)?;
            match witness::run(&dsn, &state, &key, export_file.as_deref(), full) {
                Ok(m) => {
                    println!("witness: {m}");
                    Ok(INTACT)
                }
                Err(Error::Refused(m)) => Err(Error::Refused(format!("witness refused: {m}"))),
                Err(e) => Err(e),
            }
        }
    }
}

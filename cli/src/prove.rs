//! Proofs of one event (`audit_log.prove()`), fetched from the database and
//! checked offline against a checkpoint: `audit-log prove` and
//! `audit-log verify-proof` (docs/FORMAT.md, "Merkle trees").

use std::path::Path;

use audit_log_core::tree::EventProof;
use audit_log_core::Checkpoint;
use serde_json::Value;

use crate::error::Error;
use crate::format::{line, EventLine};
use crate::sign::load_checkpoint;

/// A proof file is a few kilobytes and an event's row; more is not a proof.
const MAX_PROOF_BYTES: u64 = 1 << 30;

fn read_proof(path: &Path) -> Result<EventProof, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
    if meta.len() > MAX_PROOF_BYTES {
        return Err(Error::Trouble(format!(
            "{}: {} bytes is too large for a proof",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
    parse_proof(&text).map_err(|e| Error::Trouble(format!("{}: {e}", path.display())))
}

fn parse_proof(text: &str) -> Result<EventProof, String> {
    // serde_json refuses nesting past 128 levels; a proof has 3 (the event
    // is in hex).
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    EventProof::parse(&value).map_err(|e| e.to_string())
}

/// What `verify-proof` prints: the proven event as an export's event line.
pub struct Proven {
    pub event_line: String,
    pub summary: String,
}

/// Check `proof` against `cp`: the event it shows is in the log whose tree
/// the checkpoint holds.
pub fn check(
    proof: &EventProof,
    cp: &Checkpoint,
    signed_by: Option<&str>,
) -> Result<Proven, Error> {
    let ev = proof
        .verify(cp)
        .map_err(|e| Error::Refused(format!("the proof does not hold: {e}")))?;
    let event_line = EventLine::from_event(&ev)
        .and_then(|l| line(&l).map_err(|e| e.to_string()))
        .map_err(Error::Trouble)?;
    let event_line = String::from_utf8_lossy(&event_line).trim_end().to_string();
    let trust = match signed_by {
        Some(k) => format!("checkpoint signed by key {k}"),
        None => "an unsigned checkpoint: give --pub and a signed one to trust it".into(),
    };
    Ok(Proven {
        event_line,
        summary: format!(
            "proof ok: event {} ({} {}.{}) is in record {} of chain {}, in the tree of {} records \
             whose root the checkpoint holds; {} hashes in the proof; {trust}",
            ev.id,
            ev.op,
            ev.table_schema,
            ev.table_name,
            proof.record.seq,
            proof.record.chain,
            proof.tree.size,
            proof.path.len() + proof.event_path.len(),
        ),
    })
}

/// `audit-log verify-proof PROOF --checkpoint CP [--pub KEY]`.
pub fn verify_proof(
    proof: &Path,
    checkpoint: &Path,
    public: Option<&Path>,
) -> Result<Proven, Error> {
    let p = read_proof(proof)?;
    let (cp, key) = load_checkpoint(checkpoint, public)?;
    check(&p, &cp, key.as_deref())
}

/// `audit-log prove --dsn … --event N --checkpoint CP [--pub KEY] --out FILE`:
/// ask the server for the proof to that checkpoint, check it, write it.
pub fn fetch(
    dsn: &str,
    event: i64,
    checkpoint: &Path,
    public: Option<&Path>,
    out: &Path,
) -> Result<Proven, Error> {
    let (cp, key) = load_checkpoint(checkpoint, public)?;
    let cp_text = serde_json::to_string(&cp).map_err(|e| Error::trouble(e.to_string()))?;
    let mut client = crate::export::connect(dsn).map_err(Error::Trouble)?;
    let text: String = client
        .query_one(
            "SELECT audit_log.prove($1, $2::text::jsonb)::text",
            &[&event, &cp_text],
        )
        .map_err(|e| {
            Error::trouble(format!(
                "audit_log.prove(): {}",
                crate::error::db_message(&e)
            ))
        })?
        .get(0);
    let p = parse_proof(&text).map_err(|e| Error::trouble(format!("audit_log.prove(): {e}")))?;
    let proven = check(&p, &cp, key.as_deref())?;
    let pretty = serde_json::to_string_pretty(&p).map_err(|e| Error::trouble(e.to_string()))?;
    std::fs::write(out, pretty + "\n").map_err(|e| Error::Io(out.to_path_buf(), e))?;
    Ok(proven)
}

//! `audit-log witness`: run from cron or a systemd timer on another machine.
//! Each run proves that the database's current checkpoint extends the last
//! one the witness signed, then signs and stores the new one. By default the
//! proof is each chain's Merkle consistency proof (audit_log.consistency()),
//! checked here: O(chains x log n) hashes, whatever the log's size. With
//! `--full`, or after a checkpoint of format v1, the server verifies every
//! event against the last checkpoint instead. A rollback, a
//! fork or a failed verification stops it with a non-zero exit and stores
//! nothing, so the last good checkpoint stays the reference.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use audit_log_core::tree::Consistency;
use audit_log_core::Checkpoint;
use ed25519_dalek::SigningKey;

use crate::error::Error;
use crate::sign::{read_signed, sign, verify_signed, write_signed};
use crate::{export, verify_file};

/// Compare two checkpoints of the same log chain by chain: each chain must
/// still be at least as long, and unchanged where it was.
pub fn compare(last: &Checkpoint, now: &Checkpoint) -> Result<(), String> {
    if last.system_identifier != now.system_identifier || last.database != now.database {
        return Err(format!(
            "fork: the database is {:?} (system {:?}), but the witness followed {:?} (system {:?})",
            now.database, now.system_identifier, last.database, last.system_identifier
        ));
    }
    let now_heads: BTreeMap<i32, _> = now.chains.iter().map(|h| (h.chain, h)).collect();
    for h in &last.chains {
        match now_heads.get(&h.chain) {
            None => {
                return Err(format!(
                    "rollback: chain {} is gone; it was at seq {}",
                    h.chain, h.seq
                ))
            }
            Some(n) if n.seq < h.seq => {
                return Err(format!(
                    "rollback: chain {} is at seq {}, but was already at seq {}",
                    h.chain, n.seq, h.seq
                ))
            }
            Some(n) if n.seq == h.seq && n.link_hash != h.link_hash => {
                return Err(format!(
                    "fork: chain {} at seq {} now ends in {}…, but the witness signed {}…",
                    h.chain,
                    h.seq,
                    &hex::encode(n.link_hash)[..12],
                    &hex::encode(h.link_hash)[..12]
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn run(
    dsn: &str,
    state: &Path,
    key: &SigningKey,
    export_file: Option<&Path>,
    full: bool,
) -> Result<String, Error> {
    fs::create_dir_all(state).map_err(|e| Error::Io(state.to_path_buf(), e))?;
    let latest = state.join("latest.json");
    let last = if latest.exists() {
        let s = read_signed(&latest).map_err(Error::Trouble)?;
        // The state is only as good as its signature: an edited state file is refused.
        let cp = verify_signed(&s, &key.verifying_key())
            .map_err(|e| Error::Refused(format!("{}: {e}", latest.display())))?;
        Some((s, cp))
    } else {
        None
    };

    let mut client = export::connect(dsn).map_err(Error::Trouble)?;
    // Consistency proofs cover the chains that had a tree; a last
    // checkpoint with a chain without one (format v1, a chain purged before
    // trees were kept, or a damaged record then) is verified in full.
    let by_proofs = !full
        && last.as_ref().is_some_and(|(_, cp)| {
            !cp.trees.is_empty()
                && cp
                    .chains
                    .iter()
                    .all(|h| cp.trees.iter().any(|t| t.chain == h.chain))
        });
    let (now_value, now) = if by_proofs {
        let (_, last_cp) = last
            .as_ref()
            .ok_or_else(|| Error::trouble("no last checkpoint"))?;
        consistent_checkpoint(&mut client, last_cp)?
    } else {
        export::current_checkpoint(&mut client)?
    };

    let mut proof = String::from("first checkpoint: nothing earlier to extend");
    if let Some((_, last_cp)) = &last {
        compare(last_cp, &now).map_err(Error::Refused)?;
    }
    if let (Some(_), true) = (&last, by_proofs) {
        proof = format!(
            "each of {} chain trees extends the last checkpoint's (consistency proofs checked)",
            now.trees.len()
        );
    } else if let Some((signed, _)) = &last {
        let last_text =
            serde_json::to_string(&signed.checkpoint).map_err(|e| Error::trouble(e.to_string()))?;
        let row = client
            .query_one(
                "SELECT ok, events_checked, problem FROM audit_log.verify($1::text::jsonb)",
                &[&last_text],
            )
            .map_err(|e| {
                Error::trouble(format!(
                    "audit_log.verify(checkpoint): {}",
                    crate::error::db_message(&e)
                ))
            })?;
        let ok: bool = row.get(0);
        let checked: i64 = row.get(1);
        let problem: Option<String> = row.get(2);
        if !ok {
            return Err(Error::Refused(format!(
                "the server's verify() against the last witnessed checkpoint failed: {}",
                problem.unwrap_or_default()
            )));
        }
        proof = format!("the server verified {checked} events against the last checkpoint");
    }
    if let Some((_, last_cp)) = &last {
        if let Some(file) = export_file {
            let report = verify_file::verify_files(&[file.to_path_buf()], Some(last_cp), threads())
                .map_err(|e| Error::trouble(e.to_string()))?;
            if !report.ok() {
                let why = report
                    .verdict
                    .first()
                    .map(|p| p.to_string())
                    .or_else(|| report.file_problems.first().cloned())
                    .unwrap_or_default();
                return Err(Error::Refused(format!(
                    "the export {} does not verify against the last checkpoint: {why}",
                    file.display()
                )));
            }
            proof += &format!(
                "; the export {} verified offline ({} events)",
                file.display(),
                report.events
            );
        }
    }

    let signed = sign(now_value, key).map_err(Error::Trouble)?;
    let name = format!("checkpoint-{}.json", signed.signed_at.replace(':', ""));
    write_signed(&signed, &state.join(&name)).map_err(Error::Trouble)?;
    write_signed(&signed, &latest).map_err(Error::Trouble)?;
    Ok(format!("{proof}; signed and stored {name}"))
}

/// The server's new checkpoint, with consistency proofs from `last`,
/// checked here: every tree of `last` is a prefix of the new one's.
fn consistent_checkpoint(
    client: &mut postgres::Client,
    last: &Checkpoint,
) -> Result<(serde_json::Value, Checkpoint), Error> {
    let last_text = serde_json::to_string(last).map_err(|e| Error::trouble(e.to_string()))?;
    let text: String = client
        .query_one(
            "SELECT audit_log.consistency($1::text::jsonb)::text",
            &[&last_text],
        )
        .map_err(|e| match e.as_db_error().map(|d| d.code().code()) {
            // The server's own refusal: the log does not extend the checkpoint.
            Some("22023") | Some("XX001") => Error::Refused(format!(
                "audit_log.consistency(): {}",
                crate::error::db_message(&e)
            )),
            _ => Error::trouble(format!(
                "audit_log.consistency(): {}",
                crate::error::db_message(&e)
            )),
        })?
        .get(0);
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::trouble(format!("audit_log.consistency(): {e}")))?;
    let c = Consistency::parse(&value)
        .map_err(|e| Error::trouble(format!("audit_log.consistency(): {e}")))?;
    c.verify(last).map_err(|e| Error::Refused(e.to_string()))?;
    let cp_value = value
        .get("checkpoint")
        .cloned()
        .ok_or_else(|| Error::trouble("audit_log.consistency(): no checkpoint"))?;
    Ok((cp_value, c.checkpoint))
}

pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::compare;
    use audit_log_core::{ChainHead, Checkpoint};

    fn cp(db: &str, chains: &[(i32, i64, u8)]) -> Checkpoint {
        Checkpoint {
            format: "audit_log.checkpoint.v1".into(),
            database: Some(db.into()),
            system_identifier: Some("42".into()),
            taken_at: None,
            chains: chains
                .iter()
                .map(|&(chain, seq, h)| ChainHead {
                    chain,
                    seq,
                    link_hash: [h; 32],
                    last_event: seq * 10,
                })
                .collect(),
            trees: vec![],
        }
    }

    #[test]
    fn extension_rollback_and_fork() {
        let last = cp("shop", &[(0, 5, 1), (1, 3, 2)]);
        assert_eq!(compare(&last, &cp("shop", &[(0, 5, 1), (1, 3, 2)])), Ok(()));
        assert_eq!(
            compare(&last, &cp("shop", &[(0, 9, 7), (1, 3, 2), (2, 1, 9)])),
            Ok(())
        );
        let rollback = compare(&last, &cp("shop", &[(0, 4, 1), (1, 3, 2)])).unwrap_err();
        assert!(
            rollback.starts_with("rollback: chain 0 is at seq 4"),
            "{rollback}"
        );
        let gone = compare(&last, &cp("shop", &[(0, 5, 1)])).unwrap_err();
        assert!(gone.starts_with("rollback: chain 1 is gone"), "{gone}");
        let fork = compare(&last, &cp("shop", &[(0, 5, 8), (1, 3, 2)])).unwrap_err();
        assert!(fork.starts_with("fork: chain 0 at seq 5"), "{fork}");
        let other = compare(&last, &cp("other", &[(0, 5, 1), (1, 3, 2)])).unwrap_err();
        assert!(other.starts_with("fork: the database is"), "{other}");
    }
}

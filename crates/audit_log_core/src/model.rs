//! The records that enter a hash: one audit event, one commit link, and a
//! checkpoint of chain heads. Field meanings are specified in docs/FORMAT.md.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hash::Hash;

/// A JSON value as it enters an event: parsed, or already in its canonical
/// encoding (the extension encodes jsonb in place, without a text round trip;
/// the CLI encodes JSON text with [`crate::json_text`]). Row data should come
/// as `Encoded`: a `serde_json::Value` nested deep enough overflows the stack
/// when it is dropped, and its parser refuses it.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Value(Value),
    /// One complete `json` item of the canonical encoding (docs/FORMAT.md).
    Encoded(Vec<u8>),
}

impl From<Value> for Json {
    fn from(v: Value) -> Self {
        Json::Value(v)
    }
}

/// One captured change (or configuration change), as stored in `audit_log.events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub tx_id: u64,
    /// 1-based position of the event inside its transaction.
    pub tx_seq: i64,
    /// The id of the first event of the same transaction (the one with
    /// `tx_seq` 1): the key that groups a transaction's events, and that its
    /// link's `first_event` holds. Event ids come from a sequence that a dump
    /// and restore keeps, so unlike `tx_id` (which starts again from small
    /// numbers in a new cluster) it never repeats. Not hashed: it is
    /// derivable, and verification checks it.
    pub tx_first: i64,
    /// Capture time, microseconds since 1970-01-01 00:00:00 UTC.
    pub recorded_at: i64,
    /// Start time of the statement that made the change, same unit.
    pub statement_at: i64,
    pub session_user_name: String,
    pub current_user_name: String,
    pub application_name: Option<String>,
    /// The client address in PostgreSQL `inet` text form; `None` for Unix sockets.
    pub client_addr: Option<String>,
    /// Optional application context (the end user behind a pool, a request id).
    pub context: Option<Json>,
    pub table_schema: String,
    pub table_name: String,
    pub op: String,
    pub old_row: Option<Json>,
    pub new_row: Option<Json>,
    /// Hash of the previous event of the same transaction; zero for the first.
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// An event as capture has it, borrowed: its names from caches and the
/// session, its JSON values already encoded (each one `json` item of the
/// canonical encoding, or for the rows, packed when `rows_packed`). What
/// the writer encodes, without building an [`Event`] of owned strings per
/// row change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRef<'a> {
    pub id: i64,
    pub tx_id: u64,
    pub tx_seq: i64,
    pub recorded_at: i64,
    pub statement_at: i64,
    pub session_user_name: &'a str,
    pub current_user_name: &'a str,
    pub application_name: Option<&'a str>,
    pub client_addr: Option<&'a str>,
    pub context: Option<&'a [u8]>,
    pub table_schema: &'a str,
    pub table_name: &'a str,
    pub op: &'a str,
    pub old_row: Option<&'a [u8]>,
    pub new_row: Option<&'a [u8]>,
    /// The rows are already packed (`encoding::packed::json_pack`'s form),
    /// as capture writes them for a packed payload.
    pub rows_packed: bool,
}

impl EventRef<'_> {
    /// The owned event, in the transaction whose first event is `tx_first`
    /// (its hashes left zero), its rows of version 1. An error if a packed
    /// row is not one `json` item.
    pub fn to_event(&self, tx_first: i64) -> Result<Event, crate::encoding::decode::Malformed> {
        let json = |j: Option<&[u8]>| j.map(|b| Json::Encoded(b.to_vec()));
        let row = |j: Option<&[u8]>| match j {
            Some(b) if self.rows_packed => {
                let mut v1 = Vec::new();
                crate::encoding::packed::json_unpack(b, &mut v1).map(|()| Some(Json::Encoded(v1)))
            }
            j => Ok(json(j)),
        };
        Ok(Event {
            id: self.id,
            tx_id: self.tx_id,
            tx_seq: self.tx_seq,
            tx_first,
            recorded_at: self.recorded_at,
            statement_at: self.statement_at,
            session_user_name: self.session_user_name.into(),
            current_user_name: self.current_user_name.into(),
            application_name: self.application_name.map(Into::into),
            client_addr: self.client_addr.map(Into::into),
            context: json(self.context),
            table_schema: self.table_schema.into(),
            table_name: self.table_name.into(),
            op: self.op.into(),
            old_row: row(self.old_row)?,
            new_row: row(self.new_row)?,
            prev_hash: crate::ZERO_HASH,
            hash: crate::ZERO_HASH,
        })
    }

    /// The length of its version 1 encoding, its rows counted as given
    /// (packed rows are shorter than in version 1), which a packed frame
    /// does not pass but for strings over 256 MB: for reserving room once.
    pub fn size_hint(&self) -> usize {
        let text = |t: &str| 4 + t.len();
        let opt_text = |t: Option<&str>| t.map_or(1, |t| 1 + text(t));
        let json = |j: Option<&[u8]>| j.map_or(1, |b| 1 + b.len());
        5 * 8
            + text(self.session_user_name)
            + text(self.current_user_name)
            + opt_text(self.application_name)
            + opt_text(self.client_addr)
            + json(self.context)
            + text(self.table_schema)
            + text(self.table_name)
            + text(self.op)
            + json(self.old_row)
            + json(self.new_row)
    }
}

/// One committed transaction appended to one of the K chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub chain_id: i32,
    /// 1-based position in the chain (after a purge, continues from the anchor).
    pub seq: i64,
    pub tx_id: u64,
    pub event_count: i64,
    pub first_event: i64,
    pub last_event: i64,
    pub last_event_hash: Hash,
    /// Commit-time clock, microseconds since the Unix epoch, UTC.
    pub committed_at: i64,
    pub prev_link_hash: Hash,
    pub link_hash: Hash,
}

/// The head of one chain, as recorded in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub chain: i32,
    pub seq: i64,
    #[serde(with = "hex_hash")]
    pub link_hash: Hash,
    pub last_event: i64,
}

impl From<&Link> for ChainHead {
    /// The head a chain has when `l` is its last link.
    fn from(l: &Link) -> Self {
        ChainHead {
            chain: l.chain_id,
            seq: l.seq,
            link_hash: l.link_hash,
            last_event: l.last_event,
        }
    }
}

/// A checkpoint: every chain head at one moment. Saved outside the database, it
/// proves later that the log was only extended since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub system_identifier: Option<String>,
    #[serde(default)]
    pub taken_at: Option<String>,
    pub chains: Vec<ChainHead>,
    /// Each chain's Merkle tree (format v2): its size, which is the head's
    /// `seq`, and its root. Empty in a v1 checkpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<TreeHead>,
}

/// A chain's Merkle tree: the number of records in it, and its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    pub chain: i32,
    pub size: i64,
    #[serde(with = "hex_hash")]
    pub root: Hash,
}

/// The format `audit_log.checkpoint()` returns: v1's heads, and each
/// chain's tree.
pub const CHECKPOINT_FORMAT: &str = "audit_log.checkpoint.v2";
/// Checkpoints of extension 0.2.0: heads only. They still verify.
pub const CHECKPOINT_FORMAT_V1: &str = "audit_log.checkpoint.v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("checkpoint format \"{0}\" is not supported; expected \"{CHECKPOINT_FORMAT}\" or \"{CHECKPOINT_FORMAT_V1}\"")]
    UnsupportedFormat(String),
    #[error("checkpoint tree of chain {chain} does not match its head: {why}")]
    BadTree { chain: i32, why: String },
    #[error("checkpoint names chain {0} more than once")]
    DuplicateChain(i32),
    #[error("checkpoint chain {chain} has invalid sequence number {seq}")]
    BadSeq { chain: i32, seq: i64 },
}

impl Checkpoint {
    pub fn parse(value: &Value) -> Result<Checkpoint, CheckpointError> {
        let cp: Checkpoint = serde_json::from_value(value.clone())
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        if cp.format != CHECKPOINT_FORMAT && cp.format != CHECKPOINT_FORMAT_V1 {
            return Err(CheckpointError::UnsupportedFormat(cp.format));
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &cp.chains {
            if !seen.insert(h.chain) {
                return Err(CheckpointError::DuplicateChain(h.chain));
            }
            if h.seq < 1 {
                return Err(CheckpointError::BadSeq {
                    chain: h.chain,
                    seq: h.seq,
                });
            }
        }
        // Heads by chain, for the trees: O(n log n) for a hostile size.
        let heads: std::collections::BTreeMap<i32, i64> =
            cp.chains.iter().map(|h| (h.chain, h.seq)).collect();
        let mut trees = std::collections::BTreeSet::new();
        for t in &cp.trees {
            let why = if !trees.insert(t.chain) {
                Some("named twice".to_string())
            } else if cp.format == CHECKPOINT_FORMAT_V1 {
                Some("a v1 checkpoint has no trees".into())
            } else {
                match heads.get(&t.chain) {
                    None => Some("no head".into()),
                    Some(&seq) if seq != t.size => {
                        Some(format!("size {} is not the head's seq {seq}", t.size))
                    }
                    Some(_) => None,
                }
            };
            if let Some(why) = why {
                return Err(CheckpointError::BadTree {
                    chain: t.chain,
                    why,
                });
            }
        }
        Ok(cp)
    }
}

pub(crate) mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a link hash must be 32 bytes (64 hex digits)"))
    }
}

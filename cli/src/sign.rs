//! Ed25519 keys and signed checkpoints (docs/FORMAT.md, "Signed checkpoints").
//!
//! A signed checkpoint wraps the JSON that `audit_log.checkpoint()` returns
//! (chain heads and, from format v2, each chain's Merkle tree; database name
//! and system identifier, the server's clock) with the signer's clock,
//! public key and signature. The signature covers
//! `"audit_log:signed_checkpoint:v2\0"` (v1 for a checkpoint of format v1,
//! which still verifies) followed by the canonical encoding
//! (docs/FORMAT.md, `json`) of the object {"checkpoint", "signed_at",
//! "public_key"}: any change to any of them, down to one digit of a
//! sequence number, breaks it.

use std::fs;
use std::io::Write;
use std::path::Path;

use audit_log_core::encoding::encode_json;
use audit_log_core::model::CHECKPOINT_FORMAT_V1;
use audit_log_core::time::format_rfc3339;
use audit_log_core::Checkpoint;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::Error;

pub const SECRET_FORMAT: &str = "audit_log.ed25519.secret.v1";
pub const PUBLIC_FORMAT: &str = "audit_log.ed25519.public.v1";
/// Signed checkpoints of format v2 checkpoints, which carry Merkle trees.
pub const SIGNED_FORMAT: &str = "audit_log.signed_checkpoint.v2";
/// Those of v1 checkpoints (heads only): still made for a v1 checkpoint, and verified.
pub const SIGNED_FORMAT_V1: &str = "audit_log.signed_checkpoint.v1";

/// The signature's domain for a signed format; None if unknown.
fn domain(format: &str) -> Option<&'static [u8]> {
    match format {
        SIGNED_FORMAT => Some(b"audit_log:signed_checkpoint:v2\0"),
        SIGNED_FORMAT_V1 => Some(b"audit_log:signed_checkpoint:v1\0"),
        _ => None,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    format: String,
    secret_key: String,
    public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    format: String,
    public_key: String,
    key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    pub format: String,
    /// The checkpoint as the server returned it.
    pub checkpoint: Value,
    pub signed_at: String,
    pub key_id: String,
    pub public_key: String,
    pub signature: String,
}

/// The first 16 hex digits of SHA-256 over the public key: a short name for it.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Write a new key pair: KEY (secret, mode 0600) and KEY.pub. Never overwrites.
pub fn keygen(path: &Path) -> Result<String, String> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    let secret = SecretFile {
        format: SECRET_FORMAT.into(),
        secret_key: hex::encode(seed),
        public_key: hex::encode(public.as_bytes()),
    };
    let pub_path = path.with_extension(match path.extension() {
        Some(e) => format!("{}.pub", e.to_string_lossy()),
        None => "pub".into(),
    });
    let pub_file = PublicFile {
        format: PUBLIC_FORMAT.into(),
        public_key: hex::encode(public.as_bytes()),
        key_id: key_id(&public),
    };
    if pub_path.exists() {
        return Err(format!(
            "{} already exists; not overwriting",
            pub_path.display()
        ));
    }
    write_new(path, pretty(&secret)?.as_bytes(), 0o600)?;
    write_new(&pub_path, pretty(&pub_file)?.as_bytes(), 0o644)?;
    Ok(format!(
        "wrote {} (secret; keep it off the database server) and {} (key id {})",
        path.display(),
        pub_path.display(),
        key_id(&public)
    ))
}

fn pretty<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

pub fn load_secret(path: &Path) -> Result<SigningKey, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: SecretFile = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not an audit-log secret key: {e}", path.display()))?;
    if f.format != SECRET_FORMAT {
        return Err(format!(
            "{}: key format {:?} is not supported",
            path.display(),
            f.format
        ));
    }
    let seed: [u8; 32] = hex::decode(&f.secret_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: the secret key must be 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn load_public(path: &Path) -> Result<VerifyingKey, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: PublicFile = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not an audit-log public key: {e}", path.display()))?;
    if f.format != PUBLIC_FORMAT {
        return Err(format!(
            "{}: key format {:?} is not supported",
            path.display(),
            f.format
        ));
    }
    parse_public(&f.public_key).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("a public key must be 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

fn message(domain: &[u8], checkpoint: &Value, signed_at: &str, public_key: &str) -> Vec<u8> {
    let mut m = domain.to_vec();
    encode_json(
        &json!({"checkpoint": checkpoint, "signed_at": signed_at, "public_key": public_key}),
        &mut m,
    );
    m
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Sign a checkpoint as returned by the server (checked for shape first).
pub fn sign(checkpoint: Value, key: &SigningKey) -> Result<SignedCheckpoint, String> {
    let cp = Checkpoint::parse(&checkpoint).map_err(|e| e.to_string())?;
    let format = if cp.format == CHECKPOINT_FORMAT_V1 {
        SIGNED_FORMAT_V1
    } else {
        SIGNED_FORMAT
    };
    let public = key.verifying_key();
    let public_key = hex::encode(public.as_bytes());
    let signed_at = format_rfc3339(now_micros());
    let domain = domain(format).ok_or("no signature domain")?;
    let sig = key.sign(&message(domain, &checkpoint, &signed_at, &public_key));
    Ok(SignedCheckpoint {
        format: format.into(),
        checkpoint,
        signed_at,
        key_id: key_id(&public),
        public_key,
        signature: hex::encode(sig.to_bytes()),
    })
}

pub fn read_signed(path: &Path) -> Result<SignedCheckpoint, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s: SignedCheckpoint = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a signed checkpoint: {e}", path.display()))?;
    if domain(&s.format).is_none() {
        return Err(format!(
            "{}: format {:?} is not supported",
            path.display(),
            s.format
        ));
    }
    Ok(s)
}

/// Why a signed checkpoint is refused.
#[derive(Debug)]
pub enum Refused {
    OtherKey { signed_by: String, expected: String },
    BadSignature(String),
    BadCheckpoint(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::OtherKey {
                signed_by,
                expected,
            } => write!(
                f,
                "signed by key {signed_by}, not by the expected key {expected}"
            ),
            Refused::BadSignature(m) => write!(f, "the signature does not verify: {m}"),
            Refused::BadCheckpoint(m) => write!(f, "the signed checkpoint is malformed: {m}"),
        }
    }
}

/// Check a signed checkpoint against the key that must have signed it, and
/// return the checkpoint it carries.
pub fn verify_signed(s: &SignedCheckpoint, key: &VerifyingKey) -> Result<Checkpoint, Refused> {
    let expected = hex::encode(key.as_bytes());
    if s.public_key != expected {
        return Err(Refused::OtherKey {
            signed_by: s.key_id.clone(),
            expected: key_id(key),
        });
    }
    let sig: [u8; 64] = hex::decode(&s.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Refused::BadSignature("a signature is 128 hex digits".into()))?;
    let domain = domain(&s.format)
        .ok_or_else(|| Refused::BadCheckpoint(format!("format {:?} is not supported", s.format)))?;
    key.verify_strict(
        &message(domain, &s.checkpoint, &s.signed_at, &s.public_key),
        &Signature::from_bytes(&sig),
    )
    .map_err(|e| Refused::BadSignature(e.to_string()))?;
    Checkpoint::parse(&s.checkpoint).map_err(|e| Refused::BadCheckpoint(e.to_string()))
}

/// Write a signed checkpoint, replacing `path` atomically.
pub fn write_signed(s: &SignedCheckpoint, path: &Path) -> Result<(), String> {
    let text = pretty(s)?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, text.as_bytes(), 0o644)?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A checkpoint file, plain or signed; a signed one is checked against
/// `public` (which it must then be given), and with `public` an unsigned one
/// is refused. Also returns the signing key's id for a signed one.
pub fn load_checkpoint(
    path: &Path,
    public: Option<&Path>,
) -> Result<(Checkpoint, Option<String>), Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Trouble(format!("{}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Trouble(format!("{} is not JSON: {e}", path.display())))?;
    if value
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| domain(f).is_some())
    {
        let Some(public) = public else {
            return Err(Error::Trouble(format!(
                "{} is signed: give the signer's public key with --pub",
                path.display()
            )));
        };
        let key = load_public(public).map_err(Error::Trouble)?;
        let signed = read_signed(path).map_err(Error::Trouble)?;
        return verify_signed(&signed, &key)
            .map(|cp| (cp, Some(key_id(&key))))
            .map_err(|e| Error::Refused(format!("{}: {e}", path.display())));
    }
    // A key says what must be trusted: an unsigned file is not signed by it.
    if public.is_some() {
        return Err(Error::Refused(format!(
            "{} is not signed, and --pub asks for a checkpoint signed by that key",
            path.display()
        )));
    }
    Checkpoint::parse(&value)
        .map(|cp| (cp, None))
        .map_err(|e| Error::Trouble(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(format: &str, trees: bool) -> Value {
        let mut cp = json!({
            "format": format,
            "database": "shop",
            "chains": [{"chain": 0, "seq": 3, "link_hash": "ab".repeat(32), "last_event": 9}],
        });
        if trees {
            cp["trees"] = json!([{"chain": 0, "size": 3, "root": "cd".repeat(32)}]);
        }
        cp
    }

    /// A checkpoint of format v1 (extension 0.2.0) is signed and verified as
    /// before; one of format v2 under its own format and domain; neither
    /// passes as the other, and no edit of a tree passes.
    #[test]
    fn v1_and_v2_checkpoints_sign_and_verify_each_in_its_own_format() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let v1 = sign(checkpoint(CHECKPOINT_FORMAT_V1, false), &key).unwrap();
        assert_eq!(v1.format, SIGNED_FORMAT_V1);
        assert!(verify_signed(&v1, &public).is_ok());
        let v2 = sign(
            checkpoint(audit_log_core::model::CHECKPOINT_FORMAT, true),
            &key,
        )
        .unwrap();
        assert_eq!(v2.format, SIGNED_FORMAT);
        assert_eq!(verify_signed(&v2, &public).unwrap().trees.len(), 1);
        for (s, other) in [(&v1, SIGNED_FORMAT), (&v2, SIGNED_FORMAT_V1)] {
            let mut x = s.clone();
            x.format = other.into();
            assert!(matches!(
                verify_signed(&x, &public),
                Err(Refused::BadSignature(_))
            ));
        }
        let mut edited = v2.clone();
        edited.checkpoint["trees"][0]["root"] = json!("ef".repeat(32));
        assert!(verify_signed(&edited, &public).is_err());
        let mut grown = v2.clone();
        grown.checkpoint["trees"][0]["size"] = json!(4);
        assert!(verify_signed(&grown, &public).is_err());
        // v1's message is what 0.2.0 signed: the v1 domain, then the object.
        let m = message(
            domain(SIGNED_FORMAT_V1).unwrap(),
            &v1.checkpoint,
            &v1.signed_at,
            &v1.public_key,
        );
        assert!(m.starts_with(b"audit_log:signed_checkpoint:v1\0"));
    }
}

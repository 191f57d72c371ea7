//! The host's Ed25519 key that signs exported head records: created once in
//! the state dir (0600; a looser or foreign file is refused), never logged.
//! A head record's signature covers [`canonical_head`], the JSON array
//! `["defenseclaw-head-v1", host_id, seq, hash, ts, filtered, public_key]`,
//! so a receiver that pins the public key can tell a forged or edited head
//! record (`defenseclawctl audit verify --from-export FILE --public-key KEY`).

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The key's file in the state dir.
pub const KEY_FILE: &str = "export-signing.key";
/// First element of the signed array (versions the encoding).
pub const HEAD_ENCODING_TAG: &str = "defenseclaw-head-v1";

/// The signing key. `Debug` shows only the public half.
pub struct HeadSigner {
    key: SigningKey,
    public_key: String,
    key_id: String,
}

impl std::fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The bytes a head record's signature covers.
pub fn canonical_head(
    host_id: &str,
    seq: u64,
    hash: &str,
    ts: &str,
    filtered: bool,
    public_key: &str,
) -> String {
    serde_json::json!([
        HEAD_ENCODING_TAG,
        host_id,
        seq,
        hash,
        ts,
        filtered,
        public_key
    ])
    .to_string()
}

/// The short id of a hex public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key_hex: &str) -> String {
    let raw = hex::decode(public_key_hex).unwrap_or_default();
    hex::encode(Sha256::digest(raw))[..16].to_owned()
}

impl HeadSigner {
    fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let public_key = hex::encode(key.verifying_key().to_bytes());
        Self {
            key_id: key_id(&public_key),
            public_key,
            key,
        }
    }

    /// Loads `<state_dir>/export-signing.key` or creates it (0600).
    pub fn load_or_create(state_dir: &Path) -> Result<Self, String> {
        let path = state_dir.join(KEY_FILE);
        let err = |msg: &str| format!("the export signing key {}: {msg}", path.display());
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(err("not a regular file"));
                }
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(err(&format!(
                        "its mode is {mode:o}; it must be 0600 (run `chmod 600 {}`)",
                        path.display()
                    )));
                }
                if Some(meta.uid()) != defenseclaw_common::paths::current_uid() {
                    return Err(err("it is not owned by the daemon's user"));
                }
                let text = std::fs::read_to_string(&path).map_err(|e| err(&e.to_string()))?;
                // The error never echoes the content.
                let seed: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| err("not a hex-encoded 32-byte Ed25519 seed"))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                aws_lc_rs::rand::fill(&mut seed).map_err(|_| err("no system randomness"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| err(&format!("cannot create it: {e}")))?;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .and_then(|()| writeln!(f, "{}", hex::encode(seed)))
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(&e.to_string()))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) => Err(err(&format!("cannot inspect it: {e}"))),
        }
    }

    /// The public key, 64 hex digits (what receivers pin).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The public key's short id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Adds `public_key`, `key_id` and `signature` (hex) to a head record
    /// built by [`super::record::head_object`].
    pub fn sign(&self, head: &mut Value) {
        let s = |k: &str| head.get(k).and_then(Value::as_str).unwrap_or_default();
        let message = canonical_head(
            s("host_id"),
            head.get("seq").and_then(Value::as_u64).unwrap_or_default(),
            s("hash"),
            s("ts"),
            head.get("filtered")
                .and_then(Value::as_bool)
                .unwrap_or_default(),
            &self.public_key,
        );
        let signature = hex::encode(self.key.sign(message.as_bytes()).to_bytes());
        if let Some(o) = head.as_object_mut() {
            o.insert("public_key".into(), self.public_key.clone().into());
            o.insert("key_id".into(), self.key_id.clone().into());
            o.insert("signature".into(), signature.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn the_key_is_created_private_reused_and_refused_when_looser() {
        let dir = tempfile::tempdir().unwrap();
        let a = HeadSigner::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = HeadSigner::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(!format!("{a:?}").contains(&std::fs::read_to_string(&path).unwrap()[..16]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = HeadSigner::load_or_create(dir.path()).unwrap_err();
        assert!(err.contains("640") && err.contains("0600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        let err = HeadSigner::load_or_create(dir.path()).unwrap_err();
        assert!(!err.contains("not a key\n"), "{err}");
    }

    #[test]
    fn a_signed_head_verifies_and_an_edit_does_not() {
        let signer = HeadSigner::from_seed([7; 32]);
        let mut head = super::super::record::head_object("h", 9, "ab", "t", false);
        signer.sign(&mut head);
        let public: [u8; 32] = hex::decode(signer.public_key())
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&public).unwrap();
        let sig: [u8; 64] = hex::decode(head["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let sig = Signature::from_bytes(&sig);
        let msg = canonical_head("h", 9, "ab", "t", false, signer.public_key());
        assert!(key.verify(msg.as_bytes(), &sig).is_ok());
        let edited = canonical_head("h", 10, "ab", "t", false, signer.public_key());
        assert!(key.verify(edited.as_bytes(), &sig).is_err());
        assert_eq!(head["key_id"], signer.key_id());
    }
}

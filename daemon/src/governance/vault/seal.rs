//! Sealing stored subject credentials: AES-256-GCM with a key that never lives
//! beside the database (systemd `LoadCredential` or a 0600 key file outside the
//! state directory). Each sealed value is bound to its grant through the
//! associated data, so a ciphertext copied to another row does not open.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The systemd credential name of the key (`LoadCredential=token-vault-key:…`).
pub const KEY_CREDENTIAL: &str = "token-vault-key";
const VERSION: u8 = 1;
const KEY_LEN: usize = 32;

/// Why the key could not be loaded, or a value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key file is unusable.
    #[error("token vault key {path}: {reason}")]
    Key {
        /// Where it was looked for.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The sealed value does not open with this key (wrong key, or tampered).
    #[error(
        "the stored credential cannot be opened with the configured key (wrong key or tampered); re-approve the grant"
    )]
    Open,
    /// The system random source failed.
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `$CREDENTIALS_DIRECTORY/token-vault-key`.
    Credential(PathBuf),
    /// `[token_vault] key_file`.
    File(PathBuf),
}

/// AES-256-GCM sealing with the token vault key.
pub struct Sealer {
    key: LessSafeKey,
    source: KeySource,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Loads the key from `$CREDENTIALS_DIRECTORY/token-vault-key`, else from
    /// `key_file`. `None` when neither is configured (unattended mode is then off).
    /// A key file must be a regular file of mode 0600 (or tighter) owned by this
    /// user, outside `state_dir`, holding 32 raw bytes or 64 hex digits.
    pub fn load(
        credentials_dir: Option<&Path>,
        key_file: Option<&Path>,
        state_dir: &Path,
    ) -> Result<Option<Self>, SealError> {
        if let Some(dir) = credentials_dir {
            let path = dir.join(KEY_CREDENTIAL);
            if path.exists() {
                // systemd places credentials on a private, read-only mount.
                let key = read_key(&path, false)?;
                return Ok(Some(Self::from_key(&key, KeySource::Credential(path))?));
            }
        }
        let Some(path) = key_file else {
            return Ok(None);
        };
        let bad = |reason: String| SealError::Key {
            path: path.display().to_string(),
            reason,
        };
        if let (Ok(file), Ok(state)) = (path.canonicalize(), state_dir.canonicalize())
            && file.starts_with(&state)
        {
            return Err(bad(format!(
                "is inside the state directory {}; keep the key apart from the database it protects",
                state.display()
            )));
        }
        let key = read_key(path, true)?;
        Ok(Some(Self::from_key(
            &key,
            KeySource::File(path.to_owned()),
        )?))
    }

    /// A sealer over raw key bytes (tests, and the loaders above).
    pub fn from_key(key: &[u8], source: KeySource) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Key {
            path: format!("{source:?}"),
            reason: "not a 256-bit key".into(),
        })?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            source,
        })
    }

    /// Where the key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Seals `plaintext` bound to `context`: version byte, 96-bit random nonce,
    /// ciphertext with its tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Seal("no randomness".into()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| SealError::Seal("AES-GCM".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let (Some(&VERSION), Some(rest)) = (sealed.first(), sealed.get(1..)) else {
            return Err(SealError::Open);
        };
        if rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

fn read_key(path: &Path, check_mode: bool) -> Result<Vec<u8>, SealError> {
    let bad = |reason: String| SealError::Key {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if check_mode {
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "has mode {mode:o}; it must be 0600: run `chmod 600 {}`",
                path.display()
            )));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(bad("is not owned by the daemon's user".into()));
        }
    }
    let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if raw.len() == KEY_LEN {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&raw);
    let text = text.trim();
    match hex::decode(text) {
        Ok(key) if key.len() == KEY_LEN => Ok(key),
        _ => Err(bad(
            "must hold 32 raw bytes or 64 hex digits (e.g. `openssl rand -hex 32`)".into(),
        )),
    }
}

/// Associated data binding a sealed refresh token to its server and owner.
pub fn subject_context(server: &str, sub: &str) -> Vec<u8> {
    format!("defenseclaw-token-vault-v1\0{server}\0{sub}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::from_key(&[byte; 32], KeySource::File("test".into())).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let s = sealer(7);
        let sealed = s.seal(b"refresh-token", b"ctx-a").unwrap();
        assert!(!sealed.windows(13).any(|w| w == b"refresh-token"));
        assert_eq!(s.open(&sealed, b"ctx-a").unwrap(), b"refresh-token");
        assert_eq!(s.open(&sealed, b"ctx-b"), Err(SealError::Open));
        assert_eq!(sealer(8).open(&sealed, b"ctx-a"), Err(SealError::Open));
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert_eq!(s.open(&tampered, b"ctx-a"), Err(SealError::Open));
        assert_eq!(s.open(&[], b"ctx-a"), Err(SealError::Open));
        // Fresh nonce each time.
        assert_ne!(sealed, s.seal(b"refresh-token", b"ctx-a").unwrap());
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Sealer::load(None, Some(&key), &state).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Sealer::load(None, Some(&key), &state).unwrap().is_some());
        assert!(Sealer::load(None, None, &state).unwrap().is_none());
        let inside = state.join("key");
        std::fs::write(&inside, [1u8; 32]).unwrap();
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Sealer::load(None, Some(&inside), &state).unwrap_err();
        assert!(err.to_string().contains("state directory"), "{err}");
        std::fs::write(&key, "short").unwrap();
        assert!(Sealer::load(None, Some(&key), &state).is_err());
        // A systemd credential wins and needs no mode check.
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join(KEY_CREDENTIAL), [2u8; 32]).unwrap();
        let s = Sealer::load(Some(&creds), Some(&key), &state)
            .unwrap()
            .unwrap();
        assert!(matches!(s.source(), KeySource::Credential(_)));
    }
}

//! Ed25519 device identity: created once, stored 0600 in the state dir, reused.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::settings::{DEVICE_KEY_FILE, OpenClawError};

/// The daemon's device key. Debug never prints the key.
pub(crate) struct DeviceIdentity {
    key: SigningKey,
    /// Lowercase hex SHA-256 of the raw public key.
    pub(crate) id: String,
    /// base64url (no padding) of the raw public key.
    pub(crate) public_key: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Parameters of the v3 device signature.
pub(crate) struct SignInput<'a> {
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub role: &'a str,
    pub scopes: &'a [&'a str],
    pub signed_at_ms: i64,
    pub token: &'a str,
    pub nonce: &'a str,
    pub platform: &'a str,
    pub device_family: &'a str,
}

impl DeviceIdentity {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        Self {
            id: hex::encode(Sha256::digest(public)),
            public_key: URL_SAFE_NO_PAD.encode(public),
            key,
        }
    }

    #[cfg(test)]
    pub(crate) fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self::from_seed(seed)
    }

    /// Loads `<state_dir>/openclaw-device.key` or creates it (0600). A key file
    /// readable by group/others is refused.
    pub(crate) fn load_or_create(state_dir: &Path) -> Result<Self, OpenClawError> {
        let path = state_dir.join(DEVICE_KEY_FILE);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(err(&path, "not a regular file"));
                }
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(err(
                        &path,
                        &format!("permissions {mode:o} are too open (need 0600)"),
                    ));
                }
                let text =
                    std::fs::read_to_string(&path).map_err(|e| err(&path, &e.to_string()))?;
                let bytes = hex::decode(text.trim())
                    .map_err(|_| err(&path, "not a hex-encoded Ed25519 seed"))?;
                let seed: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| err(&path, "Ed25519 seed must be 32 bytes"))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir).map_err(|e| err(state_dir, &e.to_string()))?;
                let seed: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| err(&path, &e.to_string()))?;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(&path, &e.to_string()))?;
                writeln!(f, "{}", hex::encode(seed)).map_err(|e| err(&path, &e.to_string()))?;
                f.sync_all().map_err(|e| err(&path, &e.to_string()))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) => Err(err(&path, &e.to_string())),
        }
    }

    /// v3 payload: `v3|deviceId|clientId|mode|role|scopes|signedAtMs|token|nonce|platform|deviceFamily`.
    pub(crate) fn payload_v3(&self, i: &SignInput<'_>) -> String {
        format!(
            "v3|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.id,
            i.client_id,
            i.client_mode,
            i.role,
            i.scopes.join(","),
            i.signed_at_ms,
            i.token,
            i.nonce,
            normalize(i.platform),
            normalize(i.device_family)
        )
    }

    /// base64url signature of the v3 payload.
    pub(crate) fn sign_v3(&self, i: &SignInput<'_>) -> String {
        let sig = self.key.sign(self.payload_v3(i).as_bytes());
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    }
}

fn normalize(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn err(path: &Path, msg: &str) -> OpenClawError {
    OpenClawError::DeviceKey(format!("{}: {msg}", PathBuf::from(path).display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn key_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(DEVICE_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = DeviceIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 64);
    }

    #[test]
    fn loose_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        DeviceIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(DEVICE_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = DeviceIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("too open"), "{e}");
    }

    #[test]
    fn signature_verifies_over_v3_payload() {
        let d = DeviceIdentity::generate();
        let input = SignInput {
            client_id: "gateway-client",
            client_mode: "backend",
            role: "operator",
            scopes: &["operator.read", "operator.admin"],
            signed_at_ms: 1_795_920_562_759,
            token: "tok",
            nonce: "n-1",
            platform: " Linux ",
            device_family: "",
        };
        let payload = d.payload_v3(&input);
        assert!(payload.ends_with("|tok|n-1|linux|"), "{payload}");
        let sig = URL_SAFE_NO_PAD.decode(d.sign_v3(&input)).unwrap();
        let pk: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&d.public_key)
            .unwrap()
            .try_into()
            .unwrap();
        let vk = VerifyingKey::from_bytes(&pk).unwrap();
        let sig = Signature::from_slice(&sig).unwrap();
        vk.verify(payload.as_bytes(), &sig).unwrap();
    }
}

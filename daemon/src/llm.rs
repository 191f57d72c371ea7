//! The optional LLM analyzer's HTTP adapter: sends one skill, framed as
//! untrusted data (see `defenseclaw_scanner::llm`), to an OpenAI-compatible
//! `POST {base_url}/chat/completions` and returns the strictly parsed verdict.
//! Bounded in time, response size and requests in flight; the API key comes
//! from a 0600 key file or the secret sources and is never logged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use defenseclaw_scanner::llm::{ReviewInput, Verdict, VerdictError};

use crate::config::governance::LlmSettings;
use crate::secrets::{LLM_API_KEY, SecretSources, SecretString, SecretsError};

/// Largest key file read (a key is a line, not a document).
const KEY_FILE_MAX: u64 = 16 * 1024;

/// Why the analyzer could not be set up (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum LlmSetupError {
    /// `key_file` is unusable. Never holds the key.
    #[error("[scanner.llm] key_file {}: {reason}", path.display())]
    KeyFile {
        /// The file as configured.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A secret source could not be read.
    #[error("[scanner.llm] API key: {0}")]
    Secrets(#[from] SecretsError),
    /// `base_url` is not acceptable (checked by config validation too).
    #[error("[scanner.llm] base_url: {0}")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("[scanner.llm] http client: {0}")]
    Client(String),
}

/// Why one review failed. Recorded as an analyzer error beside the scan;
/// never a verdict, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// No complete answer within `timeout_ms` (waiting for a slot included).
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The request could not be sent or the answer not read.
    #[error("request failed: {0}")]
    Transport(String),
    /// The endpoint answered with an error status.
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    /// The answer was larger than `max_response_bytes`.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// The answer did not hold a valid verdict.
    #[error("{0}")]
    Verdict(#[from] VerdictError),
}

/// The analyzer: one HTTP client, its endpoint, key and bounds.
pub struct LlmReviewer {
    client: reqwest::Client,
    endpoint: url::Url,
    key: Option<SecretString>,
    settings: LlmSettings,
    in_flight: tokio::sync::Semaphore,
}

impl std::fmt::Debug for LlmReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmReviewer")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.settings.model)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Reads a key file: a regular file of the daemon's, 0600 or tighter.
fn read_key_file(path: &Path) -> Result<SecretString, LlmSetupError> {
    let bad = |reason: String| LlmSetupError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file (links are not followed)".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "has mode {mode:o}; it holds a secret and must be 0600: run `chmod 600 {}`",
            path.display()
        )));
    }
    if meta.len() > KEY_FILE_MAX {
        return Err(bad(format!("larger than {KEY_FILE_MAX} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(bad("is empty".into()));
    }
    Ok(SecretString::new(key.to_owned()))
}

impl LlmReviewer {
    /// The analyzer when `[scanner.llm] enabled`, else `None`. The key comes
    /// from `key_file` when set, otherwise from the secret sources
    /// (`DEFENSECLAW_LLM_API_KEY`, the credential `llm-api-key`, `.env`);
    /// none at all is fine for a local endpoint that needs none.
    pub fn new(
        settings: &LlmSettings,
        secrets: &SecretSources,
    ) -> Result<Option<Self>, LlmSetupError> {
        if !settings.enabled {
            return Ok(None);
        }
        let endpoint = settings.endpoint().map_err(LlmSetupError::Url)?;
        let key = match &settings.key_file {
            Some(path) => Some(read_key_file(path)?),
            None => secrets.get(LLM_API_KEY)?.map(|(k, _)| k),
        };
        if let Some(k) = &key
            && reqwest::header::HeaderValue::from_str(&format!("Bearer {}", k.expose())).is_err()
        {
            return Err(LlmSetupError::KeyFile {
                path: settings.key_file.clone().unwrap_or_default(),
                reason: "the API key holds characters a header cannot carry".into(),
            });
        }
        Self::with_key(settings, endpoint, key).map(Some)
    }

    fn with_key(
        settings: &LlmSettings,
        endpoint: url::Url,
        key: Option<SecretString>,
    ) -> Result<Self, LlmSetupError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("defenseclawd/", env!("CARGO_PKG_VERSION")));
        if defenseclaw_common::loopback::is_loopback_url(&endpoint) {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| LlmSetupError::Client(e.to_string()))?;
        Ok(Self {
            client,
            endpoint,
            key,
            in_flight: tokio::sync::Semaphore::new(settings.max_concurrent),
            settings: settings.clone(),
        })
    }

    /// The settings in use (thresholds, bounds).
    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// Whether a skill whose static findings reach `max` is sent for review.
    pub fn wants(&self, max: Option<defenseclaw_scanner::Severity>) -> bool {
        defenseclaw_scanner::llm::wants_review(
            max,
            (!self.settings.review_clean).then(|| scanner_severity(self.settings.min_severity)),
            scanner_severity(self.settings.max_severity),
        )
    }

    /// Asks the model about one skill. Every failure is an [`LlmError`]:
    /// the caller records it and keeps the static result as it is.
    pub async fn review(&self, input: &ReviewInput) -> Result<Verdict, LlmError> {
        let ms = self.settings.timeout_ms;
        tokio::time::timeout(Duration::from_millis(ms), self.exchange(input))
            .await
            .map_err(|_| LlmError::Timeout(ms))?
    }

    async fn exchange(&self, input: &ReviewInput) -> Result<Verdict, LlmError> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| LlmError::Transport("the analyzer is shutting down".into()))?;
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let body = defenseclaw_scanner::llm::request_body(
            &self.settings.model,
            input,
            &nonce,
            self.settings.max_tokens,
        );
        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.key {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| LlmError::Transport("the API key is not a header value".into()))?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let ms = self.settings.timeout_ms;
        let mut resp = request.send().await.map_err(|e| transport(&e, ms))?;
        if !resp.status().is_success() {
            return Err(LlmError::Status(resp.status().as_u16()));
        }
        let max = self.settings.max_response_bytes;
        if resp.content_length().is_some_and(|l| l > max as u64) {
            return Err(LlmError::TooLarge(max));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(&e, ms))? {
            if bytes.len() + chunk.len() > max {
                return Err(LlmError::TooLarge(max));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(defenseclaw_scanner::llm::parse_chat_reply(&bytes)?)
    }
}

fn transport(e: &reqwest::Error, timeout_ms: u64) -> LlmError {
    if e.is_timeout() {
        return LlmError::Timeout(timeout_ms);
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    LlmError::Transport(out)
}

/// The daemon's severity as the scanner crate's.
pub fn scanner_severity(s: crate::model::Severity) -> defenseclaw_scanner::Severity {
    use crate::model::Severity as S;
    use defenseclaw_scanner::Severity as T;
    match s {
        S::Info => T::Info,
        S::Low => T::Low,
        S::Medium => T::Medium,
        S::High => T::High,
        S::Critical => T::Critical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(base_url: &str) -> Result<String, String> {
        LlmSettings {
            base_url: base_url.to_owned(),
            ..LlmSettings::default()
        }
        .endpoint()
        .map(|u| u.to_string())
    }

    #[test]
    fn endpoint_rules() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080/v1/"),
            Ok("http://127.0.0.1:8080/v1/chat/completions".to_owned())
        );
        assert_eq!(
            endpoint("https://api.example.test/v1"),
            Ok("https://api.example.test/v1/chat/completions".to_owned())
        );
        for bad in [
            "http://api.example.test/v1",
            "http://localhost.evil.test/v1",
            "ftp://127.0.0.1/",
            "https://user:pw@api.example.test/v1",
            "https://api.example.test/v1?key=x",
            "not a url",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "sk-test-123\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&f).unwrap_err().to_string();
        assert!(e.contains("0600") && !e.contains("sk-test-123"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&f).unwrap().expose(), "sk-test-123");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_key_file(&link).is_err());
    }
}

//! The provider's loopback admin API: approving or denying device and CIBA
//! requests, failure injection, the request log, signing arbitrary claims with
//! its key, connected accounts and Token Vault controls, and whole logins.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::{
    AccountLink, CIBA_GRANT, CibaSelector, DEVICE_CODE_GRANT, FailureMode, IdentityProvider,
    IdpUser, LinkedAccount, PendingCiba, PendingCibaOutcome, PendingDeviceCode, ProviderToken,
    RequestLogEntry, TokenSet, TokenVaultStats,
};

impl IdentityProvider {
    async fn get_admin<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(&format!("__admin/{path}"));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {url}: bad JSON {text}"))
    }

    pub(super) async fn post_admin(&self, path: &str, body: &Value) -> Result<Value> {
        self.send_admin(reqwest::Method::POST, path, body).await
    }

    async fn send_admin(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
        let url = self.url(&format!("__admin/{path}"));
        let resp = self
            .http
            .request(method.clone(), &url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: bad JSON {text}"))
    }

    async fn token_request(&self, path: &str, form: &[(&str, &str)]) -> Result<Value> {
        let url = self.url(path);
        let resp = self
            .http
            .post(&url)
            .form(form)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: bad JSON {text}"))
    }

    /// Device codes not yet approved, denied, consumed or expired.
    pub async fn pending_device_codes(&self) -> Result<Vec<PendingDeviceCode>> {
        self.get_admin("device/pending").await
    }

    /// Waits until at least one device code is pending and returns the newest.
    pub async fn wait_for_device_code(&self, timeout: Duration) -> Result<PendingDeviceCode> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut pending = self.pending_device_codes().await?;
            if let Some(code) = pending.pop() {
                return Ok(code);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no device code became pending within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Approves a device code as `sub` (the user "typed the code and clicked Accept").
    pub async fn approve_device(&self, user_code: &str, sub: &str) -> Result<()> {
        self.post_admin(
            "device/approve",
            &json!({ "user_code": user_code, "sub": sub }),
        )
        .await
        .map(|_| ())
    }

    /// Denies a device code (the user clicked Cancel).
    pub async fn deny_device(&self, user_code: &str) -> Result<()> {
        self.post_admin("device/deny", &json!({ "user_code": user_code }))
            .await
            .map(|_| ())
    }

    /// CIBA requests waiting on a phone.
    pub async fn pending_ciba(&self) -> Result<Vec<PendingCiba>> {
        self.get_admin("ciba/pending").await
    }

    /// Waits until a CIBA request matching `pred` is pending.
    pub async fn wait_for_ciba<F>(&self, timeout: Duration, pred: F) -> Result<PendingCiba>
    where
        F: Fn(&PendingCiba) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.pending_ciba().await?.into_iter().find(|c| pred(c)) {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no matching CIBA request became pending within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Approves a pending CIBA request (the user tapped Approve).
    pub async fn approve_ciba(&self, which: &CibaSelector) -> Result<PendingCibaOutcome> {
        let v = self.post_admin("ciba/approve", &which.to_body()).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Denies a pending CIBA request (the user tapped Deny).
    pub async fn deny_ciba(&self, which: &CibaSelector) -> Result<PendingCibaOutcome> {
        let v = self.post_admin("ciba/deny", &which.to_body()).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Creates (or replaces) a user.
    pub async fn create_user(&mut self, user: IdpUser) -> Result<()> {
        self.post_admin("users", &serde_json::to_value(&user)?)
            .await?;
        self.created_users.retain(|u| u.sub != user.sub);
        self.created_users.push(user);
        Ok(())
    }

    /// Sets failure injection knobs (unset fields unchanged).
    pub async fn set_failures(&self, mode: &FailureMode) -> Result<()> {
        self.post_admin("failures", &serde_json::to_value(mode)?)
            .await
            .map(|_| ())
    }

    /// Clears all failure injection.
    pub async fn reset_failures(&self) -> Result<()> {
        self.post_admin("failures/reset", &json!({}))
            .await
            .map(|_| ())
    }

    /// Recent non-admin requests, oldest first.
    pub async fn requests(&self) -> Result<Vec<RequestLogEntry>> {
        self.get_admin("requests").await
    }

    /// Signs arbitrary claims with the provider's current key (RS256, its `kid`).
    /// Defaults `iss`, `aud` (the API), `iat`, `exp` (+300 s); a `null` claim removes it.
    pub async fn sign_token(&self, header: Value, claims: Value) -> Result<String> {
        let v = self
            .post_admin("sign", &json!({ "header": header, "claims": claims }))
            .await?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("sign: no token in {v}"))
    }

    /// The current signing key's public half as an SPKI PEM (what an attacker
    /// can fetch from the JWKS), for forgeries such as HS256 keyed with it.
    pub async fn public_key_pem(&self) -> Result<String> {
        let v: Value = self.get_admin("key").await?;
        v.get("public_pem")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("key: no public_pem in {v}"))
    }

    /// Links `connection` for `sub` with these space-separated provider scopes (a working link:
    /// no `login_hint`, not broken, default lifetime). Replaces an existing link's fields.
    pub async fn link_account(
        &self,
        sub: &str,
        connection: &str,
        scope: &str,
    ) -> Result<LinkedAccount> {
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        self.link_account_with(&AccountLink::new(sub, connection, &scopes))
            .await
    }

    /// Creates or updates a connected account (what a completed Connected Accounts flow
    /// leaves behind).
    pub async fn link_account_with(&self, link: &AccountLink) -> Result<LinkedAccount> {
        let v = self
            .post_admin("connections", &serde_json::to_value(link)?)
            .await?;
        account_of(v)
    }

    /// Makes the provider refresh of an existing link fail (the user revoked the app at the
    /// provider): exchanges answer 401 `federated_connection_refresh_token_flow_failed`.
    /// Linking again repairs it.
    pub async fn break_account(&self, sub: &str, connection: &str) -> Result<LinkedAccount> {
        let v = self
            .post_admin(
                "connections",
                &json!({ "sub": sub, "connection": connection, "broken": true }),
            )
            .await?;
        account_of(v)
    }

    /// Removes a link (the connected account was deleted in Auth0): exchanges answer 401
    /// `federated_connection_refresh_token_not_found`. Fails if there is no such link.
    pub async fn unlink_account(&self, sub: &str, connection: &str) -> Result<()> {
        self.send_admin(
            reqwest::Method::DELETE,
            "connections",
            &json!({ "sub": sub, "connection": connection }),
        )
        .await
        .map(|_| ())
    }

    /// All connected accounts, of every user.
    pub async fn linked_accounts(&self) -> Result<Vec<LinkedAccount>> {
        self.get_admin("connections").await
    }

    /// Every fake provider token the Token Vault grant issued, oldest first.
    pub async fn provider_tokens(&self) -> Result<Vec<ProviderToken>> {
        self.get_admin("provider-tokens").await
    }

    /// Token Vault counters and the current delay.
    pub async fn token_vault_stats(&self) -> Result<TokenVaultStats> {
        self.get_admin("token-vault").await
    }

    /// Holds every Token Vault exchange for `delay` inside the grant (counted in
    /// [`TokenVaultStats::in_flight`]) before it answers. Exchanges already held are measured
    /// against the new delay, so `Duration::ZERO` releases them at once.
    pub async fn set_token_vault_delay(&self, delay: Duration) -> Result<()> {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.post_admin("token-vault", &json!({ "delay_ms": ms }))
            .await
            .map(|_| ())
    }

    /// A whole device-flow login by the CLI client for `sub`: requests a code with `scope` and
    /// `audience`, approves it and redeems it once. `offline_access` in `scope` yields a
    /// refresh token; `audience` may be the API or [`Self::my_account_audience`].
    pub async fn device_login(&self, sub: &str, scope: &str, audience: &str) -> Result<TokenSet> {
        let code = self
            .token_request(
                "oauth/device/code",
                &[
                    ("client_id", self.cli_client_id()),
                    ("scope", scope),
                    ("audience", audience),
                ],
            )
            .await?;
        let field = |name: &str| {
            code.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("device code answer without {name}: {code}"))
        };
        let (user_code, device_code) = (field("user_code")?, field("device_code")?);
        self.approve_device(&user_code, sub).await?;
        let tokens = self
            .token_request(
                "oauth/token",
                &[
                    ("grant_type", DEVICE_CODE_GRANT),
                    ("device_code", &device_code),
                    ("client_id", self.cli_client_id()),
                ],
            )
            .await?;
        Ok(serde_json::from_value(tokens)?)
    }

    /// A whole CIBA round by the daemon client for `sub`: `/bc-authorize` with `scope` (which
    /// must hold `openid`; add `offline_access` for a refresh token) and `audience`, approval
    /// on the "phone", one poll.
    pub async fn ciba_login(&self, sub: &str, scope: &str, audience: &str) -> Result<TokenSet> {
        let hint = json!({ "format": "iss_sub", "iss": self.issuer(), "sub": sub }).to_string();
        let started = self
            .token_request(
                "bc-authorize",
                &[
                    ("client_id", self.daemon_client_id()),
                    ("client_secret", self.daemon_client_secret()),
                    ("login_hint", &hint),
                    ("scope", scope),
                    ("audience", audience),
                    ("binding_message", "DC-TEST testkit login"),
                ],
            )
            .await?;
        let id = started
            .get("auth_req_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("bc-authorize answer without auth_req_id: {started}"))?;
        self.approve_ciba(&CibaSelector::AuthReqId(id.clone()))
            .await?;
        let tokens = self
            .token_request(
                "oauth/token",
                &[
                    ("grant_type", CIBA_GRANT),
                    ("auth_req_id", &id),
                    ("client_id", self.daemon_client_id()),
                    ("client_secret", self.daemon_client_secret()),
                ],
            )
            .await?;
        Ok(serde_json::from_value(tokens)?)
    }

    /// Whether the provider still honours `refresh_token` (issued to the daemon
    /// client): one refresh grant, answered 2xx or not.
    pub async fn honours_refresh_token(&self, refresh_token: &str) -> Result<bool> {
        let url = self.url("oauth/token");
        let resp = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", self.daemon_client_id()),
                ("client_secret", self.daemon_client_secret()),
            ])
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        Ok(resp.status().is_success())
    }
}

fn account_of(answer: Value) -> Result<LinkedAccount> {
    let account = answer
        .get("account")
        .cloned()
        .ok_or_else(|| anyhow!("no account in {answer}"))?;
    Ok(serde_json::from_value(account)?)
}

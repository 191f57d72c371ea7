//! The names and constants the tests share with the provider: clients, grant
//! types, token types, scopes and connections.

/// The default API audience (an absolute URI, as oidc-provider requires).
pub const DEFAULT_AUDIENCE: &str = "https://defenseclaw.local/api";
/// The public Native client used by `defenseclawctl` (device code grant).
pub const DEFAULT_CLI_CLIENT_ID: &str = "defenseclaw-cli";
/// The confidential client used by `defenseclawd` (CIBA).
pub const DEFAULT_DAEMON_CLIENT_ID: &str = "defenseclawd";
/// The daemon client's secret in the test provider.
pub const DEFAULT_DAEMON_CLIENT_SECRET: &str = "defenseclawd-test-secret";
/// Device authorization grant type (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// CIBA grant type.
pub const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";
/// Auth0's Token Vault grant type (exchange for a connected account's provider token).
pub const TOKEN_VAULT_GRANT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
/// Token Vault `subject_token_type` for an Auth0 refresh token (of the calling client).
pub const SUBJECT_TOKEN_TYPE_REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// Token Vault `subject_token_type` for an Auth0 access token (for the client's API).
pub const SUBJECT_TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token Vault `requested_token_type` and `issued_token_type`.
pub const FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";
/// Scopes of the My Account API (`<issuer>me/`) for Connected Accounts.
pub const MY_ACCOUNT_SCOPES: [&str; 3] = [
    "create:me:connected_accounts",
    "read:me:connected_accounts",
    "delete:me:connected_accounts",
];
/// Connections that can be linked by default.
pub const DEFAULT_CONNECTIONS: [&str; 3] = ["github", "slack", "google-oauth2"];

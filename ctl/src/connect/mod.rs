//! `connections connect`: Auth0 Connected Accounts from the CLI.
//!
//! 1. A My Account API token (`<issuer>me/`), in memory only: the session's refresh token
//!    (MRRT), else a device-flow login for that audience ([`Auth::token_for_audience`]).
//! 2. `POST <issuer>me/v1/connected-accounts/connect` with `state` and a PKCE challenge; the
//!    redirect goes to a loopback listener on `127.0.0.1` with an OS-chosen port.
//! 3. The browser opens `connect_uri?ticket=…`; the provider sends it back to
//!    `/callback?connect_code=…&state=…` (or with them in the fragment: a tiny page re-sends
//!    the fragment as a query). A wrong `state` is refused and waiting goes on.
//! 4. `POST …/connected-accounts/complete` with the code and the PKCE verifier.
//! 5. `RecordConnectedAccount` tells the daemon (connection and account id only). An
//!    unreachable daemon or one without that RPC is a warning: the account is linked anyway.
//!
//! Tokens, the verifier, the code and `auth_session` are [`Secret`]s: never printed, and
//! scrubbed from anything the provider echoes back into an error.
//!
//! [`flow`] runs the steps and prints the outcome, [`my_account`] is the My Account API
//! client (steps 2 and 4), [`loopback`] the redirect listener (step 3).
//!
//! After `mcp allow NAME --connection C`, [`consent`] checks the operator's account is linked
//! for `C` and runs this flow on a terminal (or names the command without one).
//!
//! `connections unlink` ([`unlink`]) takes the same token path, deletes the account through
//! the My Account API and tells the daemon (`UnlinkConnectedAccount`).
//!
//! [`Auth::token_for_audience`]: crate::auth::Auth::token_for_audience
//! [`Secret`]: crate::auth::Secret

mod consent;
mod flow;
mod loopback;
mod my_account;
mod unlink;

pub use consent::{AllowedConnections, ensure_linked};
pub use flow::{ConnectOptions, ConnectedAccount, DaemonRecord, Linked, connect, link_account};
pub(crate) use loopback::html_escape;
pub use unlink::unlink;

//! Database entities of authgraph, and the keys stored with them (`keys`: how
//! an address or a search term is folded, shared by the server and the
//! migrations). Rows stay in the service layer: it hands out the domain types
//! of `src/domain.rs`, which have no `password_hash` or `secret_hash`, and the
//! GraphQL types wrap those, so a secret column can never reach the API by
//! accident.

pub mod api_key;
pub mod keys;
pub mod mail_outbox;
pub mod mail_token;
pub mod passkey;
pub mod recovery_code;
pub mod refresh_token;
pub mod second_factor_challenge;
pub mod security_event;
pub mod session;
pub mod signing_key;
pub mod totp_factor;
pub mod user;
pub mod webauthn_ceremony;

//! Authentication building blocks: password hashing, access tokens (JWT), one-time
//! tokens, who is calling (principal), rate limits, and the client's address.
//! The live-session registry belongs to the session store (`service::core::store`).

pub mod access;
pub mod client_ip;
pub mod keys;
pub mod password;
pub mod principal;
pub mod rate_limit;
pub mod secrets;
pub mod tokens;

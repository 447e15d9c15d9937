//! Authentication building blocks: password hashing, access tokens (JWT), refresh
//! tokens, the live-session registry that makes revocation immediate, who is
//! calling (principal), and the client's address.

pub mod access;
pub mod client_ip;
pub mod password;
pub mod principal;
pub mod rate_limit;
pub mod refresh;
pub mod registry;
pub mod tokens;

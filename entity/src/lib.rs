//! Database entities of authgraph. Only storage concerns live here: the GraphQL
//! types are separate (see `src/graphql/types.rs`), so a column such as
//! `password_hash` can never reach the API by accident.

pub mod api_key;
pub mod keys;
pub mod refresh_token;
pub mod session;
pub mod user;

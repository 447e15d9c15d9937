//! A secret value (a key, a password from the configuration, an SMTP URL with
//! its credentials): its bytes are reached only through [`Secret::expose`],
//! and it is never printed, not even by `{:?}`. A leaf: it imports nothing of
//! authgraph's, so every layer can hold one.

use std::fmt;

/// A secret value: never printed, not even by `{:?}`.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

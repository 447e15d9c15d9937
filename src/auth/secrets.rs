//! One-time secrets: every token authgraph hands out once and keeps only as a
//! SHA-256 digest ([`hash_token`]): refresh tokens, mailed links' tokens and
//! second-factor challenges (256 random bits each, [`OneTimeSecrets::generate`]);
//! and the keyed fingerprints under which the shared rate-limit budgets store a
//! client address or an email key ([`OneTimeSecrets::fingerprint`]).
//!
//! A rotated refresh token's successor is not random but derived: HMAC-SHA256
//! of the old token under a server key ([`OneTimeSecrets::successor`]). Whoever
//! presents the old token again inside the grace window (two tabs, a retried
//! request whose answer was lost) is handed the very same successor, so there
//! are never two live successors, and no plaintext token has to be stored to
//! make that possible. Without the old token and the server key the successor
//! cannot be computed.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{error::AppError, secret::Secret};

/// The keys one-time secrets are derived under, from the server's secret.
#[derive(Clone)]
pub struct OneTimeSecrets {
    successor_key: Secret,
    fingerprint_key: Secret,
}

impl OneTimeSecrets {
    /// Derives the successor key from the signing secret, so that one secret is
    /// all an operator manages, while the two uses never share a key.
    pub fn new(master: &Secret) -> Self {
        let derive = |purpose: &[u8]| {
            let mut mac = keyed(master.expose());
            mac.update(purpose);
            Secret::new(mac.finalize().into_bytes().to_vec())
        };
        Self {
            successor_key: derive(b"authgraph refresh-token successor key v1"),
            fingerprint_key: derive(b"authgraph stored-key fingerprint key v1"),
        }
    }

    /// HMAC-SHA-256 of `data` under a key of its own, hex: how a value that
    /// must not be readable (a client address, an email key) is stored as a key
    /// elsewhere (the shared rate-limit budgets). Unlike a bare hash, it cannot
    /// be reversed by trying every IPv4 address without the server's secret.
    pub fn fingerprint(&self, data: &str) -> String {
        let mut mac = keyed(self.fingerprint_key.expose());
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A fresh random token: 32 bytes from the system's generator, as 43
    /// characters of base64url (a session's first refresh token, a link's
    /// token, a challenge).
    pub fn generate(&self) -> Result<String, AppError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
        Ok(B64.encode(bytes))
    }

    /// The one successor `token` rotates into.
    pub fn successor(&self, token: &str) -> String {
        let mut mac = keyed(self.successor_key.expose());
        mac.update(token.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }
}

/// HMAC-SHA-256 under `key`.
#[expect(clippy::expect_used, reason = "HMAC takes a key of any length (RFC 2104 section 2): this never fails")]
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

/// What is stored and looked up: base64url(SHA-256(token)).
pub fn hash_token(token: &str) -> String {
    B64.encode(Sha256::digest(token.as_bytes()))
}

/// Cheap shape check before any database work: 43 characters of base64url.
pub fn well_formed(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_successors_deterministic() {
        let k = OneTimeSecrets::new(&Secret::new(vec![1; 32]));
        let a = k.generate().unwrap();
        let b = k.generate().unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        assert_eq!(B64.decode(&a).unwrap().len(), 32);
        assert_eq!(k.successor(&a), k.successor(&a));
        assert_ne!(k.successor(&a), k.successor(&b));
        assert!(well_formed(&k.successor(&a)));
        // A different server key gives a different successor.
        let other = OneTimeSecrets::new(&Secret::new(vec![2; 32]));
        assert_ne!(other.successor(&a), k.successor(&a));
        assert_eq!(hash_token(&a).len(), 43);
        assert_ne!(hash_token(&a), a);
        assert!(!well_formed("short"));
        // Right length, wrong alphabet: base64url has no `+`, `/` or `=`.
        let good = k.generate().unwrap();
        assert!(well_formed(&good));
        for bad in ['+', '/', '=', ' ', '.'] {
            let token: String = good.chars().take(42).chain(std::iter::once(bad)).collect();
            assert!(!well_formed(&token), "{token:?}");
        }
    }
}

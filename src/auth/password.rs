//! argon2id password hashing, off the async runtime.
//!
//! Hashing costs tens of milliseconds of CPU, so it runs on the blocking pool behind
//! a semaphore with one permit per core: a login flood queues here instead of
//! occupying every runtime worker, and token checks keep their latency.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

use crate::{config::PasswordParams, error::AppError};

/// What a verification found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The password is wrong (or the stored hash unreadable).
    No,
    /// Correct, and the hash already uses the current parameters.
    Yes,
    /// Correct, but hashed with older or weaker parameters: store this new hash.
    YesRehashed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    permits: Semaphore,
    /// A hash of a random password: unknown accounts are verified against it so
    /// that they cost the same time as known ones.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(p: &PasswordParams) -> Result<Self, AppError> {
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .map_err(|e| AppError::internal(format!("argon2 parameters: {e}")))?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
        let dummy_hash = hash_with(&params, &random)?;
        Ok(Self { inner: Arc::new(Inner { params, permits: Semaphore::new(cores), dummy_hash }) })
    }

    fn argon2(params: &Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let inner = self.inner.clone();
        self.blocking(move || hash_with(&inner.params, password.as_bytes())).await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when the
    /// account does not exist (`stored` is `None`), which always answers `No`.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<Verified, AppError> {
        let inner = self.inner.clone();
        self.blocking(move || {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| inner.dummy_hash.clone());
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Ok(Verified::No);
            };
            // Verify with the parameters the hash was made with.
            let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
            if !ok || !known {
                return Ok(Verified::No);
            }
            if needs_rehash(&parsed, &inner.params) {
                Ok(Verified::YesRehashed(hash_with(&inner.params, password.as_bytes())?))
            } else {
                Ok(Verified::Yes)
            }
        })
        .await?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| AppError::internal("password semaphore closed"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AppError::internal(format!("password task: {e}")))
    }
}

fn hash_with(params: &Params, password: &[u8]) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut OsRng);
    PasswordHasher::argon2(params)
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::internal(format!("argon2 hash: {e}")))
}

fn needs_rehash(parsed: &PasswordHash<'_>, current: &Params) -> bool {
    if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.version != Some(Version::V0x13 as u32) {
        return true;
    }
    match Params::try_from(parsed) {
        Ok(old) => {
            old.m_cost() < current.m_cost()
                || old.t_cost() < current.t_cost()
                || old.p_cost() < current.p_cost()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(memory_kib: u32) -> PasswordParams {
        PasswordParams { memory_kib, iterations: 2, parallelism: 1 }
    }

    #[tokio::test]
    async fn hashes_verify_and_upgrade() {
        let old = PasswordHasher::new(&params(19 * 1024)).unwrap();
        let hash = old.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_eq!(old.verify("correct horse".into(), Some(hash.clone())).await.unwrap(), Verified::Yes);
        assert_eq!(old.verify("wrong horse".into(), Some(hash.clone())).await.unwrap(), Verified::No);
        // An unknown account never verifies, whatever the password.
        assert_eq!(old.verify("correct horse".into(), None).await.unwrap(), Verified::No);

        let stronger = PasswordHasher::new(&params(20 * 1024)).unwrap();
        match stronger.verify("correct horse".into(), Some(hash)).await.unwrap() {
            Verified::YesRehashed(new_hash) => {
                assert!(new_hash.contains("m=20480"), "{new_hash}");
                assert_eq!(
                    stronger.verify("correct horse".into(), Some(new_hash)).await.unwrap(),
                    Verified::Yes
                );
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_hash_does_not_verify() {
        let h = PasswordHasher::new(&params(19 * 1024)).unwrap();
        assert_eq!(h.verify("x".into(), Some("not a hash".into())).await.unwrap(), Verified::No);
    }
}

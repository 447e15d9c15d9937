//! argon2id password hashing, off the async runtime.
//!
//! Hashing costs tens of milliseconds of CPU, so it runs on a pool of dedicated
//! threads, one per core, fed by a bounded queue: a login flood waits in the queue
//! instead of occupying the runtime's workers, and past the queue's depth it is
//! refused at once (`RATE_LIMITED`, retry after a second) instead of waiting ever
//! longer. A job whose caller went away (the client disconnected, the request
//! was cancelled) is dropped when it reaches a thread, unhashed. The pool's threads run at a lower CPU
//! priority (nice 19), so the runtime's threads, which answer token checks, get a
//! core as soon as they need one while hashing still uses every idle cycle. Each
//! thread keeps its argon2 working memory between hashes: no 19 MiB allocation
//! (and its page faults) per login, and a resident size that stays flat.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
    mpsc,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString, rand_core::OsRng},
};
use tokio::sync::oneshot;
use unicode_normalization::UnicodeNormalization;

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

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    queue: mpsc::SyncSender<Job>,
    /// Jobs skipped because their caller was gone (read by tests).
    abandoned: Arc<AtomicU64>,
    /// A hash of a random password: unknown accounts are verified against it so
    /// that they cost the same time as known ones.
    dummy_hash: String,
}

impl PasswordHasher {
    /// Starts `p.threads` hashing threads behind a queue of `p.queue_depth` jobs.
    pub fn new(p: &PasswordParams) -> Result<Self, AppError> {
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .map_err(|e| AppError::internal(format!("argon2 parameters: {e}")))?;
        let threads = p.threads.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(p.queue_depth.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    let mut memory = Vec::new();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            // Every hasher handle is gone: the pool ends.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| AppError::internal(format!("starting a hashing thread: {e}")))?;
        }
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
        let dummy_hash = hash_with(&params, &random, &mut Vec::new())?;
        Ok(Self { inner: Arc::new(Inner { params, queue: tx, abandoned: Arc::default(), dummy_hash }) })
    }

    /// How many queued jobs were dropped unhashed because their caller was gone.
    pub fn abandoned(&self) -> u64 {
        self.inner.abandoned.load(Ordering::Relaxed)
    }

    /// Hashes a new password, in its [`normalize`]d form.
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let params = self.inner.params.clone();
        self.run(move |memory| hash_with(&params, normalize(&password).as_bytes(), memory)).await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when the
    /// account does not exist (`stored` is `None`), which always answers `No`.
    ///
    /// The [`normalize`]d form is checked first. Hashes stored before passwords
    /// were normalised hold the bytes as typed: when the normalised form differs
    /// and fails, the typed bytes are checked too (for unknown accounts alike, so
    /// the time says nothing), and a match is answered `YesRehashed` with a hash
    /// of the normalised form, so the account moves over at its next login.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<Verified, AppError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.inner.dummy_hash.clone());
        let params = self.inner.params.clone();
        self.run(move |memory| {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Ok(Verified::No);
            };
            let normalized = normalize(&password);
            let as_normalized = matches_hash(&parsed, normalized.as_bytes(), memory);
            let as_typed =
                !as_normalized && normalized != password && matches_hash(&parsed, password.as_bytes(), memory);
            if !known || !(as_normalized || as_typed) {
                return Ok(Verified::No);
            }
            if as_typed || needs_rehash(&parsed, &params) {
                Ok(Verified::YesRehashed(hash_with(&params, normalized.as_bytes(), memory)?))
            } else {
                Ok(Verified::Yes)
            }
        })
        .await?
    }

    /// Runs `f` on a hashing thread with that thread's working memory.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let rx = self.submit(f)?;
        rx.await.map_err(|_| AppError::internal("password thread ended without an answer"))
    }

    /// Queues `f` without waiting for room. Errors: `RATE_LIMITED` (retry after
    /// 1 s) when the queue is full.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, AppError> {
        let (tx, rx) = oneshot::channel();
        let abandoned = self.inner.abandoned.clone();
        let queued_at = std::time::Instant::now();
        let job: Job = Box::new(move |memory| {
            crate::metrics::password_queue(false, Some(queued_at.elapsed()));
            if tx.is_closed() {
                // Nobody waits for this answer any more: do not spend a hash on it.
                abandoned.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let _ = tx.send(f(memory));
        });
        crate::metrics::password_queue(true, None);
        let sent = self.inner.queue.try_send(job);
        if sent.is_err() {
            crate::metrics::password_queue(false, None);
        }
        match sent {
            Ok(()) => Ok(rx),
            Err(mpsc::TrySendError::Full(_)) => {
                tracing::warn!("password hashing queue full; refusing a password check");
                Err(AppError::RateLimited { retry_after: 1 })
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(AppError::internal("password threads stopped")),
        }
    }
}

/// The form of a password that is hashed and verified: NFKC (UAX #15), so that
/// one passphrase typed on two keyboards (composed or decomposed accents,
/// full-width letters) is one password, as NIST SP 800-63B §5.1.1.2 recommends.
pub fn normalize(password: &str) -> String {
    password.nfkc().collect()
}

/// Makes sure `memory` holds the blocks `params` needs and returns them.
fn blocks<'a>(memory: &'a mut Vec<Block>, params: &Params) -> &'a mut [Block] {
    let n = params.block_count();
    if memory.len() < n {
        memory.resize(n, Block::default());
    }
    &mut memory[..n]
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) for `password`.
fn hash_with(params: &Params, password: &[u8], memory: &mut Vec<Block>) -> Result<String, AppError> {
    let err = |e: &dyn std::fmt::Display| AppError::internal(format!("argon2 hash: {e}"));
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| err(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt_bytes, &mut out, blocks(memory, params))
        .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| err(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| err(&e))?),
    };
    Ok(phc.to_string())
}

/// Recomputes a stored hash with its own algorithm and parameters and compares
/// the outputs in constant time.
fn matches_hash(parsed: &PasswordHash<'_>, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) =
        (Algorithm::try_from(parsed.algorithm), Params::try_from(parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let version = parsed.version.and_then(|v| Version::try_from(v).ok()).unwrap_or(Version::V0x13);
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt_bytes,
        &mut out,
        blocks(memory, &params),
    );
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

fn needs_rehash(parsed: &PasswordHash<'_>, current: &Params) -> bool {
    if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.version != Some(Version::V0x13 as u32) {
        return true;
    }
    match Params::try_from(parsed) {
        Ok(old) => {
            old.m_cost() < current.m_cost() || old.t_cost() < current.t_cost() || old.p_cost() < current.p_cost()
        }
        Err(_) => true,
    }
}

/// Lowers the calling thread's scheduling priority (on Linux,
/// `setpriority(PRIO_PROCESS, 0, …)` applies to the calling thread only).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; raising one's own
        // niceness needs no privilege. On failure the priority stays as it was.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

#[cfg(test)]
mod tests {
    use argon2::PasswordVerifier;

    use super::*;

    fn params(memory_kib: u32) -> PasswordParams {
        PasswordParams { memory_kib, iterations: 2, parallelism: 1, threads: 2, queue_depth: 32 }
    }

    /// Two threads held by gate jobs, then `n` jobs queued behind them.
    #[tokio::test]
    async fn a_full_queue_refuses_and_abandoned_jobs_are_not_hashed() {
        let h = PasswordHasher::new(&PasswordParams { queue_depth: 4, ..params(19 * 1024) }).unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let mut gates = Vec::new();
        for _ in 0..2 {
            let (gate, started_tx) = (gate.clone(), started_tx.clone());
            gates.push(
                h.submit(move |_| {
                    started_tx.send(()).unwrap();
                    let _ = gate.lock().unwrap().recv();
                })
                .unwrap(),
            );
        }
        started.recv().unwrap();
        started.recv().unwrap();
        // Both threads are busy: four jobs fit in the queue, the fifth is refused.
        let ran = Arc::new(AtomicU64::new(0));
        let mut queued = Vec::new();
        for _ in 0..4 {
            let ran = ran.clone();
            queued.push(h.submit(move |_| ran.fetch_add(1, Ordering::SeqCst)).unwrap());
        }
        assert!(matches!(h.submit(|_| ()), Err(AppError::RateLimited { retry_after: 1 })));
        // Three callers go away; only the one still waiting gets its job run.
        let kept = queued.pop().unwrap();
        drop(queued);
        release.send(()).unwrap();
        release.send(()).unwrap();
        for g in gates {
            g.await.unwrap();
        }
        kept.await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(h.abandoned(), 3);
        // And the queue has room again.
        assert_eq!(h.verify("x".into(), None).await.unwrap(), Verified::No);
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
                assert_eq!(stronger.verify("correct horse".into(), Some(new_hash)).await.unwrap(), Verified::Yes);
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hashes_are_standard_phc_strings_both_ways() {
        let h = PasswordHasher::new(&params(19 * 1024)).unwrap();
        // Ours verify with the reference implementation…
        let ours = h.hash("interop pass".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"interop pass", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"interop pasS", &parsed).is_err());
        // …and the reference implementation's verify with ours, argon2i included
        // (an old algorithm is accepted and upgraded).
        use argon2::PasswordHasher as _;
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(19 * 1024, 2, 1, None).unwrap())
            .hash_password(b"legacy pass", &salt)
            .unwrap()
            .to_string();
        assert!(matches!(
            h.verify("legacy pass".into(), Some(theirs.clone())).await.unwrap(),
            Verified::YesRehashed(_)
        ));
        assert_eq!(h.verify("legacy pasz".into(), Some(theirs)).await.unwrap(), Verified::No);
    }

    #[tokio::test]
    async fn passwords_are_normalised_and_raw_hashes_move_over() {
        let h = PasswordHasher::new(&params(19 * 1024)).unwrap();
        let composed = "Cr\u{e8}me br\u{fb}l\u{e9}e \u{e0} la fran\u{e7}aise";
        let decomposed: String = composed.nfd().collect();
        assert_ne!(composed, decomposed);
        let hash = h.hash(composed.into()).await.unwrap();
        assert_eq!(h.verify(decomposed.clone(), Some(hash.clone())).await.unwrap(), Verified::Yes);
        assert_eq!(h.verify(composed.into(), Some(hash)).await.unwrap(), Verified::Yes);
        // A hash of the typed (decomposed) bytes, as stored before normalisation.
        let mut memory = Vec::new();
        let raw = hash_with(&h.inner.params, decomposed.as_bytes(), &mut memory).unwrap();
        match h.verify(decomposed.clone(), Some(raw.clone())).await.unwrap() {
            Verified::YesRehashed(new_hash) => {
                assert_eq!(h.verify(composed.into(), Some(new_hash)).await.unwrap(), Verified::Yes);
            }
            other => panic!("expected a rehash of the normalised form, got {other:?}"),
        }
        assert_eq!(h.verify("Creme brulee a la francaise".into(), Some(raw)).await.unwrap(), Verified::No);
    }

    #[tokio::test]
    async fn garbage_hash_does_not_verify() {
        let h = PasswordHasher::new(&params(19 * 1024)).unwrap();
        assert_eq!(h.verify("x".into(), Some("not a hash".into())).await.unwrap(), Verified::No);
        assert_eq!(
            h.verify("x".into(), Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$AAAA".into())).await.unwrap(),
            Verified::No
        );
    }
}

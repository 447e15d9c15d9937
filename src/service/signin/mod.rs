//! Signing in and what a signed-in user sets up: registration and the
//! password (`accounts`), the authenticator app and recovery codes
//! (`authenticator`), the second step and its challenges (`second_factor`),
//! passkeys (`passkeys`) and signing in with them (`passkey_login`).

pub mod accounts;
pub mod authenticator;
pub mod passkey_login;
pub mod passkeys;
pub mod second_factor;

use crate::{
    error::{AppError, AppResult, Redacted},
    service::Issued,
};

/// What a first factor that held (a password today) leads to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// A session started: its tokens (boxed: the other answer is small).
    Issued(Box<Issued>),
    /// The account has a second factor: no session yet. `challenge` is
    /// exchanged by `verifySecondFactor` (with a TOTP or recovery code) or a
    /// passkey sign-in within `second_factor::CHALLENGE_TTL_SECS`.
    SecondFactorRequired { challenge: Redacted },
}

impl LoginOutcome {
    /// The session, or the refusal the API answers a second factor with:
    /// `SECOND_FACTOR_REQUIRED`, the challenge in `extensions.challenge`.
    pub fn into_issued(self) -> AppResult<Issued> {
        match self {
            LoginOutcome::Issued(issued) => Ok(*issued),
            LoginOutcome::SecondFactorRequired { challenge } => Err(AppError::SecondFactorRequired { challenge }),
        }
    }
}

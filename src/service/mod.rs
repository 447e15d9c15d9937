//! Business rules. Every function here takes the [`Services`] it needs and returns
//! `AppResult`; nothing here knows about HTTP or GraphQL, so the rules can be
//! tested on their own.

pub mod admin;
pub mod core;
pub mod delivery;
pub mod jobs;
pub mod recovery;
pub mod sessions;
pub mod signin;

#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use crate::auth::{
    password::PasswordHasher,
    rate_limit::RateLimits,
    secrets::OneTimeSecrets,
    tokens::{IssuedAccessToken, TokenKeys},
};
use crate::clock::Clock;
use crate::domain::{Account, SessionId};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

/// Rules of session lifetime.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub refresh_ttl: Duration,
    pub reuse_grace: Duration,
    pub idle_timeout: Option<Duration>,
}

/// What the business rules need: storage, keys and the live-session registry.
#[derive(Clone)]
pub struct Services {
    pub db: DatabaseConnection,
    pub hasher: PasswordHasher,
    pub tokens: TokenKeys,
    /// The stored key pairs of an ES256 or EdDSA install (`None` on HS256).
    pub signing: Option<Arc<self::core::signing_keys::SigningKeys>>,
    pub secrets: OneTimeSecrets,
    /// Read by every request; changed only through [`store`](self::core::store).
    pub registry: Arc<self::core::store::SessionRegistry>,
    pub limits: Arc<RateLimits>,
    pub api_key_usage: Arc<self::core::usage::UsageTracker>,
    /// Makes and sends mail (templates, SMTP or files); its outbox is in the database.
    pub mail: Arc<crate::mail::Mailer>,
    /// The security event log's refusal tally and retention.
    pub events: Arc<self::core::events::EventLog>,
    /// TOTP's sealer and issuer, the step-up age, the WebAuthn relying party.
    pub second_factor: Arc<self::core::factors::SecondFactors>,
    /// How often a watched session is looked at unprompted ([`self::core::watch::RECHECK`]
    /// on a server; tests shorten it).
    pub watch_recheck: Duration,
    pub policy: SessionPolicy,
    /// The time every rule and timestamp takes ([`Clock::system`] on a server).
    pub clock: Clock,
    /// Seams for tests; none on a server.
    pub hooks: Hooks,
}

impl Services {
    /// Whether several instances may serve this database (PostgreSQL): then
    /// session changes go through the change log and rate-limit budgets are
    /// counted in the database. A SQLite file has one serving instance.
    pub fn shared_database(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DbBackend::Postgres
    }
}

/// A pause a test can put between a commit and the in-memory update after it,
/// to widen the window in which a concurrent change may land.
pub type Pause = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Test seams (all empty on a server).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs after a session's start or refresh has committed, or a session
    /// was read from the database, before the registry learns of it.
    pub before_live: Option<Pause>,
}

/// Where a request came from, recorded on the sessions it starts.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Kept as an address, and written out only when a session records it.
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

/// The outcome of register, login and refresh: a live session and its tokens.
pub struct Issued {
    pub user: Account,
    pub session_id: SessionId,
    pub access: IssuedAccessToken,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
}

/// Shows who and which session, never the tokens.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("user_id", &self.user.id)
            .field("session_id", &self.session_id)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish_non_exhaustive()
    }
}

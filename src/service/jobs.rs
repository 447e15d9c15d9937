//! Every background job of a running server, started and stopped in one
//! place, and the one list of what is deleted after how long.
//!
//! The jobs: the purge ([`RETENTION`], every `CLEANUP_INTERVAL`), the mail
//! sender (`delivery`), the signing-key refresher (ES256 and EdDSA installs),
//! the change-feed follower (PostgreSQL), and once a minute the rate-limit
//! bookkeeping and API keys' last-use times. Each runs until [`Jobs::stop`];
//! a failure is logged and retried at its next turn, and no request waits
//! for one.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::{
    Services,
    admin::api_keys,
    core::{events, limits, one_time, outbox, signing_keys, store},
    delivery,
};
use crate::error::AppResult;

/// How long an ended outbox row (sent, failed, or not sent) is kept for an
/// operator to read, and a used or expired link token, before they are
/// deleted: 7 days.
pub const ENDED_MAIL_RETENTION_HOURS: i64 = 7 * 24;

/// One table's retention: its name, what is kept there and for how long (as
/// the README tells an operator), and the delete.
pub struct Retention {
    pub table: &'static str,
    pub rule: &'static str,
    delete: for<'a> fn(&'a Services, DateTime<Utc>) -> futures_util::future::BoxFuture<'a, AppResult<u64>>,
}

/// Every table whose rows end, with what the purge deletes from it.
pub const RETENTION: [Retention; 8] = [
    Retention {
        table: "sessions",
        rule: "ended (expired or revoked) more than a day ago; their refresh tokens go with them",
        delete: |svc, now| Box::pin(store::purge_ended_sessions(svc, now)),
    },
    Retention {
        table: "session_changes",
        rule: "PostgreSQL's change feed: rows older than an hour, never the newest (cached sessions past their end are forgotten too)",
        delete: |svc, now| Box::pin(store::prune(svc, now)),
    },
    Retention {
        table: "rate_limit_counters",
        rule: "shared budgets that are full again",
        delete: |svc, _| Box::pin(limits::purge(svc)),
    },
    Retention {
        table: "mail_outbox",
        rule: "mail that ended (sent, failed or not sent) more than 7 days ago",
        delete: |svc, now| Box::pin(outbox::purge_ended(svc, now - ChronoDuration::hours(ENDED_MAIL_RETENTION_HOURS))),
    },
    Retention {
        table: "mail_tokens",
        rule: "link tokens used or expired more than 7 days ago",
        delete: |svc, now| {
            Box::pin(one_time::purge_mail_tokens(svc, now - ChronoDuration::hours(ENDED_MAIL_RETENTION_HOURS)))
        },
    },
    Retention {
        table: "security_events",
        rule: "events older than SECURITY_EVENT_RETENTION",
        delete: |svc, now| Box::pin(events::purge(svc, now)),
    },
    Retention {
        table: "second_factor_challenges",
        rule: "challenges past their expiry",
        delete: |svc, now| Box::pin(one_time::purge_challenges(svc, now)),
    },
    Retention {
        table: "webauthn_ceremonies",
        rule: "passkey ceremonies past their expiry",
        delete: |svc, now| Box::pin(one_time::purge_ceremonies(svc, now)),
    },
];

/// Runs every entry of [`RETENTION`] once. Returns each table's count of rows
/// deleted, in the list's order. Errors: the database, at the first table
/// that fails.
pub async fn purge(svc: &Services) -> AppResult<Vec<(&'static str, u64)>> {
    let now = svc.clock.now();
    let mut deleted = Vec::with_capacity(RETENTION.len());
    for entry in &RETENTION {
        deleted.push((entry.table, (entry.delete)(svc, now).await?));
    }
    Ok(deleted)
}

/// The running jobs of one server.
pub struct Jobs {
    services: Services,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Jobs {
    /// Starts every job. `cleanup_every`: how often the purge runs;
    /// `feed`: the database URL and the change feed's position to follow
    /// from, on PostgreSQL; `key_refresh_every`: how often the signing keys
    /// are reloaded, when the install has key pairs.
    pub fn start(
        svc: &Services,
        cleanup_every: Duration,
        feed: Option<(&str, i64)>,
        key_refresh_every: Duration,
    ) -> Self {
        let mut handles = vec![spawn_purger(svc.clone(), cleanup_every), delivery::spawn_sender(svc.clone())];
        if let Some((database_url, from)) = feed {
            handles.push(store::follow(svc, database_url, from));
        }
        if let Some(keys) = svc.signing.clone() {
            handles.push(signing_keys::spawn_refresher(svc.clone(), Arc::clone(&keys), key_refresh_every));
        }
        handles.push(spawn_minutely(svc.clone()));
        Self { services: svc.clone(), handles }
    }

    /// Stops every job, then writes what only memory holds (API keys'
    /// last-use times gathered since the last minute).
    pub async fn stop(self) {
        for handle in &self.handles {
            handle.abort();
        }
        if let Err(e) = api_keys::flush_usage(&self.services).await {
            tracing::warn!(error = %e, "writing API key last-use times at shutdown failed");
        }
    }
}

/// Runs [`purge`] every `interval` until stopped.
fn spawn_purger(svc: Services, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match purge(&svc).await {
                Ok(deleted) => {
                    for (table, n) in deleted.into_iter().filter(|(_, n)| *n > 0) {
                        tracing::info!(table, rows = n, "purged");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "purge failed; will retry"),
            }
        }
    })
}

/// Once a minute: forgets idle rate-limit keys, writes the refusal tally and
/// API keys' last-use times.
fn spawn_minutely(svc: Services) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            svc.limits.forget_idle();
            if let Err(e) = events::flush_refusals(&svc).await {
                tracing::warn!(error = %e.detail(), "writing the rate-limit refusal tally failed; those counts are lost");
            }
            if let Err(e) = api_keys::flush_usage(&svc).await {
                tracing::warn!(error = %e, "writing API key last-use times failed; will retry");
            }
        }
    })
}

/// The README's retention table, one row per entry of [`RETENTION`].
pub fn retention_markdown_table() -> String {
    let mut table = String::from("| table | what the purge deletes |\n|---|---|\n");
    for entry in &RETENTION {
        table.push_str(&format!("| `{}` | {} |\n", entry.table, entry.rule));
    }
    table
}

#[cfg(test)]
mod tests {
    /// The README lists what the purge deletes as [`super::RETENTION`] says.
    #[test]
    fn retention_table_matches_the_readme() {
        crate::readme_sections::check("retention", &super::retention_markdown_table());
    }
}

//! The change feed that keeps every instance's registry in step on PostgreSQL.
//!
//! A [`super::Write`] that changes what registries hold appends one row to
//! `session_changes` in its own transaction (so the row exists exactly when the
//! change does) and sends `NOTIFY` (delivered at commit). Row ids follow commit
//! order: writers hold one transaction-scoped advisory lock from their insert
//! to their commit. Every instance follows the log: woken by the notification,
//! and once a second in any case, it reads the rows after the last one it
//! applied and applies them in order. A listener connection that drops is
//! reopened and the log read from where it stopped, so nothing is lost; an
//! instance that finds the rows it needs pruned clears its registry (it
//! refills from the database).
//!
//! Rows carry ids only: a `UserUpdated` drops the cached copy, and the next
//! request reads the current row. SQLite (one instance) writes no rows.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::registry::SessionEvent;
use crate::{
    domain::{SessionId, UserId},
    error::{AppError, AppResult},
    service::Services,
};

/// The `NOTIFY` channel.
const CHANNEL: &str = "authgraph_session_changes";
/// The key of the advisory lock that orders the log (any constant; "authgrph").
const ORDER_LOCK: i64 = 0x6175_7468_6772_7068;
/// How long rows are kept: far longer than any instance should take to read
/// them; one that has been away longer clears its registry.
pub(super) const RETENTION: chrono::Duration = chrono::Duration::hours(1);
/// The log is read this often even without a notification.
const POLL: Duration = Duration::from_secs(1);
/// Rows read at once.
const PAGE: i64 = 1000;

/// A change as the log holds it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Started { session: Uuid, user: Uuid, expires_at: i64 },
    Ended { session: Uuid, expires_at: i64 },
    UserUpdated { user: Uuid },
    UserDeleted { user: Uuid },
}

impl From<&SessionEvent> for Wire {
    fn from(event: &SessionEvent) -> Self {
        match event {
            SessionEvent::Started { session_id, user_id, expires_at, .. } => {
                Wire::Started { session: session_id.uuid(), user: user_id.uuid(), expires_at: *expires_at }
            }
            SessionEvent::Ended { session_id, expires_at } => {
                Wire::Ended { session: session_id.uuid(), expires_at: *expires_at }
            }
            SessionEvent::UserUpdated { user_id } => Wire::UserUpdated { user: user_id.uuid() },
            SessionEvent::UserDeleted { user_id } => Wire::UserDeleted { user: user_id.uuid() },
        }
    }
}

/// Appends `events` to the log inside `txn`, and asks for a notification at
/// commit. The advisory lock, held until the commit, puts ids in commit order.
pub(super) async fn publish(txn: &DatabaseTransaction, events: &[SessionEvent]) -> AppResult<()> {
    let wire: Vec<Wire> = events.iter().map(Wire::from).collect();
    let payload = serde_json::to_string(&wire).map_err(|e| AppError::internal(format!("change log: {e}")))?;
    let pg = DbBackend::Postgres;
    txn.execute_raw(Statement::from_sql_and_values(pg, "SELECT pg_advisory_xact_lock($1)", [ORDER_LOCK.into()]))
        .await?;
    txn.execute_raw(Statement::from_sql_and_values(
        pg,
        "INSERT INTO session_changes (created_at, payload) VALUES ($1, $2)",
        [Utc::now().into(), payload.into()],
    ))
    .await?;
    txn.execute_raw(Statement::from_string(pg, format!("NOTIFY {CHANNEL}"))).await?;
    Ok(())
}

/// The id of the last row of the log (0 when empty): where an instance that
/// loads its registry now starts following.
pub(super) async fn head(svc: &Services) -> AppResult<i64> {
    let row = svc
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT COALESCE(MAX(id), 0) AS id FROM session_changes",
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "id")).transpose()?.unwrap_or(0))
}

/// Deletes the rows up to the newest one older than [`RETENTION`], but never
/// the newest row of all: always a prefix of the ids, so the rows kept are
/// every row from the oldest kept on, and an instance can tell whether it
/// missed any ([`catch_up`]); and the log, once written, is never empty.
pub(super) async fn prune(svc: &Services) -> AppResult<u64> {
    let cutoff = svc.clock.now() - RETENTION;
    let res = svc
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM session_changes \
             WHERE id <= (SELECT MAX(id) FROM session_changes WHERE created_at < $1) \
             AND id < (SELECT MAX(id) FROM session_changes)",
            [cutoff.into()],
        ))
        .await?;
    Ok(res.rows_affected())
}

/// Applies the rows after `*last`, in order, and moves `*last` on. When the
/// rows right after `*last` are gone (pruned while this instance was away),
/// clears the registry instead.
pub(super) async fn catch_up(svc: &Services, last: &mut i64) -> AppResult<usize> {
    let pg = DbBackend::Postgres;
    let mut applied = 0;
    loop {
        let rows = svc
            .db
            .query_all_raw(Statement::from_sql_and_values(
                pg,
                "SELECT id, payload, created_at, (SELECT MIN(id) FROM session_changes) AS first \
                 FROM session_changes WHERE id > $1 ORDER BY id LIMIT $2",
                [(*last).into(), PAGE.into()],
            ))
            .await?;
        // Pruning deletes a prefix of the ids and keeps the newest row, so rows
        // after `last` are missing only when the oldest kept is beyond
        // `last + 1`. A gap a rolled-back insert left looks the same, and costs
        // a clearing that was not needed: never a row.
        let Some(first) = rows.first() else { return Ok(applied) };
        let oldest: i64 = first.try_get("", "first")?;
        if oldest > *last + 1 {
            tracing::warn!(
                last = *last,
                oldest,
                "change log pruned past this instance's position; clearing the session cache"
            );
            *last = super::clear_cached(svc).await?;
            continue;
        }
        let n = rows.len();
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let payload: String = row.try_get("", "payload")?;
            match serde_json::from_str::<Vec<Wire>>(&payload) {
                Ok(changes) => {
                    for change in changes {
                        apply(svc, change);
                    }
                    // Wall clocks of two instances: their skew is in it too.
                    if let Ok(at) = row.try_get::<chrono::DateTime<Utc>>("", "created_at") {
                        crate::metrics::feed_lag((Utc::now() - at).to_std().unwrap_or_default());
                    }
                }
                Err(e) => tracing::error!(id, error = %e, "unreadable row in the change log; skipped"),
            }
            *last = id;
            applied += 1;
        }
        if (n as i64) < PAGE {
            return Ok(applied);
        }
    }
}

/// Applies one change from the log. Nothing is read: a session started
/// elsewhere is cached without its user's profile, which is read on its first
/// use here like any other.
fn apply(svc: &Services, change: Wire) {
    let event = match change {
        Wire::Started { session, user, expires_at } => SessionEvent::Started {
            session_id: SessionId::from(session),
            user_id: UserId::from(user),
            expires_at,
            ticket: svc.registry.ticket(),
        },
        Wire::Ended { session, expires_at } => SessionEvent::Ended { session_id: SessionId::from(session), expires_at },
        Wire::UserUpdated { user } => SessionEvent::UserUpdated { user_id: UserId::from(user) },
        Wire::UserDeleted { user } => SessionEvent::UserDeleted { user_id: UserId::from(user) },
    };
    svc.registry.apply(event, svc.clock.unix());
}

/// Follows the log from `start` until the task is aborted: listens on the
/// channel (reconnecting after a second when the connection drops), and reads
/// the log on every notification and at least every [`POLL`].
pub(super) fn spawn_follower(svc: Services, database_url: String, start: i64) -> tokio::task::JoinHandle<()> {
    use sea_orm::sqlx::postgres::PgListener;
    tokio::spawn(async move {
        let mut last = start;
        let mut fresh = Freshness::new(&svc);
        loop {
            let listening = match PgListener::connect(&database_url).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed: LISTEN failed; reading the log each second meanwhile");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: cannot connect the listener; reading the log each second meanwhile");
                    None
                }
            };
            let Some(mut listener) = listening else {
                fresh.note(&svc, catch_up(&svc, &mut last).await);
                tokio::time::sleep(POLL).await;
                continue;
            };
            // Whatever happened while not listening is in the log.
            loop {
                fresh.note(&svc, catch_up(&svc, &mut last).await);
                tokio::select! {
                    received = listener.try_recv() => match received {
                        // One read covers every notification already here.
                        Ok(Some(_)) => while listener.next_buffered().is_some() {},
                        // The connection dropped: reconnect, then read what was missed.
                        Ok(None) | Err(_) => {
                            tracing::warn!("change feed: listener connection lost; reconnecting");
                            break;
                        }
                    },
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    })
}

/// How long the log may go unread before an instance stops answering from
/// its cache: past it, a revocation made on another instance may be missing
/// here, so every request asks the database (and is refused when the
/// database cannot answer) until the log is read again.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(5);

/// When the log was last read in full (by [`Clock::elapsed`](crate::clock::Clock::elapsed)).
pub(super) struct Freshness {
    last_read: Duration,
    stale: bool,
}

impl Freshness {
    pub(super) fn new(svc: &Services) -> Self {
        Self { last_read: svc.clock.elapsed(), stale: false }
    }

    /// Records a read of the log. After [`STALE_AFTER`] without one that
    /// succeeded, the registry is cleared (again at every failed read), so
    /// nothing is answered from what may be out of date.
    pub(super) fn note(&mut self, svc: &Services, read: AppResult<usize>) {
        match read {
            Ok(_) => {
                if self.stale {
                    tracing::info!("change feed: the log is read again; the session cache refills");
                }
                self.last_read = svc.clock.elapsed();
                self.stale = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "change feed: reading the log failed; will retry");
                if svc.clock.elapsed().saturating_sub(self.last_read) > STALE_AFTER {
                    if !self.stale {
                        tracing::error!(
                            "change feed: the log has not been read for {}s; sessions are checked against the database until it is",
                            STALE_AFTER.as_secs()
                        );
                    }
                    self.stale = true;
                    svc.registry.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{core::store::Lookup, sessions::live_access, testkit::TestKit};

    /// An instance that cannot read the log stops answering from its cache
    /// after STALE_AFTER: a revocation made elsewhere meanwhile would be
    /// missing from it. Reading the log again lets it fill once more.
    #[tokio::test]
    async fn an_instance_that_cannot_read_the_log_stops_trusting_its_cache() {
        let kit = TestKit::new().await;
        let alice = kit.register("alice@example.com").await;
        assert!(live_access(&kit.svc, &alice.access.token).await.is_ok());
        let cached = |kit: &TestKit| kit.svc.registry.lookup(alice.session_id, alice.user.id, kit.svc.clock.unix());
        assert_eq!(cached(&kit), Lookup::Live(alice.user.role));

        let mut fresh = Freshness::new(&kit.svc);
        let down = || Err(AppError::internal("the log cannot be read"));
        fresh.note(&kit.svc, down());
        assert_eq!(cached(&kit), Lookup::Live(alice.user.role), "cleared before the log was stale");
        kit.clock.advance(STALE_AFTER + Duration::from_secs(1));
        fresh.note(&kit.svc, down());
        assert_eq!(cached(&kit), Lookup::Unknown, "a stale cache still answered");
        // While stale, the cache is emptied again at every failed read.
        assert!(live_access(&kit.svc, &alice.access.token).await.is_ok());
        fresh.note(&kit.svc, down());
        assert_eq!(cached(&kit), Lookup::Unknown);

        fresh.note(&kit.svc, Ok(0));
        assert!(live_access(&kit.svc, &alice.access.token).await.is_ok());
        assert_eq!(cached(&kit), Lookup::Live(alice.user.role), "the cache did not refill once the log was read");
    }
}

//! The outbox's sender: every instance runs one, and together they send each
//! queued mail once in the normal case.
//!
//! A sender claims a due row with a single conditional update that moves the
//! row's `next_attempt_at` and `claimed_until` a [`LEASE`] ahead and counts
//! the attempt (on PostgreSQL the row is picked with `FOR UPDATE SKIP
//! LOCKED`, so instances never wait for, nor take, each other's rows), and
//! sends it in a task of its own, up to [`PARALLEL`] at once. The task
//! renews the lease every [`RENEW_EVERY`] while it works, makes the mail
//! (`mail::prepare`), sends it, and ends the row, fenced by the attempt it
//! counted, so a sender whose lease lapsed cannot overwrite a newer attempt.
//! A sender that dies mid-send stops renewing, and the row is claimed again
//! by a restarted instance or a peer within a lease: the mail may then go
//! twice (at-least-once), never zero times. A temporary failure (the server
//! unreachable, a 4xx answer, a time-out, a 5xx about the server rather than
//! the recipient) is retried with exponential backoff, for up to a day; a
//! refused recipient ends the row as failed. Once the mail server answers
//! again (a mail went, or a probe every [`PROBE_EVERY`] while mail waits out
//! a backoff), every row backing off is due at once: a queue built up during
//! an outage drains in seconds, not at each row's own backoff.

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ColumnTrait, DbBackend, EntityTrait, ExprTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    sea_query::{Expr, LockBehavior, LockType},
};

use entity::mail_outbox;

use super::{
    Services,
    mail::{Prepared, prepare},
};
use crate::{error::AppResult, mail::SendError};

/// How long a claim holds a row without being renewed: a dead sender's rows
/// are taken over this long after its last renewal.
const LEASE: Duration = Duration::from_secs(15);

/// How often a sender renews the claims it is working on.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// How often an idle sender tries the mail that has backed off longest (a
/// probe: if the server takes it, everything backing off follows at once).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How long a mail is retried before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How often an idle sender looks for mail queued by other instances, or due
/// again after a failure.
pub const POLL: Duration = Duration::from_secs(1);

/// The wait before attempt `attempts + 1`: 5 s, doubling, at most 10 min.
pub fn backoff(attempts: i32) -> Duration {
    let doublings = Ord::min(u32::try_from(attempts.saturating_sub(1)).unwrap_or(0), 16);
    Ord::min(Duration::from_secs(5).saturating_mul(1 << doublings), Duration::from_secs(600))
}

/// Claims the next due row, if any.
async fn claim(svc: &Services) -> AppResult<Option<mail_outbox::Model>> {
    let now = svc.clock.now();
    let lease = now + ChronoDuration::from_std(LEASE).unwrap_or_default();
    let mut due = mail_outbox::Entity::find()
        .select_only()
        .column(mail_outbox::Column::Id)
        .filter(mail_outbox::Column::NextAttemptAt.lte(now))
        .order_by_asc(mail_outbox::Column::NextAttemptAt)
        .limit(1);
    if svc.db.get_database_backend() == DbBackend::Postgres {
        due = due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    Ok(mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(lease))
        .col_expr(mail_outbox::Column::ClaimedUntil, Expr::value(lease))
        .col_expr(mail_outbox::Column::Attempts, Expr::col(mail_outbox::Column::Attempts).add(1))
        .filter(mail_outbox::Column::Id.in_subquery(due.into_query()))
        .filter(mail_outbox::Column::NextAttemptAt.lte(now))
        .exec_with_returning(&svc.db)
        .await?
        .pop())
}

/// How a claimed row ends.
enum End {
    Sent,
    Retry(String),
    Failed(String),
    /// Not to be sent, for this reason.
    Skipped(&'static str),
    /// Not yet: to be sent after this wait (a notice over its recipient's
    /// budget).
    Deferred(Duration),
}

/// `update` ending a row unsent: no next attempt, `failed_at` now, and why.
/// Every way a row ends without being sent writes these three columns.
pub(super) fn ended_unsent(
    update: sea_orm::UpdateMany<mail_outbox::Entity>,
    now: DateTime<Utc>,
    why: String,
) -> sea_orm::UpdateMany<mail_outbox::Entity> {
    update
        .col_expr(mail_outbox::Column::FailedAt, Expr::value(now))
        .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(mail_outbox::Column::LastError, Expr::value(why))
}

/// Writes how the claimed `row` ended, if the claim is still this sender's:
/// fenced by its attempt (a lapsed claim whose row was claimed again writes
/// nothing) and by the row being open (`next_attempt_at` set: a row that
/// something else ended meanwhile, such as a recovery voiding the account's
/// links while this send was in flight, never returns to the queue, whatever
/// the send's outcome). A reset asked for an address without an account (the
/// rows without a user) keeps no trace of the address once skipped. Returns
/// whether the end was written.
async fn finish(svc: &Services, row: &mail_outbox::Model, end: End) -> AppResult<bool> {
    let now = svc.clock.now();
    // A retry past the give-up time is a failure.
    let give_up = now - row.created_at > ChronoDuration::from_std(GIVE_UP_AFTER).unwrap_or_default();
    let end = match end {
        End::Retry(error) if give_up => End::Failed(error),
        other => other,
    };
    let fenced = mail_outbox::Entity::update_many()
        .filter(mail_outbox::Column::Id.eq(row.id))
        .filter(mail_outbox::Column::Attempts.eq(row.attempts))
        .filter(mail_outbox::Column::NextAttemptAt.is_not_null());
    // Every end but a deferral lets go of the claim.
    let released = |update: sea_orm::UpdateMany<mail_outbox::Entity>| {
        update.col_expr(mail_outbox::Column::ClaimedUntil, Expr::value(Option::<DateTime<Utc>>::None))
    };
    let (outcome, update) = match end {
        End::Deferred(wait) => {
            tracing::info!(
                mail_id = %row.id, kind = %row.kind, send_in_secs = wait.as_secs(),
                "notice deferred: over the recipient's notice budget"
            );
            // Held (`claimed_until`) until then: not a failure's backoff, so a
            // server that answers again does not bring it forward.
            let next = now + ChronoDuration::from_std(wait).unwrap_or_default();
            let update = fenced
                .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(next))
                .col_expr(mail_outbox::Column::ClaimedUntil, Expr::value(next))
                .col_expr(mail_outbox::Column::LastError, Expr::value("deferred: over the recipient's notice budget"));
            ("deferred", update)
        }
        End::Sent => {
            tracing::info!(mail_id = %row.id, kind = %row.kind, attempts = row.attempts, "mail sent");
            let update = released(fenced)
                .col_expr(mail_outbox::Column::SentAt, Expr::value(now))
                .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(Option::<DateTime<Utc>>::None))
                .col_expr(mail_outbox::Column::LastError, Expr::value(Option::<String>::None));
            ("sent", update)
        }
        End::Retry(error) => {
            let wait = backoff(row.attempts);
            tracing::warn!(
                mail_id = %row.id, kind = %row.kind, attempts = row.attempts, %error,
                retry_in_secs = wait.as_secs(), "mail not sent; will retry"
            );
            let next = now + ChronoDuration::from_std(wait).unwrap_or_default();
            let update = released(fenced)
                .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(next))
                .col_expr(mail_outbox::Column::LastError, Expr::value(clip(&error)));
            ("retried", update)
        }
        End::Failed(error) => {
            tracing::error!(mail_id = %row.id, kind = %row.kind, attempts = row.attempts, %error, "mail given up");
            ("failed", ended_unsent(released(fenced), now, clip(&error)))
        }
        End::Skipped(why) => {
            tracing::info!(mail_id = %row.id, kind = %row.kind, reason = why, "mail not sent");
            let mut update = ended_unsent(released(fenced), now, format!("not sent: {why}"));
            if row.user_id.is_none() {
                update = update
                    .col_expr(mail_outbox::Column::Recipient, Expr::value(""))
                    .col_expr(mail_outbox::Column::RecipientKey, Expr::value(""));
            }
            ("skipped", update)
        }
    };
    let written = update.exec(&svc.db).await?.rows_affected == 1;
    if !written {
        tracing::info!(
            mail_id = %row.id, kind = %row.kind, attempts = row.attempts, outcome,
            "the row was ended or claimed again while this attempt ran; its end is not written"
        );
    }
    // A mail that went counts as sent, whoever ended its row.
    crate::metrics::mail(&row.kind, if written || outcome == "sent" { outcome } else { "superseded" });
    Ok(written)
}

fn clip(s: &str) -> String {
    s.chars().take(500).collect()
}

/// Moves the claim on `row` a lease ahead, if it is still this attempt's,
/// still claimed (an end written a moment ago stays) and the row still open
/// (a voided row stays ended).
async fn renew(svc: &Services, row: &mail_outbox::Model) -> AppResult<()> {
    let lease = svc.clock.now() + ChronoDuration::from_std(LEASE).unwrap_or_default();
    mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(lease))
        .col_expr(mail_outbox::Column::ClaimedUntil, Expr::value(lease))
        .filter(mail_outbox::Column::Id.eq(row.id))
        .filter(mail_outbox::Column::Attempts.eq(row.attempts))
        .filter(mail_outbox::Column::NextAttemptAt.is_not_null())
        .filter(mail_outbox::Column::ClaimedUntil.is_not_null())
        .exec(&svc.db)
        .await?;
    Ok(())
}

/// Makes rows backing off after a failure due now (not the rows being
/// sent): every one, or with `oldest_only` the one due soonest (a probe: if
/// it goes, the rest follow). Returns how many.
async fn release_backlog(svc: &Services, oldest_only: bool) -> AppResult<u64> {
    let now = svc.clock.now();
    let mut backing_off = mail_outbox::Entity::find()
        .select_only()
        .column(mail_outbox::Column::Id)
        .filter(mail_outbox::Column::NextAttemptAt.gt(now))
        .filter(mail_outbox::Column::ClaimedUntil.is_null())
        .order_by_asc(mail_outbox::Column::NextAttemptAt);
    if oldest_only {
        backing_off = backing_off.limit(1);
    }
    // The conditions again on the row itself: on PostgreSQL a row the
    // subquery saw backing off may have been ended (voided) since, and only
    // the outer conditions are checked again on the row as it is now.
    Ok(mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(now))
        .filter(mail_outbox::Column::Id.in_subquery(backing_off.into_query()))
        .filter(mail_outbox::Column::NextAttemptAt.gt(now))
        .filter(mail_outbox::Column::ClaimedUntil.is_null())
        .exec(&svc.db)
        .await?
        .rows_affected)
}

/// Sends one claimed row, renewing its claim while it works.
async fn handle_renewing(svc: &Services, row: &mail_outbox::Model) -> AppResult<()> {
    let work = handle(svc, row);
    tokio::pin!(work);
    let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = renewals.tick() => {
                if let Err(e) = renew(svc, row).await {
                    tracing::warn!(mail_id = %row.id, error = %e.detail(), "mail outbox: a claim could not be renewed");
                }
            }
        }
    }
}

/// Sends one claimed row.
async fn handle(svc: &Services, row: &mail_outbox::Model) -> AppResult<()> {
    let end = match prepare(svc, row).await {
        Err(e) => End::Retry(e.detail()),
        Ok(Prepared::Skip(why)) => End::Skipped(why),
        Ok(Prepared::Defer(wait)) => End::Deferred(wait),
        Ok(Prepared::Send { to, to_key, mail }) => {
            match svc.mail.send(&row.id.simple().to_string(), &to, &to_key, mail).await {
                Ok(file) => {
                    if let Some(file) = file {
                        tracing::info!(file = %file.display(), "mail written as an .eml file (SMTP_URL is unset)");
                    }
                    // The server answers: what waits out a backoff goes now.
                    if release_backlog(svc, false).await.is_ok_and(|n| n > 0) {
                        svc.mail.queued.notify_one();
                    }
                    End::Sent
                }
                Err(SendError::Transient(e)) => End::Retry(e),
                Err(SendError::Permanent(e)) => End::Failed(e),
            }
        }
    };
    finish(svc, row, end).await.map(drop)
}

/// How many mails one instance sends at once. Each is sent by a task of its
/// own, so a slow answer to one mail (a reset for a registered address) does
/// not delay the next one (the requester's own mail to an unknown address's
/// neighbour): the time a mail takes to arrive tells nothing about another.
pub const PARALLEL: usize = 8;

/// Runs the sender until the process ends: claims due mail while fewer than
/// [`PARALLEL`] are in flight, each sent by a task of its own, then waits for
/// a mail queued here, one in flight to end, or [`POLL`]. Failures are
/// logged; the rows stay due.
pub fn spawn_sender(svc: Services) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        svc.mail.report().await;
        let mut in_flight = tokio::task::JoinSet::new();
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while in_flight.len() < PARALLEL {
                match claim(&svc).await {
                    Ok(Some(row)) => {
                        let svc = svc.clone();
                        in_flight.spawn(async move {
                            if let Err(e) = handle_renewing(&svc, &row).await {
                                tracing::warn!(mail_id = %row.id, error = %e.detail(), "mail outbox: the row stays due");
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e.detail(), "mail outbox: database unavailable; will retry");
                        break;
                    }
                }
            }
            tokio::select! {
                () = svc.mail.queued.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = probe.tick(), if in_flight.is_empty() => {
                    if let Err(e) = release_backlog(&svc, true).await {
                        tracing::warn!(error = %e.detail(), "mail outbox: database unavailable; will retry");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{mail::Kind, service::testkit::TestKit};

    /// A fresh database with one mail queued (a verification link: notices
    /// go to confirmed addresses only).
    async fn kit_with_one_mail() -> TestKit {
        let kit = TestKit::new().await;
        let a = kit.register("a@example.com").await;
        super::super::mail::enqueue(&kit.svc, &kit.svc.db, Kind::VerifyEmail, Some(a.user.id), &a.user.email, None)
            .await
            .unwrap();
        kit
    }

    async fn row(kit: &TestKit) -> mail_outbox::Model {
        mail_outbox::Entity::find().all(&kit.svc.db).await.unwrap().pop().unwrap()
    }

    /// A sender whose claim lapsed (it hung past the lease) cannot end the
    /// row another sender claimed since: ends are fenced by the attempt.
    #[tokio::test]
    async fn a_lapsed_claim_cannot_end_the_newer_one() {
        let kit = kit_with_one_mail().await;
        let first = claim(&kit.svc).await.unwrap().expect("due");
        assert_eq!(first.attempts, 1);
        assert!(claim(&kit.svc).await.unwrap().is_none(), "a claimed row is not due");
        kit.clock.advance(LEASE + Duration::from_secs(1));
        let second = claim(&kit.svc).await.unwrap().expect("due again once the lease lapsed");
        assert_eq!(second.attempts, 2);
        finish(&kit.svc, &first, End::Sent).await.unwrap();
        assert!(row(&kit).await.sent_at.is_none(), "the lapsed claim ended the row");
        finish(&kit.svc, &second, End::Sent).await.unwrap();
        let ended = row(&kit).await;
        assert!(ended.sent_at.is_some() && ended.next_attempt_at.is_none());
        kit.clock.advance(LEASE * 2);
        assert!(claim(&kit.svc).await.unwrap().is_none(), "a sent row is never due again");
    }

    /// A row ended while its send was in flight (a recovery voided the
    /// account's links) stays ended, whatever the send's outcome: a
    /// temporary failure does not put it back in the queue, where its retry
    /// would mint a fresh link.
    #[tokio::test]
    async fn a_row_ended_during_its_send_never_returns_to_the_queue() {
        for end in [End::Retry("451 try later".into()), End::Sent, End::Failed("550 no".into())] {
            let kit = TestKit::new().await;
            let a = kit.register("voided@example.com").await;
            let thief = super::super::core::validate::email("thief@evil.example").unwrap();
            let kind = Kind::ConfirmEmailChange;
            super::super::mail::enqueue(&kit.svc, &kit.svc.db, kind, Some(a.user.id), &thief, Some(&thief))
                .await
                .unwrap();
            let claimed = claim(&kit.svc).await.unwrap().expect("due");
            super::super::mail::void_pending_links(&kit.svc, &kit.svc.db, a.user.id).await.unwrap();
            assert!(!finish(&kit.svc, &claimed, end).await.unwrap(), "an end written over a voided row");
            let ended = row(&kit).await;
            assert!(ended.next_attempt_at.is_none() && ended.sent_at.is_none(), "{ended:?}");
            assert!(ended.last_error.as_deref().unwrap().contains("sessions were ended"), "{ended:?}");
            kit.clock.advance(LEASE + backoff(9));
            assert!(claim(&kit.svc).await.unwrap().is_none(), "the voided row is due again");
        }
    }

    /// A reset asked for by address (queued before the account is looked
    /// up) dies with the account's other links when its sessions are ended;
    /// another address's does not.
    #[tokio::test]
    async fn a_recovery_voids_a_reset_queued_by_address() {
        let kit = TestKit::new().await;
        let a = kit.register("owner@example.com").await;
        for address in ["Owner@Example.com", "other@example.com"] {
            let email = super::super::core::validate::email(address).unwrap();
            super::super::mail::enqueue(&kit.svc, &kit.svc.db, Kind::ResetPassword, None, &email, None).await.unwrap();
        }
        super::super::mail::void_pending_links(&kit.svc, &kit.svc.db, a.user.id).await.unwrap();
        let rows = mail_outbox::Entity::find().all(&kit.svc.db).await.unwrap();
        let open: Vec<_> = rows.iter().filter(|r| r.next_attempt_at.is_some()).map(|r| r.recipient.as_str()).collect();
        assert_eq!(open, ["other@example.com"], "{rows:?}");
    }

    /// A temporary failure is retried after the backoff; after a day of them
    /// the mail is given up.
    #[tokio::test]
    async fn failures_back_off_then_give_up() {
        let kit = kit_with_one_mail().await;
        let claimed = claim(&kit.svc).await.unwrap().unwrap();
        finish(&kit.svc, &claimed, End::Retry("451 try later".into())).await.unwrap();
        assert!(claim(&kit.svc).await.unwrap().is_none(), "retried before its backoff");
        kit.clock.advance(backoff(1) + Duration::from_secs(1));
        let again = claim(&kit.svc).await.unwrap().expect("due after the backoff");
        assert_eq!(row(&kit).await.last_error.as_deref(), Some("451 try later"));
        kit.clock.advance(GIVE_UP_AFTER);
        finish(&kit.svc, &again, End::Retry("451 still".into())).await.unwrap();
        let ended = row(&kit).await;
        assert!(ended.failed_at.is_some() && ended.next_attempt_at.is_none() && ended.sent_at.is_none());
    }

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(80));
        assert_eq!(backoff(9), Duration::from_secs(600));
        assert_eq!(backoff(1000), Duration::from_secs(600));
    }
}

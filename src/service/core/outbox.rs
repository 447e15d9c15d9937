//! The mail outbox as a queue of rows (`mail_outbox`): what a change queues
//! in its own transaction ([`enqueue`]), how a sender claims a due row under a
//! lease ([`claim`], [`renew`]) and ends it, fenced by the attempt it counted
//! ([`finish`]), how a recovery voids an account's queued links
//! ([`void_links`]), and how a backlog is made due at once
//! ([`release_backlog`]). The sender that sends them is `service::delivery`.
//!
//! A claim moves the row's `next_attempt_at` and `claimed_until` a [`LEASE`]
//! ahead and counts the attempt in one conditional update (on PostgreSQL the
//! row is picked with `FOR UPDATE SKIP LOCKED`, so instances never wait for,
//! nor take, each other's rows). An end is written only while the claim is
//! still the writer's, so a sender whose lease lapsed cannot overwrite a newer
//! attempt, and a row that something else ended never returns to the queue. A
//! temporary failure is retried with exponential backoff ([`backoff`]) for up
//! to a day; a refused recipient ends the row as failed.

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Set,
    sea_query::{Expr, LockBehavior, LockType},
};
use uuid::Uuid;

use entity::{mail_outbox, user};

use crate::{
    domain::{Email, UserId},
    error::AppResult,
    mail::Kind,
    service::Services,
};

/// How long a claim holds a row without being renewed: a dead sender's rows
/// are taken over this long after its last renewal.
const LEASE: Duration = Duration::from_secs(15);

/// How long a mail is retried before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The wait before attempt `attempts + 1`: 5 s, doubling, at most 10 min.
pub fn backoff(attempts: i32) -> Duration {
    let doublings = Ord::min(u32::try_from(attempts.saturating_sub(1)).unwrap_or(0), 16);
    Ord::min(Duration::from_secs(5).saturating_mul(1 << doublings), Duration::from_secs(600))
}

/// Queues a mail of `kind` to `recipient` on `conn` (the transaction of the
/// change that causes it; [`Write::enqueue_mail`] calls it and wakes the
/// sender once that commits).
///
/// [`Write::enqueue_mail`]: super::store::Write::enqueue_mail
///
/// A notice (a kind without a link) about an account goes only to a
/// confirmed address: an unconfirmed one may be a stranger's (someone
/// registered it, or mistyped it), who is sent its verification link, and a
/// reset link when one is asked for, and nothing else. Such a notice is not
/// queued; the sender checks again when it sends.
pub(in crate::service) async fn enqueue(
    svc: &Services,
    conn: &impl ConnectionTrait,
    kind: Kind,
    user_id: Option<UserId>,
    recipient: &Email,
    new_email: Option<&Email>,
) -> AppResult<()> {
    if is_account_notice(kind)
        && let Some(user_id) = user_id
    {
        let confirmed = user::Entity::find_by_id(user_id.uuid())
            .select_only()
            .column(user::Column::EmailVerifiedAt)
            .into_tuple::<Option<DateTime<Utc>>>()
            .one(conn)
            .await?
            .flatten()
            .is_some();
        if !confirmed {
            return Ok(());
        }
    }
    let now = svc.clock.now();
    mail_outbox::Entity::insert(mail_outbox::ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set(kind.as_str().to_owned()),
        user_id: Set(user_id.map(UserId::uuid)),
        recipient: Set(recipient.display().to_owned()),
        recipient_key: Set(recipient.key().to_owned()),
        new_email: Set(new_email.map(|e| e.display().to_owned())),
        created_at: Set(now),
        next_attempt_at: Set(Some(now)),
        attempts: Set(0),
        sent_at: Set(None),
        failed_at: Set(None),
        last_error: Set(None),
        claimed_until: Set(None),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// The key of a recipient's notice budget.
pub(in crate::service) fn notice_key(recipient_key: &str) -> String {
    format!("notice:{recipient_key}")
}

/// Whether `kind` is a notice to the account's own address (no link; the
/// address change's notice is judged where it is queued, against the
/// address it goes to).
pub(in crate::service) fn is_account_notice(kind: Kind) -> bool {
    !kind.has_link() && kind != Kind::EmailChangeNotice
}

/// Ends unsent every queued mail of `user_id` that carries a link, and a
/// reset queued by address before the account was looked up (no user id:
/// the account's own address names it). A sender that claimed such a row
/// already finds it ended before it makes a token ([`still_claimed`]).
pub(in crate::service) async fn void_links(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let links: Vec<&str> = Kind::ALL.into_iter().filter(|k| k.has_link()).map(Kind::as_str).collect();
    let address = sea_orm::sea_query::Query::select()
        .column(user::Column::EmailNormalized)
        .from(user::Entity)
        .and_where(Expr::col(user::Column::Id).eq(user_id.uuid()))
        .to_owned();
    let by_address = mail_outbox::Column::UserId
        .is_null()
        .and(mail_outbox::Column::Kind.eq(Kind::ResetPassword.as_str()))
        .and(mail_outbox::Column::RecipientKey.in_subquery(address));
    let pending = mail_outbox::Entity::update_many()
        .filter(mail_outbox::Column::UserId.eq(user_id).and(mail_outbox::Column::Kind.is_in(links)).or(by_address))
        .filter(mail_outbox::Column::NextAttemptAt.is_not_null());
    ended_unsent(pending, now, "not sent: the account's sessions were ended".to_owned()).exec(conn).await?;
    Ok(())
}

/// Whether the claimed `row` is still this claim's to send (the same
/// attempt, still open), checked on `conn` with a no-op update that also locks
/// the row on PostgreSQL until that transaction ends: a link's token is made
/// in it, so a recovery that voids the row waits, or finds the token.
pub(in crate::service) async fn still_claimed(
    conn: &impl ConnectionTrait,
    row: &mail_outbox::Model,
) -> AppResult<bool> {
    Ok(mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::Attempts, Expr::col(mail_outbox::Column::Attempts))
        .filter(mail_outbox::Column::Id.eq(row.id))
        .filter(mail_outbox::Column::Attempts.eq(row.attempts))
        .filter(mail_outbox::Column::NextAttemptAt.is_not_null())
        .exec(conn)
        .await?
        .rows_affected
        == 1)
}

/// Whether another row of `row`'s kind to its recipient is still on its way
/// (a notice over budget is then coalesced with it).
pub(in crate::service) async fn same_on_its_way(svc: &Services, row: &mail_outbox::Model) -> AppResult<bool> {
    Ok(mail_outbox::Entity::find()
        .filter(mail_outbox::Column::RecipientKey.eq(row.recipient_key.as_str()))
        .filter(mail_outbox::Column::Kind.eq(row.kind.as_str()))
        .filter(mail_outbox::Column::Id.ne(row.id))
        .filter(mail_outbox::Column::NextAttemptAt.is_not_null())
        .count(&svc.db)
        .await?
        > 0)
}

/// Deletes the rows that ended (sent, failed or not sent) before `cutoff`.
/// Returns how many.
pub async fn purge_ended(svc: &Services, cutoff: DateTime<Utc>) -> AppResult<u64> {
    Ok(mail_outbox::Entity::delete_many()
        .filter(mail_outbox::Column::NextAttemptAt.is_null())
        .filter(mail_outbox::Column::SentAt.lt(cutoff).or(mail_outbox::Column::FailedAt.lt(cutoff)))
        .exec(&svc.db)
        .await?
        .rows_affected)
}

/// Claims the next due row, if any.
pub(in crate::service) async fn claim(svc: &Services) -> AppResult<Option<mail_outbox::Model>> {
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
pub(in crate::service) enum End {
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
pub(in crate::service) async fn finish(svc: &Services, row: &mail_outbox::Model, end: End) -> AppResult<bool> {
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
pub(in crate::service) async fn renew(svc: &Services, row: &mail_outbox::Model) -> AppResult<()> {
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
pub(in crate::service) async fn release_backlog(svc: &Services, oldest_only: bool) -> AppResult<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{mail::Kind, service::testkit::TestKit};

    /// A fresh database with one mail queued (a verification link: notices
    /// go to confirmed addresses only).
    async fn kit_with_one_mail() -> TestKit {
        let kit = TestKit::new().await;
        let a = kit.register("a@example.com").await;
        enqueue(&kit.svc, &kit.svc.db, Kind::VerifyEmail, Some(a.user.id), &a.user.email, None).await.unwrap();
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
            let thief = super::super::validate::email("thief@evil.example").unwrap();
            let kind = Kind::ConfirmEmailChange;
            enqueue(&kit.svc, &kit.svc.db, kind, Some(a.user.id), &thief, Some(&thief)).await.unwrap();
            let claimed = claim(&kit.svc).await.unwrap().expect("due");
            void_links(&kit.svc.db, a.user.id, kit.svc.clock.now()).await.unwrap();
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
            let email = super::super::validate::email(address).unwrap();
            enqueue(&kit.svc, &kit.svc.db, Kind::ResetPassword, None, &email, None).await.unwrap();
        }
        void_links(&kit.svc.db, a.user.id, kit.svc.clock.now()).await.unwrap();
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

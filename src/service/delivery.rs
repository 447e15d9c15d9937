//! The outbox's sender: every instance runs one, and together they send each
//! queued mail once in the normal case.
//!
//! A sender claims due rows of the queue (`core::outbox`), each sent by a task
//! of its own, up to [`PARALLEL`] at once. The task renews the claim every
//! [`RENEW_EVERY`] while it works, makes the mail ([`prepare`]: a link's token
//! is made only now, so no usable token is ever stored), sends it, and ends the
//! row, fenced by the attempt it counted. A sender that dies mid-send stops
//! renewing, and the row is claimed again by a restarted instance or a peer
//! within a lease: the mail may then go twice (at-least-once), never zero
//! times. A temporary failure (the server unreachable, a 4xx answer, a
//! time-out, a 5xx about the server rather than the recipient) is retried with
//! backoff; a refused recipient ends the row as failed. Once the mail server
//! answers again (a mail went, or a probe every [`PROBE_EVERY`] while mail
//! waits out a backoff), every row backing off is due at once: a queue built
//! up during an outage drains in seconds, not at each row's own backoff.

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use entity::{mail_outbox, user};

use super::{
    Services,
    core::{
        limits, one_time,
        outbox::{self, End, claim, finish, release_backlog, renew},
        store,
    },
};
use crate::{
    db::UniqueRow,
    domain::UserId,
    error::{AppError, AppResult},
    mail::{Kind, MailContext, Rendered, SendError, in_words},
};

/// How often a sender renews the claims it is working on.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// How often an idle sender tries the mail that has backed off longest (a
/// probe: if the server takes it, everything backing off follows at once).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How often an idle sender looks for mail queued by other instances, or due
/// again after a failure.
pub const POLL: Duration = Duration::from_secs(1);

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

/// What the sender does with an outbox row.
enum Prepared {
    /// Send this to `to` (as typed; `to_key` is its key).
    Send { to: String, to_key: String, mail: Rendered },
    /// Send nothing, for this reason (kept on the row for an operator).
    Skip(&'static str),
    /// Send it after this wait (a notice over its recipient's budget).
    Defer(std::time::Duration),
}

/// Makes the mail of an outbox row, with a fresh token for the kinds that
/// have a link (voiding the account's older tokens of that purpose), or says
/// why nothing is to be sent: no account at a reset's address, an account
/// gone or moved to another address, an address confirmed already.
async fn prepare(svc: &Services, row: &mail_outbox::Model) -> AppResult<Prepared> {
    let Some(kind) = Kind::parse(&row.kind) else { return Ok(Prepared::Skip("unknown kind of mail")) };
    let user = match row.user_id {
        Some(id) => user::Entity::find_by_id(id).unique_row(&svc.db).await?,
        None => {
            user::Entity::find()
                .filter(user::Column::EmailNormalized.eq(row.recipient_key.as_str()))
                .unique_row(&svc.db)
                .await?
        }
    };
    let Some(user) = user else {
        return Ok(Prepared::Skip(if row.user_id.is_some() { "the account was deleted" } else { "no account" }));
    };
    // Every kind but an address change's two goes to the account's own address.
    let to_account = !matches!(kind, Kind::ConfirmEmailChange | Kind::EmailChangeNotice);
    if to_account && user.email_normalized != row.recipient_key {
        return Ok(Prepared::Skip("the account's address changed"));
    }
    if kind == Kind::VerifyEmail && user.email_verified_at.is_some() {
        return Ok(Prepared::Skip("the address is confirmed already"));
    }
    if outbox::is_account_notice(kind) && user.email_verified_at.is_none() {
        return Ok(Prepared::Skip("the address is not confirmed"));
    }
    // Notices spend a budget of the recipient's, with the quotas of
    // `RATE_LIMIT_MAIL_PER_RECIPIENT` but apart from the one links spend, so
    // that a flood of notices (a session toggling passkeys) neither reaches
    // the mailbox nor stops its owner's reset link. Spent once, at the first
    // attempt. Past it a notice is never lost: it is coalesced with a notice
    // of the same kind already on its way to the same address (which tells
    // the same news), or else deferred until the budget admits it.
    if !kind.has_link() && row.attempts == 1 {
        match limits::spend_recipient(svc, &outbox::notice_key(&row.recipient_key)).await {
            Err(AppError::RateLimited { retry_after }) => {
                return Ok(if outbox::same_on_its_way(svc, row).await? {
                    Prepared::Skip("coalesced with the same notice on its way")
                } else {
                    Prepared::Defer(std::time::Duration::from_secs(retry_after))
                });
            }
            other => other?,
        }
    }
    // The account's own spelling of its address, for the mail to it.
    let to = if to_account { user.email.clone() } else { row.recipient.clone() };
    let mut ctx = MailContext {
        name: user.name.clone(),
        recipient: to.clone(),
        new_email: row.new_email.clone(),
        link: None,
        expires_in: None,
        app_url: svc.mail.config.app_url.clone(),
    };
    if let Some(link) = kind.link() {
        let ttl = svc.mail.link_ttl(link);
        let Some(token) = mint(svc, row, kind, &user, ttl).await? else {
            return Ok(Prepared::Skip("the row was ended while it was being sent"));
        };
        ctx.link = Some(svc.mail.link(link, &token));
        ctx.expires_in = Some(in_words(ttl));
    }
    let mail = svc.mail.templates().render(kind, &ctx).map_err(AppError::internal)?;
    Ok(Prepared::Send { to, to_key: row.recipient_key.clone(), mail })
}

/// A new token of `purpose` for `user`, for the claimed outbox `row` (sent
/// to its recipient); the account's unused tokens of that purpose are voided
/// in the same transaction. Returns the token (its hash is all that is
/// stored), or `None`, making nothing, when the row is no longer this
/// claim's to send (a recovery ended it meanwhile: [`outbox::void_links`]).
async fn mint(
    svc: &Services,
    row: &mail_outbox::Model,
    purpose: Kind,
    user: &user::Model,
    ttl: std::time::Duration,
) -> AppResult<Option<String>> {
    let token = svc.secrets.generate()?;
    let now = svc.clock.now();
    let ttl = ChronoDuration::from_std(ttl).map_err(|e| AppError::internal(format!("link lifetime: {e}")))?;
    let tx = store::Write::begin(svc).await?;
    if !outbox::still_claimed(tx.conn(), row).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    one_time::store_mail_token(tx.conn(), row, purpose, UserId::from(user.id), &token, now, ttl).await?;
    tx.commit().await?;
    Ok(Some(token))
}

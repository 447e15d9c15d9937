//! Account recovery, address verification and address changes by mail.
//!
//! Every mail is a row of the outbox (`mail_outbox`), written in the
//! transaction of the change that causes it and sent by `outbox`. A link's
//! token is made when its mail is sent ([`prepare`]), so no usable token is
//! ever stored: `mail_tokens` holds its SHA-256, and a token is used by one
//! conditional update ([`consume`]), so two uses cannot both succeed. A newer
//! token of the same purpose for the same account voids the older ones. Links
//! point at the app (`APP_URL` + a path per purpose); only the mutations use a
//! token, so opening a link (a mail scanner does) never spends it.
//!
//! A reset asked for an address is one outbox row whatever the address
//! ([`request_password_reset`]): registered or not, the request does the same
//! work and gets the same answer, and whether anybody is sent anything is
//! decided by the sender, later, out of the requester's sight.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, QuerySelect,
    Set, SqlErr, sea_query::Expr,
};
use uuid::Uuid;

use entity::{mail_outbox, mail_token, user};

use super::{
    ClientInfo, Services,
    core::{
        events::{self, Actor, Event, EventKind},
        limits, store, users, validate,
    },
};
use crate::{
    auth::{
        rate_limit::{Action, IpKey},
        refresh::hash_token,
    },
    db::{self, UniqueRow},
    domain::{Email, UserId},
    error::{AppError, AppResult, Reason},
    mail::{Kind, MailContext, Rendered, in_words},
};

/// How long an ended outbox row (sent, failed, or not sent) is kept for an
/// operator to read, and a used or expired token before it is deleted.
const ENDED_RETENTION_HOURS: i64 = 7 * 24;

fn link_invalid() -> AppError {
    AppError::invalid_input(
        Reason::LinkInvalidOrExpired,
        "token",
        "This link is invalid or has expired; ask for a new one",
    )
}

/// Queues a mail of `kind` to `recipient` on `conn` (the transaction of the
/// change that causes it). Call [`queued`] once that commits.
///
/// A notice (a kind without a link) about an account goes only to a
/// confirmed address: an unconfirmed one may be a stranger's (someone
/// registered it, or mistyped it), who is sent its verification link, and a
/// reset link when one is asked for, and nothing else. Such a notice is not
/// queued; the sender checks again when it sends ([`prepare`]).
pub(super) async fn enqueue(
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
fn notice_key(recipient_key: &str) -> String {
    format!("notice:{recipient_key}")
}

/// Whether `kind` is a notice to the account's own address (no link; the
/// address change's notice is judged where it is queued, against the
/// address it goes to).
fn is_account_notice(kind: Kind) -> bool {
    !kind.has_link() && kind != Kind::EmailChangeNotice
}

/// Wakes this instance's sender after a queued mail committed (the others
/// find it within a second).
pub(super) fn queued(svc: &Services) {
    svc.mail.queued.notify_one();
}

/// Kills every link of `user_id` that is out or about to go out: unused
/// tokens are marked used, and queued link mail is ended unsent (a sender
/// that already claimed it finds it ended before it makes a token: see
/// [`mint`]). Called, in the same transaction, by every change that ends a
/// user's other sessions (a password reset or change, logout everywhere, an
/// admin's revocation): an attacker who held a session must not keep a
/// pending address change (or any other link) through the recovery. Open
/// second-factor challenges end too: one let out by a password that was just
/// changed must not finish a login.
pub(super) async fn void_pending_links(svc: &Services, conn: &impl ConnectionTrait, user_id: UserId) -> AppResult<()> {
    let now = svc.clock.now();
    let links = [Kind::VerifyEmail, Kind::ResetPassword, Kind::ConfirmEmailChange].map(Kind::as_str);
    // The outbox first, then the tokens: the order `mint` takes them in. A
    // reset asked for by address is queued before the account is looked up
    // (no user id): the account's own address names it.
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
    super::outbox::ended_unsent(pending, now, "not sent: the account's sessions were ended".to_owned())
        .exec(conn)
        .await?;
    mail_token::Entity::update_many()
        .col_expr(mail_token::Column::UsedAt, Expr::value(now))
        .filter(mail_token::Column::UserId.eq(user_id))
        .filter(mail_token::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    // And a login's second-factor challenges, which the password let out.
    super::second_factor::void_challenges(conn, user_id, now).await
}

/// Spends one mail of the client's budget and one of the recipient's
/// (`RATE_LIMIT_MAIL_PER_IP`, `RATE_LIMIT_MAIL_PER_RECIPIENT`).
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds).
async fn spend_mail_budget(svc: &Services, client: &ClientInfo, recipient_key: &str) -> AppResult<()> {
    limits::spend_ip(svc, Action::Mail, IpKey::from(client.ip)).await?;
    limits::spend_recipient(svc, recipient_key).await
}

/// `requestPasswordReset`: queues a reset for `email`, registered or not, with
/// the same work, answer and budgets either way (OWASP Forgot Password Cheat
/// Sheet: "return a consistent message for both existent and non-existent
/// accounts"). The sender sends the link only if the address has an account.
///
/// Errors: `INVALID_EMAIL` (field `email`), `RATE_LIMITED` with `retryAfter`.
#[tracing::instrument(skip_all)]
pub async fn request_password_reset(svc: &Services, client: &ClientInfo, email: &str) -> AppResult<()> {
    let email = validate::email(email)?;
    spend_mail_budget(svc, client, email.key()).await?;
    enqueue(svc, &svc.db, Kind::ResetPassword, None, &email, None).await?;
    queued(svc);
    Ok(())
}

/// `sendVerificationEmail`: queues a verification link to the caller's
/// address. Returns `false`, and sends nothing, when it is confirmed already.
///
/// Errors: `RATE_LIMITED` with `retryAfter`; `TOKEN_REVOKED` when the account
/// is gone.
#[tracing::instrument(skip_all)]
pub async fn send_verification(svc: &Services, user_id: UserId, client: &ClientInfo) -> AppResult<bool> {
    let user = users::row(svc, user_id).await?.ok_or(AppError::TokenRevoked)?;
    if user.email_verified_at.is_some() {
        return Ok(false);
    }
    spend_mail_budget(svc, client, &user.email_normalized).await?;
    let email = Email::from_parts(user.email, user.email_normalized);
    enqueue(svc, &svc.db, Kind::VerifyEmail, Some(user_id), &email, None).await?;
    queued(svc);
    Ok(true)
}

/// A login refused for an unconfirmed address (`REQUIRE_EMAIL_VERIFICATION`)
/// sends a fresh verification link, within the recipient's budget (a login
/// already spent the client's); past it, nothing is sent.
pub(super) async fn resend_verification_on_login(svc: &Services, user: &user::Model) -> AppResult<()> {
    if limits::spend_recipient(svc, &user.email_normalized).await.is_err() {
        return Ok(());
    }
    let email = Email::from_parts(user.email.clone(), user.email_normalized.clone());
    enqueue(svc, &svc.db, Kind::VerifyEmail, Some(UserId::from(user.id)), &email, None).await?;
    queued(svc);
    Ok(())
}

/// The start of an address change (`updateProfile(email:)` with another
/// mailbox): in `conn`, queues the confirmation link to `new` and, when the
/// current address is confirmed, a notice to it. The address changes only when the link is used
/// ([`confirm_email_change`]).
///
/// The budgets are spent before the address is looked up, so that asking
/// whether addresses are taken costs as much as asking for mail.
///
/// Errors: `RATE_LIMITED`, `EMAIL_TAKEN` when `new` has an account.
pub(super) async fn request_email_change(
    svc: &Services,
    conn: &impl ConnectionTrait,
    client: &ClientInfo,
    user: &user::Model,
    new: &Email,
) -> AppResult<()> {
    spend_mail_budget(svc, client, new.key()).await?;
    let taken = user::Entity::find()
        .filter(user::Column::EmailNormalized.eq(new.key()))
        .filter(user::Column::Id.ne(user.id))
        .unique_row(conn)
        .await?;
    if taken.is_some() {
        return Err(AppError::EmailTaken);
    }
    let user_id = UserId::from(user.id);
    let current = Email::from_parts(user.email.clone(), user.email_normalized.clone());
    enqueue(svc, conn, Kind::ConfirmEmailChange, Some(user_id), new, Some(new)).await?;
    // The notice goes only to an address known to be the account's: an
    // unconfirmed one may be a stranger's (a typo), who would learn the new one.
    if user.email_verified_at.is_some() {
        enqueue(svc, conn, Kind::EmailChangeNotice, Some(user_id), &current, Some(new)).await?;
    }
    Ok(())
}

/// A token as the mutations take it: what [`RefreshKeys::generate`] makes
/// (43 characters of base64url). Anything else is refused before any lookup.
///
/// [`RefreshKeys::generate`]: crate::auth::refresh::RefreshKeys::generate
fn well_formed(token: &str) -> AppResult<()> {
    let ok = token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(link_invalid()) }
}

/// Uses the token of `purpose`: one conditional update, so of two concurrent
/// uses only one finds it unused. Errors: `LINK_INVALID_OR_EXPIRED` for a token
/// that is unknown, used, voided by a newer one, expired, or of another purpose.
async fn consume(
    svc: &Services,
    conn: &impl ConnectionTrait,
    purpose: Kind,
    token: &str,
) -> AppResult<mail_token::Model> {
    well_formed(token)?;
    let now = svc.clock.now();
    mail_token::Entity::update_many()
        .col_expr(mail_token::Column::UsedAt, Expr::value(now))
        .filter(mail_token::Column::TokenHash.eq(hash_token(token)))
        .filter(mail_token::Column::Purpose.eq(purpose.as_str()))
        .filter(mail_token::Column::UsedAt.is_null())
        .filter(mail_token::Column::ExpiresAt.gt(now))
        .exec_with_returning(conn)
        .await?
        .pop()
        .ok_or_else(link_invalid)
}

/// The account a used token of a reset or a verification belongs to, locked
/// for the transaction, if the token went to the account's current address
/// (a link mailed to an address the account has since left proves nothing).
async fn holder(conn: &impl ConnectionTrait, token: &mail_token::Model) -> AppResult<user::Model> {
    db::for_update(user::Entity::find_by_id(token.user_id), conn)
        .unique_row(conn)
        .await?
        .filter(|u| u.email_normalized == token.email_key)
        .ok_or_else(link_invalid)
}

/// `verifyEmail`: confirms the address the token was sent to.
///
/// Errors: `LINK_INVALID_OR_EXPIRED` (field `token`), also when the account's
/// address has changed since.
#[tracing::instrument(skip_all)]
pub async fn verify_email(svc: &Services, token: &str, client: &ClientInfo) -> AppResult<()> {
    well_formed(token)?;
    let mut tx = store::Write::begin(svc).await?;
    let used = consume(svc, tx.conn(), Kind::VerifyEmail, token).await?;
    let user = holder(tx.conn(), &used).await?;
    if user.email_verified_at.is_none() {
        let now = svc.clock.now();
        let proven = user.address_proven_at.unwrap_or(now);
        let mut active: user::ActiveModel = user.into();
        active.email_verified_at = Set(Some(now));
        active.address_proven_at = Set(Some(proven));
        active.updated_at = Set(now);
        active.update(tx.conn()).await?;
        let user_id = UserId::from(used.user_id);
        events::record(
            svc,
            tx.conn(),
            Event::new(EventKind::EmailVerified, Some(user_id), Actor::User(user_id), client),
        )
        .await?;
        tx.user_changed(user_id);
    }
    tx.commit().await?;
    tracing::info!(user_id = %used.user_id, "email address verified");
    Ok(())
}

/// `resetPassword`: sets a new password with a reset token, ends every
/// session of the account (OWASP: invalidate sessions after a reset) and logs
/// nobody in. The link also proves the address, which becomes confirmed, and
/// whoever proves the mailbox gets a clean account: second factors added
/// before a mailbox of the account was first proven (`address_proven_at`,
/// or all of them if none ever was) are removed, since a stranger who
/// registered the address may have added them. Factors added after stay,
/// whatever address changes came since. A notice goes to the address.
///
/// Errors: `WEAK_PASSWORD` (field `newPassword`), `LINK_INVALID_OR_EXPIRED`
/// (field `token`), `RATE_LIMITED` when the hashing queue is full.
#[tracing::instrument(skip_all)]
pub async fn reset_password(svc: &Services, token: &str, new_password: String, client: &ClientInfo) -> AppResult<()> {
    validate::new_password(&new_password, "newPassword")?;
    well_formed(token)?;
    // A look first, so that a wrong token costs no hash.
    let now = svc.clock.now();
    let live = mail_token::Entity::find()
        .filter(mail_token::Column::TokenHash.eq(hash_token(token)))
        .filter(mail_token::Column::Purpose.eq(Kind::ResetPassword.as_str()))
        .filter(mail_token::Column::UsedAt.is_null())
        .filter(mail_token::Column::ExpiresAt.gt(now))
        .unique_row(&svc.db)
        .await?;
    if live.is_none() {
        return Err(link_invalid());
    }
    let hash = svc.hasher.hash(new_password).await?;
    let mut tx = store::Write::begin(svc).await?;
    let used = consume(svc, tx.conn(), Kind::ResetPassword, token).await?;
    let user_id = UserId::from(used.user_id);
    // Rows are taken in the order a second-factor or passkey login takes
    // them (its factor, its challenge, then the user's row), so the two
    // wait for each other and never deadlock: the factors added before the
    // address was first proven go first, then the links and challenges, and
    // the user's row last.
    let proven_at = user::Entity::find_by_id(used.user_id)
        .select_only()
        .column(user::Column::AddressProvenAt)
        .into_tuple::<Option<DateTime<Utc>>>()
        .one(tx.conn())
        .await?
        .flatten();
    let (totp, passkeys) = super::second_factor::remove_factors_added_before(tx.conn(), user_id, proven_at).await?;
    void_pending_links(svc, tx.conn(), user_id).await?;
    let user = holder(tx.conn(), &used).await?;
    let now = svc.clock.now();
    let email = Email::from_parts(user.email.clone(), user.email_normalized.clone());
    let verified = user.email_verified_at.unwrap_or(now);
    let proven = user.address_proven_at.unwrap_or(now);
    let mut active: user::ActiveModel = user.into();
    active.password_hash = Set(hash);
    active.email_verified_at = Set(Some(verified));
    active.address_proven_at = Set(Some(proven));
    active.updated_at = Set(now);
    active.update(tx.conn()).await?;
    let ended = tx.end_user_sessions(user_id, None).await?;
    if totp || passkeys > 0 {
        let detail = format!(
            "added before the address was confirmed; authenticator: {}, passkeys: {passkeys}",
            if totp { "removed" } else { "none" }
        );
        let event =
            Event::new(EventKind::SecondFactorReset, Some(user_id), Actor::User(user_id), client).detail(detail);
        events::record(svc, tx.conn(), event).await?;
    }
    enqueue(svc, tx.conn(), Kind::PasswordChanged, Some(user_id), &email, None).await?;
    let event = Event::new(EventKind::PasswordReset, Some(user_id), Actor::User(user_id), client)
        .detail(format!("{ended} sessions ended"));
    events::record(svc, tx.conn(), event).await?;
    tx.user_changed(user_id);
    tx.commit().await?;
    queued(svc);
    tracing::info!(%user_id, sessions_ended = ended, "password reset by mail");
    Ok(())
}

/// `confirmEmailChange`: moves the account to the address the token was sent
/// to, which is thereby confirmed. Tokens sent to the old address stop
/// working (they name it).
///
/// Errors: `LINK_INVALID_OR_EXPIRED` (field `token`); `EMAIL_TAKEN` when the
/// address got an account meanwhile (the token then stays unused).
#[tracing::instrument(skip_all)]
pub async fn confirm_email_change(svc: &Services, token: &str, client: &ClientInfo) -> AppResult<()> {
    well_formed(token)?;
    let mut tx = store::Write::begin(svc).await?;
    let used = consume(svc, tx.conn(), Kind::ConfirmEmailChange, token).await?;
    let Some(display) = used.new_email.clone() else { return Err(link_invalid()) };
    let Some(user) = db::for_update(user::Entity::find_by_id(used.user_id), tx.conn()).unique_row(tx.conn()).await?
    else {
        return Err(link_invalid());
    };
    let now = svc.clock.now();
    let search_key = entity::keys::search_key(&user.name, &display);
    let proven = user.address_proven_at.unwrap_or(now);
    let mut active: user::ActiveModel = user.into();
    active.email = Set(display);
    active.email_normalized = Set(used.email_key.clone());
    active.search_key = Set(search_key);
    active.email_verified_at = Set(Some(now));
    active.address_proven_at = Set(Some(proven));
    active.updated_at = Set(now);
    active.update(tx.conn()).await.map_err(|e| match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => AppError::EmailTaken,
        _ => e.into(),
    })?;
    let user_id = UserId::from(used.user_id);
    events::record(svc, tx.conn(), Event::new(EventKind::EmailChanged, Some(user_id), Actor::User(user_id), client))
        .await?;
    tx.user_changed(user_id);
    tx.commit().await?;
    tracing::info!(user_id = %used.user_id, "email address changed");
    Ok(())
}

/// What the sender does with an outbox row.
pub(super) enum Prepared {
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
pub(super) async fn prepare(svc: &Services, row: &mail_outbox::Model) -> AppResult<Prepared> {
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
    if is_account_notice(kind) && user.email_verified_at.is_none() {
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
        match limits::spend_recipient(svc, &notice_key(&row.recipient_key)).await {
            Err(AppError::RateLimited { retry_after }) => {
                let same_on_its_way = mail_outbox::Entity::find()
                    .filter(mail_outbox::Column::RecipientKey.eq(row.recipient_key.as_str()))
                    .filter(mail_outbox::Column::Kind.eq(row.kind.as_str()))
                    .filter(mail_outbox::Column::Id.ne(row.id))
                    .filter(mail_outbox::Column::NextAttemptAt.is_not_null())
                    .count(&svc.db)
                    .await?
                    > 0;
                return Ok(if same_on_its_way {
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
    if kind.has_link() {
        let ttl = svc.mail.link_ttl(kind);
        let Some(token) = mint(svc, row, kind, &user, ttl).await? else {
            return Ok(Prepared::Skip("the row was ended while it was being sent"));
        };
        ctx.link = Some(svc.mail.link(kind, &token));
        ctx.expires_in = Some(in_words(ttl));
    }
    let mail = svc.mail.templates().render(kind, &ctx).map_err(AppError::internal)?;
    Ok(Prepared::Send { to, to_key: row.recipient_key.clone(), mail })
}

/// A new token of `purpose` for `user`, for the claimed outbox `row` (sent
/// to its recipient); the account's unused tokens of that purpose are voided
/// in the same transaction. Returns the token (its hash is all that is
/// stored), or `None`, making nothing, when the row is no longer this
/// claim's to send (it was ended meanwhile: [`void_pending_links`]).
async fn mint(
    svc: &Services,
    row: &mail_outbox::Model,
    purpose: Kind,
    user: &user::Model,
    ttl: std::time::Duration,
) -> AppResult<Option<String>> {
    let token = svc.refresh.generate()?;
    let now = svc.clock.now();
    let ttl = ChronoDuration::from_std(ttl).map_err(|e| AppError::internal(format!("link lifetime: {e}")))?;
    let tx = db::begin_write(&svc.db).await?;
    // Locks the row (PostgreSQL) and checks it is still this claim's.
    let still_ours = mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::Attempts, Expr::col(mail_outbox::Column::Attempts))
        .filter(mail_outbox::Column::Id.eq(row.id))
        .filter(mail_outbox::Column::Attempts.eq(row.attempts))
        .filter(mail_outbox::Column::NextAttemptAt.is_not_null())
        .exec(&tx)
        .await?
        .rows_affected
        == 1;
    if !still_ours {
        tx.rollback().await?;
        return Ok(None);
    }
    mail_token::Entity::update_many()
        .col_expr(mail_token::Column::UsedAt, Expr::value(now))
        .filter(mail_token::Column::UserId.eq(user.id))
        .filter(mail_token::Column::Purpose.eq(purpose.as_str()))
        .filter(mail_token::Column::UsedAt.is_null())
        .exec(&tx)
        .await?;
    mail_token::Entity::insert(mail_token::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user.id),
        purpose: Set(purpose.as_str().to_owned()),
        token_hash: Set(hash_token(&token)),
        email_key: Set(row.recipient_key.clone()),
        new_email: Set(row.new_email.clone()),
        created_at: Set(now),
        expires_at: Set(now + ttl),
        used_at: Set(None),
    })
    .exec_without_returning(&tx)
    .await?;
    tx.commit().await?;
    Ok(Some(token))
}

/// Deletes outbox rows that ended, and tokens that were used or expired, more
/// than a week before `now`. Returns how many rows went.
pub async fn purge(svc: &Services, now: DateTime<Utc>) -> AppResult<u64> {
    let cutoff = now - ChronoDuration::hours(ENDED_RETENTION_HOURS);
    let outbox = mail_outbox::Entity::delete_many()
        .filter(mail_outbox::Column::NextAttemptAt.is_null())
        .filter(mail_outbox::Column::SentAt.lt(cutoff).or(mail_outbox::Column::FailedAt.lt(cutoff)))
        .exec(&svc.db)
        .await?;
    let tokens = mail_token::Entity::delete_many()
        .filter(mail_token::Column::ExpiresAt.lt(cutoff).or(mail_token::Column::UsedAt.lt(cutoff)))
        .exec(&svc.db)
        .await?;
    Ok(outbox.rows_affected + tokens.rows_affected)
}

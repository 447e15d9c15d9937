//! Account recovery, address verification and address changes by mail.
//!
//! Every mail is a row of the outbox (`mail_outbox`), written in the
//! transaction of the change that causes it and sent by `delivery`. A link's
//! token is made when its mail is sent (`delivery::prepare`), so no usable token is
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

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set, SqlErr, sea_query::Expr,
};

use entity::{mail_token, user};

use super::{
    ClientInfo, Services,
    core::{
        events::{Actor, Event, EventKind},
        factors, limits, store, users, validate,
    },
};
use crate::{
    auth::secrets::hash_token,
    db::{self, UniqueRow},
    domain::{Email, UserId},
    error::{AppError, AppResult, Reason},
    mail::Kind,
};

fn link_invalid() -> AppError {
    AppError::invalid_input(
        Reason::LinkInvalidOrExpired,
        "token",
        "This link is invalid or has expired; ask for a new one",
    )
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
    limits::spend_mail(svc, client, email.key()).await?;
    store::queue_mail(svc, Kind::ResetPassword, None, &email).await
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
    limits::spend_mail(svc, client, &user.email_normalized).await?;
    let email = Email::from_parts(user.email, user.email_normalized);
    store::queue_mail(svc, Kind::VerifyEmail, Some(user_id), &email).await?;
    Ok(true)
}

/// A token as the mutations take it: what [`OneTimeSecrets::generate`] makes
/// (43 characters of base64url). Anything else is refused before any lookup.
///
/// [`OneTimeSecrets::generate`]: crate::auth::secrets::OneTimeSecrets::generate
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
        tx.record(Event::new(EventKind::EmailVerified, Some(user_id), Actor::User(user_id), client)).await?;
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
    let (totp, passkeys) = factors::remove_factors_added_before(tx.conn(), user_id, proven_at).await?;
    let ended = tx.revoke_user(user_id, None).await?;
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
    if totp || passkeys > 0 {
        let detail = format!(
            "added before the address was confirmed; authenticator: {}, passkeys: {passkeys}",
            if totp { "removed" } else { "none" }
        );
        let event =
            Event::new(EventKind::SecondFactorReset, Some(user_id), Actor::User(user_id), client).detail(detail);
        tx.record(event).await?;
    }
    tx.enqueue_mail(Kind::PasswordChanged, Some(user_id), &email, None).await?;
    let event = Event::new(EventKind::PasswordReset, Some(user_id), Actor::User(user_id), client)
        .detail(format!("{ended} sessions ended"));
    tx.record(event).await?;
    tx.user_changed(user_id);
    tx.commit().await?;
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
    tx.record(Event::new(EventKind::EmailChanged, Some(user_id), Actor::User(user_id), client)).await?;
    tx.user_changed(user_id);
    tx.commit().await?;
    tracing::info!(user_id = %used.user_id, "email address changed");
    Ok(())
}

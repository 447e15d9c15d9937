//! The second step of a sign-in: the challenge a login hands out while the
//! second factor is missing, answering it (a TOTP or recovery code here; a
//! passkey in [`super::passkeys`]), re-authentication, the factors' status
//! and an admin's reset. The authenticator app and recovery codes themselves
//! are in [`super::authenticator`].
//!
//! Every code is used at most once, by one conditional update: a TOTP code's
//! time step must be later than the last accepted one (`last_used_step`), a
//! recovery code must be unused, a challenge must be unspent. Of two requests
//! with the same code, one wins.

use std::collections::HashMap;

use chrono::Duration as ChronoDuration;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter, QuerySelect, Set, sea_query::Expr};
use uuid::Uuid;

use entity::{passkey, recovery_code, second_factor_challenge, totp_factor, user};

use super::authenticator::{Used, invalid, recovery_code_used, spend_code};
use crate::service::{
    ClientInfo, Issued, Services,
    core::{
        events::{self, Actor, Event, EventKind},
        factors, limits, store, users,
    },
};
use crate::{
    auth::{password::Verified, principal::UserPrincipal, secrets::hash_token},
    db::UniqueRow,
    domain::{Account, Email, SessionId, UserId},
    error::{AppError, AppResult, Redacted},
    mail::Kind,
};

/// How long a login's challenge can be exchanged, in seconds.
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// Wrong codes a challenge survives; the next one ends it.
pub const CHALLENGE_MAX_FAILURES: i32 = 5;

/// What the account has, for its owner and admins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FactorStatus {
    pub totp: bool,
    pub recovery_codes_left: u64,
    pub passkeys: u64,
}

impl FactorStatus {
    /// Whether a login needs a second factor.
    pub fn any(self) -> bool {
        self.totp || self.passkeys > 0
    }
}

/// What factors each of `users` has, in three queries whatever their number
/// (an admin's listing page); a user without any is missing from the map.
pub async fn status_for_users(svc: &Services, users: &[UserId]) -> AppResult<HashMap<UserId, FactorStatus>> {
    status_for_users_in(&svc.db, users).await
}

/// [`status_for_users`], read through `conn` (inside a transaction).
async fn status_for_users_in(
    conn: &impl ConnectionTrait,
    users: &[UserId],
) -> AppResult<HashMap<UserId, FactorStatus>> {
    let ids: Vec<Uuid> = users.iter().map(|u| u.uuid()).collect();
    let mut out: HashMap<UserId, FactorStatus> = HashMap::new();
    let totp: Vec<Uuid> = totp_factor::Entity::find()
        .select_only()
        .column(totp_factor::Column::UserId)
        .filter(totp_factor::Column::UserId.is_in(ids.clone()))
        .filter(totp_factor::Column::ConfirmedAt.is_not_null())
        .into_tuple()
        .all(conn)
        .await?;
    for user in totp {
        out.entry(UserId::from(user)).or_default().totp = true;
    }
    let codes: Vec<Uuid> = recovery_code::Entity::find()
        .select_only()
        .column(recovery_code::Column::UserId)
        .filter(recovery_code::Column::UserId.is_in(ids.clone()))
        .filter(recovery_code::Column::UsedAt.is_null())
        .into_tuple()
        .all(conn)
        .await?;
    for user in codes {
        out.entry(UserId::from(user)).or_default().recovery_codes_left += 1;
    }
    let keys: Vec<Uuid> = passkey::Entity::find()
        .select_only()
        .column(passkey::Column::UserId)
        .filter(passkey::Column::UserId.is_in(ids))
        .into_tuple()
        .all(conn)
        .await?;
    for user in keys {
        out.entry(UserId::from(user)).or_default().passkeys += 1;
    }
    Ok(out)
}

/// A new challenge for `user`, whose password `client` just proved, with
/// `SECOND_FACTOR_REQUIRED` recorded; `None`, and nothing written, when the
/// password changed since `user` was read.
///
/// It is written only while the stored hash is still the one the login
/// verified (a compare-and-set in the same transaction): a password change
/// or reset either commits first, and no challenge is made, or after, and
/// voids it ([`void_challenges`]).
pub(super) async fn challenge(svc: &Services, user: &user::Model, client: &ClientInfo) -> AppResult<Option<Redacted>> {
    let challenge = svc.secrets.generate()?;
    let now = svc.clock.now();
    let tx = store::Write::begin(svc).await?;
    let unchanged = user::Entity::update_many()
        .col_expr(user::Column::PasswordHash, Expr::col(user::Column::PasswordHash))
        .filter(user::Column::Id.eq(user.id))
        .filter(user::Column::PasswordHash.eq(user.password_hash.as_str()))
        .exec(tx.conn())
        .await?
        .rows_affected
        == 1;
    if !unchanged {
        tx.rollback().await?;
        return Ok(None);
    }
    second_factor_challenge::Entity::insert(second_factor_challenge::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user.id),
        challenge_hash: Set(hash_token(&challenge)),
        created_at: Set(now),
        expires_at: Set(now + ChronoDuration::seconds(CHALLENGE_TTL_SECS)),
        failures: Set(0),
        used_at: Set(None),
    })
    .exec_without_returning(tx.conn())
    .await?;
    let user_id = UserId::from(user.id);
    tx.record(Event::new(EventKind::SecondFactorRequired, Some(user_id), Actor::User(user_id), client)).await?;
    tx.commit().await?;
    Ok(Some(Redacted(challenge)))
}

/// The open challenge `challenge` names and its account, or
/// `INVALID_SECOND_FACTOR` (malformed, unknown, spent, expired or dead).
pub(super) async fn open_challenge(
    svc: &Services,
    challenge: &str,
) -> AppResult<(second_factor_challenge::Model, user::Model)> {
    if !crate::auth::secrets::well_formed(challenge) {
        return Err(invalid());
    }
    let found = second_factor_challenge::Entity::find()
        .filter(second_factor_challenge::Column::ChallengeHash.eq(hash_token(challenge)))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::ExpiresAt.gt(svc.clock.now()))
        .unique_row(&svc.db)
        .await?;
    let Some(found) = found else { return Err(invalid()) };
    let Some(user) = users::row(svc, UserId::from(found.user_id)).await? else { return Err(invalid()) };
    Ok((found, user))
}

/// Spends the challenge in `conn`'s transaction: `false` when another request
/// spent it first, or it expired or died meanwhile.
pub(super) async fn claim_challenge(
    svc: &Services,
    conn: &impl ConnectionTrait,
    challenge: &second_factor_challenge::Model,
) -> AppResult<bool> {
    let now = svc.clock.now();
    Ok(second_factor_challenge::Entity::update_many()
        .col_expr(second_factor_challenge::Column::UsedAt, Expr::value(now))
        .filter(second_factor_challenge::Column::Id.eq(challenge.id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::ExpiresAt.gt(now))
        .exec(conn)
        .await?
        .rows_affected
        == 1)
}

/// Takes one of the challenge's tries, with one conditional update: `false`
/// when none is left, or it was spent or expired.
async fn take_try(svc: &Services, challenge: &second_factor_challenge::Model) -> AppResult<bool> {
    Ok(second_factor_challenge::Entity::update_many()
        .col_expr(
            second_factor_challenge::Column::Failures,
            Expr::col(second_factor_challenge::Column::Failures).add(1),
        )
        .filter(second_factor_challenge::Column::Id.eq(challenge.id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::ExpiresAt.gt(svc.clock.now()))
        .filter(second_factor_challenge::Column::Failures.lt(CHALLENGE_MAX_FAILURES))
        .exec(&svc.db)
        .await?
        .rows_affected
        == 1)
}

/// After a wrong code: ends the challenge once its tries are used up, and
/// records `LOGIN_FAILED`.
pub(super) async fn challenge_failed(
    svc: &Services,
    challenge: &second_factor_challenge::Model,
    client: &ClientInfo,
) -> AppResult<AppError> {
    let now = svc.clock.now();
    let tx = store::Write::begin(svc).await?;
    second_factor_challenge::Entity::update_many()
        .col_expr(second_factor_challenge::Column::UsedAt, Expr::value(now))
        .filter(second_factor_challenge::Column::Id.eq(challenge.id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::Failures.gte(CHALLENGE_MAX_FAILURES))
        .exec(tx.conn())
        .await?;
    let user = UserId::from(challenge.user_id);
    let event =
        Event::new(EventKind::LoginFailed, Some(user), Actor::Anonymous, client).detail("INVALID_SECOND_FACTOR");
    tx.record(event).await?;
    tx.commit().await?;
    Ok(invalid())
}

/// Starts the session a challenge was waiting for, in `tx` (whose caller
/// spent the challenge and checked the factor), records `LOGIN_SUCCEEDED`
/// with the factor used, and commits.
pub(super) async fn finish_login(
    svc: &Services,
    mut tx: store::Write<'_>,
    user: user::Model,
    used: Used,
    client: &ClientInfo,
) -> AppResult<Issued> {
    let now = svc.clock.now();
    // Over the password the row had when the login began (the one that let
    // the challenge out, or the row a passkey sign-in read): a password
    // changed or reset meanwhile refuses this login, as it refuses a
    // password login. Writing the row also orders this session against any
    // end of the account's sessions (`store::Write::end_user_sessions`).
    let current = user::Entity::update_many()
        .col_expr(user::Column::LastLoginAt, Expr::value(now))
        .filter(user::Column::Id.eq(user.id))
        .filter(user::Column::PasswordHash.eq(user.password_hash.as_str()))
        .exec_with_returning(tx.conn())
        .await?
        .pop();
    let Some(current) = current else {
        tx.rollback().await?;
        return Err(invalid());
    };
    let current = Account::from(current);
    let (session, refresh) = tx.start_session(&current, client, now).await?;
    let session_id = SessionId::from(session.id);
    if used == Used::RecoveryCode {
        recovery_code_used(&mut tx, &current, Some(session_id), client).await?;
    }
    let logged_in = Event::new(EventKind::LoginSucceeded, Some(current.id), Actor::User(current.id), client)
        .session(session_id)
        .detail(used.as_str());
    tx.record(logged_in).await?;
    tx.commit().await?;
    store::issue(svc, current, &session, refresh, now)
}

/// Exchanges a login's challenge and a TOTP or recovery code for a session.
/// Each try spends the password-check budget (the client's and the
/// account's); a challenge takes [`CHALLENGE_MAX_FAILURES`] tries, and dies
/// at the last if it is wrong. A recovery code's
/// use is mailed to the account's address and recorded.
///
/// Errors: `INVALID_SECOND_FACTOR` (a wrong, replayed or used code; a
/// malformed, spent, expired or dead challenge), `RATE_LIMITED`.
#[tracing::instrument(skip_all)]
pub async fn verify_second_factor(
    svc: &Services,
    challenge: &str,
    code: &str,
    client: &ClientInfo,
) -> AppResult<Issued> {
    let (challenge, user) = open_challenge(svc, challenge).await?;
    limits::spend_password(svc, client, &user.email_normalized).await?;
    let user_id = UserId::from(user.id);
    // One of the challenge's tries is taken, and committed, before the code is
    // looked at: concurrent guesses cannot share a try.
    if !take_try(svc, &challenge).await? {
        return Err(invalid());
    }
    let tx = store::Write::begin(svc).await?;
    let Some(used) = spend_code(svc, tx.conn(), user_id, code).await? else {
        tx.rollback().await?;
        return Err(challenge_failed(svc, &challenge, client).await?);
    };
    if !claim_challenge(svc, tx.conn(), &challenge).await? {
        tx.rollback().await?;
        return Err(invalid());
    }
    finish_login(svc, tx, user, used, client).await
}

/// Proves the caller again (password, and a code when an authenticator is
/// active), so that sensitive operations work for `REAUTHENTICATION_MAX_AGE`.
/// An account whose second factor is a passkey alone re-authenticates with
/// the passkey (`passkey_login::finish_reauthentication`): its password alone
/// no longer signs it in, so it does not re-authenticate it either.
/// Spends the password-check budget. Records `REAUTHENTICATED`, or
/// `REAUTHENTICATION_FAILED` with the reason.
///
/// Errors: `INVALID_CREDENTIALS`, `INVALID_SECOND_FACTOR` (a missing or
/// wrong code), `RATE_LIMITED`, `TOKEN_REVOKED`.
#[tracing::instrument(skip_all)]
pub async fn reauthenticate(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    password: String,
    code: Option<&str>,
) -> AppResult<()> {
    let user = users::row(svc, me.user_id).await?.ok_or(AppError::TokenRevoked)?;
    limits::spend_password(svc, client, &user.email_normalized).await?;
    let refused = |reason: &'static str| {
        Event::new(EventKind::ReauthenticationFailed, Some(me.user_id), Actor::User(me.user_id), client)
            .session(me.session_id)
            .detail(reason)
    };
    if matches!(svc.hasher.verify(password, Some(user.password_hash)).await?, Verified::No) {
        events::record(svc, &svc.db, refused("INVALID_CREDENTIALS")).await?;
        return Err(AppError::InvalidCredentials);
    }
    let totp = factors::totp_active(&svc.db, me.user_id).await?;
    if !totp && factors::passkey_count(&svc.db, me.user_id).await? > 0 {
        // A password alone signs this account in no more: neither does it re-authenticate.
        events::record(svc, &svc.db, refused("INVALID_SECOND_FACTOR")).await?;
        return Err(invalid());
    }
    let mut tx = store::Write::begin(svc).await?;
    let used = match (totp, code) {
        (false, _) => None,
        (true, Some(code)) => match spend_code(svc, tx.conn(), me.user_id, code).await? {
            Some(used) => Some(used),
            None => {
                tx.rollback().await?;
                events::record(svc, &svc.db, refused("INVALID_SECOND_FACTOR")).await?;
                return Err(invalid());
            }
        },
        (true, None) => {
            tx.rollback().await?;
            events::record(svc, &svc.db, refused("INVALID_SECOND_FACTOR")).await?;
            return Err(invalid());
        }
    };
    factors::stamp_authenticated(tx.conn(), me.session_id, svc.clock.now()).await?;
    if used == Some(Used::RecoveryCode) {
        // Read in the transaction: on SQLite it holds the only connection.
        let row =
            user::Entity::find_by_id(me.user_id.uuid()).unique_row(tx.conn()).await?.ok_or(AppError::TokenRevoked)?;
        recovery_code_used(&mut tx, &Account::from(row), Some(me.session_id), client).await?;
    }
    let event = Event::new(EventKind::Reauthenticated, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail(used.map_or("PASSWORD", Used::as_str));
    tx.record(event).await?;
    tx.commit().await?;
    Ok(())
}

/// An admin removes every second factor of `user_id` (a lost device): the
/// authenticator, recovery codes and passkeys; every session of the account
/// ends (the lost device may hold one), and so do open challenges and
/// mailed links. The
/// owner is told by mail when there was anything to remove;
/// `SECOND_FACTOR_RESET` is recorded with the admin either way.
///
/// Errors: `NOT_FOUND` (no such user), FORBIDDEN for an API key on an
/// admin's account.
pub async fn reset(
    svc: &Services,
    admin: crate::auth::access::Actor,
    user_id: UserId,
    client: &ClientInfo,
) -> AppResult<FactorStatus> {
    let user = users::row(svc, user_id)
        .await?
        .ok_or_else(|| AppError::invalid_input(crate::error::Reason::NotFound, "userId", "No such user"))?;
    // As for deleting one: a leaked key must not strip an admin's protection.
    if user.role == entity::user::Role::Admin && !matches!(admin, crate::auth::access::Actor::Admin(_)) {
        return Err(AppError::Forbidden("Only an admin can reset an admin's second factors"));
    }
    let email = Email::from_parts(user.email, user.email_normalized);
    let mut tx = store::Write::begin(svc).await?;
    // What is removed, read in the transaction that removes it.
    let before = status_for_users_in(tx.conn(), &[user_id]).await?.remove(&user_id).unwrap_or_default();
    factors::remove_factors_added_before(tx.conn(), user_id, None).await?;
    // A lost device may still hold a session: every session ends, as do
    // open challenges and links.
    let ended = tx.revoke_user(user_id, None).await?;
    // Told only when something was removed.
    if before != FactorStatus::default() {
        tx.enqueue_mail(Kind::SecondFactorsReset, Some(user_id), &email, None).await?;
    }
    let detail = format!(
        "authenticator: {}, passkeys: {}, {ended} sessions ended",
        if before.totp { "removed" } else { "none" },
        before.passkeys
    );
    let event = Event::new(EventKind::SecondFactorReset, Some(user_id), Actor::from(admin), client).detail(detail);
    tx.record(event).await?;
    tx.commit().await?;
    tracing::info!(%user_id, "second factors reset by an admin");
    Ok(before)
}

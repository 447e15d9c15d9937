//! Accounts: register, login, profile and password.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, SqlErr, sea_query::Expr};

use entity::user::{self, Role};

use super::{LoginOutcome, second_factor};
use crate::service::{
    ClientInfo, Issued, Services,
    core::{
        events::{self, Actor, Event, EventKind},
        factors, limits, store, users, validate,
    },
};
use crate::{
    auth::{password::Verified, principal::UserPrincipal},
    db::{self, UniqueRow},
    domain::{Account, Email, SessionId, UserId},
    error::{AppError, AppResult},
    mail::Kind,
};

pub struct NewAccount {
    pub email: String,
    pub password: String,
    pub name: Option<String>,
}

pub struct ProfileChange {
    pub name: Option<String>,
    pub email: Option<String>,
}

fn map_unique(err: sea_orm::DbErr) -> AppError {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => AppError::EmailTaken,
        _ => err.into(),
    }
}

async fn email_in_use(svc: &Services, normalized: &str) -> AppResult<bool> {
    Ok(user::Entity::find().filter(user::Column::EmailNormalized.eq(normalized)).unique_row(&svc.db).await?.is_some())
}

/// Creates an account with role USER and starts its first session.
///
/// With `REQUIRE_EMAIL_VERIFICATION`, the account is created with a
/// verification mail queued in the same transaction, and no session is
/// started: the answer is `EMAIL_NOT_VERIFIED` (the address must be confirmed
/// before the first login).
///
/// Errors: `INVALID_EMAIL`, `WEAK_PASSWORD`, `INVALID_NAME`, `EMAIL_TAKEN`,
/// `EMAIL_NOT_VERIFIED` (the account was created).
#[tracing::instrument(skip_all)]
pub async fn register(svc: &Services, input: NewAccount, client: &ClientInfo) -> AppResult<Issued> {
    let new = users::validate_new_user(&input.email, &input.password, input.name.as_deref())?;
    // Cheap early answer; the unique index below is what really decides.
    if email_in_use(svc, new.email.key()).await? {
        return Err(AppError::EmailTaken);
    }
    let password_hash = svc.hasher.hash(input.password).await?;
    let now = svc.clock.now();
    let mut tx = store::Write::begin(svc).await?;
    let row = users::new_user_row(new, password_hash, Role::User, now, Some(now))
        .insert(tx.conn())
        .await
        .map_err(map_unique)?;
    let user = Account::from(row);
    if svc.mail.config.require_verification {
        // Counted, so that a login right after it mails no second link (which
        // would void this one); sent even past the budget: it is the first.
        match limits::spend_recipient(svc, user.email.key()).await {
            Ok(()) | Err(AppError::RateLimited { .. }) => {}
            Err(e) => return Err(e),
        }
        tx.enqueue_mail(Kind::VerifyEmail, Some(user.id), &user.email, None).await?;
        tx.record(Event::new(EventKind::Registered, Some(user.id), Actor::User(user.id), client)).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, "account registered; waiting for its address to be confirmed");
        return Err(AppError::EmailNotVerified);
    }
    let (session, refresh) = tx.start_session(&user, client, now).await?;
    let registered = Event::new(EventKind::Registered, Some(user.id), Actor::User(user.id), client)
        .session(SessionId::from(session.id));
    tx.record(registered).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "account registered");
    store::issue(svc, user, &session, refresh, now)
}

/// Checks the credentials and starts a session. A wrong password and an
/// unknown email take the same time and give the same error.
///
/// The session is written only if the stored hash is still the one that was
/// verified (a compare-and-set inside the write transaction): a login racing a
/// password change either commits first, and the change ends its session, or
/// finds the hash changed and fails. An upgraded hash is written under the same
/// condition, so it never overwrites a newer password. A hash that changed
/// under the check is looked at once more (another login may only have
/// upgraded it), at the cost of one more hash and no more budget. The session
/// goes live with the row as the compare-and-set left it, so a role changed
/// during the check is the role the session sees.
#[tracing::instrument(skip_all)]
pub async fn login(svc: &Services, email: &str, password: String, client: &ClientInfo) -> AppResult<LoginOutcome> {
    limits::spend_password_client(svc, client).await?;
    let email = validate::email(email)?;
    // Counted for every address, registered or not, before any hashing.
    limits::spend_account(svc, email.key()).await?;
    // Hashes hold the normalised form (or, made before normalisation, the typed
    // one), each at most PASSWORD_MAX characters: longer in both, no account has it.
    let length = password.chars().count().min(crate::auth::password::normalize(&password).chars().count());
    if length > validate::PASSWORD_MAX {
        // Nothing about the account is revealed.
        return failed_login(svc, client, None, AppError::InvalidCredentials).await;
    }
    for attempt in 0..2 {
        let found =
            user::Entity::find().filter(user::Column::EmailNormalized.eq(email.key())).unique_row(&svc.db).await?;
        let verified = svc.hasher.verify(password.clone(), found.as_ref().map(|u| u.password_hash.clone())).await?;
        let (user, new_hash) = match (found, verified) {
            (Some(user), Verified::Yes) => (user, None),
            (Some(user), Verified::YesRehashed(h)) => (user, Some(h)),
            // Recorded for a known and an unknown address alike (one write
            // either way), so the time still says nothing.
            (found, _) => {
                let user = found.map(|u| UserId::from(u.id));
                return failed_login(svc, client, user, AppError::InvalidCredentials).await;
            }
        };
        // Told only to whoever knows the password; nothing is issued.
        if svc.mail.config.require_verification && user.email_verified_at.is_none() {
            resend_verification_on_login(svc, &user).await?;
            return failed_login(svc, client, Some(UserId::from(user.id)), AppError::EmailNotVerified).await;
        }
        let now = svc.clock.now();
        let mut tx = store::Write::begin(svc).await?;
        // One statement decides it: the hash is still the one verified, and the
        // account has no second factor (the common case, without a read of
        // its own).
        let mut update = user::Entity::update_many()
            .col_expr(user::Column::LastLoginAt, Expr::value(now))
            .filter(user::Column::Id.eq(user.id))
            .filter(user::Column::PasswordHash.eq(user.password_hash.as_str()))
            .filter(factors::not_required());
        if let Some(h) = &new_hash {
            update = update.col_expr(user::Column::PasswordHash, Expr::value(h.clone()));
        }
        let Some(current) = update.exec_with_returning(tx.conn()).await?.pop() else {
            tx.rollback().await?;
            // The password held; the session waits for the second factor.
            if factors::required(svc, UserId::from(user.id)).await? {
                return match second_factor::challenge(svc, &user, client).await? {
                    Some(challenge) => Ok(LoginOutcome::SecondFactorRequired { challenge }),
                    None => failed_login(svc, client, Some(UserId::from(user.id)), AppError::InvalidCredentials).await,
                };
            }
            // Deleted, or the hash changed, between the check and now.
            if attempt == 0 {
                continue;
            }
            return failed_login(svc, client, Some(UserId::from(user.id)), AppError::InvalidCredentials).await;
        };
        let current = Account::from(current);
        let (session, refresh) = tx.start_session(&current, client, now).await?;
        let logged_in = Event::new(EventKind::LoginSucceeded, Some(current.id), Actor::User(current.id), client)
            .session(SessionId::from(session.id));
        tx.record(logged_in).await?;
        tx.commit().await?;
        if new_hash.is_some() {
            tracing::info!(user_id = %current.id, "password hash upgraded to current parameters");
        }
        return store::issue(svc, current, &session, refresh, now).map(|issued| LoginOutcome::Issued(Box::new(issued)));
    }
    failed_login(svc, client, None, AppError::InvalidCredentials).await
}

/// Records a refused login (`LOGIN_FAILED`, with the reason) and returns the
/// refusal. `user`: the account, when the address has one.
async fn failed_login<T>(svc: &Services, client: &ClientInfo, user: Option<UserId>, refusal: AppError) -> AppResult<T> {
    let reason = refusal.reason().map_or("REFUSED", |r| r.as_str());
    events::record(svc, &svc.db, Event::new(EventKind::LoginFailed, user, Actor::Anonymous, client).detail(reason))
        .await?;
    Err(refusal)
}

/// A login refused for an unconfirmed address (`REQUIRE_EMAIL_VERIFICATION`)
/// sends a fresh verification link, within the recipient's budget (a login
/// already spent the client's); past it, nothing is sent.
async fn resend_verification_on_login(svc: &Services, user: &user::Model) -> AppResult<()> {
    if limits::spend_recipient(svc, &user.email_normalized).await.is_err() {
        return Ok(());
    }
    let email = Email::from_parts(user.email.clone(), user.email_normalized.clone());
    store::queue_mail(svc, Kind::VerifyEmail, Some(UserId::from(user.id)), &email).await
}

/// The start of an address change (`updateProfile(email:)` with another
/// mailbox): in `tx`, queues the confirmation link to `new` and, when the
/// current address is confirmed, a notice to it. The address changes only when the link is used
/// (`recovery::confirm_email_change`).
///
/// The budgets are spent before the address is looked up, so that asking
/// whether addresses are taken costs as much as asking for mail.
///
/// Errors: `RATE_LIMITED`, `EMAIL_TAKEN` when `new` has an account.
async fn request_email_change(
    svc: &Services,
    tx: &mut store::Write<'_>,
    client: &ClientInfo,
    user: &user::Model,
    new: &Email,
) -> AppResult<()> {
    limits::spend_mail(svc, client, new.key()).await?;
    let taken = user::Entity::find()
        .filter(user::Column::EmailNormalized.eq(new.key()))
        .filter(user::Column::Id.ne(user.id))
        .unique_row(tx.conn())
        .await?;
    if taken.is_some() {
        return Err(AppError::EmailTaken);
    }
    let user_id = UserId::from(user.id);
    let current = Email::from_parts(user.email.clone(), user.email_normalized.clone());
    tx.enqueue_mail(Kind::ConfirmEmailChange, Some(user_id), new, Some(new)).await?;
    // The notice goes only to an address known to be the account's: an
    // unconfirmed one may be a stranger's (a typo), who would learn the new one.
    if user.email_verified_at.is_some() {
        tx.enqueue_mail(Kind::EmailChangeNotice, Some(user_id), &current, Some(new)).await?;
    }
    Ok(())
}

/// Whether `new` is a spelling of the account's address that reaches the
/// same mailbox: the same key, and a local part that differs at most in
/// ASCII case (RFC 5321 lets a server tell local parts apart by case, and
/// every server in use does not; the key also folds `ß` to `ss` and other
/// Unicode spellings, which a server that takes UTF-8 addresses may deliver
/// to another mailbox). Mail goes to the domain of the key, so the domain's
/// spelling does not matter.
fn same_mailbox(new: &Email, account: &user::Model) -> bool {
    let local = |address: &str| address.rsplit_once('@').map(|(l, _)| l.to_owned()).unwrap_or_default();
    new.key() == account.email_normalized && local(new.display()).eq_ignore_ascii_case(&local(&account.email))
}

/// Changes the caller's name and address. A new spelling of the same address
/// (another case, say: [`same_mailbox`]) is taken at once; another is not:
/// a confirmation link goes to it and a notice to the current address, and
/// the address changes when the link is used (`confirmEmailChange`). The
/// returned account still has its current address then.
///
/// An address change needs a recent sign-in (`REAUTHENTICATION_MAX_AGE`).
///
/// Errors: `INVALID_NAME` (`name`), `INVALID_EMAIL` (`email`), `EMAIL_TAKEN`,
/// `RATE_LIMITED` (the mail budgets), `REAUTHENTICATION_REQUIRED`,
/// `TOKEN_REVOKED` when the account is gone.
#[tracing::instrument(skip_all)]
pub async fn update_profile(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    change: ProfileChange,
) -> AppResult<Account> {
    let user_id = me.user_id;
    let name = change.name.as_deref().map(validate::name).transpose()?;
    let email = change.email.as_deref().map(validate::email).transpose()?;
    if email.is_some() {
        // Whoever changes the address can take the account over by a reset.
        factors::require_recent_auth(svc, me.session_id).await?;
    }
    // The row is read and written in one write transaction (and locked on
    // PostgreSQL), so the stored search key always matches the stored name and
    // address even when two profile changes meet.
    let mut tx = store::Write::begin(svc).await?;
    let Some(user) = db::for_update(user::Entity::find_by_id(user_id.uuid()), tx.conn()).unique_row(tx.conn()).await?
    else {
        tx.rollback().await?;
        return Err(AppError::TokenRevoked);
    };
    // Another mailbox waits for its owner's confirmation.
    let (email, moving_to) = match email {
        Some(email) if !same_mailbox(&email, &user) => (None, Some(email)),
        same => (same, None),
    };
    if let Some(new) = &moving_to {
        request_email_change(svc, &mut tx, client, &user, new).await?;
    }
    let search_key = entity::keys::search_key(
        name.as_deref().unwrap_or(&user.name),
        email.as_ref().map_or(&user.email, |email| email.display()),
    );
    let mut active: user::ActiveModel = user.into();
    if let Some(name) = name {
        active.name = Set(name);
    }
    if let Some(email) = email {
        active.email_normalized = Set(email.key().to_owned());
        active.email = Set(email.display().to_owned());
    }
    active.search_key = Set(search_key);
    active.updated_at = Set(svc.clock.now());
    let user = Account::from(active.update(tx.conn()).await.map_err(map_unique)?);
    tx.user_changed(user.id);
    tx.commit().await?;
    if moving_to.is_some() {
        tracing::info!(%user_id, "address change asked for; waiting for its confirmation");
    }
    Ok(user)
}

/// Changes the password after checking the current one, and ends every other
/// session of the user (a stolen session must not survive a password change).
///
/// The check spends the same budget as a login (`limits::spend_password`). The
/// new hash is written only over the hash that was verified (compare-and-set in
/// the transaction that ends the other sessions), so of two concurrent changes
/// only one succeeds, and no session authenticated with the old password
/// outlives the change.
///
/// It needs a recent sign-in (`REAUTHENTICATION_MAX_AGE`) besides the
/// current password: with a second factor, the password alone is not the
/// account.
///
/// Errors: `WEAK_PASSWORD` (`newPassword`), `REAUTHENTICATION_REQUIRED`,
/// `RATE_LIMITED`, `INVALID_CREDENTIALS` when `current` is wrong or the
/// password changed meanwhile, `TOKEN_REVOKED` when the account is gone.
#[tracing::instrument(skip_all)]
pub async fn change_password(
    svc: &Services,
    user_id: UserId,
    current_session: SessionId,
    client: &ClientInfo,
    current: String,
    new: String,
) -> AppResult<()> {
    validate::new_password(&new, "newPassword")?;
    factors::require_recent_auth(svc, current_session).await?;
    let user = users::row(svc, user_id).await?.ok_or(AppError::TokenRevoked)?;
    limits::spend_password(svc, client, &user.email_normalized).await?;
    let mut stored = user.password_hash;
    let mut hash: Option<String> = None;
    // A hash that changed under the check is looked at once more: a login may
    // only have upgraded it (the current password still verifies); a change
    // made meanwhile does not verify and is not overwritten.
    for attempt in 0..2 {
        match svc.hasher.verify(current.clone(), Some(stored.clone())).await? {
            Verified::Yes | Verified::YesRehashed(_) => {}
            Verified::No => {
                // Someone holding the session guesses the password: the owner sees it.
                let event = Event::new(EventKind::PasswordChangeFailed, Some(user_id), Actor::User(user_id), client)
                    .session(current_session)
                    .detail("INVALID_CREDENTIALS");
                events::record(svc, &svc.db, event).await?;
                return Err(AppError::InvalidCredentials);
            }
        }
        // Hashed once the current password is known to be right, and only once.
        let hash = match &hash {
            Some(h) => h.clone(),
            None => hash.insert(svc.hasher.hash(new.clone()).await?).clone(),
        };
        let now = svc.clock.now();
        let mut tx = store::Write::begin(svc).await?;
        // Links and challenges first: a second-factor login takes its
        // challenge, then the user's row; taken in the same order here, the
        // two cannot deadlock, and one waits for the other.
        let ended = tx.revoke_user(user_id, Some(current_session)).await?;
        let changed = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(hash.clone()))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(user_id))
            .filter(user::Column::PasswordHash.eq(stored.as_str()))
            .exec_with_returning(tx.conn())
            .await?
            .pop();
        let Some(changed) = changed else {
            tx.rollback().await?;
            match users::row(svc, user_id).await? {
                Some(now_stored) if attempt == 0 => {
                    stored = now_stored.password_hash;
                    continue;
                }
                Some(_) => return Err(AppError::InvalidCredentials),
                None => return Err(AppError::TokenRevoked),
            }
        };
        let email = Email::from_parts(changed.email.clone(), changed.email_normalized.clone());
        tx.enqueue_mail(Kind::PasswordChanged, Some(user_id), &email, None).await?;
        let event = Event::new(EventKind::PasswordChanged, Some(user_id), Actor::User(user_id), client)
            .session(current_session)
            .detail(format!("{ended} other sessions ended"));
        tx.record(event).await?;
        tx.user_changed(UserId::from(changed.id));
        tx.commit().await?;
        tracing::info!(%user_id, other_sessions_ended = ended, "password changed");
        return Ok(());
    }
    Err(AppError::InvalidCredentials)
}

//! The user read model: an account by id, answered from the registry's cached
//! copy (dropped by every write of the user, on every instance) and otherwise
//! from the database, which fills the cache; and a new account's checked
//! input and row, the same for a registration and an admin's `createUser`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{EntityTrait, Set};

use entity::user::{self, Role};

use super::validate;
use crate::{
    db::UniqueRow,
    domain::{Account, Email, UserId},
    error::{AppError, AppResult},
    service::Services,
};

/// The stored row, password hash included: for the service layer only, which
/// checks and replaces hashes. Everything else gets an [`Account`].
pub(in crate::service) async fn row(svc: &Services, user_id: UserId) -> AppResult<Option<user::Model>> {
    Ok(user::Entity::find_by_id(user_id.uuid()).unique_row(&svc.db).await?)
}

/// An account by id, or `None` when there is no such user.
pub async fn account(svc: &Services, user_id: UserId) -> AppResult<Option<Arc<Account>>> {
    if let Some(profile) = svc.registry.profile(user_id) {
        return Ok(Some(profile));
    }
    let ticket = svc.registry.ticket();
    let Some(row) = row(svc, user_id).await? else { return Ok(None) };
    let account = Arc::new(Account::from(row));
    super::store::fill_profile(svc, ticket, account.clone());
    Ok(Some(account))
}

/// The caller's own account. Errors: `TOKEN_REVOKED` when it was deleted.
pub async fn me(svc: &Services, user_id: UserId) -> AppResult<Arc<Account>> {
    account(svc, user_id).await?.ok_or(AppError::TokenRevoked)
}

/// A new account's input, validated.
pub(in crate::service) struct ValidNewUser {
    pub email: Email,
    pub name: String,
}

/// Checks a new account's email, password and name (default: the part of the
/// email before the @), before any hashing or database work.
pub(in crate::service) fn validate_new_user(
    email: &str,
    password: &str,
    name: Option<&str>,
) -> AppResult<ValidNewUser> {
    let email = validate::email(email)?;
    validate::new_password(password, "password")?;
    let name = validate::name(name.unwrap_or_else(|| email.display().split('@').next().unwrap_or_default()))?;
    Ok(ValidNewUser { email, name })
}

/// The row of a new account.
pub(in crate::service) fn new_user_row(
    new: ValidNewUser,
    password_hash: String,
    role: Role,
    now: DateTime<Utc>,
    last_login_at: Option<DateTime<Utc>>,
) -> user::ActiveModel {
    user::ActiveModel {
        id: Set(UserId::new().uuid()),
        search_key: Set(entity::keys::search_key(&new.name, new.email.display())),
        email_normalized: Set(new.email.key().to_owned()),
        email: Set(new.email.display().to_owned()),
        name: Set(new.name),
        password_hash: Set(password_hash),
        role: Set(role),
        created_at: Set(now),
        updated_at: Set(now),
        last_login_at: Set(last_login_at),
        email_verified_at: Set(None),
        address_proven_at: Set(None),
    }
}

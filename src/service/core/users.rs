//! The user read model: an account by id, answered from the registry's cached
//! copy (dropped by every write of the user, on every instance) and otherwise
//! from the database, which fills the cache. Both `accounts` and `sessions`
//! read users through here, so neither needs the other for it.

use std::sync::Arc;

use sea_orm::EntityTrait;

use entity::user;

use crate::service::Services;
use crate::{
    db::UniqueRow,
    domain::{Account, UserId},
    error::{AppError, AppResult},
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

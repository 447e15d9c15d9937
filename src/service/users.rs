//! The user read model: an account by id, answered from the registry's copy
//! when the user has live sessions (it is kept in step with every write) and
//! from the database otherwise. Both `accounts` and `sessions` read users
//! through here, so neither needs the other for it.

use std::sync::Arc;

use sea_orm::EntityTrait;

use entity::user;

use super::Services;
use crate::{
    db::UniqueRow,
    domain::{Account, UserId},
    error::{AppError, AppResult},
};

/// The stored row, password hash included: for the service layer only, which
/// checks and replaces hashes. Everything else gets an [`Account`].
pub(super) async fn row(svc: &Services, user_id: UserId) -> AppResult<Option<user::Model>> {
    Ok(user::Entity::find_by_id(user_id.uuid()).unique_row(&svc.db).await?)
}

/// An account by id, or `None` when there is no such user.
pub async fn account(svc: &Services, user_id: UserId) -> AppResult<Option<Arc<Account>>> {
    if let Some(profile) = svc.registry.profile(user_id) {
        return Ok(Some(profile));
    }
    Ok(row(svc, user_id).await?.map(|row| Arc::new(Account::from(row))))
}

/// The caller's own account. Errors: `TOKEN_REVOKED` when it was deleted.
pub async fn me(svc: &Services, user_id: UserId) -> AppResult<Arc<Account>> {
    account(svc, user_id).await?.ok_or(AppError::TokenRevoked)
}

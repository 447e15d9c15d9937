//! Access control you can see in the types. An admin or scoped operation takes a
//! `Granted<P>` that only [`Principal::grant`] can make, and only for a caller
//! who holds permission `P`: an admin user, or an API key with `P`'s scope.
//! A service function that takes `&Granted<UsersWrite>` cannot be reached by a
//! caller who was never checked.

use std::marker::PhantomData;

use entity::user::Role;

use super::principal::Principal;
use crate::{
    domain::{ApiKeyId, UserId},
    error::AppError,
};

pub use crate::domain::ApiScope;

/// A permission: which API scope grants it, if any (admins hold them all).
pub trait Permission {
    const SCOPE: Option<ApiScope>;
    /// Whether admins hold it (introspection is for services only).
    const ADMIN: bool = true;
}

/// Read users (`users`, `user`).
pub struct UsersRead;
/// Delete users.
pub struct UsersWrite;
/// Force-logout users.
pub struct SessionsRevoke;
/// Introspect access tokens (`tokenInfo`).
pub struct TokensIntrospect;
/// Read the security event log (`auditEvents`).
pub struct AuditRead;
/// Admin users only: roles and API keys.
pub struct AdminOnly;

impl Permission for UsersRead {
    const SCOPE: Option<ApiScope> = Some(ApiScope::UsersRead);
}
impl Permission for UsersWrite {
    const SCOPE: Option<ApiScope> = Some(ApiScope::UsersWrite);
}
impl Permission for SessionsRevoke {
    const SCOPE: Option<ApiScope> = Some(ApiScope::SessionsRevoke);
}
impl Permission for TokensIntrospect {
    const SCOPE: Option<ApiScope> = Some(ApiScope::TokensIntrospect);
    const ADMIN: bool = false;
}
impl Permission for AuditRead {
    const SCOPE: Option<ApiScope> = Some(ApiScope::AuditRead);
}
impl Permission for AdminOnly {
    const SCOPE: Option<ApiScope> = None;
}

/// Who exercised a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Admin(UserId),
    Service(ApiKeyId),
}

/// Proof that the caller holds permission `P`.
#[derive(Debug)]
pub struct Granted<P: Permission> {
    pub actor: Actor,
    _permission: PhantomData<P>,
}

impl Principal {
    /// The proof for permission `P`, or the error that explains why not.
    pub fn grant<P: Permission>(&self) -> Result<Granted<P>, AppError> {
        let actor = match self {
            Principal::User(u) if u.role == Role::Admin && P::ADMIN => Actor::Admin(u.user_id),
            Principal::User(_) => return Err(AppError::Forbidden("This operation is not allowed for your account")),
            Principal::Service(key) => match P::SCOPE {
                Some(scope) if key.scopes.contains(&scope) => Actor::Service(key.key_id),
                _ => return Err(AppError::Forbidden("This API key lacks the scope for this operation")),
            },
            // Anonymous or a rejected token: the same answer as for user-only fields.
            other => return Err(other.require_user().err().unwrap_or(AppError::MissingToken)),
        };
        Ok(Granted { actor, _permission: PhantomData })
    }
}

//! Who is calling. Decided once per request in the HTTP layer and handed to
//! resolvers, which ask it for the proof they need (`require_user`).

use entity::user::Role;

use crate::{
    domain::{ApiKeyId, SessionId, UserId},
    error::AppError,
};

/// A caller proven by a live access token.
#[derive(Debug, Clone)]
pub struct UserPrincipal {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// The role now, from the registry (not the possibly stale claim).
    pub role: Role,
}

/// A service proven by an API key.
#[derive(Debug, Clone)]
pub struct ServicePrincipal {
    pub key_id: ApiKeyId,
    pub scopes: Vec<super::access::ApiScope>,
}

#[derive(Debug, Clone)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
    /// Credentials were presented but did not hold; the error says why. Public
    /// fields still work (a stale header must not break `login`).
    Rejected(RejectReason),
    User(UserPrincipal),
    Service(ServicePrincipal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Invalid,
    Expired,
    Revoked,
}

impl Principal {
    /// The user behind an access token; anything else is refused with the
    /// reason the client needs (no token, a bad one, an expired or revoked one).
    pub fn require_user(&self) -> Result<&UserPrincipal, AppError> {
        match self {
            Principal::User(u) => Ok(u),
            Principal::Anonymous => Err(AppError::MissingToken),
            Principal::Rejected(RejectReason::Invalid) => Err(AppError::InvalidToken),
            Principal::Rejected(RejectReason::Expired) => Err(AppError::AccessTokenExpired),
            Principal::Rejected(RejectReason::Revoked) => Err(AppError::TokenRevoked),
            Principal::Service(_) => {
                Err(AppError::Forbidden("This operation needs a user's access token, not an API key"))
            }
        }
    }

    pub fn user(&self) -> Option<&UserPrincipal> {
        match self {
            Principal::User(u) => Some(u),
            _ => None,
        }
    }

    /// May this caller see the private fields (sessions, last login) of `user_id`?
    pub fn may_see_private_fields_of(&self, user_id: UserId) -> Result<(), AppError> {
        let me = self.require_user()?;
        if me.user_id == user_id || me.role == Role::Admin {
            Ok(())
        } else {
            Err(AppError::Forbidden("Only the user themself or an admin may see this field"))
        }
    }
}

//! The types the service layer hands out, between the stored entities and the
//! API: an [`Account`] has no password hash at all (the hash stays in
//! `entity::user::Model`, which only the service layer reads), ids are typed so
//! that two of them cannot be swapped, and an [`Email`] carries both of its forms.
//!
//! Nothing here reads the database or knows GraphQL.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use entity::{
    api_key,
    user::{self, Role},
};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7, RFC 9562 section 5.7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id as stored.
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl From<$name> for sea_orm::Value {
            fn from(id: $name) -> Self {
                id.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// An account's id (`users.id`).
    UserId
);
id_type!(
    /// A session's id (`sessions.id`, the access token's `sid` claim).
    SessionId
);
id_type!(
    /// A service API key's id (`api_keys.id`).
    ApiKeyId
);

/// An email address in its two forms: as the user typed it (NFC, shown back to
/// them and put in tokens) and its key (case-folded local part, IDNA domain:
/// `entity::keys::email_key`), which decides uniqueness, lookups and the
/// per-account rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    display: String,
    key: String,
}

impl Email {
    /// Both forms, already checked (`service::core::validate::email`) or read from a
    /// stored row.
    pub(crate) fn from_parts(display: String, key: String) -> Self {
        Self { display, key }
    }

    /// As the user typed it (NFC).
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The address's key: what is unique and looked up.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// An account as everything outside the service layer sees it: the stored user
/// row without its password hash (and without the search key, an index
/// column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: UserId,
    pub email: Email,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Set by every change of the row; orders copies of it (the newer wins).
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// When the current address was confirmed; `None` until it is.
    pub email_verified_at: Option<DateTime<Utc>>,
}

impl From<user::Model> for Account {
    fn from(row: user::Model) -> Self {
        Self {
            id: row.id.into(),
            email: Email::from_parts(row.email, row.email_normalized),
            name: row.name,
            role: row.role,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_login_at: row.last_login_at,
            email_verified_at: row.email_verified_at,
        }
    }
}

/// The contract's name of a role (`USER`, `ADMIN`), as in the `role` claim.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "USER",
        Role::Admin => "ADMIN",
    }
}

/// What a service API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiScope {
    UsersRead,
    UsersWrite,
    SessionsRevoke,
    TokensIntrospect,
    AuditRead,
}

impl ApiScope {
    pub const ALL: [ApiScope; 5] = [
        ApiScope::UsersRead,
        ApiScope::UsersWrite,
        ApiScope::SessionsRevoke,
        ApiScope::TokensIntrospect,
        ApiScope::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::UsersRead => "USERS_READ",
            ApiScope::UsersWrite => "USERS_WRITE",
            ApiScope::SessionsRevoke => "SESSIONS_REVOKE",
            ApiScope::TokensIntrospect => "TOKENS_INTROSPECT",
            ApiScope::AuditRead => "AUDIT_READ",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// The scopes of a stored comma-separated list (`api_keys.scopes`); unknown
    /// names are skipped.
    pub fn parse_list(s: &str) -> Vec<Self> {
        s.split(',').filter_map(Self::parse).collect()
    }
}

/// A service API key as listed: everything but the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    /// The non-secret start of the key (`sk_live_` and 16 hex digits).
    pub prefix: String,
    pub scopes: Vec<ApiScope>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_key::Model> for ApiKey {
    fn from(row: api_key::Model) -> Self {
        Self {
            id: row.id.into(),
            scopes: ApiScope::parse_list(&row.scopes),
            name: row.name,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// Where a signing key is in its life (see `service::core::signing_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published; signs from `signs_from`.
    Next,
    /// Signs now.
    Current,
    /// No longer signs; published until `published_until`.
    Retired,
}

/// A signing key as listed: its public facts, never its private half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    /// JOSE `alg`: `ES256` or `EdDSA`.
    pub alg: String,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub signs_from: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    pub published_until: Option<DateTime<Utc>>,
}

impl From<entity::signing_key::Model> for SigningKey {
    fn from(row: entity::signing_key::Model) -> Self {
        let state = match row.state.as_str() {
            "next" => KeyState::Next,
            "current" => KeyState::Current,
            _ => KeyState::Retired,
        };
        Self {
            kid: row.kid,
            alg: row.alg,
            state,
            created_at: row.created_at,
            signs_from: row.signs_from,
            retired_at: row.retired_at,
            published_until: row.published_until,
        }
    }
}

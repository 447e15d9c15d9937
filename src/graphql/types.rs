//! GraphQL output and input types. They wrap the service layer's domain types
//! (`crate::domain`): `User` wraps an `Account`, which has no password hash,
//! and `ApiKey` a key without its secret's hash. `Session` is built from a
//! session row, which holds no secret (its tokens live in `refresh_tokens`).

use async_graphql::{
    Context, Enum, ErrorExtensions, ID, InputObject, Object, SimpleObject,
    dataloader::{DataLoader, Loader},
};
use chrono::{DateTime, Utc};

use entity::{session, user};

use super::request;
use crate::{
    auth::access,
    domain::{self, Account, SessionId, UserId},
    error::{AppError, Reason},
    service::{Services, sessions},
};

#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum Role {
    User,
    Admin,
}

impl From<user::Role> for Role {
    fn from(r: user::Role) -> Self {
        match r {
            user::Role::User => Role::User,
            user::Role::Admin => Role::Admin,
        }
    }
}

/// How the refresh token travels: in an HttpOnly cookie (browsers), or in the
/// response body and the `refreshToken` argument (native apps, services).
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq, Default)]
pub enum TokenTransport {
    #[default]
    Cookie,
    Body,
}

pub struct User {
    model: std::sync::Arc<Account>,
    /// Set when this object is handed to its own user at login or registration:
    /// the request carried no token yet, but the caller has just proven who they
    /// are, in this session.
    own_session: Option<SessionId>,
}

impl User {
    /// A user as seen by whoever the request's principal is.
    pub fn new(model: impl Into<std::sync::Arc<Account>>) -> Self {
        Self { model: model.into(), own_session: None }
    }

    /// A user handed to themself in the session `session_id`.
    pub fn own(model: Account, session_id: SessionId) -> Self {
        Self { model: model.into(), own_session: Some(session_id) }
    }

    /// Checks the caller may see private fields; returns the caller's session.
    fn private_view(&self, ctx: &Context<'_>) -> Result<Option<SessionId>, AppError> {
        if self.own_session.is_some() {
            return Ok(self.own_session);
        }
        let principal = &request(ctx)?.principal;
        principal.may_see_private_fields_of(self.model.id)?;
        Ok(principal.user().map(|u| u.session_id))
    }
}

/// An account.
#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.model.id.to_string())
    }
    async fn email(&self) -> &str {
        self.model.email.display()
    }
    async fn name(&self) -> &str {
        &self.model.name
    }
    async fn role(&self) -> Role {
        self.model.role.into()
    }
    /// Whether the address was confirmed (a verification, reset or
    /// address-change link was used).
    async fn email_verified(&self) -> bool {
        self.model.email_verified_at.is_some()
    }
    /// When the address was confirmed. Visible to the user themself and to admins only.
    async fn email_verified_at(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DateTime<Utc>>> {
        self.private_view(ctx)?;
        Ok(self.model.email_verified_at)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.model.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.model.updated_at
    }
    /// What second factors the account has. Visible to the user themself and
    /// to admins only.
    async fn second_factor(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<super::second_factor::SecondFactorStatus> {
        self.private_view(ctx)?;
        let loader = ctx
            .data::<DataLoader<FactorsByUser>>()
            .map_err(|_| AppError::internal("second-factor loader missing from schema data"))?;
        Ok(loader.load_one(self.model.id).await.map_err(|e| e.extend())?.unwrap_or_default().into())
    }
    /// The account's passkeys, oldest first. Visible to the user themself and
    /// to admins only.
    async fn passkeys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<super::second_factor::Passkey>> {
        self.private_view(ctx)?;
        let list = crate::service::signin::passkeys::list(super::services(ctx)?, self.model.id).await?;
        Ok(list.into_iter().map(Into::into).collect())
    }
    /// The user's live sessions. Visible to the user themself and to admins only.
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Session>> {
        let current = self.private_view(ctx)?;
        let loader = ctx
            .data::<DataLoader<SessionsByUser>>()
            .map_err(|_| AppError::internal("session loader missing from schema data"))?;
        let list = loader.load_one(self.model.id).await.map_err(|e| e.extend())?.unwrap_or_default();
        Ok(list.into_iter().map(|s| Session::new(s, current)).collect())
    }
    /// What happened to the account (logins, failures, password and role
    /// changes, revocations, …), newest first. Visible to the user themself and
    /// to admins only.
    async fn security_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::events::SecurityEventConnection> {
        self.private_view(ctx)?;
        let as_owner =
            self.own_session.is_some() || request(ctx)?.principal.user().is_some_and(|u| u.user_id == self.model.id);
        let (first, cursor) = super::events::paging(first, after.as_deref())?;
        let page =
            crate::service::core::events::own(super::services(ctx)?, self.model.id, first, cursor, as_owner).await?;
        Ok(super::events::connection(page, cursor.is_some()))
    }
    /// Visible to the user themself and to admins only.
    async fn last_login_at(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DateTime<Utc>>> {
        self.private_view(ctx)?;
        Ok(self.model.last_login_at)
    }
}

/// Loads the live sessions of many users at once: the `sessions` of every user in
/// a listing page are read in one query (async-graphql gathers the keys asked for
/// within a millisecond). Nothing is cached between loads.
pub struct SessionsByUser(pub Services);

impl Loader<UserId> for SessionsByUser {
    type Value = Vec<session::Model>;
    type Error = std::sync::Arc<AppError>;

    async fn load(&self, keys: &[UserId]) -> Result<std::collections::HashMap<UserId, Self::Value>, Self::Error> {
        sessions::list_for_users(&self.0, keys).await.map_err(std::sync::Arc::new)
    }
}

/// Loads what second factors many users have at once (three queries for a
/// listing page). Nothing is cached between loads.
pub struct FactorsByUser(pub Services);

impl Loader<UserId> for FactorsByUser {
    type Value = crate::service::signin::second_factor::FactorStatus;
    type Error = std::sync::Arc<AppError>;

    async fn load(&self, keys: &[UserId]) -> Result<std::collections::HashMap<UserId, Self::Value>, Self::Error> {
        crate::service::signin::second_factor::status_for_users(&self.0, keys).await.map_err(std::sync::Arc::new)
    }
}

/// A login of a user on one device.
#[derive(SimpleObject)]
pub struct Session {
    pub id: ID,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// Whether this is the session of the access token making the request.
    pub current: bool,
}

impl Session {
    fn new(s: session::Model, current: Option<SessionId>) -> Self {
        Self {
            id: ID(s.id.to_string()),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            user_agent: s.user_agent,
            ip: s.ip,
            current: Some(SessionId::from(s.id)) == current,
        }
    }
}

/// Tokens for a session that has just started or been refreshed.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <accessToken>`. Keep it in memory only.
    pub access_token: String,
    /// Always "Bearer".
    pub token_type: String,
    /// Seconds until `accessToken` expires.
    pub expires_in: i32,
    /// Only with transport BODY; null with COOKIE (the token is in an HttpOnly cookie).
    pub refresh_token: Option<String>,
    pub user: User,
}

#[derive(InputObject)]
pub struct RegisterInput {
    /// At most 254 characters; unique regardless of case.
    pub email: String,
    /// 8 to 128 characters.
    #[graphql(secret)]
    pub password: String,
    /// Defaults to the part of the email before the @.
    pub name: Option<String>,
    #[graphql(default_with = "Some(TokenTransport::Cookie)")]
    pub transport: Option<TokenTransport>,
}

#[derive(InputObject)]
pub struct LoginInput {
    pub email: String,
    #[graphql(secret)]
    pub password: String,
    #[graphql(default_with = "Some(TokenTransport::Cookie)")]
    pub transport: Option<TokenTransport>,
}

#[derive(InputObject)]
pub struct UpdateProfileInput {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// Parses an `ID` argument that must be one of ours, as the id type `T` the
/// service expects. Errors: `INVALID_ID` on `field`.
pub fn parse_id<T: From<uuid::Uuid>>(id: &ID, field: &'static str) -> Result<T, AppError> {
    uuid::Uuid::parse_str(id.as_str())
        .map(T::from)
        .map_err(|_| AppError::invalid_input(Reason::InvalidId, field, "Not a valid id"))
}

impl From<Role> for user::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::User => user::Role::User,
            Role::Admin => user::Role::Admin,
        }
    }
}

/// What a service API key may do.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum ApiScope {
    UsersRead,
    UsersWrite,
    SessionsRevoke,
    TokensIntrospect,
    AuditRead,
}

impl From<ApiScope> for access::ApiScope {
    fn from(s: ApiScope) -> Self {
        match s {
            ApiScope::UsersRead => access::ApiScope::UsersRead,
            ApiScope::UsersWrite => access::ApiScope::UsersWrite,
            ApiScope::SessionsRevoke => access::ApiScope::SessionsRevoke,
            ApiScope::TokensIntrospect => access::ApiScope::TokensIntrospect,
            ApiScope::AuditRead => access::ApiScope::AuditRead,
        }
    }
}

impl From<access::ApiScope> for ApiScope {
    fn from(s: access::ApiScope) -> Self {
        match s {
            access::ApiScope::UsersRead => ApiScope::UsersRead,
            access::ApiScope::UsersWrite => ApiScope::UsersWrite,
            access::ApiScope::SessionsRevoke => ApiScope::SessionsRevoke,
            access::ApiScope::TokensIntrospect => ApiScope::TokensIntrospect,
            access::ApiScope::AuditRead => ApiScope::AuditRead,
        }
    }
}

/// A service API key (without its secret, or its secret's hash).
pub struct ApiKey(pub domain::ApiKey);

#[Object]
impl ApiKey {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The non-secret start of the key, to recognise it in logs and configs.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    async fn scopes(&self) -> Vec<ApiScope> {
        self.0.scopes.iter().copied().map(Into::into).collect()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
}

/// A new key and its secret. The secret is shown once: store it now.
#[derive(SimpleObject)]
pub struct ApiKeySecret {
    pub api_key: ApiKey,
    /// Send as `X-API-Key: <secret>`.
    pub secret: String,
}

/// What an access token is worth right now.
#[derive(SimpleObject)]
pub struct TokenInfo {
    /// False for a bad, expired or revoked token; the other fields are then null.
    pub active: bool,
    pub user_id: Option<ID>,
    /// The user's current role.
    pub role: Option<Role>,
    pub session_id: Option<ID>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<sessions::TokenInfo> for TokenInfo {
    fn from(t: sessions::TokenInfo) -> Self {
        Self {
            active: t.active,
            user_id: t.user_id.map(|id| ID(id.to_string())),
            role: t.role.map(Into::into),
            session_id: t.session_id.map(|id| ID(id.to_string())),
            expires_at: t.expires_at,
        }
    }
}

/// Where a signing key is in its life.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum SigningKeyState {
    /// Published in the JWK Set; signs from `signsFrom`.
    Next,
    /// Signs the access tokens issued now.
    Current,
    /// No longer signs; published until `publishedUntil`, while its tokens live.
    Retired,
}

/// A key access tokens are signed with (ES256 or EdDSA). Its private half never
/// leaves the server.
pub struct SigningKey(pub domain::SigningKey);

#[Object]
impl SigningKey {
    /// The `kid` in the JWK Set and in the tokens' header.
    async fn kid(&self) -> &str {
        &self.0.kid
    }
    /// JOSE `alg`: `ES256` or `EdDSA`.
    async fn alg(&self) -> &str {
        &self.0.alg
    }
    async fn state(&self) -> SigningKeyState {
        match self.0.state {
            domain::KeyState::Next => SigningKeyState::Next,
            domain::KeyState::Current => SigningKeyState::Current,
            domain::KeyState::Retired => SigningKeyState::Retired,
        }
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it signs (or signed) its first token.
    async fn signs_from(&self) -> DateTime<Utc> {
        self.0.signs_from
    }
    async fn retired_at(&self) -> Option<DateTime<Utc>> {
        self.0.retired_at
    }
    /// When it leaves the JWK Set (null while it signs or will).
    async fn published_until(&self) -> Option<DateTime<Utc>> {
        self.0.published_until
    }
}

//! Admin and service fields: the user listing, roles, deletion, forced logout,
//! API keys and token introspection. Each resolver asks the principal for the
//! permission proof the service function requires.

use async_graphql::{
    Context, ID, Object, Result, SimpleObject,
    connection::{Connection, Edge},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use uuid::Uuid;

use super::{
    request, require_recent_admin, services,
    types::{ApiKey, ApiKeySecret, ApiScope, Role, SigningKey, TokenInfo, User, parse_id},
};
use crate::{
    auth::access::{AdminOnly, SessionsRevoke, TokensIntrospect, UsersRead, UsersWrite},
    domain::UserId,
    error::{AppError, Reason},
    service::{
        admin::api_keys,
        admin::{self, PAGE_DEFAULT, PAGE_MAX, PageRequest, UserFilter},
        core::signing_keys,
        sessions,
    },
};

/// Extra fields of `UserConnection`.
#[derive(SimpleObject)]
pub struct UserConnectionFields {
    /// Users matching `search` and `role`, over all pages.
    pub total_count: i64,
}

pub type UserConnection = Connection<String, User, UserConnectionFields>;

fn encode_cursor(id: UserId) -> String {
    B64.encode(id.uuid().as_bytes())
}

fn decode_cursor(cursor: &str, field: &'static str) -> Result<UserId, AppError> {
    B64.decode(cursor)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .map(UserId::from)
        .ok_or_else(|| AppError::invalid_input(Reason::InvalidCursor, field, "Not a cursor from this listing"))
}

fn page_size(n: Option<i32>, field: &'static str) -> Result<Option<u64>, AppError> {
    match n {
        None => Ok(None),
        Some(n) if (0..=PAGE_MAX as i32).contains(&n) => Ok(Some(n as u64)),
        Some(_) => Err(AppError::invalid_input(
            Reason::InvalidPageSize,
            field,
            format!("{field} must be between 0 and {PAGE_MAX}"),
        )),
    }
}

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// Users in creation order, as a Relay cursor connection. ADMIN, or an API key
    /// with USERS_READ.
    #[allow(clippy::too_many_arguments)]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        #[graphql(desc = "Case-insensitive substring of the email or name")] search: Option<String>,
        role: Option<Role>,
    ) -> Result<UserConnection> {
        let proof = request(ctx)?.principal.grant::<UsersRead>()?;
        let first = page_size(first, "first")?;
        let last = page_size(last, "last")?;
        let page = match (first, last) {
            (Some(_), Some(_)) => {
                return Err(
                    AppError::invalid_input(Reason::InvalidPageSize, "last", "Give first or last, not both").into()
                );
            }
            (_, Some(n)) => {
                PageRequest::Backward { n, before: before.as_deref().map(|c| decode_cursor(c, "before")).transpose()? }
            }
            (n, None) => PageRequest::Forward {
                n: n.unwrap_or(PAGE_DEFAULT),
                after: after.as_deref().map(|c| decode_cursor(c, "after")).transpose()?,
            },
        };
        let filter = UserFilter { search, role: role.map(Into::into) };
        let page = admin::list_users(services(ctx)?, &proof, &filter, page).await?;
        let mut conn = Connection::with_additional_fields(
            page.has_previous,
            page.has_next,
            UserConnectionFields { total_count: i64::try_from(page.total).unwrap_or(i64::MAX) },
        );
        conn.edges.extend(page.users.into_iter().map(|u| Edge::new(encode_cursor(u.id), User::new(u))));
        Ok(conn)
    }

    /// One user, or null. ADMIN, or an API key with USERS_READ.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        let proof = request(ctx)?.principal.grant::<UsersRead>()?;
        let id = parse_id(&id, "id")?;
        Ok(admin::get_user(services(ctx)?, &proof, id).await?.map(User::new))
    }

    /// All API keys, newest first. ADMIN.
    async fn api_keys(&self, ctx: &Context<'_>) -> Result<Vec<ApiKey>> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        Ok(api_keys::list(services(ctx)?, &proof).await?.into_iter().map(ApiKey).collect())
    }

    /// The keys access tokens are signed with, newest first: the one waiting to
    /// sign, the one signing, and those retired but still published. Empty on
    /// an HS256 install. ADMIN.
    async fn signing_keys(&self, ctx: &Context<'_>) -> Result<Vec<SigningKey>> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        Ok(signing_keys::list_keys(services(ctx)?, &proof).await?.into_iter().map(SigningKey).collect())
    }

    /// Whether an access token is live, and whose it is. API key with TOKENS_INTROSPECT.
    async fn token_info(&self, ctx: &Context<'_>, #[graphql(secret)] access_token: String) -> Result<TokenInfo> {
        let proof = request(ctx)?.principal.grant::<TokensIntrospect>()?;
        Ok(sessions::introspect(services(ctx)?, &proof, &access_token).await.into())
    }
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Changes a user's role, effective at once for their live tokens. The last
    /// admin cannot be demoted. ADMIN, with a recent sign-in (`REAUTHENTICATION_MAX_AGE`).
    async fn set_user_role(&self, ctx: &Context<'_>, id: ID, role: Role) -> Result<User> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        require_recent_admin(ctx).await?;
        let id = parse_id(&id, "id")?;
        Ok(User::new(admin::set_role(services(ctx)?, &proof, id, role.into(), &request(ctx)?.client).await?))
    }

    /// Deletes a user with their sessions; their tokens stop working at once. The
    /// last admin cannot be deleted. ADMIN, or an API key with USERS_WRITE.
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let proof = request(ctx)?.principal.grant::<UsersWrite>()?;
        let id = parse_id(&id, "id")?;
        Ok(admin::delete_user(services(ctx)?, &proof, id, &request(ctx)?.client).await?)
    }

    /// Ends every session of a user (forced logout); returns how many were live.
    /// ADMIN, or an API key with SESSIONS_REVOKE.
    async fn revoke_user_sessions(&self, ctx: &Context<'_>, id: ID) -> Result<i32> {
        let proof = request(ctx)?.principal.grant::<SessionsRevoke>()?;
        let id = parse_id(&id, "id")?;
        let n = admin::revoke_user_sessions(services(ctx)?, &proof, id, &request(ctx)?.client).await?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Creates a service API key. The secret is shown only in this response.
    /// ADMIN, with a recent sign-in (`REAUTHENTICATION_MAX_AGE`).
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        scopes: Vec<ApiScope>,
        #[graphql(default_with = "Some(90)", desc = "Days until the key expires; null for never")]
        expires_in_days: Option<i32>,
    ) -> Result<ApiKeySecret> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        require_recent_admin(ctx).await?;
        let scopes: Vec<_> = scopes.into_iter().map(Into::into).collect();
        let (key, secret) =
            api_keys::create(services(ctx)?, &proof, &name, &scopes, expires_in_days, &request(ctx)?.client).await?;
        Ok(ApiKeySecret { api_key: ApiKey(key), secret })
    }

    /// Issues a new secret for a key; the old one keeps working for `graceDays`.
    /// ADMIN, with a recent sign-in (`REAUTHENTICATION_MAX_AGE`).
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default_with = "Some(30)")] grace_days: Option<i32>,
    ) -> Result<ApiKeySecret> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        require_recent_admin(ctx).await?;
        let id = parse_id(&id, "id")?;
        let (key, secret) =
            api_keys::rotate(services(ctx)?, &proof, id, grace_days.unwrap_or(30), &request(ctx)?.client).await?;
        Ok(ApiKeySecret { api_key: ApiKey(key), secret })
    }

    /// Starts a rotation of the signing key: a new key is published in the JWK
    /// Set now and signs after `JWT_KEY_LEAD_TIME`, when the current one retires
    /// (published until its tokens have expired). While a new key is waiting,
    /// returns that one. `NO_SIGNING_KEYS` on an HS256 install. ADMIN.
    async fn rotate_signing_key(&self, ctx: &Context<'_>) -> Result<SigningKey> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        Ok(SigningKey(signing_keys::rotate_key(services(ctx)?, &proof).await?))
    }

    /// Revokes a key, effective at once. True when a working key stopped
    /// working; false for an unknown, already revoked or expired one. ADMIN.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let proof = request(ctx)?.principal.grant::<AdminOnly>()?;
        let id = parse_id(&id, "id")?;
        Ok(api_keys::revoke(services(ctx)?, &proof, id, &request(ctx)?.client).await?)
    }
}

//! The GraphQL API: thin resolvers split by feature and merged into one schema.
//! A resolver reads its arguments and the caller's principal, calls one service
//! function and maps the result.

mod account;
mod admin;
pub mod budget;
pub mod documents;
pub mod events;
mod guard;
pub mod live;
mod recovery;
pub mod second_factor;
mod session;
pub mod types;

use std::sync::{Arc, Mutex, atomic::AtomicUsize};

use async_graphql::{Context, MergedObject, Schema, SchemaBuilder};

use crate::{
    auth::{principal::Principal, rate_limit::IpKey},
    error::AppError,
    service::{ClientInfo, Services},
};

#[derive(MergedObject, Default)]
pub struct Query(account::AccountQuery, admin::AdminQuery, events::EventQuery);

#[derive(MergedObject, Default)]
pub struct Mutation(
    account::AccountMutation,
    session::SessionMutation,
    admin::AdminMutation,
    recovery::RecoveryMutation,
    second_factor::SecondFactorMutation,
);

pub type AppSchema = Schema<Query, Mutation, live::Subscription>;

/// What the HTTP layer learned about one request, handed to every resolver,
/// and what the resolvers want done to the refresh cookie.
#[derive(Debug)]
pub struct RequestCtx {
    pub principal: Principal,
    pub client: ClientInfo,
    /// The refresh token from the cookie, if one came.
    pub refresh_cookie: Option<String>,
    /// The request came from a site that is neither ours nor an allowed origin.
    pub cross_site: bool,
    /// The client address as rate limits count it.
    pub ip_key: IpKey,
    /// Credential-checking fields seen so far in this HTTP request (all batch
    /// operations together), or on this WebSocket.
    pub credential_fields: AtomicUsize,
    /// The request came over the subscriptions' WebSocket, which serves
    /// subscriptions only (a cookie cannot be set there, and HTTP is where
    /// queries and mutations have their limits and logs).
    pub over_websocket: bool,
}

/// What should happen to the refresh cookie: a resolver records it in its
/// operation's [`CookieChanges`], the HTTP layer (which owns the cookie's name
/// and attributes) writes it.
#[derive(Clone, PartialEq, Eq)]
pub enum CookieChange {
    /// Carry this refresh token for `max_age_secs` seconds (its remaining lifetime).
    Set { refresh_token: String, max_age_secs: i64 },
    /// Delete the cookie.
    Clear,
}

/// Says what happens to the cookie, never the token.
impl std::fmt::Debug for CookieChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CookieChange::Set { max_age_secs, .. } => {
                f.debug_struct("Set").field("max_age_secs", max_age_secs).finish_non_exhaustive()
            }
            CookieChange::Clear => f.write_str("Clear"),
        }
    }
}

/// The cookie changes of one operation, in the order its resolvers made them.
/// Each operation of a batch has its own: the operations of a batch run
/// concurrently, and the HTTP layer writes the changes of the last operation,
/// in request order, that made any.
#[derive(Debug, Default)]
pub struct CookieChanges(Mutex<Vec<CookieChange>>);

impl CookieChanges {
    pub fn record(&self, change: CookieChange) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(change);
    }

    pub fn take(&self) -> Vec<CookieChange> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Records a change of the refresh cookie for the HTTP layer to write.
pub(crate) fn change_cookie(ctx: &Context<'_>, change: CookieChange) -> Result<(), AppError> {
    ctx.data::<Arc<CookieChanges>>()
        .map_err(|_| AppError::internal("cookie changes missing from request data"))?
        .record(change);
    Ok(())
}

pub type SharedRequestCtx = Arc<RequestCtx>;

/// Query limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub depth: usize,
    pub complexity: usize,
    pub aliases: usize,
    pub introspection: bool,
}

/// How many distinct documents are kept parsed (see `documents.rs`).
const DOCUMENTS_KEPT: std::num::NonZeroUsize = std::num::NonZeroUsize::new(256).unwrap();

/// The cache of parsed documents that the schema and the HTTP layer share.
pub fn document_cache() -> Arc<documents::DocumentCache> {
    Arc::new(documents::DocumentCache::new(DOCUMENTS_KEPT))
}

/// The schema without runtime data: enough for `print-schema`.
pub fn schema_builder(
    limits: Limits,
    documents: Arc<documents::DocumentCache>,
) -> SchemaBuilder<Query, Mutation, live::Subscription> {
    let mut builder = Schema::build(Query::default(), Mutation::default(), live::Subscription)
        .limit_depth(limits.depth)
        .limit_complexity(limits.complexity)
        .limit_directives(10)
        .extension(guard::RequestGuard { max_aliases: limits.aliases, introspection: limits.introspection, documents });
    if !limits.introspection {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder
}

/// The SDL that `schema.graphql` must equal.
pub fn sdl() -> String {
    let limits = Limits { depth: usize::MAX, complexity: usize::MAX, aliases: usize::MAX, introspection: true };
    schema_builder(limits, document_cache()).finish().sdl()
}

pub fn build_schema(limits: Limits, documents: Arc<documents::DocumentCache>, services: Services) -> AppSchema {
    let sessions = async_graphql::dataloader::DataLoader::new(types::SessionsByUser(services.clone()), tokio::spawn);
    let factors = async_graphql::dataloader::DataLoader::new(types::FactorsByUser(services.clone()), tokio::spawn);
    schema_builder(limits, documents).data(services).data(sessions).data(factors).finish()
}

/// A string extension of an error the engine reports (`code`, `reason`).
pub(crate) fn error_extension(err: &async_graphql::ServerError, name: &str) -> Option<String> {
    match err.extensions.as_ref().and_then(|e| e.get(name)) {
        Some(async_graphql::Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

pub(crate) fn services<'a>(ctx: &Context<'a>) -> Result<&'a Services, AppError> {
    ctx.data::<Services>().map_err(|_| AppError::internal("services missing from schema data"))
}

pub(crate) fn request<'a>(ctx: &Context<'a>) -> Result<&'a RequestCtx, AppError> {
    ctx.data::<SharedRequestCtx>().map(|r| r.as_ref()).map_err(|_| AppError::internal("request context missing"))
}

/// Step-up for what outlives a stolen session (an API key, a role, a factor
/// reset): an admin's session must have signed in within
/// `REAUTHENTICATION_MAX_AGE`. API keys are not sessions and pass.
/// Errors: `REAUTHENTICATION_REQUIRED`, `TOKEN_REVOKED`.
pub(crate) async fn require_recent_admin(ctx: &Context<'_>) -> Result<(), AppError> {
    match request(ctx)?.principal.user() {
        Some(admin) => crate::service::core::factors::require_recent_auth(services(ctx)?, admin.session_id).await,
        None => Ok(()),
    }
}

/// Cookie-reading and cookie-setting mutations refuse cross-site callers.
pub(crate) fn require_same_site(req: &RequestCtx) -> Result<(), AppError> {
    if req.cross_site { Err(AppError::CrossSiteRequest) } else { Ok(()) }
}

/// Hands a freshly issued session to the client by the chosen transport: the
/// refresh token in the cookie (and never in JSON), or in the body.
pub(crate) fn deliver(
    ctx: &Context<'_>,
    issued: crate::service::Issued,
    transport: types::TokenTransport,
) -> Result<types::AuthPayload, AppError> {
    let refresh_token = match transport {
        types::TokenTransport::Cookie => {
            let max_age_secs = (issued.refresh_expires_at - services(ctx)?.clock.now()).num_seconds().max(0);
            change_cookie(ctx, CookieChange::Set { refresh_token: issued.refresh_token, max_age_secs })?;
            None
        }
        types::TokenTransport::Body => Some(issued.refresh_token),
    };
    Ok(types::AuthPayload {
        access_token: issued.access.token,
        token_type: "Bearer".to_owned(),
        expires_in: i32::try_from(issued.access.expires_in).unwrap_or(i32::MAX),
        refresh_token,
        user: types::User::own(issued.user, issued.session_id),
    })
}

//! HTTP: routes, GraphQL over HTTP, GraphiQL, health, cookies, cross-site checks,
//! CORS and the request log.

pub mod cookies;
pub mod error_text;
mod graphiql;
mod graphql;
mod health;
pub mod log;
pub mod metrics;
pub mod site;
pub mod subscriptions;
mod well_known;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route, get, middleware::CatchPanic};

use ipnet::IpNet;

use crate::{
    db,
    graphql::{AppSchema, documents::DocumentCache},
    http::{cookies::CookiePolicy, site::SitePolicy},
    service::Services,
};

pub fn routes(state: Arc<AppState>) -> impl Endpoint {
    let mut route = Route::new()
        .at("/graphql", get(subscriptions::GetOrUpgrade).post(graphql::graphql_post))
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(health::readyz))
        .at("/.well-known/jwks.json", get(well_known::jwks))
        .at("/.well-known/openid-configuration", get(well_known::openid_configuration));
    if state.graphiql {
        route = route.at("/", get(graphiql::graphiql)).at("/graphiql/:name", get(graphiql::asset));
    }
    route
        .with(site::Cors::new(state.site.clone()))
        .with(CatchPanic::new())
        .with(log::RequestLog::new(state.trusted_proxies.clone()))
        .data(state)
}

/// Everything a request handler needs, built once.
pub struct AppState {
    pub schema: AppSchema,
    /// Parsed documents, shared with the schema's request guard.
    pub documents: Arc<DocumentCache>,
    pub services: Services,
    /// `/readyz`'s own database connection.
    pub readiness: db::Readiness,
    pub cookies: CookiePolicy,
    pub site: SitePolicy,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: usize,
    pub max_batch_size: usize,
    pub graphiql: bool,
    /// On a database several instances share, where this one follows the
    /// session change log from (see `service::core::store`).
    pub feed_from: Option<i64>,
    /// The subscriptions' sockets open per session.
    pub sockets: Arc<subscriptions::OpenSockets>,
}

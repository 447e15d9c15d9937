//! HTTP: routes, GraphQL over HTTP, GraphiQL, health, cookies, cross-site checks,
//! CORS and the request log.

pub mod cookies;
pub mod error_text;
mod graphiql;
mod graphql;
mod health;
pub mod log;
pub mod site;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route, get, middleware::CatchPanic};

use crate::app::AppState;

pub fn routes(state: Arc<AppState>) -> impl Endpoint {
    let mut route = Route::new()
        .at("/graphql", get(graphql::graphql_get).post(graphql::graphql_post))
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(health::readyz));
    if state.graphiql {
        route = route.at("/", get(graphiql::graphiql)).at("/graphiql/:name", get(graphiql::asset));
    }
    route
        .with(site::Cors::new(state.site.clone()))
        .with(CatchPanic::new())
        .with(log::RequestLog::new(state.trusted_proxies.clone()))
        .data(state)
}

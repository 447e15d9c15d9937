//! `GET /metrics` (Prometheus text format), served on `METRICS_ADDR`, apart
//! from the public routes, so that it is never exposed by accident.

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Response, Route, get, handler, web::Data};

use super::AppState;
use crate::service::core::gauges;

/// The routes of the metrics listener: `/metrics` and nothing else.
pub fn routes(state: Arc<AppState>, handle: metrics_exporter_prometheus::PrometheusHandle) -> impl Endpoint {
    Route::new().at("/metrics", get(scrape)).data(state).data(handle)
}

/// Reads the gauges that need the database (a failure leaves their last
/// values and is logged), then renders every metric of the process.
#[handler]
async fn scrape(state: Data<&Arc<AppState>>, handle: Data<&metrics_exporter_prometheus::PrometheusHandle>) -> Response {
    match gauges::read(&state.services).await {
        Ok(g) => crate::metrics::set_gauges(&g),
        Err(e) => tracing::warn!(error = %e.detail(), "metrics: the gauges could not be read"),
    }
    handle.run_upkeep();
    Response::builder().content_type("text/plain; version=0.0.4; charset=utf-8").body(handle.render())
}

use std::sync::Arc;

use poem::{handler, http::StatusCode, web::Data};

use super::AppState;

/// Liveness: the process serves.
#[handler]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers (see [`crate::db::Readiness`]).
#[handler]
pub async fn readyz(state: Data<&Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.readiness.check().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

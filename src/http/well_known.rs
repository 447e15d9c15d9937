//! Discovery for services that verify authgraph's tokens themselves (API
//! gateways, other backends): the JWK Set of the public signing keys (RFC 7517
//! section 5) and a minimal OpenID Provider metadata document (OpenID Connect
//! Discovery 1.0 section 3) that points at it.

use std::sync::Arc;

use poem::{Request, Response, handler, http::header, web::Data};

use super::AppState;
use crate::config::JWKS_MAX_AGE_SECS;

/// `GET /.well-known/jwks.json`: the public keys, each with `kid`, `alg` and
/// `use: sig`; `{"keys": []}` on an HS256 install (its secret is never shown).
#[handler]
pub async fn jwks(state: Data<&Arc<AppState>>) -> Response {
    json(&state.services.tokens.jwks(), JWKS_MAX_AGE_SECS)
}

/// `GET /.well-known/openid-configuration`: `issuer` (`JWT_ISSUER`) and
/// `jwks_uri`, absolute: under `JWT_ISSUER` when it is a URL, else under the
/// scheme and host this request came to: `http` (the server speaks plain
/// HTTP), or what `X-Forwarded-Proto` says when a trusted proxy
/// (`TRUSTED_PROXIES`) sent it.
#[handler]
pub async fn openid_configuration(req: &Request, state: Data<&Arc<AppState>>) -> Response {
    let issuer = state.services.tokens.issuer();
    let from_issuer = issuer.starts_with("https://") || issuer.starts_with("http://");
    let base = if from_issuer {
        issuer.trim_end_matches('/').to_owned()
    } else {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let peer = req.remote_addr().as_socket_addr().map(|a| crate::auth::client_ip::canonical(a.ip()));
        let from_proxy = peer.is_some_and(|ip| state.trusted_proxies.iter().any(|net| net.contains(&ip)));
        let forwarded = req.headers().get("x-forwarded-proto").and_then(|h| h.to_str().ok()).map(str::trim);
        let scheme = match forwarded {
            Some("https") if from_proxy => "https",
            _ => "http",
        };
        format!("{scheme}://{host}")
    };
    let algs = state.services.tokens.algorithms();
    let doc = serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": algs,
    });
    let mut response = json(&doc, JWKS_MAX_AGE_SECS);
    if !from_issuer {
        // Built from this request's headers: no shared cache may hand it to
        // a request that came with others.
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("private, max-age=300"));
        headers.insert(header::VARY, header::HeaderValue::from_static("Host, X-Forwarded-Proto"));
    }
    response
}

fn json(body: &serde_json::Value, max_age: u64) -> Response {
    Response::builder()
        .content_type("application/json")
        .header(header::CACHE_CONTROL, format!("public, max-age={max_age}"))
        .body(body.to_string())
}

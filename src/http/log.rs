//! The request log: one INFO line per request, inside a `request` span that the
//! handlers' own spans and events nest under.
//!
//! The line names the method, the path without its query string (a GET
//! `/graphql` carries its variables there, tokens included), the status, the
//! duration and the client's address as the GraphQL handler resolves it: the
//! socket peer, or `X-Forwarded-For` only from `TRUSTED_PROXIES`. A GraphQL
//! request adds its `request_id` (the `requestId` of its internal errors), its
//! `operation` (the operation names it sent, letters, digits and `_` only)
//! and its `outcome` (`OK`, or the first error's reason or code).

use std::{net::IpAddr, time::Instant};

use ipnet::IpNet;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use tracing::{Instrument, field};

use crate::auth::client_ip::client_ip;

/// Longest path written to the log, in characters; longer ones are cut with `…`.
const MAX_LOGGED_PATH_CHARS: usize = 200;

/// The client's address for a request: the socket peer, unless the peer is one
/// of `trusted` proxies (then its `X-Forwarded-For`, see
/// [`crate::auth::client_ip`]). `None` when the peer is not an IP socket.
pub fn request_client_ip(req: &Request, trusted: &[IpNet]) -> Option<IpAddr> {
    let forwarded: Vec<&str> =
        req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    client_ip(req.remote_addr().as_socket_addr().map(|a| a.ip()), &forwarded, trusted)
}

/// Logs every request once it is answered (see the module documentation).
pub struct RequestLog {
    trusted_proxies: Vec<IpNet>,
}

impl RequestLog {
    /// `trusted_proxies`: the configured `TRUSTED_PROXIES`.
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        Self { trusted_proxies }
    }
}

impl<E: Endpoint> Middleware<E> for RequestLog {
    type Output = RequestLogEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        RequestLogEndpoint { inner, trusted_proxies: self.trusted_proxies.clone() }
    }
}

pub struct RequestLogEndpoint<E> {
    inner: E,
    trusted_proxies: Vec<IpNet>,
}

impl<E: Endpoint> Endpoint for RequestLogEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            path = %logged_path(req.original_uri().path()),
            client_ip = field::Empty,
            request_id = field::Empty,
            operation = field::Empty,
            outcome = field::Empty,
        );
        if let Some(ip) = request_client_ip(&req, &self.trusted_proxies) {
            span.record("client_ip", field::display(ip));
        }
        async move {
            let started = Instant::now();
            let result = self.inner.call(req).await;
            // Microsecond resolution, written as milliseconds.
            let duration_ms = started.elapsed().as_micros() as f64 / 1000.0;
            match result {
                Ok(resp) => {
                    let resp = resp.into_response();
                    tracing::info!(status = resp.status().as_u16(), duration_ms, "response");
                    Ok(resp)
                }
                // Routing errors (404, 405) and the like; their text is not logged.
                Err(err) => {
                    tracing::info!(status = err.status().as_u16(), duration_ms, "response");
                    Err(err)
                }
            }
        }
        .instrument(span)
        .await
    }
}

fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.char_indices().nth(MAX_LOGGED_PATH_CHARS) {
        None => path.into(),
        Some((cut, _)) => format!("{}…", &path[..cut]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut() {
        assert_eq!(logged_path("/graphql"), "/graphql");
        let long = format!("/{}", "é".repeat(500));
        let logged = logged_path(&long);
        assert_eq!(logged.chars().count(), MAX_LOGGED_PATH_CHARS + 1);
        assert!(logged.ends_with('…'));
    }
}

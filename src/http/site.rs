//! Where a request comes from: same origin, an allowed cross-origin app, or a
//! foreign site. Cookie-carrying mutations refuse foreign sites (CSRF), and CORS
//! answers only allowed origins, by exact match.
//!
//! poem's `Cors` middleware is not used because it echoes any origin when its
//! list is empty and refuses same-origin requests whose `Origin` is not listed.

use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response, Result,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
};

use crate::config::Origin;

#[derive(Debug, Clone, Default)]
pub struct SitePolicy {
    allowed: Vec<Origin>,
}

impl SitePolicy {
    pub fn new(allowed: Vec<Origin>) -> Self {
        Self { allowed }
    }

    fn allowed_origin(&self, origin: &str) -> bool {
        Origin::parse(origin).is_ok_and(|o| self.allowed.contains(&o))
    }

    /// True when a browser sent this request on behalf of a page that is neither
    /// ours nor an allowed origin. Requests without browser headers (native apps,
    /// services, curl) are not cross-site.
    pub fn is_cross_site(&self, headers: &HeaderMap) -> bool {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if let Some(origin) = headers.get(header::ORIGIN) {
            let Ok(origin) = origin.to_str() else { return true };
            return !(self.allowed_origin(origin) || same_origin(origin, host));
        }
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
            return true;
        }
        if let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
            let origin = referer_origin(referer);
            return !(self.allowed_origin(origin) || same_origin(origin, host));
        }
        false
    }
}

/// `scheme://authority` of a URL.
fn referer_origin(url: &str) -> &str {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?', '#']).map_or(url.len(), |j| i + 3 + j);
            &url[..end]
        }
        None => url,
    }
}

/// Does `origin` name this server (the `Host` it was reached at)?
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let strip = |a: &str, default: &str| {
        a.to_ascii_lowercase().strip_suffix(default).map(str::to_owned).unwrap_or_else(|| a.to_ascii_lowercase())
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
    strip(authority, default_port) == strip(host, default_port)
}

/// CORS for allowed origins only: exact echo with credentials, `Vary: Origin`
/// always, never `*`.
pub struct Cors {
    policy: SitePolicy,
}

impl Cors {
    pub fn new(policy: SitePolicy) -> Self {
        Self { policy }
    }
}

impl<E: Endpoint> Middleware<E> for Cors {
    type Output = CorsEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        CorsEndpoint { inner: ep, policy: self.policy.clone() }
    }
}

pub struct CorsEndpoint<E> {
    inner: E,
    policy: SitePolicy,
}

const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
const DEFAULT_ALLOW_HEADERS: &str =
    "content-type, authorization, x-api-key, apollo-require-preflight, x-apollo-operation-name";

impl<E: Endpoint> Endpoint for CorsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| self.policy.allowed_origin(o)))
            .cloned();
        let preflight =
            req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::VARY,
                HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            );
            if let Some(origin) = origin {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
                h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
                let requested = req
                    .headers()
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOW_HEADERS));
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
                h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            }
            return Ok(resp);
        }
        let mut resp = self.inner.call(req).await?.into_response();
        let h = resp.headers_mut();
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn classifies_requests() {
        let p = SitePolicy::new(vec![Origin::parse("https://app.example.com").unwrap()]);
        let host = ("host", "auth.example.com");
        assert!(!p.is_cross_site(&headers(&[host])), "no browser headers");
        assert!(!p.is_cross_site(&headers(&[host, ("origin", "https://auth.example.com")])));
        assert!(!p.is_cross_site(&headers(&[host, ("origin", "https://app.example.com")])));
        assert!(p.is_cross_site(&headers(&[host, ("origin", "https://app.example.com.evil.io")])));
        assert!(p.is_cross_site(&headers(&[host, ("origin", "null")])));
        assert!(p.is_cross_site(&headers(&[host, ("origin", "https://evil.io")])));
        assert!(p.is_cross_site(&headers(&[host, ("sec-fetch-site", "cross-site")])));
        assert!(p.is_cross_site(&headers(&[host, ("referer", "https://evil.io/page")])));
        assert!(!p.is_cross_site(&headers(&[host, ("referer", "https://auth.example.com/x?y")])));
        assert!(!p.is_cross_site(&headers(&[("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:8000")])));
        assert!(p.is_cross_site(&headers(&[("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:9000")])));
        assert!(
            !p.is_cross_site(&headers(&[("host", "auth.example.com:443"), ("origin", "https://auth.example.com")]))
        );
    }
}

//! CSRF and CORS: cookie-carrying mutations refuse foreign sites (and change
//! nothing when they do), and CORS answers allowed origins only, by exact match.

use std::time::Duration;

use authgraph::config::Origin;
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const ALLOWED: &str = "http://app.example.test";
const LOOKALIKE: &str = "http://app.example.test.evil.io";

/// What a page on a foreign site makes a browser send, one way or another.
fn foreign_sites() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("referer", "https://evil.example/attack.html")],
        vec![("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
    ]
}

/// POSTs `query` with these headers, optionally the refresh cookie and a bearer token.
async fn post_from(
    app: &TestApp,
    headers: &[(&str, &str)],
    cookie: Option<&str>,
    token: Option<&str>,
    query: &str,
    vars: Value,
) -> Response {
    let mut req = bare().post(app.url("/graphql")).json(&json!({ "query": query, "variables": vars }));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(c) = cookie {
        req = req.header("cookie", format!("{COOKIE}={c}"));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

/// The values of the refresh cookies a response sets.
fn refresh_cookies(resp: &Response) -> Vec<String> {
    set_cookies(resp)
        .iter()
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .filter(|(n, _)| *n == COOKIE)
        .map(|(_, v)| v.to_owned())
        .collect()
}

fn assert_cross_site_refused(v: &Value, what: &str) {
    assert_eq!(code(v), "FORBIDDEN", "{what}: {v}");
    assert_eq!(reason(v), "CROSS_SITE_REQUEST", "{what}: {v}");
    assert!(v["data"].is_null(), "{what}: {v}");
}

/// Registers with the COOKIE transport from the server's own origin; returns (access, cookie value).
async fn register_cookie(app: &TestApp, email: &str) -> (String, String) {
    let own = own_origin(app);
    let r = post_from(
        app,
        &[("origin", own.as_str())],
        None,
        None,
        ops::REGISTER_TOKENS,
        json!({ "i": { "email": email, "password": PASSWORD } }),
    )
    .await;
    let cookies = refresh_cookies(&r);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(cookies.len(), 1);
    (v["data"]["register"]["accessToken"].as_str().unwrap().to_owned(), cookies[0].clone())
}

fn own_origin(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// Refreshes with `cookie` from `headers`; returns (body, new cookie values).
async fn refresh_from(app: &TestApp, headers: &[(&str, &str)], cookie: &str) -> (Value, Vec<String>) {
    let r = post_from(app, headers, Some(cookie), None, ops::REFRESH_COOKIE, json!({})).await;
    assert_eq!(r.status(), 200);
    let cookies = refresh_cookies(&r);
    (r.json().await.unwrap(), cookies)
}

async fn me_works(app: &TestApp, token: &str) -> bool {
    let v = app.gql(&bare(), Some(token), ops::ME_ID, json!({})).await;
    v["data"]["me"]["id"].is_string()
}

#[tokio::test]
async fn cookie_mutations_from_foreign_sites_are_refused_and_change_nothing() {
    // No grace window: had any refused request rotated the cookie, presenting it
    // again below would count as reuse and fail.
    let app = spawn_with(|c| c.refresh_reuse_grace = Duration::ZERO).await;
    let (access, c0) = register_cookie(&app, "csrf@example.com").await;

    for headers in foreign_sites() {
        let what = format!("{headers:?}");
        // Refresh from the cookie.
        let (v, set) = refresh_from(&app, &headers, &c0).await;
        assert_cross_site_refused(&v, &format!("refresh {what}"));
        assert!(set.iter().all(String::is_empty), "refused refresh set a live cookie: {set:?}");

        // Logout (with the cookie and the access token, as a browser tab would have).
        for q in [ops::LOGOUT, ops::LOGOUT_EVERYWHERE] {
            let r = post_from(&app, &headers, Some(&c0), Some(&access), q, json!({})).await;
            assert!(refresh_cookies(&r).is_empty(), "refused logout touched the cookie: {:?}", set_cookies(&r));
            assert_cross_site_refused(&r.json().await.unwrap(), &format!("logout {what}"));
        }

        // Login and register with the default COOKIE transport (login CSRF).
        let r = post_from(
            &app,
            &headers,
            None,
            None,
            ops::LOGIN_TOKENS,
            json!({ "i": { "email": "csrf@example.com", "password": PASSWORD } }),
        )
        .await;
        assert!(refresh_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
        assert_cross_site_refused(&r.json().await.unwrap(), &format!("login {what}"));
        let r = post_from(
            &app,
            &headers,
            None,
            None,
            ops::REGISTER_TOKENS,
            json!({ "i": { "email": "csrf-new@example.com", "password": PASSWORD, "transport": "COOKIE" } }),
        )
        .await;
        assert!(refresh_cookies(&r).is_empty(), "{:?}", set_cookies(&r));
        assert_cross_site_refused(&r.json().await.unwrap(), &format!("register {what}"));
    }

    // Nothing happened: the session is alive, the very same cookie still
    // refreshes from our own origin, and that refresh rotates it.
    assert!(me_works(&app, &access).await, "a refused logout ended the session");
    let own = own_origin(&app);
    let (v, set) = refresh_from(&app, &[("origin", own.as_str())], &c0).await;
    assert!(v["errors"].is_null(), "the cookie was consumed by a refused request: {v}");
    assert_eq!(set.len(), 1);
    assert!(!set[0].is_empty() && set[0] != c0, "no fresh cookie: {set:?}");
    assert!(me_works(&app, v["data"]["refreshToken"]["accessToken"].as_str().unwrap()).await);
    // The refused register created nothing: the address is still free.
    register_cookie(&app, "csrf-new@example.com").await;
}

#[tokio::test]
async fn same_origin_and_allowed_origins_may_use_the_cookie() {
    let app = spawn_with(|c| {
        c.cors_allowed_origins = vec![Origin::parse(ALLOWED).unwrap()];
        c.refresh_reuse_grace = Duration::ZERO;
    })
    .await;
    let (_, mut cookie) = register_cookie(&app, "allowed@example.com").await;
    let own = own_origin(&app);
    let own_page = format!("{own}/app/index.html?x=1");
    let allowed_page = format!("{ALLOWED}/login");
    let ok: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("origin", own.as_str())],
        vec![("origin", ALLOWED)],
        vec![("origin", ALLOWED), ("sec-fetch-site", "same-site")],
        vec![("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
        vec![("referer", own_page.as_str())],
        vec![("referer", allowed_page.as_str())],
    ];
    for headers in &ok {
        let (v, set) = refresh_from(&app, headers, &cookie).await;
        assert!(v["errors"].is_null(), "{headers:?} was refused: {v}");
        assert_eq!(set.len(), 1, "{headers:?}");
        assert_ne!(set[0], cookie);
        cookie = set[0].clone();
    }

    // Near misses are foreign: a lookalike host, another scheme, another port.
    let lookalike_page = format!("{LOOKALIKE}/x");
    let other_port = format!("http://{}:1", app.addr.ip());
    let near: Vec<Vec<(&str, &str)>> = vec![
        vec![("origin", LOOKALIKE)],
        vec![("referer", lookalike_page.as_str())],
        vec![("origin", "https://app.example.test")],
        vec![("origin", "http://app.example.test:8080")],
        vec![("origin", "http://example.test")],
        vec![("origin", other_port.as_str())],
    ];
    for headers in &near {
        let (v, set) = refresh_from(&app, headers, &cookie).await;
        assert_cross_site_refused(&v, &format!("{headers:?}"));
        assert!(set.iter().all(String::is_empty), "{headers:?}: {set:?}");
    }
    // Still the same live cookie (no grace window: a rotation would show).
    let (v, set) = refresh_from(&app, &[("origin", ALLOWED)], &cookie).await;
    assert!(v["errors"].is_null(), "{v}");
    let access = v["data"]["refreshToken"]["accessToken"].as_str().unwrap().to_owned();
    cookie = set[0].clone();

    // Login and logout from the allowed origin work too.
    let r = post_from(
        &app,
        &[("origin", ALLOWED)],
        None,
        None,
        ops::LOGIN_TOKENS,
        json!({ "i": { "email": "allowed@example.com", "password": PASSWORD } }),
    )
    .await;
    assert_eq!(refresh_cookies(&r).len(), 1);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
    let r = post_from(&app, &[("origin", ALLOWED)], Some(&cookie), Some(&access), ops::LOGOUT, json!({})).await;
    assert_eq!(refresh_cookies(&r), vec![String::new()], "logout clears the cookie");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({ "data": { "logout": true } }));
    assert!(!me_works(&app, &access).await, "logout from the allowed origin did not end the session");
}

#[tokio::test]
async fn body_transport_needs_no_site_check() {
    // Without a cookie there is nothing to forge: native clients send no Origin
    // at all, and a token in the body cannot be sent by a foreign page unknowingly.
    let app = spawn_app().await;
    let (_, t0, _) = app.register_body("native-xs@example.com").await;
    let r = post_from(
        &app,
        &[],
        None,
        None,
        "mutation($t: String) { refreshToken(refreshToken: $t) { refreshToken } }",
        json!({ "t": t0 }),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert!(v["data"]["refreshToken"]["refreshToken"].is_string(), "{v}");
}

// ---------------------------------------------------------------------------
// CORS

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn vary(r: &Response) -> String {
    r.headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase()
}

async fn preflight(app: &TestApp, origin: &str) -> Response {
    bare()
        .request(Method::OPTIONS, app.url("/graphql"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, authorization")
        .send()
        .await
        .unwrap()
}

async fn post_origin(app: &TestApp, origin: &str) -> Response {
    post_from(app, &[("origin", origin)], None, None, ops::TYPENAME, json!({})).await
}

fn assert_no_cors(r: &Response, what: &str) {
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "{what}: Access-Control-Allow-Origin must be absent: {:?}",
        r.headers()
    );
    assert!(r.headers().get("access-control-allow-credentials").is_none(), "{what}: {:?}", r.headers());
}

#[tokio::test]
async fn cors_answers_allowed_origins_exactly() {
    let app = spawn_with(|c| {
        c.cors_allowed_origins =
            vec![Origin::parse(ALLOWED).unwrap(), Origin::parse("https://second.example.test:8443").unwrap()]
    })
    .await;
    for origin in [ALLOWED, "https://second.example.test:8443"] {
        let r = preflight(&app, origin).await;
        assert_eq!(r.status(), 204, "{origin}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some(origin), "{:?}", r.headers());
        assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
        assert!(vary(&r).contains("origin"), "{:?}", r.headers());
        let methods = header(&r, "access-control-allow-methods").unwrap_or_default().to_ascii_uppercase();
        assert!(methods.contains("POST"), "{methods}");
        let allowed = header(&r, "access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        assert!(allowed.contains("content-type") && allowed.contains("authorization"), "{allowed}");

        let r = post_origin(&app, origin).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "access-control-allow-origin"), Some(origin), "{:?}", r.headers());
        assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
        assert!(vary(&r).contains("origin"), "{:?}", r.headers());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"]["__typename"], "Query");
    }

    let other_port = format!("http://{}:1", app.addr.ip());
    for origin in [
        "https://evil.example",
        LOOKALIKE,
        "https://app.example.test",
        "http://app.example.test:8080",
        "http://sub.app.example.test",
        "null",
        other_port.as_str(),
    ] {
        let r = preflight(&app, origin).await;
        assert!(r.status().as_u16() < 500, "{origin}: {}", r.status());
        assert_no_cors(&r, &format!("preflight from {origin}"));
        assert!(vary(&r).contains("origin"), "caches must key on Origin: {:?}", r.headers());
        let r = post_origin(&app, origin).await;
        assert_no_cors(&r, &format!("POST from {origin}"));
        assert!(vary(&r).contains("origin"), "{:?}", r.headers());
    }
}

#[tokio::test]
async fn cors_with_an_empty_allow_list_echoes_nothing() {
    let app = spawn_app().await;
    assert!(app.config.cors_allowed_origins.is_empty());
    let own = own_origin(&app);
    for origin in ["https://evil.example", "http://localhost:3000", ALLOWED, "null"] {
        let r = preflight(&app, origin).await;
        assert!(r.status().as_u16() < 500, "{origin}: {}", r.status());
        assert_no_cors(&r, &format!("preflight from {origin}"));
        let r = post_origin(&app, origin).await;
        assert_no_cors(&r, &format!("POST from {origin}"));
        for v in r.headers().values() {
            assert_ne!(v.to_str().unwrap_or_default().trim(), "*", "a wildcard was sent: {:?}", r.headers());
        }
    }
    // The same-origin page still works (it needs no CORS).
    let r = post_origin(&app, &own).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["__typename"], "Query");
}

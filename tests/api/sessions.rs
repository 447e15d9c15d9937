//! Sessions done right: refresh rotation with a grace window and reuse
//! detection, logout that kills tokens at once, session listing and revocation,
//! expiry.

use std::{collections::HashSet, time::Duration};

use futures_util::future::join_all;
use reqwest::{Client, Response};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const SECURE_COOKIE: &str = "__Host-refresh_token";
/// `ops::REFRESH_COOKIE`, asking for `expiresIn` as well.
const REFRESH_COOKIE: &str = "mutation { refreshToken { accessToken expiresIn refreshToken } }";
const SESSIONS: &str = "{ me { id sessions { id current userAgent ip createdAt lastUsedAt expiresAt } } }";

/// One `Set-Cookie` header, split up.
#[derive(Debug, Clone)]
struct SetCookie {
    /// The header as messages show it: its value (a refresh token) left out.
    raw: String,
    name: String,
    value: String,
    /// Attributes as (lower-cased name, value).
    attrs: Vec<(String, String)>,
}

impl SetCookie {
    fn parse(raw: &str) -> Self {
        let mut parts = raw.split(';').map(str::trim);
        let (name, value) = parts.next().unwrap().split_once('=').expect("name=value");
        let attrs = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_owned()),
                None => (p.to_ascii_lowercase(), String::new()),
            })
            .collect();
        let attrs: Vec<(String, String)> = attrs;
        let shown: Vec<String> =
            attrs.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect();
        let kind = if value.is_empty() { "" } else { "<token>" };
        Self {
            raw: format!("{name}={kind}; {}", shown.join("; ")),
            name: name.to_owned(),
            value: value.to_owned(),
            attrs,
        }
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    fn max_age(&self) -> i64 {
        self.attr("max-age").unwrap_or_else(|| panic!("no Max-Age: {}", self.raw)).parse().unwrap()
    }

    /// The contract's flags: HttpOnly, SameSite=Strict, Path=/, no Domain.
    fn assert_strict(&self) {
        assert!(self.has("httponly"), "not HttpOnly: {}", self.raw);
        assert_eq!(self.attr("samesite").map(str::to_ascii_lowercase).as_deref(), Some("strict"), "{}", self.raw);
        assert_eq!(self.attr("path"), Some("/"), "{}", self.raw);
        assert!(!self.has("domain"), "has a Domain: {}", self.raw);
    }
}

/// The `Set-Cookie` headers of a response that set cookie `name`.
fn cookies_named(resp: &Response, name: &str) -> Vec<SetCookie> {
    set_cookies(resp).iter().map(|c| SetCookie::parse(c)).filter(|c| c.name == name).collect()
}

/// The one `Set-Cookie` for `name` in a response.
fn the_cookie(resp: &Response, name: &str) -> SetCookie {
    let mut all = cookies_named(resp, name);
    let shown: Vec<String> = set_cookies(resp).iter().map(|c| SetCookie::parse(c).raw).collect();
    assert_eq!(all.len(), 1, "expected one {name} cookie, got {shown:?}");
    all.pop().unwrap()
}

fn no_store(resp: &Response) {
    assert_eq!(
        resp.headers().get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{:?}",
        resp.headers()
    );
}

async fn json_of(resp: Response) -> Value {
    resp.json().await.expect("json body")
}

/// POSTs `query` with an explicit refresh cookie (named `name`) and no jar.
async fn post_cookie(
    app: &TestApp,
    name: &str,
    value: &str,
    token: Option<&str>,
    query: &str,
    vars: Value,
) -> Response {
    let mut req = bare()
        .post(app.url("/graphql"))
        .header("cookie", format!("{name}={value}"))
        .json(&json!({ "query": query, "variables": vars }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

/// Refreshes with the BODY transport; returns the JSON body.
async fn refresh_body(app: &TestApp, token: &str) -> Value {
    app.gql(&bare(), None, ops::REFRESH_BODY, json!({ "t": token })).await
}

/// Refreshes with the BODY transport; panics unless it worked; returns (access, refresh).
async fn rotate_body(app: &TestApp, token: &str) -> (String, String) {
    let v = refresh_body(app, token).await;
    assert!(v["errors"].is_null(), "refresh failed: {v}");
    let p = &v["data"]["refreshToken"];
    (p["accessToken"].as_str().unwrap().to_owned(), p["refreshToken"].as_str().unwrap().to_owned())
}

async fn me(app: &TestApp, token: &str) -> Value {
    app.gql(&bare(), Some(token), ops::ME_ID_EMAIL, json!({})).await
}

/// Panics unless `token` works on `me`; returns the user id.
async fn assert_live(app: &TestApp, token: &str) -> String {
    let v = me(app, token).await;
    assert!(v["errors"].is_null(), "access token refused: {v}");
    v["data"]["me"]["id"].as_str().expect("me.id").to_owned()
}

/// Panics unless `token` is refused on `me` with `reason`.
async fn assert_refused(app: &TestApp, token: &str, reason_: &str) {
    let v = me(app, token).await;
    assert!(v["data"].is_null() || v["data"]["me"].is_null(), "access token still works: {v}");
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), reason_, "{v}");
}

/// Panics unless a BODY refresh of `token` fails with UNAUTHENTICATED/`reason_`
/// (any reason when `None`).
async fn assert_refresh_fails(app: &TestApp, token: &str, reason_: Option<&str>) {
    let v = refresh_body(app, token).await;
    assert!(v["data"].is_null() || v["data"]["refreshToken"].is_null(), "refresh still works: {v}");
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    if let Some(r) = reason_ {
        assert_eq!(reason(&v), r, "{v}");
    }
}

/// Registers with the COOKIE transport on a bare client; returns (access, cookie).
async fn register_cookie(app: &TestApp, email: &str) -> (String, SetCookie) {
    let r = bare()
        .post(app.url("/graphql"))
        .json(&json!({ "query": ops::REGISTER_TOKENS_USER_ID, "variables": { "i": { "email": email, "password": PASSWORD } } }))
        .send()
        .await
        .unwrap();
    let cookie = the_cookie(&r, app.config.refresh_cookie_name());
    let v = json_of(r).await;
    assert!(v["errors"].is_null(), "register failed: {v}");
    assert!(v["data"]["register"]["refreshToken"].is_null(), "COOKIE transport leaked the token: {v}");
    (v["data"]["register"]["accessToken"].as_str().unwrap().to_owned(), cookie)
}

/// Refreshes with an explicit cookie; returns (access, new cookie) or panics.
async fn rotate_cookie(app: &TestApp, value: &str) -> (String, SetCookie) {
    let r = post_cookie(app, COOKIE, value, None, REFRESH_COOKIE, json!({})).await;
    let cookie = the_cookie(&r, COOKIE);
    let v = json_of(r).await;
    assert!(v["errors"].is_null(), "cookie refresh failed: {v}");
    (v["data"]["refreshToken"]["accessToken"].as_str().unwrap().to_owned(), cookie)
}

/// The caller's sessions as `me.sessions` lists them.
async fn sessions_of(app: &TestApp, token: &str) -> Vec<Value> {
    let v = app.gql(&bare(), Some(token), SESSIONS, json!({})).await;
    assert!(v["errors"].is_null(), "me.sessions failed: {v}");
    v["data"]["me"]["sessions"].as_array().unwrap().clone()
}

/// The id of the caller's current session.
async fn current_session(app: &TestApp, token: &str) -> String {
    let list = sessions_of(app, token).await;
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "exactly one current session expected: {list:?}");
    current[0]["id"].as_str().unwrap().to_owned()
}

fn is_token(t: &str) -> bool {
    t.len() >= 43 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------------------
// Rotation

#[tokio::test]
async fn cookie_refresh_rotates_the_cookie_and_never_returns_the_token_in_json() {
    let app = spawn_app().await;
    let c = app.client();
    let r = app
        .post(
            &c,
            None,
            ops::REGISTER_TOKENS_USER_ID,
            json!({ "i": { "email": "rot-cookie@example.com", "password": PASSWORD } }),
        )
        .await;
    no_store(&r);
    let first = the_cookie(&r, COOKIE);
    first.assert_strict();
    assert!(!first.has("secure"), "COOKIE_SECURE=false must not mark Secure: {}", first.raw);
    let ma = first.max_age();
    assert!(ma > 7 * 24 * 3600 - 60 && ma <= 7 * 24 * 3600, "Max-Age should be the session's lifetime: {}", first.raw);
    assert!(is_token(&first.value), "{}", first.raw);
    let v = json_of(r).await;
    assert!(v["data"]["register"]["refreshToken"].is_null(), "{v}");
    let original_access = v["data"]["register"]["accessToken"].as_str().unwrap().to_owned();
    let user_id = v["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();

    // The jar sends the cookie back; every refresh sets a new one.
    let mut seen = vec![first.value.clone()];
    for _ in 0..3 {
        let r = app.post(&c, None, REFRESH_COOKIE, json!({})).await;
        assert_eq!(r.status(), 200);
        no_store(&r);
        let next = the_cookie(&r, COOKIE);
        next.assert_strict();
        assert!(next.max_age() > 0 && next.max_age() <= ma, "{}", next.raw);
        assert!(is_token(&next.value), "{}", next.raw);
        assert!(!seen.contains(&next.value), "the refresh cookie did not rotate: {}", next.raw);
        seen.push(next.value.clone());
        let v = json_of(r).await;
        assert!(v["errors"].is_null(), "{v}");
        let p = &v["data"]["refreshToken"];
        assert!(p["refreshToken"].is_null(), "COOKIE transport returned the token in JSON: {v}");
        assert!(!v.to_string().contains(&next.value), "the cookie value appears in the body: {v}");
        assert!(p["expiresIn"].as_i64().unwrap() > 0, "{v}");
        let access = p["accessToken"].as_str().unwrap();
        assert_ne!(access, original_access);
        assert_eq!(assert_live(&app, access).await, user_id);
    }
    // The jar's newest cookie is the one that works from now on.
    let (_, next) = rotate_cookie(&app, seen.last().unwrap()).await;
    assert!(!seen.contains(&next.value));
}

#[tokio::test]
async fn body_refresh_rotates_the_token_and_sets_no_cookie() {
    let app = spawn_app().await;
    let (access0, mut token, user_id) = app.register_body("rot-body@example.com").await;
    assert!(is_token(&token));
    let mut seen = HashSet::from([token.clone()]);
    let mut last_access = access0;
    for _ in 0..3 {
        let r = app.post(&bare(), None, ops::REFRESH_BODY, json!({ "t": token })).await;
        assert_eq!(r.status(), 200);
        no_store(&r);
        assert!(cookies_named(&r, COOKIE).is_empty(), "BODY transport set a cookie: {:?}", set_cookies(&r));
        let v = json_of(r).await;
        assert!(v["errors"].is_null(), "{v}");
        let next = v["data"]["refreshToken"]["refreshToken"].as_str().expect("BODY returns the token").to_owned();
        assert!(is_token(&next), "{next}");
        assert!(seen.insert(next.clone()), "refresh returned a token seen before");
        let access = v["data"]["refreshToken"]["accessToken"].as_str().unwrap().to_owned();
        assert_ne!(access, last_access);
        assert_eq!(assert_live(&app, &access).await, user_id);
        last_access = access;
        token = next;
    }
}

#[tokio::test]
async fn secure_cookies_are_host_prefixed_and_secure() {
    let app = spawn_with(|c| c.cookie_secure = true).await;
    assert_eq!(app.config.refresh_cookie_name(), SECURE_COOKIE);
    let (access, first) = register_cookie(&app, "secure@example.com").await;
    first.assert_strict();
    assert!(first.has("secure"), "not Secure: {}", first.raw);
    assert!(first.max_age() > 0);

    // Sent back by hand (a jar would not send a Secure cookie over http).
    let r = post_cookie(&app, SECURE_COOKIE, &first.value, None, REFRESH_COOKIE, json!({})).await;
    assert!(cookies_named(&r, COOKIE).is_empty(), "the unprefixed name was used: {:?}", set_cookies(&r));
    let next = the_cookie(&r, SECURE_COOKIE);
    next.assert_strict();
    assert!(next.has("secure"), "{}", next.raw);
    assert_ne!(next.value, first.value);
    let v = json_of(r).await;
    assert!(v["errors"].is_null(), "{v}");
    assert!(v["data"]["refreshToken"]["refreshToken"].is_null(), "{v}");

    // The unprefixed name is not read when cookies are secure.
    let r = post_cookie(&app, COOKIE, &next.value, None, REFRESH_COOKIE, json!({})).await;
    assert_eq!(reason(&json_of(r).await), "MISSING_TOKEN");

    // Logout clears it with the same name and flags.
    let r = post_cookie(&app, SECURE_COOKIE, &next.value, Some(&access), ops::LOGOUT, json!({})).await;
    let cleared = the_cookie(&r, SECURE_COOKIE);
    cleared.assert_strict();
    assert!(cleared.has("secure"), "{}", cleared.raw);
    assert_eq!(cleared.max_age(), 0, "{}", cleared.raw);
    assert_eq!(cleared.value, "");
    assert_eq!(json_of(r).await["data"]["logout"], true);
}

// ---------------------------------------------------------------------------
// Grace window and reuse detection

#[tokio::test]
async fn a_rotated_token_inside_the_grace_window_gets_the_same_successor() {
    let app = spawn_app().await; // default window: 10 s
    let (_, t0, user_id) = app.register_body("grace@example.com").await;
    let (a1, t1) = rotate_body(&app, &t0).await;
    // A second tab (or a retry after a lost response) presents t0 again.
    let (a1b, t1b) = rotate_body(&app, &t0).await;
    assert_eq!(t1b, t1, "inside the window the same successor must come back");
    assert_eq!(assert_live(&app, &a1).await, user_id);
    assert_eq!(assert_live(&app, &a1b).await, user_id);
    // The session lives on: the successor rotates normally.
    let (a2, t2) = rotate_body(&app, &t1).await;
    assert_ne!(t2, t1);
    assert_ne!(t2, t0);
    assert_live(&app, &a2).await;
    // t0 again, now two rotations old but still inside the window: never a
    // second live token; the one handed out is the session's newest.
    let v = refresh_body(&app, &t0).await;
    if v["errors"].is_null() {
        assert_eq!(v["data"]["refreshToken"]["refreshToken"], t2.as_str(), "{v}");
    } else {
        assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    }
    let (a3, t3) = rotate_body(&app, &t2).await;
    assert!(![&t0, &t1, &t2].contains(&&t3));
    assert_live(&app, &a3).await;

    // The same for cookies: the old cookie again gives the same new cookie.
    let (_, c0) = register_cookie(&app, "grace-cookie@example.com").await;
    let (_, c1) = rotate_cookie(&app, &c0.value).await;
    let (access, c1b) = rotate_cookie(&app, &c0.value).await;
    assert_eq!(c1b.value, c1.value);
    assert_ne!(c1.value, c0.value);
    assert_live(&app, &access).await;
    rotate_cookie(&app, &c1.value).await;
}

#[tokio::test]
async fn replaying_a_rotated_token_ends_the_whole_session_but_not_others() {
    let app = spawn_with(|c| c.refresh_reuse_grace = Duration::ZERO).await;
    let first = app.user("reuse@example.com").await;
    // A second session of the same user (another device).
    let second = first.login(&app).await;

    let t0 = &first.refresh_token;
    let (a1, t1) = rotate_body(&app, t0).await;
    assert_live(&app, &a1).await;
    // The thief (or the owner) replays t0.
    let v = refresh_body(&app, t0).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "REFRESH_TOKEN_REUSED", "{v}");
    assert!(v["data"].is_null() || v["data"]["refreshToken"].is_null(), "{v}");

    // The newest token of that session is dead too, and so are its access tokens, at once.
    assert_refresh_fails(&app, &t1, Some("TOKEN_REVOKED")).await;
    assert_refused(&app, &a1, "TOKEN_REVOKED").await;
    assert_refused(&app, &first.access_token, "TOKEN_REVOKED").await;
    // Replaying again is still refused (not a fresh session).
    assert_refresh_fails(&app, t0, None).await;

    // The other session is untouched.
    assert_eq!(assert_live(&app, &second.access_token).await, first.id);
    let (b1, _) = rotate_body(&app, &second.refresh_token).await;
    assert_live(&app, &b1).await;
    assert_eq!(sessions_of(&app, &b1).await.len(), 1, "only the second session is still listed");
}

#[tokio::test]
async fn replaying_a_rotated_cookie_ends_the_session_and_clears_the_cookie() {
    let app = spawn_with(|c| c.refresh_reuse_grace = Duration::ZERO).await;
    let (a0, c0) = register_cookie(&app, "reuse-cookie@example.com").await;
    let (a1, c1) = rotate_cookie(&app, &c0.value).await;
    let r = post_cookie(&app, COOKIE, &c0.value, None, REFRESH_COOKIE, json!({})).await;
    let cleared = the_cookie(&r, COOKIE);
    assert_eq!(cleared.max_age(), 0, "a dead cookie should be cleared: {}", cleared.raw);
    cleared.assert_strict();
    let v = json_of(r).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "REFRESH_TOKEN_REUSED", "{v}");
    let r = post_cookie(&app, COOKIE, &c1.value, None, REFRESH_COOKIE, json!({})).await;
    let v = json_of(r).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    assert_refused(&app, &a0, "TOKEN_REVOKED").await;
    assert_refused(&app, &a1, "TOKEN_REVOKED").await;
}

#[tokio::test]
async fn the_grace_window_ends() {
    let grace = Duration::from_secs(10);
    let app = spawn_with(|c| c.refresh_reuse_grace = grace).await;
    let (_, t0, _) = app.register_body("window@example.com").await;
    let (_, t1) = rotate_body(&app, &t0).await;
    app.clock.advance(grace - Duration::from_secs(1));
    assert_eq!(rotate_body(&app, &t0).await.1, t1, "inside the window");
    app.clock.advance(Duration::from_secs(2));
    let v = refresh_body(&app, &t0).await;
    assert_eq!(reason(&v), "REFRESH_TOKEN_REUSED", "{v}");
    assert_refresh_fails(&app, &t1, Some("TOKEN_REVOKED")).await;
}

/// 20 concurrent BODY refreshes of `token`: every caller gets the same single
/// successor or a clean UNAUTHENTICATED error. Returns that successor.
async fn parallel_body_round(app: &TestApp, token: &str, user_id: &str) -> String {
    let client = bare();
    let calls = (0..20).map(|_| {
        let req =
            client.post(app.url("/graphql")).json(&json!({ "query": ops::REFRESH_BODY, "variables": { "t": token } }));
        async move {
            let r = req.send().await.expect("request");
            let status = r.status();
            (status, r.json::<Value>().await.expect("json body"))
        }
    });
    let results = join_all(calls).await;
    let mut successors = HashSet::new();
    let mut accesses = Vec::new();
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        if v["errors"].is_null() {
            successors.insert(v["data"]["refreshToken"]["refreshToken"].as_str().unwrap().to_owned());
            accesses.push(v["data"]["refreshToken"]["accessToken"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(code(v), "UNAUTHENTICATED", "a concurrent refresh failed uncleanly: {v}");
        }
    }
    assert_eq!(
        successors.len(),
        1,
        "concurrent refreshes minted several successors (or none): {successors:?} / {results:?}"
    );
    let next = successors.into_iter().next().unwrap();
    assert_ne!(next, token);
    for a in &accesses {
        assert_eq!(assert_live(app, a).await, user_id);
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_refreshes_of_one_token_yield_exactly_one_successor() {
    let app = spawn_app().await;
    let (_, t0, user_id) = app.register_body("parallel@example.com").await;
    let mut token = t0;
    let mut seen = HashSet::from([token.clone()]);
    for _ in 0..3 {
        token = parallel_body_round(&app, &token, &user_id).await;
        assert!(seen.insert(token.clone()), "a round handed out an old token");
    }
    // The one successor works and the session lives on.
    let (a, next) = rotate_body(&app, &token).await;
    assert!(!seen.contains(&next));
    assert_eq!(assert_live(&app, &a).await, user_id);
    assert_eq!(sessions_of(&app, &a).await.len(), 1);
}

/// The same with the cookie: 20 concurrent refreshes carrying one cookie.
async fn parallel_cookie_round(app: &TestApp, cookie: &str) -> String {
    let client = bare();
    let calls = (0..20).map(|_| {
        let req = client
            .post(app.url("/graphql"))
            .header("cookie", format!("{COOKIE}={cookie}"))
            .json(&json!({ "query": REFRESH_COOKIE }));
        async move {
            let r = req.send().await.expect("request");
            let status = r.status();
            let cookies = cookies_named(&r, COOKIE);
            (status, cookies, r.json::<Value>().await.expect("json body"))
        }
    });
    let results = join_all(calls).await;
    let mut successors = HashSet::new();
    for (status, cookies, v) in &results {
        assert_eq!(*status, 200, "{v}");
        if v["errors"].is_null() {
            assert_eq!(cookies.len(), 1, "{cookies:?}");
            assert!(cookies[0].max_age() > 0);
            successors.insert(cookies[0].value.clone());
            assert!(v["data"]["refreshToken"]["refreshToken"].is_null(), "{v}");
            assert_live(app, v["data"]["refreshToken"]["accessToken"].as_str().unwrap()).await;
        } else {
            assert_eq!(code(v), "UNAUTHENTICATED", "a concurrent refresh failed uncleanly: {v}");
        }
    }
    assert_eq!(
        successors.len(),
        1,
        "concurrent refreshes set several successors (or none): {successors:?} / {results:?}"
    );
    let next = successors.into_iter().next().unwrap();
    assert_ne!(next, cookie);
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_cookie_refreshes_set_exactly_one_successor_cookie() {
    let app = spawn_app().await;
    let (_, c0) = register_cookie(&app, "parallel-cookie@example.com").await;
    let mut cookie = c0.value;
    let mut seen = HashSet::from([cookie.clone()]);
    for _ in 0..3 {
        cookie = parallel_cookie_round(&app, &cookie).await;
        assert!(seen.insert(cookie.clone()), "a round handed out an old cookie");
    }
    let (a, next) = rotate_cookie(&app, &cookie).await;
    assert!(!seen.contains(&next.value));
    assert_live(&app, &a).await;
}

// ---------------------------------------------------------------------------
// Logout

#[tokio::test]
async fn logout_ends_the_session_at_once_and_clears_the_cookie() {
    let app = spawn_app().await;
    let c = app.client();
    let access0 = app.register(&c, "logout@example.com").await["accessToken"].as_str().unwrap().to_owned();
    // Rotate once so the session has history.
    let r = app.post(&c, None, REFRESH_COOKIE, json!({})).await;
    let live_cookie = the_cookie(&r, COOKIE);
    let access1 = json_of(r).await["data"]["refreshToken"]["accessToken"].as_str().unwrap().to_owned();
    assert_live(&app, &access1).await;

    let r = app.post(&c, Some(&access1), ops::LOGOUT, json!({})).await;
    no_store(&r);
    let cleared = the_cookie(&r, COOKIE);
    cleared.assert_strict();
    assert_eq!(cleared.value, "", "{}", cleared.raw);
    assert_eq!(cleared.max_age(), 0, "{}", cleared.raw);
    assert_eq!(json_of(r).await, json!({ "data": { "logout": true } }));

    // Both access tokens of the session die at once, not at expiry.
    assert_refused(&app, &access1, "TOKEN_REVOKED").await;
    assert_refused(&app, &access0, "TOKEN_REVOKED").await;
    // The jar dropped the cookie...
    let v = app.gql(&c, None, REFRESH_COOKIE, json!({})).await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
    // ...and a kept copy of it is dead.
    let v = json_of(post_cookie(&app, COOKIE, &live_cookie.value, None, REFRESH_COOKIE, json!({})).await).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
}

#[tokio::test]
async fn logout_with_only_the_cookie_ends_that_session() {
    let app = spawn_app().await;
    let (access, cookie) = register_cookie(&app, "logout-cookie@example.com").await;
    // No bearer token: the cookie alone says which session.
    let r = post_cookie(&app, COOKIE, &cookie.value, None, ops::LOGOUT, json!({})).await;
    assert_eq!(the_cookie(&r, COOKIE).max_age(), 0);
    assert_eq!(json_of(r).await["data"]["logout"], true);
    assert_refused(&app, &access, "TOKEN_REVOKED").await;
    let v = json_of(post_cookie(&app, COOKIE, &cookie.value, None, REFRESH_COOKIE, json!({})).await).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
}

#[tokio::test]
async fn logout_is_idempotent() {
    let app = spawn_app().await;
    let clear_and_true = |r: Response| async move {
        let cleared = the_cookie(&r, COOKIE);
        assert_eq!(cleared.max_age(), 0, "{}", cleared.raw);
        let v = json_of(r).await;
        assert_eq!(v, json!({ "data": { "logout": true } }));
    };
    // Nothing at all.
    clear_and_true(app.post(&bare(), None, ops::LOGOUT, json!({})).await).await;
    clear_and_true(app.post(&bare(), None, ops::LOGOUT_EVERYWHERE, json!({})).await).await;
    // Garbage cookie, garbage bearer, garbage native token.
    clear_and_true(post_cookie(&app, COOKIE, "garbage", None, ops::LOGOUT, json!({})).await).await;
    clear_and_true(post_cookie(&app, COOKIE, &"A".repeat(43), Some("not.a.jwt"), ops::LOGOUT, json!({})).await).await;
    clear_and_true(app.post(&bare(), None, ops::LOGOUT_TOKEN, json!({ "t": "x" })).await).await;

    // Repeated logout of a real session.
    let (access, cookie) = register_cookie(&app, "again@example.com").await;
    for _ in 0..3 {
        clear_and_true(post_cookie(&app, COOKIE, &cookie.value, Some(&access), ops::LOGOUT, json!({})).await).await;
    }
    assert_refused(&app, &access, "TOKEN_REVOKED").await;
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user_only() {
    let app = spawn_app().await;
    let first = app.user("everywhere@example.com").await;
    let second = first.login(&app).await;
    let (_, c3) = {
        // A browser session too.
        let r = bare()
            .post(app.url("/graphql"))
            .json(&json!({ "query": ops::LOGIN_TOKENS_USER_ID, "variables": { "i": { "email": "everywhere@example.com", "password": PASSWORD } } }))
            .send()
            .await
            .unwrap();
        let cookie = the_cookie(&r, COOKIE);
        let v = json_of(r).await;
        (v["data"]["login"]["accessToken"].as_str().unwrap().to_owned(), cookie)
    };
    let bystander = app.user("bystander@example.com").await;
    assert_eq!(sessions_of(&app, &first.access_token).await.len(), 3);

    let v = first.gql(&app, ops::LOGOUT_EVERYWHERE, json!({})).await;
    assert_eq!(v, json!({ "data": { "logout": true } }));

    for session in [&first, &second] {
        assert_refused(&app, &session.access_token, "TOKEN_REVOKED").await;
    }
    for session in [&first, &second] {
        assert_refresh_fails(&app, &session.refresh_token, Some("TOKEN_REVOKED")).await;
    }
    let v = json_of(post_cookie(&app, COOKIE, &c3.value, None, REFRESH_COOKIE, json!({})).await).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");

    // Another user is unaffected.
    assert_eq!(assert_live(&app, &bystander.access_token).await, bystander.id);
    let (na, _) = rotate_body(&app, &bystander.refresh_token).await;
    assert_live(&app, &na).await;
}

#[tokio::test]
async fn native_logout_everywhere_with_a_refresh_token() {
    let app = spawn_app().await;
    let first = app.user("native-all@example.com").await;
    let second = first.login(&app).await;
    let v = app.gql(&bare(), None, ops::LOGOUT_EVERYWHERE_TOKEN, json!({ "t": second.refresh_token })).await;
    assert_eq!(v["data"]["logout"], true, "{v}");
    for session in [&first, &second] {
        assert_refused(&app, &session.access_token, "TOKEN_REVOKED").await;
    }
    for session in [&first, &second] {
        assert_refresh_fails(&app, &session.refresh_token, Some("TOKEN_REVOKED")).await;
    }
}

#[tokio::test]
async fn native_logout_with_a_refresh_token_ends_that_session() {
    let app = spawn_app().await;
    let first = app.user("native@example.com").await;
    let second = first.login(&app).await;
    // No bearer token: a native client ending its own session by its refresh token.
    let v = app.gql(&bare(), None, ops::LOGOUT_TOKEN, json!({ "t": first.refresh_token })).await;
    assert_eq!(v, json!({ "data": { "logout": true } }));
    assert_refused(&app, &first.access_token, "TOKEN_REVOKED").await;
    assert_refresh_fails(&app, &first.refresh_token, Some("TOKEN_REVOKED")).await;
    // The other device is still logged in.
    assert_eq!(assert_live(&app, &second.access_token).await, first.id);
    let (a3, _) = rotate_body(&app, &second.refresh_token).await;
    assert_live(&app, &a3).await;
}

// ---------------------------------------------------------------------------
// Listing and revoking sessions

#[tokio::test]
async fn me_sessions_lists_live_sessions_with_exactly_one_current() {
    let app = spawn_app().await;
    let (a1, _, _) = app.register_body("list@example.com").await;
    let ua_client = Client::builder().user_agent("agent-two/1.0").build().unwrap();
    let v = app
        .gql(
            &ua_client,
            None,
            ops::LOGIN_TOKENS_USER_ID,
            json!({ "i": { "email": "list@example.com", "password": PASSWORD, "transport": "BODY" } }),
        )
        .await;
    let a2 = v["data"]["login"]["accessToken"].as_str().unwrap().to_owned();

    let from1 = sessions_of(&app, &a1).await;
    assert_eq!(from1.len(), 2, "{from1:?}");
    let s1 = current_session(&app, &a1).await;
    let s2 = current_session(&app, &a2).await;
    assert_ne!(s1, s2);
    let ids: HashSet<&str> = from1.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, HashSet::from([s1.as_str(), s2.as_str()]));
    for s in &from1 {
        assert_eq!(s["ip"], "127.0.0.1", "{s}");
        let created = chrono::DateTime::parse_from_rfc3339(s["createdAt"].as_str().unwrap()).unwrap();
        let used = chrono::DateTime::parse_from_rfc3339(s["lastUsedAt"].as_str().unwrap()).unwrap();
        let expires = chrono::DateTime::parse_from_rfc3339(s["expiresAt"].as_str().unwrap()).unwrap();
        assert!(used >= created && expires > used, "{s}");
        assert!(expires - created > chrono::Duration::days(6), "{s}");
    }
    let second = from1.iter().find(|s| s["id"] == s2.as_str()).unwrap();
    assert_eq!(second["userAgent"], "agent-two/1.0", "{second}");
    assert_eq!(second["current"], false);
}

#[tokio::test]
async fn revoke_session_ends_own_sessions_only() {
    let app = spawn_app().await;
    let first = app.user("revoke@example.com").await;
    let second = first.login(&app).await;
    let s1 = current_session(&app, &first.access_token).await;
    let s2 = current_session(&app, &second.access_token).await;
    let other = app.user("revoke-other@example.com").await;
    let sb = current_session(&app, &other.access_token).await;
    const REVOKE: &str = "mutation($id: ID!) { revokeSession(id: $id) }";

    // Someone else's session: false, and it lives on.
    let v = other.gql(&app, REVOKE, json!({ "id": s1 })).await;
    assert_eq!(v, json!({ "data": { "revokeSession": false } }));
    assert_eq!(assert_live(&app, &first.access_token).await, first.id);
    let v = first.gql(&app, REVOKE, json!({ "id": sb })).await;
    assert_eq!(v["data"]["revokeSession"], false, "{v}");
    assert_live(&app, &other.access_token).await;

    // Own other session: true, and its tokens die at once.
    let v = first.gql(&app, REVOKE, json!({ "id": s2 })).await;
    assert_eq!(v, json!({ "data": { "revokeSession": true } }));
    assert_refused(&app, &second.access_token, "TOKEN_REVOKED").await;
    assert_refresh_fails(&app, &second.refresh_token, Some("TOKEN_REVOKED")).await;
    let left = sessions_of(&app, &first.access_token).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], s1.as_str());
    // Already ended: false.
    let v = first.gql(&app, REVOKE, json!({ "id": s2 })).await;
    assert_eq!(v["data"]["revokeSession"], false, "{v}");

    // Unknown and malformed ids: false or BAD_USER_INPUT, never a server error.
    for id in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_owned(), String::new(), "x".repeat(500)] {
        let r = app.post(&bare(), Some(&first.access_token), REVOKE, json!({ "id": id })).await;
        assert_eq!(r.status(), 200);
        let v = json_of(r).await;
        if v["errors"].is_null() {
            assert_eq!(v["data"]["revokeSession"], false, "{id}: {v}");
        } else {
            assert_eq!(code(&v), "BAD_USER_INPUT", "{id}: {v}");
        }
    }
    // Without a token: UNAUTHENTICATED.
    let v = app.gql(&bare(), None, REVOKE, json!({ "id": s1 })).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_live(&app, &first.access_token).await;

    // Own current session: allowed, and the caller's token dies with it.
    let v = first.gql(&app, REVOKE, json!({ "id": s1 })).await;
    assert_eq!(v["data"]["revokeSession"], true, "{v}");
    assert_refused(&app, &first.access_token, "TOKEN_REVOKED").await;
}

// ---------------------------------------------------------------------------
// Expiry

/// Re-signs `token` (issued by the app under the harness's key) with its
/// times moved `secs` seconds into the past: what the token will look like later.
fn aged(token: &str, secs: i64) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    let payload = token.split('.').nth(1).unwrap();
    let mut claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    for k in ["iat", "nbf", "exp"] {
        claims[k] = json!(claims[k].as_i64().unwrap() - secs);
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".to_owned());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap()
}

#[tokio::test]
async fn an_expired_access_token_is_refused_and_refresh_still_works() {
    let app = spawn_with(|c| c.access_token_ttl = Duration::from_secs(1)).await;
    let c = app.client();
    let reg = app.register(&c, "expiry@example.com").await;
    assert_eq!(reg["expiresIn"], 1, "{reg}");
    let access = reg["accessToken"].as_str().unwrap().to_owned();
    assert_live(&app, &access).await;
    // The same token as it will be a minute from now (the verifier allows a
    // few seconds of clock skew, so waiting for real would take > 6 s).
    let old = aged(&access, 60);
    let v = me(&app, &old).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "ACCESS_TOKEN_EXPIRED", "{v}");
    assert_eq!(v["errors"][0]["extensions"]["legacyCode"], "AUTH_002", "{v}");
    // Sanity: re-signing itself does not break a token.
    assert_live(&app, &aged(&access, 0)).await;

    // Refresh still works and gives a working token.
    let v = app.gql(&c, None, REFRESH_COOKIE, json!({})).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(v["data"]["refreshToken"]["expiresIn"], 1);
    assert_live(&app, v["data"]["refreshToken"]["accessToken"].as_str().unwrap()).await;
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused() {
    let ttl = Duration::from_secs(3600);
    let app = spawn_with(|c| {
        c.access_token_ttl = ttl;
        c.refresh_token_ttl = ttl;
    })
    .await;
    let (_, t0, _) = app.register_body("expired@example.com").await;
    let (_, cookie) = register_cookie(&app, "expired-cookie@example.com").await;
    assert!(cookie.max_age() <= 3600, "Max-Age is the remaining lifetime: {}", cookie.raw);
    // Still inside the lifetime: rotation works, and the access token too.
    app.clock.advance(ttl - Duration::from_secs(120));
    let (access, t1) = rotate_body(&app, &t0).await;
    assert!(me(&app, &access).await["errors"].is_null());
    app.clock.advance(Duration::from_secs(130));

    let v = refresh_body(&app, &t1).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "REFRESH_TOKEN_EXPIRED", "{v}");
    assert_eq!(v["errors"][0]["extensions"]["legacyCode"], "AUTH_003", "{v}");

    let r = post_cookie(&app, COOKIE, &cookie.value, None, REFRESH_COOKIE, json!({})).await;
    let cleared = the_cookie(&r, COOKIE);
    assert_eq!(cleared.max_age(), 0, "a dead cookie should be cleared: {}", cleared.raw);
    let v = json_of(r).await;
    assert_eq!(reason(&v), "REFRESH_TOKEN_EXPIRED", "{v}");

    // Access tokens never outlive their session (this one was issued for an
    // hour, two minutes before the session's end).
    let v = me(&app, &access).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
}

#[tokio::test]
async fn an_idle_session_expires() {
    let idle = Duration::from_secs(1800);
    let app = spawn_with(|c| c.session_idle_timeout = Some(idle)).await;
    let (_, t0, _) = app.register_body("idle@example.com").await;
    app.clock.advance(idle - Duration::from_secs(60));
    let (_, t1) = rotate_body(&app, &t0).await; // use keeps it alive
    app.clock.advance(idle - Duration::from_secs(60));
    let (_, t2) = rotate_body(&app, &t1).await;
    app.clock.advance(idle + Duration::from_secs(1));
    let v = refresh_body(&app, &t2).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "REFRESH_TOKEN_EXPIRED", "{v}");
    // The session is over for good.
    assert_refresh_fails(&app, &t2, None).await;
}

// ---------------------------------------------------------------------------
// Other lifecycles

#[tokio::test]
async fn login_with_an_old_cookie_present_starts_a_new_session() {
    let app = spawn_app().await;
    let c = app.client();
    let a1 = app.register(&c, "relogin@example.com").await["accessToken"].as_str().unwrap().to_owned();
    let s1 = current_session(&app, &a1).await;
    // Keep a copy of the first session's cookie.
    let r = app.post(&c, None, REFRESH_COOKIE, json!({})).await;
    let c1 = the_cookie(&r, COOKIE);
    assert!(json_of(r).await["errors"].is_null());

    // The jar sends c1 along with the login.
    let r = app
        .post(
            &c,
            None,
            ops::LOGIN_TOKENS_USER_ID,
            json!({ "i": { "email": "relogin@example.com", "password": PASSWORD } }),
        )
        .await;
    let c2 = the_cookie(&r, COOKIE);
    assert_ne!(c2.value, c1.value);
    let v = json_of(r).await;
    assert!(v["errors"].is_null(), "{v}");
    let a2 = v["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let s2 = current_session(&app, &a2).await;
    assert_ne!(s2, s1, "a login must start a new session");
    let ids: HashSet<String> =
        sessions_of(&app, &a2).await.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, HashSet::from([s1.clone(), s2.clone()]));

    // The old session is alive, its cookie still refreshes...
    assert_live(&app, &a1).await;
    let (a1b, _) = rotate_cookie(&app, &c1.value).await;
    assert_eq!(current_session(&app, &a1b).await, s1);
    // ...and so does the new one, through the jar.
    let v = app.gql(&c, None, REFRESH_COOKIE, json!({})).await;
    assert_eq!(current_session(&app, v["data"]["refreshToken"]["accessToken"].as_str().unwrap()).await, s2);
}

#[tokio::test]
async fn a_deleted_users_tokens_fail_cleanly() {
    let app = spawn_app().await;
    let deleted = app.user("deleted@example.com").await;
    let t0 = &deleted.refresh_token;
    let (_, t1) = rotate_body(&app, t0).await;
    let (_, cookie) = register_cookie(&app, "deleted-cookie@example.com").await;
    let kept = app.user("kept@example.com").await;

    // Deleted the supported way, by an admin; the cookie account through its id.
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let cookie_id =
        raw(&app, Some(&admin), "query { users(search: \"deleted-cookie\") { edges { node { id } } } }", json!({}))
            .await
            .1["data"]["users"]["edges"][0]["node"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    for id in [&deleted.id, &cookie_id] {
        let (_, v) = raw(&app, Some(&admin), ops::DELETE_USER, json!({ "id": id })).await;
        assert_eq!(v["data"]["deleteUser"], true, "{v}");
    }

    for t in [&t1, t0] {
        let r = app.post(&bare(), None, ops::REFRESH_BODY, json!({ "t": t })).await;
        assert_eq!(r.status(), 200);
        let v = json_of(r).await;
        assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    }
    let r = post_cookie(&app, COOKIE, &cookie.value, None, REFRESH_COOKIE, json!({})).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    let v = me(&app, &deleted.access_token).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");

    // The other account is untouched.
    assert_eq!(assert_live(&app, &kept.access_token).await, kept.id);
    rotate_body(&app, &kept.refresh_token).await;
}

/// Commit records in an SQLite write-ahead log: frames whose "database size after
/// commit" field is set, counted while their salts match the log's header (frames
/// left over from before a checkpoint restart do not).
fn wal_commits(wal: &std::path::Path) -> usize {
    let Ok(bytes) = std::fs::read(wal) else { return 0 };
    if bytes.len() < 32 {
        return 0;
    }
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    let page_size = be(8) as usize;
    let salts = (be(16), be(20));
    let (mut at, mut commits) = (32, 0);
    while at + 24 + page_size <= bytes.len() && (be(at + 8), be(at + 12)) == salts {
        if be(at + 4) != 0 {
            commits += 1;
        }
        at += 24 + page_size;
    }
    commits
}

#[tokio::test]
async fn a_refresh_rotation_is_one_write_transaction() {
    let app = spawn_app().await;
    let Some(path) = app.database.sqlite_path() else {
        // PostgreSQL has no per-commit record a client can read back reliably;
        // the code path is the same.
        return;
    };
    let wal = path.with_extension("db-wal");
    let (_, mut refresh, _) = app.register_body("onewrite@example.com").await;
    let before = wal_commits(&wal);
    assert!(before > 0, "registration was committed to the log");
    for _ in 0..3 {
        refresh = rotate_body(&app, &refresh).await.1;
    }
    assert_eq!(wal_commits(&wal) - before, 3, "three rotations, three commits");
}

/// An array batch answers with the cookie changes of its last operation that
/// made any, as when each operation's headers replaced the previous one's:
/// two concurrent refreshes of one cookie send one Set-Cookie, and an
/// operation that leaves the cookie alone does not drop an earlier change.
#[tokio::test]
async fn a_batch_sends_the_cookie_of_its_last_operation_that_changed_it() {
    let app = spawn_app().await;
    let (_, cookie) = register_cookie(&app, "batch-cookie@example.com").await;
    let batch = |ops: Value| {
        bare().post(app.url("/graphql")).header("cookie", format!("{COOKIE}={}", cookie.value)).json(&ops).send()
    };
    let r = batch(json!([{ "query": REFRESH_COOKIE }, { "query": REFRESH_COOKIE }])).await.unwrap();
    let set = the_cookie(&r, COOKIE);
    assert!(set.max_age() > 0, "{}", set.raw);
    let v = json_of(r).await;
    assert!(v[0]["errors"].is_null() && v[1]["errors"].is_null(), "{v}");

    // Inside the grace window the old cookie still leads to the same successor.
    let r = batch(json!([{ "query": REFRESH_COOKIE }, { "query": "{ __typename }" }])).await.unwrap();
    let again = the_cookie(&r, COOKIE);
    assert_eq!(again.value, set.value, "the refresh's cookie survives the operation after it");
}

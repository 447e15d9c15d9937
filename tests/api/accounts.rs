//! Accounts: register, login, me, profile and password, end to end over HTTP.

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const ME: &str = "{ me { id email name role } }";
const UPDATE: &str = "mutation($i: UpdateProfileInput!) { updateProfile(input: $i) { id email name role } }";

/// `extensions.field` of the first error.
fn field(body: &Value) -> &str {
    body["errors"][0]["extensions"]["field"].as_str().unwrap_or("<none>")
}

/// The access token of a `register`/`login` body.
fn access(body: &Value, op: &str) -> String {
    body["data"][op]["accessToken"].as_str().unwrap_or_else(|| panic!("{op} failed: {body}")).to_owned()
}

/// The refresh token of a BODY-transport `register`/`login` body.
fn refresh(body: &Value, op: &str) -> String {
    body["data"][op]["refreshToken"].as_str().unwrap_or_else(|| panic!("{op} gave no refresh token: {body}")).to_owned()
}

/// Asserts a BAD_USER_INPUT error with this reason and field, and no data.
#[track_caller]
fn assert_input_error(body: &Value, reason_: &str, field_: &str, what: &str) {
    assert_eq!(code(body), "BAD_USER_INPUT", "{what}: {body}");
    assert_eq!(reason(body), reason_, "{what}: {body}");
    assert_eq!(field(body), field_, "{what}: {body}");
    assert!(body["data"].is_null(), "{what}: {body}");
}

/// Asserts that an account with this email can still be registered (nothing was
/// stored by an earlier, refused attempt).
async fn assert_email_free(app: &TestApp, email: &str) -> Value {
    let v = register_raw(app, email, PASSWORD, None).await;
    assert!(v["errors"].is_null(), "{email} is not free: {v}");
    v
}

#[tokio::test]
async fn register_returns_the_payload_and_sets_the_refresh_cookie() {
    let app = spawn_app().await;
    let c = app.client();
    let r = app
        .post(
            &c,
            None,
            "mutation($i: RegisterInput!) { register(input: $i) { accessToken tokenType expiresIn refreshToken
               user { id email name role createdAt updatedAt lastLoginAt } } }",
            json!({ "i": { "email": "Ada.Lovelace+x@Example.com", "password": PASSWORD } }),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookies = set_cookies(&r);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
    let p = &v["data"]["register"];
    assert_eq!(p["tokenType"], "Bearer");
    assert_eq!(p["expiresIn"], 900);
    assert!(p["refreshToken"].is_null(), "COOKIE transport must not put the refresh token in JSON");
    assert_eq!(p["accessToken"].as_str().unwrap().split('.').count(), 3);
    let user = &p["user"];
    assert_eq!(user["role"], "USER");
    assert_eq!(user["email"], "Ada.Lovelace+x@Example.com");
    assert_eq!(user["name"], "Ada.Lovelace+x", "name defaults to the local part");
    assert!(user["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(user["createdAt"].is_string() && user["updatedAt"].is_string(), "{user}");
    assert!(user["lastLoginAt"].is_string(), "{user}");

    assert_eq!(cookies.len(), 1, "exactly one Set-Cookie expected, got {}", cookies.len());
    let (pair, attrs) = cookies[0].split_once(';').expect("cookie has attributes");
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, "refresh_token");
    assert!(value.len() >= 43, "refresh token shorter than 256 bits of base64");
    assert!(value != p["accessToken"].as_str().unwrap(), "the cookie carries the access token");
    let lower = attrs.to_ascii_lowercase();
    for part in ["httponly", "samesite=strict", "path=/", "max-age="] {
        assert!(lower.contains(part), "cookie attributes {attrs:?} lack {part}");
    }
    assert!(!lower.contains("domain"), "{attrs:?}");
    let max_age: i64 = lower.split(';').find_map(|a| a.trim().strip_prefix("max-age=")).unwrap().parse().unwrap();
    assert!((7 * 86400 - 60..=7 * 86400).contains(&max_age), "Max-Age {max_age}");

    // The cookie is the session's refresh token, and the access token is good.
    let me = app.gql(&c, Some(p["accessToken"].as_str().unwrap()), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["id"], user["id"], "{me}");
    let rotated = app.gql(&c, None, ops::REFRESH_COOKIE, json!({})).await;
    assert!(rotated["data"]["refreshToken"]["accessToken"].is_string(), "{rotated}");
    assert!(rotated["data"]["refreshToken"]["refreshToken"].is_null(), "{rotated}");

    // BODY transport: the refresh token is in the body, and no cookie is set.
    let r = app
        .post(
            &app.client(),
            None,
            ops::REGISTER_PAYLOAD,
            json!({ "i": { "email": "native@example.com", "password": PASSWORD, "transport": "BODY", "name": "Native" } }),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(set_cookies(&r).is_empty(), "BODY transport set a cookie");
    let v: Value = r.json().await.unwrap();
    let p = &v["data"]["register"];
    assert!(p["refreshToken"].as_str().is_some_and(|t| t.len() >= 43), "{v}");
    assert_eq!(p["user"]["name"], "Native");
    assert_eq!(p["expiresIn"], 900);
    assert_eq!(p["tokenType"], "Bearer");
}

#[tokio::test]
async fn invalid_emails_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    // 64 + 1 + 189 = 254 characters, every label within its limits.
    let at_limit = format!("{}@{}.{}.{}.com", "a".repeat(64), "b".repeat(63), "c".repeat(63), "d".repeat(57));
    assert_eq!(at_limit.chars().count(), 254);
    let over_limit = format!("{}@{}.{}.{}.com", "a".repeat(64), "b".repeat(63), "c".repeat(63), "d".repeat(58));
    assert_eq!(over_limit.chars().count(), 255);
    let huge = format!("{}@example.com", "a".repeat(5000));
    let bad: Vec<&str> = vec![
        "",
        "   ",
        "plain",
        "@example.com",
        "a@",
        "a@b",
        "a b@example.com",
        "a..b@example.com",
        "a@-x.com",
        "a@x..com",
        &over_limit,
        &huge,
        "a\0@example.com",
        "nul@example.com\0",
        "\0",
        "bell\u{7}@example.com",
        "esc\u{1b}[31m@example.com",
        "del\u{7f}@example.com",
        "nel\u{85}@example.com",
        "ls\u{2028}@example.com",
        "cr\r\nbcc: x@example.com",
    ];
    for email in &bad {
        let v = register_raw(&app, email, PASSWORD, None).await;
        assert_input_error(&v, "INVALID_EMAIL", "email", &format!("{email:?}"));
    }
    // The longest allowed address works, and is shown as typed.
    let v = register_raw(&app, &at_limit, PASSWORD, None).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(v["data"]["register"]["user"]["email"], at_limit.as_str());
    assert_eq!(v["data"]["register"]["user"]["name"], "a".repeat(64));
    // The refused NUL address was not stored in some truncated form.
    assert_email_free(&app, "a@example.com").await;
    assert_email_free(&app, "nul@example.com").await;
}

#[tokio::test]
async fn password_length_counts_characters_and_is_never_truncated() {
    let app = spawn_app().await;
    let too_long = "x".repeat(129);
    let too_long_multibyte = "é".repeat(129);
    for (pw, what) in [
        ("", "empty"),
        ("1234567", "7 characters"),
        ("ééééééé", "7 two-byte characters (14 bytes)"),
        (too_long.as_str(), "129 characters"),
        (too_long_multibyte.as_str(), "129 two-byte characters"),
    ] {
        let v = register_raw(&app, "weak@example.com", pw, None).await;
        assert_input_error(&v, "WEAK_PASSWORD", "password", what);
    }
    assert_email_free(&app, "weak@example.com").await;

    // Exactly 8 characters, ASCII and multibyte.
    for (email, pw) in [("eight@example.com", "12345678"), ("huit@example.com", "éééééééé")] {
        let v = register_raw(&app, email, pw, None).await;
        assert!(v["errors"].is_null(), "8 characters refused: {v}");
        let v = login_raw(&app, email, pw).await;
        assert!(v["errors"].is_null(), "login with an 8-character password failed: {v}");
    }

    // Exactly 128 characters (255 bytes): accepted, and every character counts.
    let long = format!("{}x", "é".repeat(127));
    assert_eq!(long.chars().count(), 128);
    let v = register_raw(&app, "long@example.com", &long, None).await;
    assert!(v["errors"].is_null(), "128 characters refused: {v}");
    let v = login_raw(&app, "long@example.com", &long).await;
    assert!(v["errors"].is_null(), "login with the 128-character password failed: {v}");
    let last_changed = format!("{}y", "é".repeat(127));
    let prefix: String = long.chars().take(127).collect();
    let longer = format!("{long}x");
    for (pw, what) in
        [(&last_changed, "last character changed"), (&prefix, "127-character prefix"), (&longer, "129 characters")]
    {
        let v = login_raw(&app, "long@example.com", pw).await;
        assert_eq!(code(&v), "UNAUTHENTICATED", "{what}: {v}");
        assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{what}: {v}");
        assert!(v["data"].is_null(), "{what}: {v}");
    }
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let app = spawn_app().await;
    let long = "n".repeat(101);
    let long_multibyte = "ñ".repeat(101);
    for (name, what) in [
        ("a\0b", "NUL"),
        ("\0", "only NUL"),
        ("tab\there", "tab"),
        ("esc\u{1b}[2J", "escape"),
        ("line\nbreak", "newline"),
        ("   ", "blank"),
        ("", "empty"),
        (long.as_str(), "101 characters"),
        (long_multibyte.as_str(), "101 two-byte characters"),
    ] {
        let v = register_raw(&app, "named@example.com", PASSWORD, Some(name)).await;
        assert_input_error(&v, "INVALID_NAME", "name", what);
    }
    // 100 characters (200 bytes) is fine.
    let max = "ñ".repeat(100);
    let v = register_raw(&app, "named@example.com", PASSWORD, Some(&max)).await;
    assert!(v["errors"].is_null(), "100-character name refused: {v}");
    assert_eq!(v["data"]["register"]["user"]["name"], max.as_str());
}

#[tokio::test]
async fn odd_characters_get_the_same_answer_on_every_backend() {
    let app = spawn_app().await;
    let c = app.client();
    // Characters a database could choke on, where they are legitimately allowed.
    let email = "Üser.Ñame@Bücher.example";
    let name = "Zoë 🦀 O'Brien'; DROP TABLE users; --";
    let password = "pass\0word 🔑 ünïcödé";
    let v = register_raw(&app, email, password, Some(name)).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(v["data"]["register"]["user"]["email"], email);
    assert_eq!(v["data"]["register"]["user"]["name"], name);
    let token = access(&v, "register");
    let v = app.gql(&c, Some(&token), ME, json!({})).await;
    assert_eq!(v["data"]["me"]["name"], name, "{v}");
    assert_eq!(v["data"]["me"]["email"], email, "{v}");

    // The NUL inside the password is part of it: what comes before it is not enough.
    assert!(login_raw(&app, "üser.ñame@bücher.example", password).await["errors"].is_null());
    let v = login_raw(&app, email, "pass").await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");

    // NUL and control characters in every text input: a clean input error on
    // every backend, never a database error.
    let v = login_raw(&app, "a\0@example.com", PASSWORD).await;
    assert_ne!(code(&v), "INTERNAL_SERVER_ERROR", "{v}");
    assert!(["INVALID_EMAIL", "INVALID_CREDENTIALS"].contains(&reason(&v)), "{v}");
    let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": { "name": "x\0y" } })).await;
    assert_input_error(&v, "INVALID_NAME", "name", "updateProfile name with NUL");
    let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": { "email": "x\0y@example.com" } })).await;
    assert_input_error(&v, "INVALID_EMAIL", "email", "updateProfile email with NUL");
    let v =
        app.gql(&c, Some(&token), ops::CHANGE_PASSWORD, json!({ "c": password, "n": "new\0password with NUL" })).await;
    assert!(v["errors"].is_null() && v["data"]["changePassword"] == true, "{v}");
    assert!(login_raw(&app, email, "new\0password with NUL").await["errors"].is_null());

    // A GraphQL string literal with a \u0000 escape takes the same path.
    let q = r#"mutation { register(input: {email: "lit\u0000@example.com", password: "correct horse battery", transport: BODY}) { accessToken } }"#;
    let v = app.gql(&c, None, q, json!({})).await;
    assert_input_error(&v, "INVALID_EMAIL", "email", "literal with \\u0000");

    // A lone surrogate is not a string at all: refused as bad input, not a 500.
    let raw = r#"{"query":"mutation($i: RegisterInput!) { register(input: $i) { accessToken } }","variables":{"i":{"email":"s\ud800@example.com","password":"correct horse battery","transport":"BODY"}}}"#;
    let r = c.post(app.url("/graphql")).header("content-type", "application/json").body(raw).send().await.unwrap();
    assert!(r.status() == 400 || r.status() == 200, "{}", r.status());
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");

    // A User-Agent that is not UTF-8 does not break a login (it is stored as unknown).
    let r = c
        .post(app.url("/graphql"))
        .header("user-agent", reqwest::header::HeaderValue::from_bytes(b"agent \xff\xfe/1.0").unwrap())
        .json(&json!({ "query": ops::LOGIN_PAYLOAD, "variables": { "i": { "email": email, "password": "new\0password with NUL", "transport": "BODY" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
}

#[tokio::test]
async fn email_is_unique_regardless_of_case_and_shown_as_typed() {
    let app = spawn_app().await;
    let v = register_raw(&app, "Alice@X.com", PASSWORD, None).await;
    assert!(v["errors"].is_null(), "{v}");
    let id = v["data"]["register"]["user"]["id"].clone();
    assert_eq!(v["data"]["register"]["user"]["name"], "Alice");

    for other in ["alice@x.com", "ALICE@X.COM", "  alice@X.com  "] {
        let v = register_raw(&app, other, PASSWORD, None).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{other:?}: {v}");
        assert_eq!(reason(&v), "EMAIL_TAKEN", "{other:?}: {v}");
        assert!(v["data"].is_null());
    }
    for spelling in ["alice@x.com", "Alice@X.com", "ALICE@x.COM"] {
        let v = login_raw(&app, spelling, PASSWORD).await;
        assert!(v["errors"].is_null(), "login as {spelling}: {v}");
        assert_eq!(v["data"]["login"]["user"]["id"], id);
        assert_eq!(v["data"]["login"]["user"]["email"], "Alice@X.com", "shown as first typed");
    }
    let token = access(&login_raw(&app, "alice@x.com", PASSWORD).await, "login");
    let v = app.gql(&app.client(), Some(&token), ME, json!({})).await;
    assert_eq!(v["data"]["me"]["email"], "Alice@X.com", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_email_create_one_account() {
    let app = spawn_app().await;
    let c = app.client();
    let attempts = (0..20).map(|i| {
        let email = if i % 2 == 0 { "race@example.com" } else { "Race@Example.COM" };
        let (app, c) = (&app, &c);
        async move {
            let r = app
                .post(
                    c,
                    None,
                    ops::REGISTER_PAYLOAD,
                    json!({ "i": { "email": email, "password": PASSWORD, "transport": "BODY" } }),
                )
                .await;
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    });
    let results = join_all(attempts).await;
    let mut ok = 0;
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        if v["errors"].is_null() {
            assert!(v["data"]["register"]["accessToken"].is_string(), "{v}");
            ok += 1;
        } else {
            assert_eq!(code(v), "BAD_USER_INPUT", "{v}");
            assert_eq!(reason(v), "EMAIL_TAKEN", "{v}");
        }
    }
    assert_eq!(ok, 1, "exactly one registration must win");
    // The one account is usable.
    let winner = results.iter().find(|(_, v)| v["errors"].is_null()).unwrap();
    let v = login_raw(&app, "RACE@example.com", PASSWORD).await;
    assert_eq!(v["data"]["login"]["user"]["id"], winner.1["data"]["register"]["user"]["id"], "{v}");
}

#[tokio::test]
async fn login_works_with_both_transports() {
    let app = spawn_app().await;
    let (_, _, id) = app.register_body("bob@example.com").await;

    let c = app.client();
    let r = app
        .post(&c, None, ops::LOGIN_PAYLOAD, json!({ "i": { "email": "bob@example.com", "password": PASSWORD } }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookies = set_cookies(&r);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
    let p = &v["data"]["login"];
    assert_eq!(p["user"]["id"], id.as_str());
    assert_eq!(p["tokenType"], "Bearer");
    assert_eq!(p["expiresIn"], 900);
    assert!(p["refreshToken"].is_null());
    assert_eq!(cookies.len(), 1);
    assert!(cookies[0].starts_with("refresh_token=") && cookies[0].len() > "refresh_token=".len() + 40);
    let me = app.gql(&c, Some(p["accessToken"].as_str().unwrap()), "{ me { id lastLoginAt } }", json!({})).await;
    assert_eq!(me["data"]["me"]["id"], id.as_str(), "{me}");
    assert!(me["data"]["me"]["lastLoginAt"].is_string(), "{me}");

    let r = app
        .post(
            &app.client(),
            None,
            ops::LOGIN_PAYLOAD,
            json!({ "i": { "email": "bob@example.com", "password": PASSWORD, "transport": "BODY" } }),
        )
        .await;
    assert!(set_cookies(&r).is_empty(), "BODY transport set a cookie");
    let v: Value = r.json().await.unwrap();
    let p = &v["data"]["login"];
    assert!(p["refreshToken"].as_str().is_some_and(|t| t.len() >= 43), "{v}");
    let me = app.gql(&c, Some(p["accessToken"].as_str().unwrap()), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["id"], id.as_str(), "{me}");
    // The refresh token from the body works as the argument.
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": p["refreshToken"] })).await;
    assert!(v["data"]["refreshToken"]["refreshToken"].is_string(), "{v}");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = spawn_app().await;
    app.register_body("carol@example.com").await;
    let wrong_password = login_raw(&app, "carol@example.com", "not the password").await;
    let unknown_email = login_raw(&app, "nobody@example.com", PASSWORD).await;
    let wrong_case_wrong_password = login_raw(&app, "CAROL@example.com", "not the password").await;
    let too_long = login_raw(&app, "carol@example.com", &"p".repeat(129)).await;

    assert_eq!(code(&wrong_password), "UNAUTHENTICATED", "{wrong_password}");
    assert_eq!(reason(&wrong_password), "INVALID_CREDENTIALS", "{wrong_password}");
    assert!(wrong_password["data"].is_null(), "{wrong_password}");
    assert!(wrong_password["errors"][0]["message"].is_string());
    assert_eq!(wrong_password["errors"].as_array().unwrap().len(), 1);
    for (other, what) in [
        (&unknown_email, "unknown email"),
        (&wrong_case_wrong_password, "other case"),
        (&too_long, "overlong password"),
    ] {
        assert_eq!(wrong_password["errors"], other["errors"], "{what}");
        assert_eq!(
            serde_json::to_string(&wrong_password).unwrap(),
            serde_json::to_string(other).unwrap(),
            "{what}: bodies differ"
        );
    }
}

#[tokio::test]
async fn a_stale_or_foreign_authorization_header_does_not_break_login() {
    let app = spawn_app().await;
    let (token, refresh_token, id) = app.register_body("dave@example.com").await;
    // Make the real token stale: the session is ended.
    let c = app.client();
    let v = app.gql(&c, Some(&token), ops::LOGOUT_TOKEN, json!({ "t": refresh_token })).await;
    assert_eq!(v["data"]["logout"], true, "{v}");
    let v = app.gql(&c, Some(&token), ME, json!({})).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");

    for header in ["Bearer junk", "Basic eHl6", "Bearer ", "Bearer a.b.c"]
        .into_iter()
        .map(String::from)
        .chain([format!("Bearer {token}")])
    {
        let v: Value = c
            .post(app.url("/graphql"))
            .header("authorization", &header)
            .json(&json!({ "query": ops::LOGIN_PAYLOAD, "variables": { "i": { "email": "dave@example.com", "password": PASSWORD, "transport": "BODY" } } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let scheme = header.split(' ').next().unwrap();
        assert!(v["errors"].is_null(), "login with a bad {scheme} header: {v}");
        assert_eq!(v["data"]["login"]["user"]["id"], id.as_str());
        // Public queries work too.
        let v: Value = c
            .post(app.url("/graphql"))
            .header("authorization", &header)
            .json(&json!({ "query": ops::TYPENAME }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"]["__typename"], "Query", "{v}");
    }
}

#[tokio::test]
async fn clients_cannot_choose_their_role_or_id() {
    let app = spawn_app().await;
    let c = app.client();
    // In variables and as literals: unknown input fields are schema errors.
    for extra in [
        json!({ "role": "ADMIN" }),
        json!({ "id": "00000000-0000-0000-0000-000000000001" }),
        json!({ "isAdmin": true }),
    ] {
        let mut input = json!({ "email": "mallory@example.com", "password": PASSWORD, "transport": "BODY" });
        input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let v = app.gql(&c, None, ops::REGISTER_PAYLOAD, json!({ "i": input })).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{extra}: {v}");
        assert!(v["data"].is_null() || v["data"]["register"].is_null(), "{extra}: {v}");
    }
    for literal in [r#"role: ADMIN"#, r#"id: "00000000-0000-0000-0000-000000000001""#] {
        let q = format!(
            r#"mutation {{ register(input: {{email: "mallory@example.com", password: "{PASSWORD}", transport: BODY, {literal}}}) {{ accessToken user {{ role }} }} }}"#
        );
        let v = app.gql(&c, None, &q, json!({})).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{literal}: {v}");
        assert!(v["data"].is_null(), "{literal}: {v}");
    }
    // Nothing was created: the address is free, and the account is a USER.
    let v = assert_email_free(&app, "mallory@example.com").await;
    assert_eq!(v["data"]["register"]["user"]["role"], "USER");
    let token = access(&v, "register");
    let id = v["data"]["register"]["user"]["id"].clone();

    for input in [
        json!({ "role": "ADMIN" }),
        json!({ "name": "M", "role": "ADMIN" }),
        json!({ "id": "00000000-0000-0000-0000-000000000001" }),
    ] {
        let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": input })).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{input}: {v}");
        assert!(v["data"].is_null(), "{input}: {v}");
    }
    let v = app.gql(&c, Some(&token), r#"mutation { updateProfile(input: {role: ADMIN}) { role } }"#, json!({})).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    let v = app.gql(&c, Some(&token), ME, json!({})).await;
    assert_eq!(v["data"]["me"]["role"], "USER", "{v}");
    assert_eq!(v["data"]["me"]["id"], id);
    assert_eq!(v["data"]["me"]["name"], "mallory", "the refused update changed the name: {v}");
}

#[tokio::test]
async fn me_needs_a_bearer_token_in_the_authorization_header() {
    let app = spawn_app().await;
    let c = app.client();
    let (token, _, id) = app.register_body("erin@example.com").await;

    let v = app.gql(&c, Some(&token), ME, json!({})).await;
    assert_eq!(
        v["data"]["me"],
        json!({ "id": id, "email": "erin@example.com", "name": "erin", "role": "USER" }),
        "{v}"
    );
    // The scheme is case-insensitive.
    let v: Value = c
        .post(app.url("/graphql"))
        .header("authorization", format!("bearer {token}"))
        .json(&json!({ "query": ME }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"]["me"]["id"], id.as_str(), "{v}");

    let v = app.gql(&c, None, ME, json!({})).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
    assert!(v["data"].is_null(), "{v}");

    for header in ["Basic xyz".to_owned(), format!("Basic {token}"), format!("Token {token}"), token.clone()] {
        let v: Value = c
            .post(app.url("/graphql"))
            .header("authorization", header)
            .json(&json!({ "query": ME }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
        assert_eq!(reason(&v), "INVALID_TOKEN", "{v}");
        assert!(v["data"].is_null(), "{v}");
    }

    // Tokens in the URL (they end up in logs and Referer headers) are ignored.
    for param in ["access_token", "token", "accessToken", "authorization"] {
        let r = c
            .post(app.url("/graphql"))
            .query(&[(param, token.as_str())])
            .json(&json!({ "query": ME }))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(reason(&v), "MISSING_TOKEN", "POST ?{param}=: {v}");
        assert!(v["data"].is_null());
        let r = c.get(app.url("/graphql")).query(&[("query", ME), (param, token.as_str())]).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(reason(&v), "MISSING_TOKEN", "GET ?{param}=: {v}");
        assert!(v["data"].is_null());
    }
    // Nor in a cookie or in the request body.
    let v: Value = c
        .post(app.url("/graphql"))
        .header("cookie", format!("access_token={token}; token={token}"))
        .json(&json!({ "query": ME, "extensions": { "headers": { "Authorization": format!("Bearer {token}") } } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
}

#[tokio::test]
async fn update_profile_changes_name_and_email() {
    let app = spawn_app().await;
    let c = app.client();
    let (token, _, id) = app.register_body("frank@example.com").await;
    app.register_body("Grace@Example.com").await;

    let v = app.gql(&c, None, UPDATE, json!({ "i": { "name": "Nobody" } })).await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
    let v = app.gql(&c, Some("junk"), UPDATE, json!({ "i": { "name": "Nobody" } })).await;
    assert_eq!(reason(&v), "INVALID_TOKEN", "{v}");

    let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": { "name": "Frank Ñ" } })).await;
    assert_eq!(
        v["data"]["updateProfile"],
        json!({ "id": id, "email": "frank@example.com", "name": "Frank Ñ", "role": "USER" }),
        "{v}"
    );

    // Validation, and a refused change changes nothing.
    for (input, r, f) in [
        (json!({ "name": "" }), "INVALID_NAME", "name"),
        (json!({ "name": "n".repeat(101) }), "INVALID_NAME", "name"),
        (json!({ "name": "a\u{0}b" }), "INVALID_NAME", "name"),
        (json!({ "email": "not-an-email" }), "INVALID_EMAIL", "email"),
        (json!({ "email": format!("{}@example.com", "a".repeat(250)) }), "INVALID_EMAIL", "email"),
        (json!({ "email": "ctl\u{1}@example.com" }), "INVALID_EMAIL", "email"),
        (json!({ "name": "Valid", "email": "bad" }), "INVALID_EMAIL", "email"),
        (json!({ "name": "\u{0}", "email": "fine@example.com" }), "INVALID_NAME", "name"),
    ] {
        let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": input })).await;
        assert_input_error(&v, r, f, &input.to_string());
    }
    // Another account's address, in another case.
    for taken in ["grace@example.com", "GRACE@EXAMPLE.COM"] {
        let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": { "email": taken } })).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
        assert_eq!(reason(&v), "EMAIL_TAKEN", "{v}");
        assert!(v["data"].is_null());
    }
    let v = app.gql(&c, Some(&token), ME, json!({})).await;
    assert_eq!(
        v["data"]["me"],
        json!({ "id": id, "email": "frank@example.com", "name": "Frank Ñ", "role": "USER" }),
        "{v}"
    );

    // A new address: confirmed through the mailed link, then shown as typed,
    // normalised for login and uniqueness.
    let v = app.gql(&c, Some(&token), UPDATE, json!({ "i": { "email": "  Frank.New@Example.ORG " } })).await;
    assert_eq!(v["data"]["updateProfile"]["email"], "frank@example.com", "not before it is confirmed: {v}");
    let link = app.next_mail_file("Frank.New@Example.ORG", "Confirm your new email address").await.token();
    let v = app.gql(&c, None, "mutation($t: String!) { confirmEmailChange(token: $t) }", json!({ "t": link })).await;
    assert!(v["errors"].is_null(), "{v}");
    let v = app.gql(&c, Some(&token), ME, json!({})).await;
    assert_eq!(v["data"]["me"]["email"], "Frank.New@Example.ORG", "{v}");
    assert_eq!(v["data"]["me"]["name"], "Frank Ñ", "{v}");
    let v = login_raw(&app, "frank.new@example.org", PASSWORD).await;
    assert_eq!(v["data"]["login"]["user"]["id"], id.as_str(), "{v}");
    let v = login_raw(&app, "frank@example.com", PASSWORD).await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "the old address still logs in: {v}");
    let v = register_raw(&app, "FRANK.NEW@example.org", PASSWORD, None).await;
    assert_eq!(reason(&v), "EMAIL_TAKEN", "{v}");
    // The old address is free again; one's own address in another case is fine.
    let v = app
        .gql(&c, Some(&token), UPDATE, json!({ "i": { "email": "FRANK.NEW@example.org", "name": "  Frank  " } }))
        .await;
    assert_eq!(v["data"]["updateProfile"]["email"], "FRANK.NEW@example.org", "{v}");
    assert_eq!(v["data"]["updateProfile"]["name"], "Frank", "{v}");
    assert_email_free(&app, "frank@example.com").await;
}

#[tokio::test]
async fn change_password_checks_the_old_one_and_ends_other_sessions() {
    let app = spawn_app().await;
    let c = app.client();
    let (token_a, refresh_a, id) = app.register_body("heidi@example.com").await;
    let second = app.login_body("heidi@example.com", PASSWORD).await;
    let (token_b, refresh_b) = (access(&second, "login"), refresh(&second, "login"));
    let new_password = "a brand new passphrase";

    let v = app.gql(&c, None, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": new_password })).await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");

    let v =
        app.gql(&c, Some(&token_a), ops::CHANGE_PASSWORD, json!({ "c": "not the password", "n": new_password })).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
    assert!(v["data"].is_null(), "{v}");
    for weak in ["short", &"x".repeat(129)] {
        let v = app.gql(&c, Some(&token_a), ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": weak })).await;
        assert_input_error(&v, "WEAK_PASSWORD", "newPassword", "weak new password");
    }
    // The refused attempts changed nothing: session B is alive, the password is old.
    let v = app.gql(&c, Some(&token_b), ME, json!({})).await;
    assert_eq!(v["data"]["me"]["id"], id.as_str(), "{v}");

    let v = app.gql(&c, Some(&token_a), ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": new_password })).await;
    assert_eq!(v, json!({ "data": { "changePassword": true } }));

    // The caller's own session keeps working, access and refresh.
    let v = app.gql(&c, Some(&token_a), ME, json!({})).await;
    assert_eq!(v["data"]["me"]["id"], id.as_str(), "{v}");
    // The other session is dead at once.
    let v = app.gql(&c, Some(&token_b), ME, json!({})).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    assert!(v["data"].is_null(), "{v}");
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": refresh_b })).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "the other session's refresh token still works: {v}");
    assert!(v["data"].is_null(), "{v}");
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": refresh_a })).await;
    assert!(v["data"]["refreshToken"]["accessToken"].is_string(), "the caller's session was ended: {v}");

    let v = login_raw(&app, "heidi@example.com", PASSWORD).await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "the old password still logs in: {v}");
    let v = login_raw(&app, "heidi@example.com", new_password).await;
    assert_eq!(v["data"]["login"]["user"]["id"], id.as_str(), "{v}");
}

#[tokio::test]
async fn login_upgrades_an_old_password_hash() {
    use sea_orm::{ConnectionTrait, Statement};

    async fn stored_hashes(url: &str) -> Vec<String> {
        let db = sea_orm::Database::connect(url).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), "SELECT password_hash FROM users"))
            .await
            .unwrap();
        let hashes = rows.iter().map(|r| r.try_get::<String>("", "password_hash").unwrap()).collect();
        db.close().await.ok();
        hashes
    }

    let mut app = spawn_with(|c| c.password.memory_kib = 19456).await;
    let (_, _, id) = app.register_body("ivan@example.com").await;
    let before = stored_hashes(app.database.url()).await;
    assert_eq!(before.len(), 1);
    assert!(before[0].starts_with("$argon2id$v=19$") && before[0].contains("m=19456"), "unexpected PHC parameters");
    app.stop().await;

    let mut config = app.config.clone();
    config.password.memory_kib = 20480;
    let again = authgraph::app::spawn(&config).await.expect("app restarts");
    let c = app.client();
    let login = |password: &'static str| {
        let c = c.clone();
        let url = format!("http://{}/graphql", again.addr);
        async move {
            c.post(url)
                .json(&json!({ "query": ops::LOGIN_PAYLOAD, "variables": { "i": { "email": "ivan@example.com", "password": password, "transport": "BODY" } } }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let v = login(PASSWORD).await;
    assert_eq!(v["data"]["login"]["user"]["id"], id.as_str(), "{v}");

    let after = stored_hashes(app.database.url()).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].starts_with("$argon2id$v=19$") && after[0].contains("m=20480"), "the hash was not upgraded");
    assert!(before[0] != after[0], "the stored hash did not change");
    // The upgraded hash still checks the same password, and only it.
    let v = login(PASSWORD).await;
    assert_eq!(v["data"]["login"]["user"]["id"], id.as_str(), "{v}");
    let v = login("wrong password").await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
    assert!(stored_hashes(app.database.url()).await == after, "a failed login changed the hash");
    again.stop().await.unwrap();
}

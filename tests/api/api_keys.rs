//! Service API keys: creation (the secret shown once, stored only as a hash),
//! what each scope allows, token introspection, where a key is accepted from,
//! rotation, revocation, expiry and last-use tracking.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entity::user::Role;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const CREATE: &str = "mutation($name: String!, $scopes: [ApiScope!]!, $days: Int) {
  createApiKey(name: $name, scopes: $scopes, expiresInDays: $days) {
    secret apiKey { id name prefix scopes createdAt expiresAt lastUsedAt revokedAt }
  }
}";
const CREATE_DEFAULT: &str = "mutation($name: String!, $scopes: [ApiScope!]!) {
  createApiKey(name: $name, scopes: $scopes) {
    secret apiKey { id name prefix scopes createdAt expiresAt lastUsedAt revokedAt }
  }
}";
const KEYS: &str = "{ apiKeys { id name prefix scopes createdAt expiresAt lastUsedAt revokedAt } }";
const ROTATE: &str = "mutation($id: ID!, $grace: Int) { rotateApiKey(id: $id, graceDays: $grace) { secret apiKey { id name prefix scopes expiresAt } } }";
const ROTATE_DEFAULT: &str =
    "mutation($id: ID!) { rotateApiKey(id: $id) { secret apiKey { id name prefix scopes expiresAt } } }";
const REVOKE: &str = "mutation($id: ID!) { revokeApiKey(id: $id) }";
const USERS: &str = "{ users { totalCount nodes { email } } }";
const TOKEN_INFO: &str = "query($t: String!) { tokenInfo(accessToken: $t) { active userId role sessionId expiresAt } }";

/// A key: (id, secret, the `apiKey` object).
struct Key {
    id: String,
    secret: String,
    api_key: Value,
}

/// Creates a key with the default lifetime.
async fn create_key(app: &TestApp, admin: &str, name: &str, scopes: &[&str]) -> Key {
    let d = ok(app, admin, CREATE_DEFAULT, json!({ "name": name, "scopes": scopes })).await;
    key_of(&d["createApiKey"])
}

fn key_of(payload: &Value) -> Key {
    Key {
        id: payload["apiKey"]["id"].as_str().unwrap().to_owned(),
        secret: payload["secret"].as_str().unwrap().to_owned(),
        api_key: payload["apiKey"].clone(),
    }
}

/// POSTs with `X-API-Key`; returns the raw body and its JSON.
async fn with_key_raw(app: &TestApp, key: &str, query: &str, variables: Value) -> (String, Value) {
    let text = app
        .client()
        .post(app.url("/graphql"))
        .header("x-api-key", key)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (text, v)
}

async fn with_key(app: &TestApp, key: &str, query: &str, variables: Value) -> Value {
    with_key_raw(app, key, query, variables).await.1
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap().to_utc()
}

#[track_caller]
fn assert_about(at: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let off = (at - expected).num_seconds().abs();
    assert!(off <= 60, "{what}: {at} is not about {expected}");
}

#[track_caller]
fn assert_key_rejected(v: &Value, reason_: &str, what: &str) {
    assert_eq!(code(v), "UNAUTHENTICATED", "{what}: {v}");
    assert_eq!(reason(v), reason_, "{what}: {v}");
    assert!(v["data"].is_null(), "{what}: {v}");
}

async fn db(app: &TestApp) -> sea_orm::DatabaseConnection {
    sea_orm::Database::connect(app.database.url()).await.expect("connect to the test database")
}

async fn stored_key(conn: &sea_orm::DatabaseConnection, id: &str) -> entity::api_key::Model {
    let id = uuid::Uuid::parse_str(id).unwrap();
    entity::api_key::Entity::find_by_id(id).one(conn).await.unwrap().expect("key row")
}

#[tokio::test]
async fn a_new_key_is_shown_once_and_stored_only_as_a_hash() {
    let app = spawn_app().await;
    let (admin, admin_id) = make_admin(&app, ADMIN_EMAIL).await;
    let r = app
        .post(
            &app.client(),
            Some(&admin),
            CREATE_DEFAULT,
            json!({ "name": "billing", "scopes": ["USERS_READ", "SESSIONS_REVOKE"] }),
        )
        .await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
    let key = key_of(&v["data"]["createApiKey"]);
    let now = Utc::now();

    assert!(key.secret.starts_with("sk_live_"), "{}", key.secret);
    assert_eq!(key.secret.len(), 8 + 16 + 43, "{}", key.secret);
    let prefix = key.api_key["prefix"].as_str().unwrap();
    assert!(key.secret.starts_with(prefix) && prefix.len() > 8 && prefix.len() < key.secret.len() - 32, "{prefix}");
    assert_eq!(key.api_key["name"], "billing");
    assert_eq!(key.api_key["scopes"], json!(["USERS_READ", "SESSIONS_REVOKE"]));
    assert_about(time(&key.api_key["createdAt"]), now, "createdAt");
    assert_about(time(&key.api_key["expiresAt"]), now + ChronoDuration::days(90), "default expiresAt");
    assert!(key.api_key["lastUsedAt"].is_null() && key.api_key["revokedAt"].is_null(), "{}", key.api_key);

    // Another key: another secret, another prefix; no expiry on request.
    let d = ok(&app, &admin, CREATE, json!({ "name": "forever", "scopes": ["USERS_READ"], "days": null })).await;
    let other = key_of(&d["createApiKey"]);
    assert_ne!(other.secret, key.secret);
    assert_ne!(other.api_key["prefix"], key.api_key["prefix"]);
    assert!(other.api_key["expiresAt"].is_null(), "{}", other.api_key);

    // The listing never shows the secret, and has no field for it.
    let (text, v) = raw(&app, Some(&admin), KEYS, json!({})).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(v["data"]["apiKeys"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"]["apiKeys"][0]["id"], other.id.as_str(), "newest first: {v}");
    for field in ["id", "name", "prefix", "scopes", "lastUsedAt", "revokedAt"] {
        assert_eq!(v["data"]["apiKeys"][1][field], key.api_key[field], "{field}: {v}");
    }
    for secret in [&key.secret, &other.secret] {
        assert!(!text.contains(secret.as_str()) && !text.contains(&secret[24..]), "listing shows a secret: {text}");
    }
    let v = app.gql(&app.client(), Some(&admin), "{ apiKeys { id secret } }", json!({})).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert!(v["data"].is_null(), "{v}");

    // The stored row has a hash, no plaintext.
    let conn = db(&app).await;
    use sea_orm::{ConnectionTrait, Statement};
    let rows = conn
        .query_all_raw(Statement::from_string(conn.get_database_backend(), "SELECT secret_hash FROM api_keys"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let hash: String = row.try_get("", "secret_hash").unwrap();
        assert!(!hash.is_empty() && hash != key.secret && hash != other.secret, "{hash}");
        assert!(!hash.contains(&key.secret[24..]) && !hash.contains(&other.secret[24..]), "{hash}");
    }
    let row = stored_key(&conn, &key.id).await;
    let row_text = format!("{row:?}");
    assert!(!row_text.contains(&key.secret[24..]), "plaintext stored: {row_text}");
    assert_eq!(row.prefix, prefix);
    assert_eq!(row.created_by.map(|u| u.to_string()), Some(admin_id));
    conn.close().await.ok();
    if let Some(path) = app.database.sqlite_path() {
        for file in [path.clone(), path.with_extension("db-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                let hay = String::from_utf8_lossy(&bytes);
                assert!(!hay.contains(&key.secret[24..]), "{} holds the secret", file.display());
            }
        }
    }

    // Bad requests create nothing.
    for vars in [
        json!({ "name": "x", "scopes": [] }),
        json!({ "name": "", "scopes": ["USERS_READ"] }),
        json!({ "name": "x", "scopes": ["USERS_READ"], "days": 0 }),
        json!({ "name": "x", "scopes": ["USERS_READ"], "days": 100000 }),
        json!({ "name": "x", "scopes": ["ROOT"] }),
    ] {
        let v = app.gql(&app.client(), Some(&admin), CREATE, vars.clone()).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{vars}: {v}");
    }
    assert_eq!(ok(&app, &admin, ops::API_KEY_IDS, json!({})).await["apiKeys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_key_can_do_what_its_scopes_allow_and_nothing_else() {
    let app = spawn_app().await;
    let (admin, admin_id) = make_admin(&app, ADMIN_EMAIL).await;
    let (target, _, target_id) = app.register_body("target@example.com").await;
    let (victim, _, victim_id) = app.register_body("victim@example.com").await;
    let read = create_key(&app, &admin, "reader", &["USERS_READ"]).await;
    let write = create_key(&app, &admin, "writer", &["USERS_WRITE"]).await;
    let revoke = create_key(&app, &admin, "revoker", &["SESSIONS_REVOKE"]).await;

    // USERS_READ: the listing and one user.
    let v = with_key(&app, &read.secret, USERS, json!({})).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(v["data"]["users"]["totalCount"], 3);
    let v =
        with_key(&app, &read.secret, "query($id: ID!) { user(id: $id) { email role } }", json!({ "id": target_id }))
            .await;
    assert_eq!(v["data"]["user"], json!({ "email": "target@example.com", "role": "USER" }), "{v}");
    // Private fields stay with the user themself and admins.
    let v = with_key(
        &app,
        &read.secret,
        "query($id: ID!) { user(id: $id) { email sessions { id } } }",
        json!({ "id": target_id }),
    )
    .await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    // Nothing else: a key is no user, and USERS_READ writes nothing.
    let refused = [
        ops::ME_ID_EMAIL.to_owned(),
        ops::API_KEY_IDS.to_owned(),
        format!(r#"{{ tokenInfo(accessToken: "{target}") {{ active }} }}"#),
        format!(r#"mutation {{ deleteUser(id: "{victim_id}") }}"#),
        format!(r#"mutation {{ revokeUserSessions(id: "{target_id}") }}"#),
        format!(r#"mutation {{ setUserRole(id: "{target_id}", role: ADMIN) {{ role }} }}"#),
        r#"mutation { createApiKey(name: "escalate", scopes: [USERS_WRITE]) { secret } }"#.to_owned(),
        format!(r#"mutation {{ rotateApiKey(id: "{}") {{ secret }} }}"#, read.id),
        format!(r#"mutation {{ revokeApiKey(id: "{}") }}"#, write.id),
        r#"mutation { updateProfile(input: { name: "svc" }) { id } }"#.to_owned(),
        r#"mutation { changePassword(currentPassword: "x", newPassword: "yyyyyyyyyy") }"#.to_owned(),
    ];
    for q in &refused {
        let v = with_key(&app, &read.secret, q, json!({})).await;
        assert_eq!(code(&v), "FORBIDDEN", "{q}: {v}");
    }
    // Nothing happened.
    ok(&app, &victim, ops::ME_ID, json!({})).await;
    assert_eq!(ok(&app, &target, ops::ME_ROLE, json!({})).await["me"]["role"], "USER");
    let keys = ok(&app, &admin, "{ apiKeys { name revokedAt } }", json!({})).await;
    assert_eq!(keys["apiKeys"].as_array().unwrap().len(), 3, "{keys}");
    assert!(keys["apiKeys"].as_array().unwrap().iter().all(|k| k["revokedAt"].is_null()), "{keys}");

    // USERS_WRITE deletes, and reads nothing.
    let v = with_key(&app, &write.secret, USERS, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    let v = with_key(&app, &write.secret, ops::REVOKE_USER_SESSIONS, json!({ "id": target_id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    let v = with_key(&app, &write.secret, ops::DELETE_USER, json!({ "id": victim_id })).await;
    assert_eq!(v["data"]["deleteUser"], true, "{v}");
    let v = app.gql(&app.client(), Some(&victim), ops::ME_ID, json!({})).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    // An admin, the last one or not, is out of a key's reach.
    let v = with_key(&app, &write.secret, ops::DELETE_USER, json!({ "id": admin_id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");

    // SESSIONS_REVOKE forces a logout, and does nothing else.
    let v = with_key(&app, &revoke.secret, ops::DELETE_USER, json!({ "id": target_id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    let v = with_key(&app, &revoke.secret, ops::REVOKE_USER_SESSIONS, json!({ "id": target_id })).await;
    assert_eq!(v["data"]["revokeUserSessions"], 1, "{v}");
    let v = app.gql(&app.client(), Some(&target), ops::ME_ID, json!({})).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    ok(&app, &admin, ops::ME_ID, json!({})).await;
}

#[tokio::test]
async fn introspection_tells_services_whether_a_token_is_live() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (token, _, user_id) = app.register_body("judy@example.com").await;
    let key = create_key(&app, &admin, "gateway", &["TOKENS_INTROSPECT"]).await;
    let info = |t: String| {
        let (app, secret) = (&app, key.secret.clone());
        async move {
            let v = with_key(app, &secret, TOKEN_INFO, json!({ "t": t })).await;
            assert!(v["errors"].is_null(), "{v}");
            v["data"]["tokenInfo"].clone()
        }
    };
    let inactive = json!({ "active": false, "userId": null, "role": null, "sessionId": null, "expiresAt": null });

    let session_id = ok(&app, &token, ops::ME_SESSIONS_CURRENT, json!({})).await["me"]["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let live = info(token.clone()).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["userId"], user_id.as_str());
    assert_eq!(live["role"], "USER");
    assert_eq!(live["sessionId"], session_id.as_str());
    assert_about(time(&live["expiresAt"]), Utc::now() + ChronoDuration::minutes(15), "expiresAt");

    for garbage in ["", "garbage", "a.b.c", &format!("{token}x"), &key.secret] {
        assert_eq!(info(garbage.to_owned()).await, inactive, "{garbage:?}");
    }
    // Expired: properly signed for the live session, but past its exp. The
    // control, signed the same way but current, is active.
    let services = &app.state().services;
    let (uid, sid) = (uuid::Uuid::parse_str(&user_id).unwrap(), uuid::Uuid::parse_str(&session_id).unwrap());
    let now = Utc::now().timestamp();
    let expired = services
        .tokens
        .issue(uid.into(), "judy@example.com", Role::User, sid.into(), now - 1000, now - 100)
        .unwrap()
        .token;
    let control =
        services.tokens.issue(uid.into(), "judy@example.com", Role::User, sid.into(), now, now + 600).unwrap().token;
    assert_eq!(info(control).await["active"], true);
    assert_eq!(info(expired.clone()).await, inactive);
    assert_eq!(reason(&app.gql(&app.client(), Some(&expired), ops::ME_ID, json!({})).await), "ACCESS_TOKEN_EXPIRED");

    // The role is the current one.
    ok(&app, &admin, "mutation($id: ID!) { setUserRole(id: $id, role: ADMIN) { role } }", json!({ "id": user_id }))
        .await;
    assert_eq!(info(token.clone()).await["role"], "ADMIN");

    // Revocation counts: after logout the token is inactive at once.
    assert_eq!(ok(&app, &token, ops::LOGOUT, json!({})).await["logout"], true);
    assert_eq!(info(token.clone()).await, inactive);

    // Only keys with the scope may ask; admins (who hold every other
    // permission) may not, nor other keys, nor anonymous callers.
    let (fresh, _, _) = app.register_body("kim@example.com").await;
    let v = app.gql(&app.client(), Some(&admin), TOKEN_INFO, json!({ "t": fresh })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    assert!(v["data"].is_null(), "{v}");
    let reader = create_key(&app, &admin, "reader", &["USERS_READ", "USERS_WRITE", "SESSIONS_REVOKE"]).await;
    let v = with_key(&app, &reader.secret, TOKEN_INFO, json!({ "t": fresh })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    let v = app.gql(&app.client(), None, TOKEN_INFO, json!({ "t": fresh })).await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
    assert_eq!(info(fresh).await["active"], true);
}

#[tokio::test]
async fn keys_are_taken_from_the_header_only_and_must_match_exactly() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let key = create_key(&app, &admin, "reader", &["USERS_READ"]).await;
    // The control: the header works.
    let v = with_key(&app, &key.secret, USERS, json!({})).await;
    assert_eq!(v["data"]["users"]["totalCount"], 1, "{v}");

    // In the URL, never.
    let c = app.client();
    for param in ["api_key", "x-api-key", "X-API-Key", "apiKey", "key"] {
        let url = format!("{}?{param}={}", app.url("/graphql"), key.secret);
        let v: Value = c.post(&url).json(&json!({ "query": USERS })).send().await.unwrap().json().await.unwrap();
        assert_eq!(reason(&v), "MISSING_TOKEN", "POST ?{param}=: {v}");
        assert!(v["data"].is_null(), "{v}");
        let r =
            c.get(app.url("/graphql")).query(&[("query", USERS), (param, key.secret.as_str())]).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(reason(&v), "MISSING_TOKEN", "GET ?{param}=: {v}");
    }
    // Nor in the body's extensions.
    let body = json!({ "query": USERS, "extensions": { "apiKey": key.secret, "x-api-key": key.secret } });
    let v: Value = c.post(app.url("/graphql")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
    // A key is not a bearer token.
    let v = app.gql(&c, Some(&key.secret), USERS, json!({})).await;
    assert_key_rejected(&v, "INVALID_TOKEN", "key as bearer");

    // Wrong keys.
    let last = key.secret.chars().last().unwrap();
    let wrong_secret = format!("{}{}", &key.secret[..key.secret.len() - 1], if last == 'A' { 'B' } else { 'A' });
    let unknown_prefix = format!("sk_live_{}{}", "0123456789abcdef", &key.secret[24..]);
    for (what, bad) in [
        ("garbage", "garbage".to_owned()),
        ("empty", String::new()),
        ("prefix only", key.api_key["prefix"].as_str().unwrap().to_owned()),
        ("wrong last character", wrong_secret),
        ("unknown prefix", unknown_prefix),
        ("truncated", key.secret[..key.secret.len() - 1].to_owned()),
        ("extended", format!("{}A", key.secret)),
        ("test key", key.secret.replace("sk_live_", "sk_test_")),
        ("upper case", key.secret.to_uppercase()),
    ] {
        let v = with_key(&app, &bad, USERS, json!({})).await;
        assert_key_rejected(&v, "INVALID_TOKEN", what);
    }
    // Two credentials at once: refused, whichever is good.
    let text = c
        .post(app.url("/graphql"))
        .header("x-api-key", &key.secret)
        .bearer_auth(&admin)
        .json(&json!({ "query": USERS }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_key_rejected(&v, "INVALID_TOKEN", "X-API-Key and Authorization");
    assert!(!text.contains(ADMIN_EMAIL), "{text}");
    // The key still works afterwards (a wrong try does not lock it).
    assert!(with_key(&app, &key.secret, USERS, json!({})).await["errors"].is_null());
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let first = create_key(&app, &admin, "crm", &["USERS_READ", "SESSIONS_REVOKE"]).await;

    let r = app.post(&app.client(), Some(&admin), ROTATE_DEFAULT, json!({ "id": first.id })).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{v}");
    let second = key_of(&v["data"]["rotateApiKey"]);
    let now = Utc::now();
    assert!(second.secret.starts_with("sk_live_") && second.secret != first.secret);
    assert_ne!(second.id, first.id);
    assert_ne!(second.api_key["prefix"], first.api_key["prefix"]);
    assert_eq!(second.api_key["name"], "crm");
    assert_eq!(second.api_key["scopes"], json!(["USERS_READ", "SESSIONS_REVOKE"]));
    assert_about(time(&second.api_key["expiresAt"]), now + ChronoDuration::days(90), "the new key's lifetime");
    // Both work during the grace period; the old one now ends with it.
    for k in [&first, &second] {
        let v = with_key(&app, &k.secret, USERS, json!({})).await;
        assert_eq!(v["data"]["users"]["totalCount"], 1, "{v}");
    }
    let keys = ok(&app, &admin, KEYS, json!({})).await;
    let old = keys["apiKeys"].as_array().unwrap().iter().find(|k| k["id"] == first.id.as_str()).unwrap().clone();
    assert_about(time(&old["expiresAt"]), now + ChronoDuration::days(30), "the old key's grace end");

    // No grace: the old secret stops at once, the new one works.
    let v = ok(&app, &admin, ROTATE, json!({ "id": second.id, "grace": 0 })).await;
    let third = key_of(&v["rotateApiKey"]);
    let v = with_key(&app, &second.secret, USERS, json!({})).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert!(v["data"].is_null(), "{v}");
    for k in [&third, &first] {
        let v = with_key(&app, &k.secret, USERS, json!({})).await;
        assert!(v["errors"].is_null(), "{v}");
    }
    // A key past its end cannot be rotated; bad grace periods are refused.
    let v = app.gql(&app.client(), Some(&admin), ROTATE, json!({ "id": second.id, "grace": 0 })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    for grace in [-1, 366] {
        let v = app.gql(&app.client(), Some(&admin), ROTATE, json!({ "id": third.id, "grace": grace })).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{grace}: {v}");
    }
    let v = app.gql(&app.client(), Some(&admin), ROTATE, json!({ "id": uuid::Uuid::now_v7(), "grace": 1 })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert_eq!(ok(&app, &admin, ops::API_KEY_IDS, json!({})).await["apiKeys"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn revocation_and_expiry_take_effect_at_once() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let key = create_key(&app, &admin, "doomed", &["USERS_READ"]).await;
    let keep = create_key(&app, &admin, "kept", &["USERS_READ"]).await;
    assert!(with_key(&app, &key.secret, USERS, json!({})).await["errors"].is_null());

    assert_eq!(ok(&app, &admin, REVOKE, json!({ "id": key.id })).await["revokeApiKey"], true);
    let v = with_key(&app, &key.secret, USERS, json!({})).await;
    assert_key_rejected(&v, "TOKEN_REVOKED", "revoked key");
    let keys = ok(&app, &admin, KEYS, json!({})).await;
    let listed = keys["apiKeys"].as_array().unwrap().iter().find(|k| k["id"] == key.id.as_str()).unwrap().clone();
    assert_about(time(&listed["revokedAt"]), Utc::now(), "revokedAt");
    // Once only; a revoked key cannot be rotated back to life.
    assert_eq!(ok(&app, &admin, REVOKE, json!({ "id": key.id })).await["revokeApiKey"], false);
    assert_eq!(ok(&app, &admin, REVOKE, json!({ "id": uuid::Uuid::now_v7() })).await["revokeApiKey"], false);
    let v = app.gql(&app.client(), Some(&admin), ROTATE, json!({ "id": key.id, "grace": 0 })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    // Other keys are untouched.
    assert!(with_key(&app, &keep.secret, USERS, json!({})).await["errors"].is_null());

    // Expiry is checked on every use: move the end into the past behind the
    // server's back and the very next request fails, without a restart.
    let d = ok(&app, &admin, CREATE, json!({ "name": "short", "scopes": ["USERS_READ"], "days": 1 })).await;
    let short = key_of(&d["createApiKey"]);
    assert_about(time(&short.api_key["expiresAt"]), Utc::now() + ChronoDuration::days(1), "expiresInDays: 1");
    assert!(with_key(&app, &short.secret, USERS, json!({})).await["errors"].is_null());
    let conn = db(&app).await;
    let res = entity::api_key::Entity::update_many()
        .col_expr(entity::api_key::Column::ExpiresAt, Expr::value(Utc::now() - ChronoDuration::minutes(1)))
        .filter(entity::api_key::Column::Id.eq(uuid::Uuid::parse_str(&short.id).unwrap()))
        .exec(&conn)
        .await
        .unwrap();
    assert_eq!(res.rows_affected, 1);
    conn.close().await.ok();
    let v = with_key(&app, &short.secret, USERS, json!({})).await;
    assert_key_rejected(&v, "ACCESS_TOKEN_EXPIRED", "expired key");
    assert!(with_key(&app, &keep.secret, USERS, json!({})).await["errors"].is_null());
}

#[tokio::test]
async fn last_use_is_kept_in_memory_and_written_at_shutdown() {
    let mut app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let key = create_key(&app, &admin, "poller", &["USERS_READ"]).await;
    let unused = create_key(&app, &admin, "idle", &["USERS_READ"]).await;
    let last_used = |keys: &Value, id: &str| {
        keys["apiKeys"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap()["lastUsedAt"].clone()
    };
    assert!(last_used(&ok(&app, &admin, KEYS, json!({})).await, &key.id).is_null());

    for _ in 0..3 {
        assert!(with_key(&app, &key.secret, USERS, json!({})).await["errors"].is_null());
    }
    let used_at = Utc::now();
    let keys = ok(&app, &admin, KEYS, json!({})).await;
    let shown = time(&last_used(&keys, &key.id));
    assert_about(shown, used_at, "lastUsedAt");
    assert!(last_used(&keys, &unused.id).is_null(), "{keys}");
    // Not written per request.
    let conn = db(&app).await;
    assert_eq!(stored_key(&conn, &key.id).await.last_used_at, None, "a use was written at once");

    // A graceful stop writes it.
    app.stop().await;
    let row = stored_key(&conn, &key.id).await;
    let stored = row.last_used_at.expect("last use written at shutdown");
    assert!((stored - shown).num_milliseconds().abs() < 1000, "stored {stored}, shown {shown}");
    assert_eq!(stored_key(&conn, &unused.id).await.last_used_at, None);
    conn.close().await.ok();
}

#[tokio::test]
async fn a_users_write_key_cannot_delete_an_admin() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (other_admin, other_id) = make_admin(&app, "second-admin@example.com").await;
    let write = create_key(&app, &admin, "writer", &["USERS_WRITE"]).await;
    let delete = ops::DELETE_USER;
    let v = with_key(&app, &write.secret, delete, json!({ "id": other_id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    assert!(v["data"].is_null(), "{v}");
    ok(&app, &other_admin, ops::ME_ID, json!({})).await;
    // Nor end an admin's sessions, with SESSIONS_REVOKE.
    let revoke = create_key(&app, &admin, "revoker", &["SESSIONS_REVOKE"]).await;
    let v = with_key(&app, &revoke.secret, ops::REVOKE_USER_SESSIONS, json!({ "id": other_id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    ok(&app, &other_admin, ops::ME_ID, json!({})).await;
    // An admin still can do both.
    assert_eq!(ok(&app, &admin, ops::REVOKE_USER_SESSIONS, json!({ "id": other_id })).await["revokeUserSessions"], 1);
    assert_eq!(ok(&app, &admin, delete, json!({ "id": other_id })).await["deleteUser"], true);
}

#[tokio::test]
async fn a_key_is_rotated_once_into_one_successor() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let key = create_key(&app, &admin, "crm", &["USERS_READ"]).await;
    let v = ok(&app, &admin, ROTATE, json!({ "id": key.id, "grace": 5 })).await;
    let successor = key_of(&v["rotateApiKey"]);
    let v = app.gql(&app.client(), Some(&admin), ROTATE, json!({ "id": key.id, "grace": 5 })).await;
    assert_eq!(reason(&v), "ALREADY_ROTATED", "{v}");
    // Two live secrets at most: the old one (for its grace) and its successor.
    let live = |keys: &Value| keys["apiKeys"].as_array().unwrap().len();
    assert_eq!(live(&ok(&app, &admin, KEYS, json!({})).await), 2);
    assert!(with_key(&app, &successor.secret, USERS, json!({})).await["errors"].is_null());

    // Four concurrent rotations of one fresh key: exactly one succeeds.
    let fresh = create_key(&app, &admin, "batch", &["USERS_READ"]).await;
    let rotations = (0..4).map(|_| {
        let (app, admin, id) = (&app, admin.clone(), fresh.id.clone());
        async move { app.gql(&app.client(), Some(&admin), ROTATE, json!({ "id": id, "grace": 5 })).await }
    });
    let results = futures_util::future::join_all(rotations).await;
    let won = results.iter().filter(|v| v["errors"].is_null()).count();
    assert_eq!(won, 1, "{results:?}");
    for v in results.iter().filter(|v| !v["errors"].is_null()) {
        assert_eq!(reason(v), "ALREADY_ROTATED", "{v}");
    }
    assert_eq!(live(&ok(&app, &admin, KEYS, json!({})).await), 4, "one successor per rotated key");
}

#[tokio::test]
async fn a_written_last_use_never_moves_backwards() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let key = create_key(&app, &admin, "poller", &["USERS_READ"]).await;
    // Another instance (or a later write) already stored a newer time.
    let newer = Utc::now() + ChronoDuration::hours(1);
    let conn = db(&app).await;
    entity::api_key::Entity::update_many()
        .col_expr(entity::api_key::Column::LastUsedAt, Expr::value(newer))
        .filter(entity::api_key::Column::Id.eq(uuid::Uuid::parse_str(&key.id).unwrap()))
        .exec(&conn)
        .await
        .unwrap();
    assert!(with_key(&app, &key.secret, USERS, json!({})).await["errors"].is_null());
    assert_eq!(authgraph::service::admin::api_keys::flush_usage(&app.state().services).await.unwrap(), 1);
    let stored = stored_key(&conn, &key.id).await.last_used_at.unwrap();
    assert!((stored - newer).num_milliseconds().abs() < 1000, "moved back from {newer} to {stored}");
    conn.close().await.ok();
}

#[tokio::test]
async fn key_names_refuse_invisible_characters_as_user_names_do() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    for name in ["crm\u{202e}gnp.exe", "c\u{200b}rm", "\u{2066}crm"] {
        let v = app
            .gql(&app.client(), Some(&admin), CREATE, json!({ "name": name, "scopes": ["USERS_READ"], "days": 1 }))
            .await;
        assert_eq!(reason(&v), "INVALID_NAME", "{name:?}: {v}");
    }
    let v = ok(&app, &admin, CREATE, json!({ "name": "Cre\u{300}me sync", "scopes": ["USERS_READ"], "days": 1 })).await;
    assert_eq!(v["createApiKey"]["apiKey"]["name"], "Cr\u{e8}me sync", "kept in NFC");
}

//! The security event log, read back after a scripted run: logins and their
//! failures, a refresh-token reuse, revocations, a password change, role
//! changes, API keys and a deletion, as `me.securityEvents` (a user's own)
//! and `auditEvents` (an admin's, or an API key's with AUDIT_READ); refused
//! changes record nothing; no secret is ever in an event; refusals by the
//! rate limits are tallied, not written one by one.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{helpers::*, ops};

const MY_EVENTS: &str = "query($first: Int, $after: String) { me { securityEvents(first: $first, after: $after) { \
    edges { cursor node { type occurredAt userId actorType actorId sessionId ip userAgent detail } } \
    pageInfo { hasNextPage hasPreviousPage } count } } }";
const AUDIT: &str = "query($f: AuditEventFilter, $first: Int) { auditEvents(filter: $f, first: $first) { \
    edges { node { type userId actorType actorId detail ip } } pageInfo { hasNextPage } } }";

fn types(connection: &Value) -> Vec<String> {
    connection["edges"].as_array().unwrap().iter().map(|e| e["node"]["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_log_records_what_happened_and_who_may_read_it() {
    let app = spawn_app().await;
    let (admin, admin_id) = make_admin(&app, "root@example.com").await;
    let user = app.user("watched@example.com").await;
    let phone = user.login(&app).await;
    assert_eq!(reason(&app.login_body("watched@example.com", "not my password").await), "INVALID_CREDENTIALS");
    assert_eq!(reason(&app.login_body("nobody@example.com", "not my password").await), "INVALID_CREDENTIALS");

    // The phone's refresh token is rotated, then its old copy comes back late.
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": phone.refresh_token })).await;
    assert!(v["errors"].is_null(), "{v}");
    app.clock.advance(Duration::from_secs(11));
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": phone.refresh_token })).await;
    assert_eq!(reason(&v), "REFRESH_TOKEN_REUSED");

    let laptop = user.login(&app).await;
    let sessions = ok(&app, &user.access_token, ops::ME_SESSIONS_CURRENT, json!({})).await;
    let other =
        sessions["me"]["sessions"].as_array().unwrap().iter().find(|s| s["current"] == false).unwrap()["id"].clone();
    ok(&app, &user.access_token, "mutation($id: ID!) { revokeSession(id: $id) }", json!({ "id": other })).await;
    let v = user.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": "a wrong guess", "n": "a much newer passphrase" })).await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS");
    let v = user.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "a much newer passphrase" })).await;
    assert!(v["errors"].is_null(), "{v}");
    drop(laptop);

    // The admin: a role change and back, a refused one (the last admin), a revocation.
    let set_role = "mutation($id: ID!, $r: Role!) { setUserRole(id: $id, role: $r) { role } }";
    ok(&app, &admin, set_role, json!({ "id": user.id, "r": "ADMIN" })).await;
    ok(&app, &admin, set_role, json!({ "id": user.id, "r": "USER" })).await;
    let v = app.gql(&app.client(), Some(&admin), set_role, json!({ "id": admin_id, "r": "USER" })).await;
    assert_eq!(reason(&v), "LAST_ADMIN");
    ok(&app, &admin, ops::REVOKE_USER_SESSIONS, json!({ "id": user.id })).await;

    // The user's own log, newest first, from where it happened.
    let again = app.login_body("watched@example.com", "a much newer passphrase").await;
    let token = again["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let mine =
        app.post(&app.client(), Some(&token), MY_EVENTS, json!({ "first": 50 })).await.json::<Value>().await.unwrap();
    let list = &mine["data"]["me"]["securityEvents"];
    assert_eq!(
        types(list),
        [
            "LOGIN_SUCCEEDED",
            "SESSIONS_REVOKED",
            "ROLE_CHANGED",
            "ROLE_CHANGED",
            "PASSWORD_CHANGED",
            "PASSWORD_CHANGE_FAILED",
            "SESSION_REVOKED",
            "LOGIN_SUCCEEDED",
            "REFRESH_TOKEN_REUSED",
            "LOGIN_FAILED",
            "LOGIN_SUCCEEDED",
            "REGISTERED",
        ],
        "{mine}"
    );
    let node = |i: usize| list["edges"][i]["node"].clone();
    // What an admin did: the user sees that an administrator acted, not who
    // or from where; an admin reading the account sees both.
    assert_eq!(node(1)["actorType"], "ADMIN");
    for hidden in ["actorId", "ip", "userAgent"] {
        assert_eq!(node(1)[hidden], Value::Null, "the owner sees the admin's {hidden}: {}", node(1));
    }
    let theirs = "query($id: ID!) { user(id: $id) { securityEvents(first: 2) { edges { node { type actorType actorId ip } } } } }";
    let seen = ok(&app, &admin, theirs, json!({ "id": user.id })).await;
    let by_admin = &seen["user"]["securityEvents"]["edges"][1]["node"];
    assert_eq!(by_admin["actorId"], admin_id.as_str(), "{seen}");
    assert_eq!(by_admin["ip"], "127.0.0.1", "{seen}");
    assert_eq!(node(2)["detail"], "ADMIN -> USER");
    assert_eq!(node(3)["detail"], "USER -> ADMIN");
    assert_eq!(node(5)["detail"], "INVALID_CREDENTIALS", "a guess of the password, for the owner to see");
    assert_eq!(node(8)["actorType"], "SYSTEM", "a reuse is the system's doing");
    assert_eq!(node(9)["detail"], "INVALID_CREDENTIALS");
    assert_eq!(node(9)["actorType"], "ANONYMOUS");
    assert_eq!(node(11)["ip"], "127.0.0.1");
    assert!(node(11)["sessionId"].is_string(), "{mine}");
    assert_eq!(list["count"], 12);

    // Paging: two at a time, by cursor.
    let page = ok(&app, &token, MY_EVENTS, json!({ "first": 2 })).await;
    let cursor = page["me"]["securityEvents"]["edges"][1]["cursor"].clone();
    assert_eq!(page["me"]["securityEvents"]["pageInfo"]["hasNextPage"], true);
    let next = ok(&app, &token, MY_EVENTS, json!({ "first": 2, "after": cursor })).await;
    assert_eq!(types(&next["me"]["securityEvents"]), ["ROLE_CHANGED", "ROLE_CHANGED"]);

    // Not another user's log, nor the audit log.
    let v = app.gql(&app.client(), Some(&token), AUDIT, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    let stranger = app.user("stranger@example.com").await;
    let v = stranger
        .gql(&app, "query($id: ID!) { user(id: $id) { securityEvents { count } } }", json!({ "id": user.id }))
        .await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");

    // The audit log: an API key with AUDIT_READ reads it, filtered; one without does not.
    let create = "mutation($s: [ApiScope!]!) { createApiKey(name: \"auditor\", scopes: $s) { secret apiKey { id } } }";
    let auditor = ok(&app, &admin, create, json!({ "s": ["AUDIT_READ"] })).await["createApiKey"].clone();
    let reader = ok(&app, &admin, create, json!({ "s": ["USERS_READ"] })).await["createApiKey"].clone();
    let with_key = |key: &Value, filter: Value| {
        let (app, key) = (&app, key["secret"].as_str().unwrap().to_owned());
        async move {
            bare()
                .post(app.url("/graphql"))
                .header("x-api-key", key)
                .json(&json!({ "query": AUDIT, "variables": { "f": filter, "first": 100 } }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let failed = with_key(&auditor, json!({ "type": "LOGIN_FAILED" })).await;
    let edges = failed["data"]["auditEvents"]["edges"].as_array().unwrap_or_else(|| panic!("{failed}"));
    assert_eq!(edges.len(), 2, "{failed}");
    assert!(edges.iter().any(|e| e["node"]["userId"].is_null()), "the unknown address's failure: {failed}");
    let v = with_key(&reader, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    ok(&app, &admin, "mutation($id: ID!) { revokeApiKey(id: $id) }", json!({ "id": reader["apiKey"]["id"] })).await;
    ok(&app, &admin, ops::DELETE_USER, json!({ "id": stranger.id })).await;

    let all = with_key(&auditor, json!({})).await;
    let everything = types(&all["data"]["auditEvents"]);
    for kind in ["API_KEY_CREATED", "API_KEY_REVOKED", "USER_DELETED", "ROLE_CHANGED", "REGISTERED"] {
        assert!(everything.iter().any(|t| t == kind), "{kind} missing: {everything:?}");
    }
    assert_eq!(everything.iter().filter(|t| *t == "ROLE_CHANGED").count(), 2, "the refused change was recorded");
    let deleted = with_key(&auditor, json!({ "userId": stranger.id, "type": "USER_DELETED" })).await;
    assert_eq!(deleted["data"]["auditEvents"]["edges"][0]["node"]["actorType"], "ADMIN", "{deleted}");

    // No secret anywhere in the log.
    let text = all.to_string() + &mine.to_string();
    for secret in [
        PASSWORD,
        "a much newer passphrase",
        "not my password",
        "a wrong guess",
        phone.refresh_token.as_str(),
        user.access_token.as_str(),
        auditor["secret"].as_str().unwrap(),
    ] {
        assert!(!text.contains(secret), "a secret is in the log");
    }
}

/// A flood of refused logins is one event per budget and client, with the
/// count, written when the tally is flushed (once a minute on a server).
#[tokio::test]
async fn rate_limit_refusals_are_tallied() {
    let app = spawn_with(|c| c.rate_limits.login_per_ip = "2/1h".parse().unwrap()).await;
    for _ in 0..7 {
        app.login_body("flood@example.com", "whatever it is").await;
    }
    let svc = &app.state().services;
    assert_eq!(authgraph::service::core::events::flush_refusals(svc).await.unwrap(), 1);
    // The admin logs in from the same client: its budget is full again an hour on.
    app.clock.advance(Duration::from_secs(3600));
    let (admin, _) = make_admin(&app, "root@example.com").await;
    let v = ok(&app, &admin, AUDIT, json!({ "f": { "type": "RATE_LIMITED" } })).await;
    let edges = v["auditEvents"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{v}");
    assert_eq!(edges[0]["node"]["detail"], "login: 5 refused", "{v}");
    assert_eq!(edges[0]["node"]["ip"], "127.0.0.1");
    assert_eq!(edges[0]["node"]["actorType"], "SYSTEM");
}

//! Several instances on one PostgreSQL database: what one instance changes,
//! the others see within a second, through the session change log and
//! `LISTEN/NOTIFY`; a session started on one is accepted by the others at
//! once; a listener whose connection is cut catches up once it reconnects.
//! On SQLite (one instance per file) these tests have nothing to check.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use authgraph::app::RunningApp;
use serde_json::{Value, json};

use crate::{helpers::*, ops};

/// How long a change may take to reach another instance.
const WITHIN: Duration = Duration::from_secs(1);

/// The first instance (a [`TestApp`] on a fresh PostgreSQL database) and two
/// more on the same database; `None` on SQLite.
async fn three_instances() -> Option<(TestApp, RunningApp, RunningApp)> {
    let app = spawn_app().await;
    if !matches!(app.database, TestDatabase::Postgres { .. }) {
        return None;
    }
    let b = authgraph::app::spawn(&app.config).await.expect("second instance");
    let c = authgraph::app::spawn(&app.config).await.expect("third instance");
    Some((app, b, c))
}

async fn register(addr: SocketAddr, email: &str) -> (String, String) {
    let v = gql_vars_at(
        addr,
        None,
        ops::REGISTER_TOKENS_USER_ID,
        json!({ "i": { "email": email, "password": PASSWORD, "transport": "BODY" } }),
    )
    .await;
    let p = &v["data"]["register"];
    assert!(p["accessToken"].is_string(), "register on {addr}: {v}");
    (p["accessToken"].as_str().unwrap().to_owned(), p["user"]["id"].as_str().unwrap().to_owned())
}

async fn login(addr: SocketAddr, email: &str) -> String {
    let v = gql_vars_at(
        addr,
        None,
        ops::LOGIN_TOKENS,
        json!({ "i": { "email": email, "password": PASSWORD, "transport": "BODY" } }),
    )
    .await;
    v["data"]["login"]["accessToken"].as_str().unwrap_or_else(|| panic!("login on {addr}: {v}")).to_owned()
}

fn reason(v: &Value) -> &str {
    v["errors"][0]["extensions"]["reason"].as_str().unwrap_or("")
}

/// Waits until `query` with `token` on every one of `addrs` gives an answer
/// that `done` accepts; fails after [`WITHIN`] with the last answer.
async fn everywhere_within(addrs: &[SocketAddr], token: &str, query: &str, done: impl Fn(&Value) -> bool, what: &str) {
    for &addr in addrs {
        let started = Instant::now();
        loop {
            let v = gql_vars_at(addr, Some(token), query, json!({})).await;
            if done(&v) {
                break;
            }
            assert!(started.elapsed() < WITHIN, "{what} did not reach {addr} within {WITHIN:?}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn revoked(v: &Value) -> bool {
    reason(v) == "TOKEN_REVOKED"
}

#[tokio::test]
async fn changes_on_one_instance_reach_the_others_within_a_second() {
    let Some((app, b, c)) = three_instances().await else { return };
    let (a, b, c) = (app.addr, b.addr, c.addr);
    let all = [a, b, c];

    // A session started on one instance is good on the others at once.
    let (alice, _) = register(a, "alice@example.com").await;
    for addr in all {
        let v = gql_vars_at(addr, Some(&alice), ops::ME_EMAIL, json!({})).await;
        assert_eq!(v["data"]["me"]["email"], "alice@example.com", "{addr}: {v}");
    }

    // logout
    assert_eq!(gql_vars_at(a, Some(&alice), ops::LOGOUT, json!({})).await["data"]["logout"], true);
    everywhere_within(&[b, c], &alice, ops::ME_ID, revoked, "logout").await;

    // revokeSession: one of alice's sessions ends another.
    let s1 = login(b, "alice@example.com").await;
    let s2 = login(b, "alice@example.com").await;
    let sessions = gql_vars_at(c, Some(&s1), "{ me { sessions { id current } } }", json!({})).await;
    let other = sessions["data"]["me"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{sessions}"));
    let v = gql_vars_at(c, Some(&s1), "mutation($id: ID!) { revokeSession(id: $id) }", json!({ "id": other })).await;
    assert_eq!(v["data"]["revokeSession"], true, "{v}");
    everywhere_within(&all, &s2, ops::ME_ID, revoked, "revokeSession").await;

    // setUserRole and revokeUserSessions by an admin.
    let (admin, _) = make_admin(&app, "root@example.com").await;
    let (bob, bob_id) = register(b, "bob@example.com").await;
    let v = gql_vars_at(
        a,
        Some(&admin),
        "mutation($id: ID!) { setUserRole(id: $id, role: ADMIN) { role } }",
        json!({ "id": bob_id }),
    )
    .await;
    assert_eq!(v["data"]["setUserRole"]["role"], "ADMIN", "{v}");
    everywhere_within(&all, &bob, ops::ME_ROLE, |v| v["data"]["me"]["role"] == "ADMIN", "setUserRole").await;
    let v = gql_vars_at(c, Some(&admin), ops::REVOKE_USER_SESSIONS, json!({ "id": bob_id })).await;
    assert_eq!(v["data"]["revokeUserSessions"], 1, "{v}");
    everywhere_within(&all, &bob, ops::ME_ID, revoked, "revokeUserSessions").await;

    // changePassword ends the user's other sessions.
    let (carol, _) = register(c, "carol@example.com").await;
    let carol_elsewhere = login(b, "carol@example.com").await;
    let v =
        gql_vars_at(a, Some(&carol), ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "another long passphrase" }))
            .await;
    assert!(v["errors"].is_null(), "{v}");
    everywhere_within(&all, &carol_elsewhere, ops::ME_ID, revoked, "changePassword").await;
    everywhere_within(&all, &carol, ops::ME_ID, |v| v["errors"].is_null(), "the changing session").await;

    // deleteUser
    let (dave, dave_id) = register(a, "dave@example.com").await;
    let v = gql_vars_at(b, Some(&admin), ops::DELETE_USER, json!({ "id": dave_id })).await;
    assert_eq!(v["data"]["deleteUser"], true, "{v}");
    everywhere_within(
        &all,
        &dave,
        ops::ME_ID,
        |v| v["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED",
        "deleteUser",
    )
    .await;
}

/// An instance whose listening connection is cut (terminated by the server)
/// reconnects and reads what it missed from the log.
#[tokio::test]
async fn a_listener_cut_off_catches_up_from_the_log() {
    let Some((app, b, c)) = three_instances().await else { return };
    let (erin, _) = register(app.addr, "erin@example.com").await;
    for addr in [b.addr, c.addr] {
        assert!(gql_vars_at(addr, Some(&erin), ops::ME_ID, json!({})).await["errors"].is_null());
    }
    let TestDatabase::Postgres { url, .. } = &app.database else { unreachable!() };
    let db = sea_orm::Database::connect(url).await.unwrap();
    use sea_orm::ConnectionTrait;
    let cut = db
        .execute_unprepared(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    assert!(cut.rows_affected() >= 3, "every instance listens: {} listeners cut", cut.rows_affected());
    // Changed while nobody listens.
    assert_eq!(gql_vars_at(app.addr, Some(&erin), ops::LOGOUT, json!({})).await["data"]["logout"], true);
    let started = Instant::now();
    for addr in [b.addr, c.addr] {
        loop {
            let v = gql_vars_at(addr, Some(&erin), ops::ME_ID, json!({})).await;
            if revoked(&v) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{addr} never caught up: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    db.close().await.ok();
}

/// Three instances together admit what one would: the per-account password
/// budget and a per-client budget are counted in the database they share.
#[tokio::test]
async fn budgets_hold_across_instances() {
    let app = spawn_with(|c| {
        c.rate_limits.login_per_account = "3/1h".parse().unwrap();
        c.rate_limits.register_per_ip = "4/1h".parse().unwrap();
    })
    .await;
    if !matches!(app.database, TestDatabase::Postgres { .. }) {
        return;
    }
    let b = authgraph::app::spawn(&app.config).await.expect("second instance");
    let c = authgraph::app::spawn(&app.config).await.expect("third instance");
    let all = [app.addr, b.addr, c.addr];
    let guess = |addr| async move {
        gql_vars_at(
            addr,
            None,
            ops::LOGIN_TOKENS,
            json!({ "i": { "email": "target@example.com", "password": "wrong guess" } }),
        )
        .await
    };
    // One guess on each instance: within the budget of three.
    for addr in all {
        assert_eq!(reason(&guess(addr).await), "INVALID_CREDENTIALS", "{addr}");
    }
    // The fourth is refused wherever it lands.
    for addr in all {
        let v = guess(addr).await;
        assert_eq!(v["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{addr}: {v}");
        assert!(v["errors"][0]["extensions"]["retryAfter"].as_u64().is_some_and(|s| s > 0), "{v}");
    }
    // Registrations from one client: four in all, whichever instances they reach.
    for (i, addr) in all.iter().chain(&all[..1]).enumerate() {
        register(*addr, &format!("client{i}@example.com")).await;
    }
    for addr in all {
        let v = gql_vars_at(
            addr,
            None,
            ops::REGISTER_TOKENS,
            json!({ "i": { "email": "fifth@example.com", "password": PASSWORD } }),
        )
        .await;
        assert_eq!(v["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{addr}: {v}");
    }
}

/// An instance killed outright (SIGKILL) loses nothing for the others: what
/// it committed (a new account and session, a logout) is theirs, and they go
/// on serving.
#[tokio::test]
async fn an_instance_killed_outright_loses_nothing_for_the_others() {
    let Some((app, b, _c)) = three_instances().await else { return };
    let TestDatabase::Postgres { url, .. } = &app.database else { unreachable!() };
    let dir = tempfile::tempdir().unwrap();
    let doomed = start_process(url, dir.path(), &[]);
    let addr: SocketAddr = doomed.base.trim_start_matches("http://").parse().unwrap();
    let (frank, _) = register(addr, "frank@example.com").await;
    let (gina, _) = register(addr, "gina@example.com").await;
    assert_eq!(gql_vars_at(addr, Some(&gina), ops::LOGOUT, json!({})).await["data"]["logout"], true);
    doomed.kill();

    everywhere_within(&[app.addr, b.addr], &gina, ops::ME_ID, revoked, "a logout on the killed instance").await;
    for at in [app.addr, b.addr] {
        let v = gql_vars_at(at, Some(&frank), ops::ME_EMAIL, json!({})).await;
        assert_eq!(v["data"]["me"]["email"], "frank@example.com", "{at}: {v}");
    }
    let again = login(b.addr, "frank@example.com").await;
    assert!(gql_vars_at(app.addr, Some(&again), ops::ME_ID, json!({})).await["errors"].is_null());
}

/// `authgraph create-admin` promoting an existing account goes through the
/// change log like `setUserRole`: instances serving the user's sessions see
/// the new role at once.
#[tokio::test]
async fn a_promotion_by_create_admin_reaches_running_instances() {
    let Some((app, b, _c)) = three_instances().await else { return };
    let (hank, _) = register(b.addr, "hank@example.com").await;
    assert_eq!(gql_vars_at(b.addr, Some(&hank), ops::ME_ROLE, json!({})).await["data"]["me"]["role"], "USER");
    // What the command does, from a process of its own (here: the first instance's services).
    let (user, created) =
        authgraph::service::admin::create_or_promote_admin(&app.state().services, "hank@example.com", None, || {
            unreachable!("an existing account needs no password")
        })
        .await
        .unwrap();
    assert!(!created && user.role == entity::user::Role::Admin);
    everywhere_within(&[b.addr], &hank, ops::ME_ROLE, |v| v["data"]["me"]["role"] == "ADMIN", "create-admin").await;
}

/// Signing keys are the database's: instances on one database sign with one
/// key and verify each other's tokens; a rotation started on one is published
/// by the others before it signs (each reloads the set, every 30 s on a
/// server, every 200 ms here), and after the lead time all of them sign with
/// the new key and accept each other's tokens.
#[tokio::test]
async fn instances_share_signing_keys_and_their_rotation() {
    let app = spawn_with(|c| {
        c.jwt_algorithm = authgraph::config::SigningAlgorithm::Es256;
        c.key_refresh_interval = Duration::from_millis(200);
    })
    .await;
    if !matches!(app.database, TestDatabase::Postgres { .. }) {
        return;
    }
    let b = authgraph::app::spawn(&app.config).await.expect("second instance");
    let jwks = |addr: SocketAddr| async move {
        let v: Value =
            bare().get(format!("http://{addr}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
        let mut kids: Vec<String> =
            v["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        kids.sort();
        kids
    };
    assert_eq!(jwks(app.addr).await, jwks(b.addr).await, "two instances publish different keys");
    let (token_a, id) = register(app.addr, "k@example.com").await;
    assert_eq!(gql_at(b.addr, Some(&token_a), "{ me { id } }").await["data"]["me"]["id"], id.as_str());

    let (admin, _) = make_admin(&app, "root@example.com").await;
    let v = ok(&app, &admin, "mutation { rotateSigningKey { kid } }", json!({})).await;
    let next = v["rotateSigningKey"]["kid"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !jwks(b.addr).await.contains(&next) {
        assert!(Instant::now() < deadline, "the other instance did not publish the new key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.clock.advance(app.config.jwt_key_lead_time);
    let token_b = login(b.addr, "k@example.com").await;
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token_b.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], next.as_str(), "after the lead time the other instance still signs with the old key");
    assert_eq!(gql_at(app.addr, Some(&token_b), "{ me { id } }").await["data"]["me"]["id"], id.as_str());
    assert_eq!(gql_at(b.addr, Some(&token_a), "{ me { id } }").await["data"]["me"]["id"], id.as_str());
    b.stop().await.unwrap();
}

/// Three instances share one outbox: every mail queued on any of them is sent
/// once, by one of them, and the per-recipient budget holds across them.
#[tokio::test]
async fn instances_share_the_outbox_without_sending_twice() {
    let sink = crate::smtp::SmtpSink::start().await;
    let app = spawn_with(|c| {
        c.mail.delivery =
            authgraph::config::MailDelivery::Smtp(authgraph::secret::Secret::new(sink.url().into_bytes()));
        c.rate_limits.mail_per_recipient = vec!["1/1h".parse().unwrap()];
    })
    .await;
    if !matches!(app.database, TestDatabase::Postgres { .. }) {
        return;
    }
    let b = authgraph::app::spawn(&app.config).await.expect("second instance");
    let c = authgraph::app::spawn(&app.config).await.expect("third instance");
    let all = [app.addr, b.addr, c.addr];
    const USERS: usize = 24;
    for i in 0..USERS {
        register(all[i % 3], &format!("mail{i}@example.com")).await;
    }
    let request = "mutation($e: String!) { requestPasswordReset(email: $e) }";
    let asks = (0..USERS).map(|i| {
        let addr = all[(i + 1) % 3];
        async move { gql_vars_at(addr, None, request, json!({ "e": format!("mail{i}@example.com") })).await }
    });
    for v in futures_util::future::join_all(asks).await {
        assert!(v["errors"].is_null(), "{v}");
    }
    for i in 0..USERS {
        sink.next_mail(&format!("mail{i}@example.com"), "Reset your password").await;
    }
    // Every row ended: no instance can send one again.
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(sink.messages().len(), USERS, "a mail was sent twice");
    // Each recipient's budget was spent on whichever instance: a second ask
    // is refused on every instance.
    for addr in all {
        let v = gql_vars_at(addr, None, request, json!({ "e": "mail0@example.com" })).await;
        assert_eq!(v["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{addr}: {v}");
    }
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}

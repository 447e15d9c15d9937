//! Crashes, contention and shutdown lose nothing and corrupt nothing.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_registrations_and_refreshes_never_see_a_locked_database() {
    let app = spawn_app().await;
    let c = app.client();
    let regs = join_all((0..50).map(|i| {
        let (app, c) = (&app, c.clone());
        async move {
            app.gql(
                &c,
                None,
                ops::REGISTER_TOKENS,
                json!({ "i": { "email": format!("u{i}@example.com"), "password": PASSWORD, "transport": "BODY" } }),
            )
            .await
        }
    }))
    .await;
    let mut tokens = Vec::new();
    for v in &regs {
        assert!(v["errors"].is_null(), "registration failed: {v}");
        tokens.push(v["data"]["register"]["refreshToken"].as_str().unwrap().to_owned());
    }
    let refreshes = join_all(tokens.iter().map(|t| {
        let (app, c) = (&app, c.clone());
        async move { app.gql(&c, None, ops::REFRESH_BODY, json!({ "t": t })).await }
    }))
    .await;
    for v in &refreshes {
        assert!(v["errors"].is_null(), "refresh failed: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_under_load_leaves_no_rotation_half_done() {
    let mut app = spawn_app().await;
    let (_, refresh, _) = app.register_body("drain@example.com").await;
    let c = app.client();
    // One chain of refreshes and a burst of parallel ones while the server stops.
    let url = app.url("/graphql");
    let load = (0..30).map(|i| {
        let (c, url, t) = (c.clone(), url.clone(), refresh.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            match c.post(&url).json(&json!({ "query": ops::REFRESH_BODY, "variables": { "t": t } })).send().await {
                Ok(r) => {
                    assert!(r.status().as_u16() < 500, "status {}", r.status());
                    let v: Value = r.json().await.expect("a complete JSON answer");
                    if !v["errors"].is_null() {
                        let code = v["errors"][0]["extensions"]["code"].as_str().unwrap_or_default().to_owned();
                        assert_ne!(code, "INTERNAL_SERVER_ERROR", "{v}");
                    }
                }
                // Refused after the listener closed: fine, nothing was started.
                Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
            }
        }
    });
    let stop = async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        app.stop().await;
    };
    tokio::join!(join_all(load), stop);

    let db = Database::connect(app.database.url()).await.unwrap();
    assert_eq!(live_successor_violations(&db).await, 0);
}

/// Sessions with more than one live (never rotated) refresh token.
async fn live_successor_violations(db: &sea_orm::DatabaseConnection) -> i64 {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM (SELECT session_id FROM refresh_tokens WHERE rotated_at IS NULL \
             GROUP BY session_id HAVING COUNT(*) > 1) AS t",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// The real binary, started on `database_url`, with its bound address.
struct Server {
    child: Child,
    base: String,
}

fn start_server(database_url: &str, dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgraph"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", JWT_SECRET)
        .env("COOKIE_SECURE", "false")
        .env("RATE_LIMIT_LOGIN_PER_IP", "100000/1s")
        .env("RATE_LIMIT_REGISTER_PER_IP", "100000/1s")
        .env("RATE_LIMIT_REFRESH_PER_IP", "100000/1s")
        .env("RATE_LIMIT_LOGIN_PER_ACCOUNT", "100000/1s")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start authgraph");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("server reported its address");
    Server { child, base: format!("http://{addr}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_writes_loses_no_acknowledged_registration() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // Accounts whose registration was acknowledged, and refresh tokens handed out.
    let registered: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut counter = 0usize;

    for round in 0..4 {
        let mut server = start_server(database.url(), dir.path());
        let url = format!("{}/graphql", server.base);
        // A bound only: the workers run until the kill breaks their connections.
        let deadline = Instant::now() + Duration::from_secs(60);
        let before = registered.lock().unwrap().len();
        let workers = (0..6).map(|w| {
            let (client, url, registered) = (client.clone(), url.clone(), registered.clone());
            let base = counter + w * 1000;
            async move {
                let mut i = 0;
                let mut refresh: Option<String> = None;
                while Instant::now() < deadline {
                    i += 1;
                    let email = format!("r{round}-{}@example.com", base + i);
                    let body = json!({ "query": ops::REGISTER_TOKENS, "variables": { "i": { "email": email, "password": PASSWORD, "transport": "BODY" } } });
                    let Ok(resp) = client.post(&url).json(&body).send().await else { break };
                    let Ok(v) = resp.json::<Value>().await else { break };
                    if v["errors"].is_null() {
                        registered.lock().unwrap().push(email);
                        refresh = v["data"]["register"]["refreshToken"].as_str().map(str::to_owned);
                    }
                    if let Some(t) = refresh.clone() {
                        let body = json!({ "query": ops::REFRESH_BODY, "variables": { "t": t } });
                        let Ok(resp) = client.post(&url).json(&body).send().await else { break };
                        let Ok(v) = resp.json::<Value>().await else { break };
                        refresh = v["data"]["refreshToken"]["refreshToken"].as_str().map(str::to_owned);
                    }
                }
            }
        });
        let killer = async {
            // Killed mid-load, whatever is in flight then: once this round's
            // writes are going (three acknowledged), however busy the machine.
            let registered = &registered;
            wait_until(
                || format!("three registrations acknowledged in round {round}"),
                async || (registered.lock().unwrap().len() >= before + 3).then_some(()),
            )
            .await;
            server.child.kill().expect("SIGKILL");
            server.child.wait().unwrap();
        };
        tokio::join!(join_all(workers), killer);
        counter += 10_000;
    }

    // Restart once more: everything acknowledged is there.
    let mut server = start_server(database.url(), dir.path());
    let url = format!("{}/graphql", server.base);
    let emails = registered.lock().unwrap().clone();
    assert!(emails.len() >= 8, "the load did not get going: {} registrations", emails.len());
    let sample: Vec<&String> = emails.iter().step_by((emails.len() / 12).max(1)).collect();
    for email in sample {
        let body = json!({ "query": ops::LOGIN_TOKENS, "variables": { "i": { "email": email, "password": PASSWORD, "transport": "BODY" } } });
        let v: Value = client.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
        assert!(v["errors"].is_null(), "acknowledged account {email} cannot log in: {v}");
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let db = Database::connect(database.url()).await.unwrap();
    let backend = db.get_database_backend();
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            let row = db.query_one_raw(Statement::from_string(backend, sql)).await.unwrap().unwrap();
            row.try_get::<i64>("", "n").unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) AS n FROM users WHERE password_hash NOT LIKE '$argon2id$%'").await, 0);
    let stored: HashSet<String> = {
        let rows = db.query_all_raw(Statement::from_string(backend, "SELECT email FROM users")).await.unwrap();
        rows.iter().map(|r| r.try_get::<String>("", "email").unwrap()).collect()
    };
    for email in &emails {
        assert!(stored.contains(email), "acknowledged registration {email} was lost");
    }
    assert_eq!(live_successor_violations(&db).await, 0, "a refresh token has two live successors");
    if database.sqlite_path().is_some() {
        let row = db.query_one_raw(Statement::from_string(backend, "PRAGMA integrity_check")).await.unwrap().unwrap();
        assert_eq!(row.try_get::<String>("", "integrity_check").unwrap(), "ok");
    }
    db.close().await.unwrap();

    // Migrations re-run cleanly on the crashed-into database.
    let out = Command::new(env!("CARGO_BIN_EXE_authgraph"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["migrate", "--database-url", database.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(database.url(), dir.path());
    let client = reqwest::Client::new();
    let v: Value = client
        .post(format!("{}/graphql", server.base))
        .json(&json!({ "query": ops::TYPENAME }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"]["__typename"], "Query");
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}

#[tokio::test]
async fn ended_sessions_are_purged_in_the_background() {
    let app = spawn_with(|c| c.cleanup_interval = Duration::from_millis(100)).await;
    let (_, old_refresh, _) = app.register_body("purged@example.com").await;
    let (_, live_refresh, _) = app.register_body("kept-live@example.com").await;
    let db = Database::connect(app.database.url()).await.unwrap();
    let backend = db.get_database_backend();
    // Make the first session one that ended two days ago.
    let two_days_ago = chrono::Utc::now() - chrono::Duration::days(2);
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DbBackend::Postgres => {
                "UPDATE sessions SET expires_at = $1 WHERE user_id = (SELECT id FROM users WHERE email = 'purged@example.com')"
            }
            _ => "UPDATE sessions SET expires_at = ? WHERE user_id = (SELECT id FROM users WHERE email = 'purged@example.com')",
        },
        [two_days_ago.into()],
    ))
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            let row = db.query_one_raw(Statement::from_string(backend, sql)).await.unwrap().unwrap();
            row.try_get::<i64>("", "n").unwrap()
        }
    };
    let mut remaining = i64::MAX;
    for _ in 0..50 {
        remaining = count("SELECT COUNT(*) AS n FROM sessions").await;
        if remaining == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 1, "the ended session was not purged");
    // Its refresh tokens went with it; the live session is untouched.
    assert_eq!(count("SELECT COUNT(*) AS n FROM refresh_tokens").await, 1);
    let c = app.client();
    let v = app.gql(&c, None, ops::REFRESH_BODY, json!({ "t": old_refresh })).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{v}");
    let v = app.gql(&c, None, ops::REFRESH_BODY, json!({ "t": live_refresh })).await;
    assert!(v["errors"].is_null(), "{v}");
}

//! The black-box harness: every test starts the real app on 127.0.0.1:0 with a
//! fresh database (a temporary SQLite file, or a fresh PostgreSQL database when
//! TEST_DATABASE_URL is set) and talks GraphQL over HTTP.
//!
//! `TEST_LOG` shows the server's log: set it to an `EnvFilter` directive
//! (`TEST_LOG=debug`, `TEST_LOG=authgraph=debug,sqlx=warn`) and the first
//! `spawn_with` in the process installs a subscriber that writes through the
//! test writer, so `TEST_LOG=debug cargo test --test api some_test` prints the
//! log of the tests that fail (or of all of them with `-- --nocapture`). A
//! server started as a subprocess (`start_process`) logs by its own `RUST_LOG`
//! instead.

use std::{net::SocketAddr, time::Duration};

use authgraph::{
    app::{self, RunningApp},
    cli::{Cli, Command},
    clock::ClockControl,
    config::Config,
};
use reqwest::{Client, Response};
use serde_json::{Value, json};
use tempfile::TempDir;
use tracing_subscriber::EnvFilter;

use crate::ops;

pub const PASSWORD: &str = "correct horse battery";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// The address `make_admin` is most often given.
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// The refresh cookie's name while cookies are not Secure (the harness's default).
pub const COOKIE: &str = "refresh_token";

pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    running: Option<RunningApp>,
    pub database: TestDatabase,
    /// Moves the server's clock forward: expiry, grace and idle rules are tested
    /// by jumping ahead, never by sleeping.
    pub clock: ClockControl,
    /// Where the server writes mail while no SMTP server is configured.
    pub mail_dir: TempDir,
    /// The mail files [`TestApp::next_mail_file`] handed out already.
    taken_mail: std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>,
}

/// A database that exists for one test.
pub enum TestDatabase {
    Sqlite { dir: TempDir, url: String },
    Postgres { admin_url: String, name: String, url: String },
}

impl TestDatabase {
    pub async fn create() -> Self {
        match std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(admin_url) => {
                let name = format!("authgraph_t_{}", uuid::Uuid::new_v4().simple());
                let admin = sea_orm::Database::connect(&admin_url).await.expect("connect TEST_DATABASE_URL");
                use sea_orm::ConnectionTrait;
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                admin.close().await.ok();
                let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin_url.clone());
                let url = format!("{base}/{name}");
                TestDatabase::Postgres { admin_url, name, url }
            }
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                TestDatabase::Sqlite { dir, url }
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Sqlite { url, .. } | TestDatabase::Postgres { url, .. } => url,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDatabase::Postgres { .. })
    }

    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        match self {
            TestDatabase::Sqlite { dir, .. } => Some(dir.path().join("test.db")),
            _ => None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { admin_url, name, .. } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    use sea_orm::ConnectionTrait;
                    if let Ok(admin) = sea_orm::Database::connect(&admin_url).await {
                        let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A configuration as `authgraph serve` would build it from these flags.
pub fn config_from(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["authgraph", "serve"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_args_from(argv).map_err(|e| e.to_string())?;
    let Some(Command::Serve(serve)) = cli.command else { unreachable!() };
    Config::from_args(serve).map_err(|e| e.to_string())
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// With `TEST_LOG` set, installs (once per process) a global subscriber that
/// writes the server's log, filtered by `TEST_LOG`, through the test writer; a
/// global subscriber set already is left in place. A test that sets its own
/// subscriber for its thread (`tracing::subscriber::set_default`) still sees
/// its log there.
fn init_test_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Some(filter) = std::env::var("TEST_LOG").ok().filter(|f| !f.is_empty()) {
            let _ = tracing_subscriber::fmt().with_env_filter(EnvFilter::new(filter)).with_test_writer().try_init();
        }
    });
}

/// Starts the app; `tweak` adjusts the configuration first.
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    init_test_log();
    let database = TestDatabase::create().await;
    let mail_dir = tempfile::tempdir().expect("tempdir");
    let mail_dir_arg = mail_dir.path().display().to_string();
    let mut config = config_from(&[
        "--database-url",
        database.url(),
        "--listen-addr",
        "127.0.0.1:0",
        "--jwt-secret",
        JWT_SECRET,
        "--cookie-secure",
        "false",
        // Tests make many calls from 127.0.0.1; the rate-limit tests set tight quotas.
        "--rate-limit-login-per-ip",
        "100000/1s",
        "--rate-limit-register-per-ip",
        "100000/1s",
        "--rate-limit-refresh-per-ip",
        "100000/1s",
        "--rate-limit-login-per-account",
        "100000/1s",
        "--rate-limit-mail-per-ip",
        "100000/1s",
        "--rate-limit-mail-per-recipient",
        "100000/1s",
        "--rate-limit-link-per-ip",
        "100000/1s",
        "--rate-limit-write-per-ip",
        "100000/1s",
        "--rate-limit-write-per-account",
        "100000/1s",
        "--mail-dir",
        &mail_dir_arg,
    ])
    .expect("test config");
    // SQLite keeps the production default, one connection, so that a read
    // that waits for the connection a write transaction holds shows up here;
    // PostgreSQL tests run side by side, and eight each stay within its limit.
    if database.is_postgres() {
        config.database_max_connections = 8;
    }
    let clock = ClockControl::new();
    config.clock = clock.clock();
    tweak(&mut config);
    let running = app::spawn(&config).await.expect("app starts");
    TestApp {
        addr: running.addr,
        config,
        running: Some(running),
        database,
        clock,
        mail_dir,
        taken_mail: Default::default(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://…/metrics` on the metrics listener, when `METRICS_ADDR` was set.
    pub fn metrics_url(&self) -> Option<String> {
        self.running.as_ref().and_then(|r| r.metrics_addr).map(|a| format!("http://{a}/metrics"))
    }

    pub fn state(&self) -> &authgraph::http::AppState {
        &self.running.as_ref().expect("running").state
    }

    /// Stops the server gracefully (the database stays).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean shutdown");
        }
    }

    /// A browser-like client: keeps cookies.
    pub fn client(&self) -> Client {
        Client::builder().cookie_store(true).timeout(Duration::from_secs(30)).build().unwrap()
    }

    /// POSTs one GraphQL operation; returns the raw response.
    pub async fn post(&self, client: &Client, token: Option<&str>, query: &str, variables: Value) -> Response {
        let mut req = client.post(self.url("/graphql")).json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// POSTs one GraphQL operation; returns the JSON body.
    pub async fn gql(&self, client: &Client, token: Option<&str>, query: &str, variables: Value) -> Value {
        self.post(client, token, query, variables).await.json().await.expect("json body")
    }

    /// POSTs a document naming the operation to run, without variables; returns
    /// the JSON body.
    pub async fn gql_named(&self, client: &Client, token: Option<&str>, query: &str, operation: &str) -> Value {
        let mut req = client.post(self.url("/graphql")).json(&json!({ "query": query, "operationName": operation }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request").json().await.expect("json body")
    }

    /// Registers an account with the COOKIE transport on `client`; returns the payload.
    pub async fn register(&self, client: &Client, email: &str) -> Value {
        let body = self
            .gql(
                client,
                None,
                "mutation($i: RegisterInput!) { register(input: $i) { accessToken expiresIn tokenType refreshToken user { id email name role } } }",
                json!({ "i": { "email": email, "password": PASSWORD } }),
            )
            .await;
        assert!(body["errors"].is_null(), "register failed: {body}");
        body["data"]["register"].clone()
    }

    /// Registers with the BODY transport; returns (access token, refresh token, user id).
    pub async fn register_body(&self, email: &str) -> (String, String, String) {
        let body = self
            .gql(
                &self.client(),
                None,
                ops::REGISTER_TOKENS_USER_ID,
                json!({ "i": { "email": email, "password": PASSWORD, "transport": "BODY" } }),
            )
            .await;
        assert!(body["errors"].is_null(), "register failed: {body}");
        let p = &body["data"]["register"];
        (
            p["accessToken"].as_str().unwrap().to_owned(),
            p["refreshToken"].as_str().unwrap().to_owned(),
            p["user"]["id"].as_str().unwrap().to_owned(),
        )
    }

    /// Logs in with the BODY transport; returns the body.
    pub async fn login_body(&self, email: &str, password: &str) -> Value {
        self.gql(
            &self.client(),
            None,
            ops::LOGIN_TOKENS_USER_ID,
            json!({ "i": { "email": email, "password": password, "transport": "BODY" } }),
        )
        .await
    }
}

/// An account registered with the BODY transport, and the tokens of one of its
/// sessions: what a native client holds.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl TestApp {
    /// Registers `email` (with [`PASSWORD`]) with the BODY transport; returns the
    /// account with the tokens of its first session.
    pub async fn user(&self, email: &str) -> TestUser {
        let (access_token, refresh_token, id) = self.register_body(email).await;
        TestUser { id, email: email.to_owned(), access_token, refresh_token }
    }
}

impl TestUser {
    /// POSTs one GraphQL operation with this session's access token (on a fresh
    /// client); returns the JSON body.
    pub async fn gql(&self, app: &TestApp, query: &str, variables: Value) -> Value {
        app.gql(&app.client(), Some(&self.access_token), query, variables).await
    }

    /// Logs in again with the BODY transport and [`PASSWORD`]: the same account in
    /// a new session (another device). Panics unless the login works.
    pub async fn login(&self, app: &TestApp) -> TestUser {
        let v = app.login_body(&self.email, PASSWORD).await;
        assert!(v["errors"].is_null(), "login {} failed: {v}", self.email);
        let p = &v["data"]["login"];
        TestUser {
            id: p["user"]["id"].as_str().unwrap().to_owned(),
            email: self.email.clone(),
            access_token: p["accessToken"].as_str().unwrap().to_owned(),
            refresh_token: p["refreshToken"].as_str().unwrap().to_owned(),
        }
    }
}

/// POSTs `query` (no variables) to the GraphQL endpoint of a server at `addr`
/// (one started apart from a `TestApp`, such as a restarted one); returns the
/// JSON body.
pub async fn gql_at(addr: SocketAddr, token: Option<&str>, query: &str) -> Value {
    gql_vars_at(addr, token, query, json!({})).await
}

/// [`gql_at`] with variables.
pub async fn gql_vars_at(addr: SocketAddr, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut req =
        Client::new().post(format!("http://{addr}/graphql")).json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request").json().await.expect("json body")
}

/// Calls `probe` until it answers `Some`, every 20 ms, for up to 15 s; then
/// fails, saying what was awaited (`what` is asked only then). The one way
/// the tests wait: for the thing itself, never for a time that is usually
/// enough.
pub async fn wait_until<T>(what: impl FnOnce() -> String, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "waited 15 s for {}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the outbox holds mail and none of it is due, backing off or
/// being sent: every row sent, given up, skipped or voided. A row without a
/// next attempt is never claimed again, so what arrived is all that will.
pub async fn wait_outbox_settled(db: &sea_orm::DatabaseConnection) {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let last = std::cell::Cell::new((0, 0));
    wait_until(
        || format!("the outbox to settle: {} of {} rows open", last.get().1, last.get().0),
        async || {
            let all = entity::mail_outbox::Entity::find().count(db).await.unwrap();
            let open = entity::mail_outbox::Entity::find()
                .filter(entity::mail_outbox::Column::NextAttemptAt.is_not_null())
                .count(db)
                .await
                .unwrap();
            last.set((all, open));
            (all > 0 && open == 0).then_some(())
        },
    )
    .await
}

impl TestApp {
    /// The mail the server wrote to its mail folder (no SMTP configured) for
    /// `to`, in no promised order (several mails are sent at once).
    pub fn mail_files_to(&self, to: &str) -> Vec<(std::path::PathBuf, crate::smtp::Delivered)> {
        std::fs::read_dir(self.mail_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .map(|p| {
                let data = std::fs::read(&p).unwrap();
                (p, crate::smtp::Delivered { to: vec![], data })
            })
            .filter(|(_, m)| m.recipient().eq_ignore_ascii_case(to))
            .collect()
    }

    /// The subjects of the mail written for `to`, sorted.
    pub fn mail_subjects_to(&self, to: &str) -> Vec<String> {
        let mut subjects: Vec<_> = self.mail_files_to(to).iter().map(|(_, m)| m.subject()).collect();
        subjects.sort();
        subjects
    }

    /// Waits (up to 15 s) for a mail file for `to` whose subject contains
    /// `subject` and that no earlier call took, and takes it. Names the mail
    /// it waits for, never its rank: mails queued close together may be
    /// written in either order.
    pub async fn next_mail_file(&self, to: &str, subject: &str) -> crate::smtp::Delivered {
        wait_until(
            || format!("a mail to {to} about {subject:?}; the folder has {:?}", self.mail_subjects_to(to)),
            async || {
                let mut taken = self.taken_mail.lock().unwrap();
                let (path, mail) = self
                    .mail_files_to(to)
                    .into_iter()
                    .find(|(p, m)| !taken.contains(p) && m.subject().contains(subject))?;
                taken.insert(path);
                Some(mail)
            },
        )
        .await
    }

    /// Confirms `user`'s address through the verification link written to
    /// the mail folder (notices go only to confirmed addresses).
    pub async fn confirm_address(&self, user: &TestUser) {
        ok(self, &user.access_token, "mutation { sendVerificationEmail }", json!({})).await;
        let token = self.next_mail_file(&user.email, "Confirm your email address").await.token();
        ok(self, &user.access_token, "mutation($t: String!) { verifyEmail(token: $t) }", json!({ "t": token })).await;
    }

    /// Asks to move the account of `token` to `email`, and takes the
    /// confirmation link's token from the mail written for it (call
    /// `confirmEmailChange` with it to move).
    pub async fn request_address_change(&self, token: &str, email: &str) -> String {
        ok(self, token, "mutation($e: String) { updateProfile(input: { email: $e }) { id } }", json!({ "e": email }))
            .await;
        self.next_mail_file(email, "Confirm your new email address").await.token()
    }

    /// Moves the account of `token` to `email`, confirmed through the mailed link.
    pub async fn change_address(&self, token: &str, email: &str) {
        let link_token = self.request_address_change(token, email).await;
        let v = self
            .gql(
                &self.client(),
                None,
                "mutation($t: String!) { confirmEmailChange(token: $t) }",
                json!({ "t": link_token }),
            )
            .await;
        assert!(v["errors"].is_null(), "confirmEmailChange: {v}");
    }
}

/// A client without a cookie jar: the test decides which cookie goes.
pub fn bare() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Makes `email` an admin the way `authgraph create-admin` does, then logs in.
/// Returns (access token, user id).
pub async fn make_admin(app: &TestApp, email: &str) -> (String, String) {
    let (user, _) = authgraph::service::admin::create_or_promote_admin(&app.state().services, email, None, || {
        Ok(PASSWORD.to_owned())
    })
    .await
    .expect("create admin");
    (login_token(app, email).await, user.id.to_string())
}

/// Logs in with the BODY transport; returns the access token.
pub async fn login_token(app: &TestApp, email: &str) -> String {
    let v = app.login_body(email, PASSWORD).await;
    assert!(v["errors"].is_null(), "login {email} failed: {v}");
    v["data"]["login"]["accessToken"].as_str().unwrap().to_owned()
}

/// Runs an operation that must succeed; returns `data`.
pub async fn ok(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    let v = app.gql(&app.client(), Some(token), query, variables).await;
    assert!(v["errors"].is_null(), "{query}: {v}");
    v["data"].clone()
}

/// The raw body and its JSON.
pub async fn raw(app: &TestApp, token: Option<&str>, query: &str, variables: Value) -> (String, Value) {
    let text = app.post(&app.client(), token, query, variables).await.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (text, v)
}

/// Registers with the BODY transport; returns the whole response body.
pub async fn register_raw(app: &TestApp, email: &str, password: &str, name: Option<&str>) -> Value {
    let mut input = json!({ "email": email, "password": password, "transport": "BODY" });
    if let Some(n) = name {
        input["name"] = n.into();
    }
    app.gql(&app.client(), None, ops::REGISTER_PAYLOAD, json!({ "i": input })).await
}

/// Logs in with the BODY transport; returns the whole response body.
pub async fn login_raw(app: &TestApp, email: &str, password: &str) -> Value {
    app.gql(
        &app.client(),
        None,
        ops::LOGIN_PAYLOAD,
        json!({ "i": { "email": email, "password": password, "transport": "BODY" } }),
    )
    .await
}

/// `extensions.code` of the first error.
pub fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("<none>")
}

/// `extensions.reason` of the first error.
pub fn reason(body: &Value) -> &str {
    body["errors"][0]["extensions"]["reason"].as_str().unwrap_or("<none>")
}

/// Every error of the response has `code` (and `reason`, when given).
#[track_caller]
pub fn assert_all_errors(v: &Value, code_: &str, reason_: Option<&str>, what: &str) {
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{what}: no errors: {v}"));
    assert!(!errors.is_empty(), "{what}: {v}");
    for e in errors {
        assert_eq!(e["extensions"]["code"], code_, "{what}: {v}");
        if let Some(r) = reason_ {
            assert_eq!(e["extensions"]["reason"], r, "{what}: {v}");
        }
    }
}

/// All `Set-Cookie` values of a response.
pub fn set_cookies(resp: &Response) -> Vec<String> {
    resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// Makes the app's database stop serving until `restore`: SQLite is write-locked
/// by another connection;
/// PostgreSQL refuses connections to the test database and drops the open ones.
pub struct Outage {
    conn: sea_orm::DatabaseConnection,
    postgres_db: Option<String>,
}

impl TestDatabase {
    pub async fn outage(&self) -> Outage {
        use sea_orm::ConnectionTrait;
        match self {
            TestDatabase::Sqlite { url, .. } => {
                // Another process holding the write lock: every writer waits.
                let mut opts = sea_orm::ConnectOptions::new(url.clone());
                opts.max_connections(1).min_connections(1);
                let conn = sea_orm::Database::connect(opts).await.unwrap();
                conn.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
                conn.execute_unprepared("UPDATE users SET name = name WHERE 1 = 0").await.unwrap();
                Outage { conn, postgres_db: None }
            }
            TestDatabase::Postgres { admin_url, name, .. } => {
                let conn = sea_orm::Database::connect(admin_url).await.unwrap();
                conn.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await.unwrap();
                conn.execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                ))
                .await
                .unwrap();
                Outage { conn, postgres_db: Some(name.clone()) }
            }
        }
    }
}

impl Outage {
    pub async fn restore(self) {
        use sea_orm::ConnectionTrait;
        match &self.postgres_db {
            Some(name) => {
                self.conn.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await.unwrap();
            }
            None => {
                self.conn.execute_unprepared("ROLLBACK").await.unwrap();
            }
        }
        self.conn.close().await.unwrap();
    }
}

/// The real binary, as an operator runs it: in `dir`, with an empty environment
/// but `PATH`, so that nothing from the test's own environment leaks in.
pub fn authgraph_command(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authgraph"));
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// What a subprocess wrote to one stream so far.
type Captured = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// `authgraph serve` as a subprocess, its stdout and stderr captured byte for byte.
pub struct ServerProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts `authgraph serve` on `database_url` and a free port with the test
/// quotas and a plain-http cookie; `env` adds to (or overrides) that
/// environment. Waits until the server reports its address.
pub fn start_process(database_url: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> ServerProcess {
    use std::{
        io::{BufRead, BufReader},
        process::Stdio,
    };
    let mut cmd = authgraph_command(dir);
    cmd.env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", JWT_SECRET)
        .env("COOKIE_SECURE", "false")
        .env("RATE_LIMIT_LOGIN_PER_IP", "100000/1s")
        .env("RATE_LIMIT_REGISTER_PER_IP", "100000/1s")
        .env("RATE_LIMIT_REFRESH_PER_IP", "100000/1s")
        .env("RATE_LIMIT_LOGIN_PER_ACCOUNT", "100000/1s")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start authgraph");
    let (stdout, stderr): (Captured, Captured) = Default::default();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    let streams: [(Box<dyn std::io::Read + Send>, Captured); 2] = [
        (Box::new(child.stdout.take().unwrap()), stdout.clone()),
        (Box::new(child.stderr.take().unwrap()), stderr.clone()),
    ];
    for (stream, sink) in streams {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                let text = String::from_utf8_lossy(&line);
                if let Some(i) = text.find("listening on http://") {
                    let rest = &text[i + "listening on http://".len()..];
                    let addr: String =
                        rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().extend_from_slice(&line);
                line.clear();
            }
        }));
    }
    drop(tx);
    let mut process = ServerProcess { child, base: String::new(), stdout, stderr, readers };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => process.base = format!("http://{addr}"),
        Err(_) => panic!("the server did not report its address; output:\n{}", process.stop()),
    }
    process
}

impl ServerProcess {
    /// Ends the server with SIGKILL: no shutdown, no flush, nothing drained.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Stops the server and returns everything it wrote, stdout then stderr.
    pub fn stop(mut self) -> String {
        String::from_utf8_lossy(&self.stop_bytes()).into_owned()
    }

    /// Stops the server and returns everything it wrote, as bytes.
    pub fn stop_bytes(&mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let mut all = std::mem::take(&mut *self.stdout.lock().unwrap());
        all.extend_from_slice(&self.stderr.lock().unwrap());
        all
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end, or kills it after `limit` (a command that should
/// have refused to start and serves instead); returns what it wrote.
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::{io::Read, process::Stdio};
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start authgraph");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

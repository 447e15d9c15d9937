//! Load benchmark: starts the release server (the `authgraph` binary) on a fresh
//! SQLite database, or on PostgreSQL with `--postgres URL`, seeds users and
//! measures, in one run on the same machine:
//!
//! 1. ceiling: `{ __typename }` through the whole stack (SQLite run only);
//! 2. `me` with a bearer token (requests/s, p50, p99), alternating with the
//!    ceiling in one-second slices (SQLite run only);
//! 3. login (logins/s, p99) next to the argon2 bound (hashes/s with the same
//!    parameters on every core), alternating with it in one-second slices;
//! 4. refresh rotations/s;
//! 5. isolation: `me` p99 while a login flood runs, next to `me` p99 idle, and
//!    beside busy loops outside the server (the machine's own floor for that ratio);
//! 6. a login flood at three times the argon2 bound, sent open-loop (each login
//!    at its time, whatever the answers): the p99 of the answers stays bounded
//!    because the hashing queue is, and what does not fit is refused at once;
//! 7. peak RSS of the server.
//!
//! For login and refresh it also prints where the CPU time went, per operation
//! in µs, read from `/proc` before and after the phase ([`CpuSplit`]): the
//! server's hashing threads, its SQLite threads, its async workers, its other
//! threads, PostgreSQL's processes, and this load generator.
//!
//! With `--postgres URL` it adds a propagation phase: two instances on one
//! database; a user logs out on the first, and the second is asked `me` with
//! that user's token, without pause, until it refuses it. The delay from the
//! logout's answer to the first refusal, over 200 users, is reported as p50
//! and p99.
//!
//! With `--users N` it adds a scale phase on each backend: N accounts with a live
//! session each are written straight into a fresh database (one real password
//! hash shared by all, so seeding takes a minute, not hours of argon2), the server
//! is started on it, and it measures the time from start to `/readyz` 200, the
//! server's peak RSS, `me`, `me` with tokens of seeded sessions the server has
//! not cached (a database read each), login, refresh, `users(first: 20) {
//! totalCount }` and `users(search:)` p99; once at 10,000 accounts and once at
//! N, so each figure at N stands beside its own at 10,000.
//!
//! It prints a table, then whether each performance target ([`TARGETS`]) was met,
//! and writes both as JSON.
//!
//! Run: `cargo bench --bench load` (options after `--`: `--seconds N`,
//! `--connections N`, `--postgres URL` of a server where a fresh database may be
//! created and dropped, `--users N`, `--json PATH`). Load goes to 127.0.0.1 only,
//! each phase is bounded in time, and the server is stopped at the end.

// A benchmark that cannot set up stops with a panic that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use authgraph::config::{ARGON2_MIN_ITERATIONS, ARGON2_MIN_MEMORY_KIB};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const PASSWORD: &str = "benchmark passphrase";
/// The `me` phases' query.
const ME: &str = "{ me { id email role } }";
const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret-00";

struct Options {
    seconds: u64,
    connections: usize,
    postgres: Option<String>,
    /// Accounts of the scale phase (none: no scale phase).
    users: Option<usize>,
    json: String,
}

fn options() -> Options {
    let mut o =
        Options { seconds: 5, connections: 64, postgres: None, users: None, json: "target/bench-load.json".into() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned();
        match args[i].as_str() {
            "--seconds" => o.seconds = value.and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--connections" => o.connections = value.and_then(|v| v.parse().ok()).expect("--connections N"),
            "--postgres" => o.postgres = Some(value.expect("--postgres URL")),
            "--users" => o.users = Some(value.and_then(|v| v.parse().ok()).expect("--users N")),
            "--json" => o.json = value.expect("--json PATH"),
            // `cargo bench` passes --bench; ignore anything else it adds.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

struct Server {
    child: Child,
    /// host:port
    addr: String,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(database_url: &str, dir: &std::path::Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authgraph"))
            .current_dir(dir)
            .env("DATABASE_URL", database_url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", JWT_SECRET)
            .env("COOKIE_SECURE", "false")
            .env("RATE_LIMIT_LOGIN_PER_IP", "100000000/1s")
            .env("RATE_LIMIT_REGISTER_PER_IP", "100000000/1s")
            .env("RATE_LIMIT_REFRESH_PER_IP", "100000000/1s")
            .env("RATE_LIMIT_LOGIN_PER_ACCOUNT", "100000000/1s")
            .env("RATE_LIMIT_WRITE_PER_IP", "100000000/1s")
            .env("RATE_LIMIT_WRITE_PER_ACCOUNT", "100000000/1s")
            .env("RUST_LOG", "warn,authgraph::app=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the authgraph binary");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let addr: String = line[i + 20..].chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
                    let _ = tx.send(addr);
                }
            }
        });
        // Loading a million live sessions takes a while before the server listens.
        let addr = rx.recv_timeout(Duration::from_secs(900)).expect("the server reported its address");
        Server { child, url: format!("http://{addr}/graphql"), addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

#[derive(Default, Clone)]
struct Stats {
    ok: u64,
    failed: u64,
    /// Answered after the measured time (`fire`): not counted, but the server
    /// did the work.
    late: u64,
    latencies_us: Vec<u32>,
    elapsed: Duration,
}

impl Stats {
    fn merge(mut self, other: Stats) -> Stats {
        self.ok += other.ok;
        self.failed += other.failed;
        self.late += other.late;
        self.latencies_us.extend(other.latencies_us);
        self.elapsed = self.elapsed.max(other.elapsed);
        self
    }
    /// One request's outcome; `since` is when it was sent.
    fn record(&mut self, ok: bool, since: Instant) {
        if ok {
            self.ok += 1;
            self.latencies_us.push(since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            self.failed += 1;
        }
    }
    /// All connections' stats, over the time since `started`.
    async fn gather(tasks: Vec<tokio::task::JoinHandle<Stats>>, started: Instant) -> Stats {
        let mut total = Stats::default();
        for t in tasks {
            total = total.merge(t.await.unwrap());
        }
        total.elapsed = started.elapsed();
        total
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// One keep-alive connection's worth of client.
fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(1).timeout(Duration::from_secs(30)).build().unwrap()
}

async fn post(c: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) -> Option<Value> {
    let mut req = c.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.ok()?;
    let v: Value = resp.json().await.ok()?;
    v["errors"].is_null().then_some(v)
}

/// Runs `connections` loops for `seconds`; each loop iteration is one request
/// made by `step`, which returns whether it succeeded.
async fn run<S, F>(connections: usize, seconds: u64, make_state: impl Fn(usize) -> S, step: F) -> Stats
where
    S: Send + 'static,
    F: Fn(reqwest::Client, S) -> futures_util::future::BoxFuture<'static, (bool, S)> + Send + Sync + 'static,
{
    let step = Arc::new(step);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let step = step.clone();
            let mut state = make_state(i);
            tokio::spawn(async move {
                let c = client();
                let mut stats = Stats::default();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let (ok, next) = step(c.clone(), state).await;
                    state = next;
                    stats.record(ok, t0);
                }
                stats
            })
        })
        .collect();
    Stats::gather(tasks, started).await
}

/// One kind of request for [`fire`]: bodies sent in turn, and the bearers to
/// send them with (connection `i` sends `bearers[i % bearers.len()]`, if any).
struct Load<'a> {
    bodies: Vec<Bytes>,
    bearers: &'a [Option<String>],
}

const NO_BEARER: &[Option<String>] = &[None];

impl<'a> Load<'a> {
    fn query(query: &str, bearers: &'a [Option<String>]) -> Self {
        Load { bodies: vec![Bytes::from(json!({ "query": query }).to_string())], bearers }
    }

    /// Logins (BODY transport) of these accounts, in turn.
    fn logins(emails: &[String]) -> Load<'static> {
        let bodies = emails
            .iter()
            .map(|email| {
                let body = json!({ "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                                   "variables": { "i": { "email": email, "password": PASSWORD, "transport": "BODY" } } });
                Bytes::from(body.to_string())
            })
            .collect();
        Load { bodies, bearers: NO_BEARER }
    }
}

/// The request-rate phases (ceiling, `me`, login) use a lighter client than `run`:
/// one HTTP/1.1 connection per task (hyper, no pool), bodies serialized once,
/// and success judged without parsing JSON (status 200 and no `"errors"` in the
/// body). The generator shares the cores with the server, so the less it costs
/// per request, the more the figures say about the server.
///
/// With several loads, every connection takes them in turn in one-second slices,
/// `seconds` of each, so that a change in what else the machine is doing falls on
/// all of them alike; a request counts for the slice it was sent in.
async fn fire(addr: &str, connections: usize, seconds: u64, loads: &[Load<'_>]) -> Vec<Stats> {
    let slice = Duration::from_secs(1);
    let started = Instant::now();
    let deadline = started + slice * (seconds.max(1) * loads.len() as u64) as u32;
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let requests: Vec<(Vec<Bytes>, Option<HeaderValue>)> = loads
                .iter()
                .map(|load| {
                    let bearer = load.bearers[i % load.bearers.len()]
                        .as_ref()
                        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
                    (load.bodies.clone(), bearer)
                })
                .collect();
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut stats = vec![Stats::default(); requests.len()];
                // Connection `i` starts at body `i` and takes the next one each time.
                let mut turn = i;
                let stream = tokio::net::TcpStream::connect(&addr).await.expect("connect to the server");
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
                tokio::spawn(conn);
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    let k = ((t0 - started).as_secs() as usize) % requests.len();
                    let (bodies, bearer) = &requests[k];
                    let body = &bodies[turn % bodies.len()];
                    turn += 1;
                    let mut req = hyper::Request::post("/graphql")
                        .header(HOST, addr.as_str())
                        .header(CONTENT_TYPE, "application/json");
                    if let Some(b) = bearer {
                        req = req.header(AUTHORIZATION, b.clone());
                    }
                    let req = req.body(Full::new(body.clone())).unwrap();
                    let answer = match sender.ready().await {
                        Ok(()) => sender.send_request(req).await.ok(),
                        Err(_) => None,
                    };
                    let Some(resp) = answer else {
                        // The connection is gone: count it and stop this task.
                        stats[k].failed += 1;
                        break;
                    };
                    let status = resp.status();
                    let ok = match resp.into_body().collect().await {
                        Ok(b) => status == 200 && !b.to_bytes().windows(8).any(|w| w == b"\"errors\""),
                        Err(_) => false,
                    };
                    if Instant::now() > deadline {
                        // Answered after the measured time: not part of it.
                        stats[k].late += 1;
                        break;
                    }
                    stats[k].record(ok, t0);
                }
                stats
            })
        })
        .collect();
    let mut totals = vec![Stats::default(); loads.len()];
    for t in tasks {
        for (total, part) in totals.iter_mut().zip(t.await.unwrap()) {
            *total = std::mem::take(total).merge(part);
        }
    }
    for total in &mut totals {
        total.elapsed = slice * seconds.max(1) as u32;
    }
    totals
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// argon2id hashing with the server's parameters on every core, each thread
/// reusing its working memory as the server's hashing threads do (so the bound is
/// not lowered by allocating 19 MiB per hash). The threads wait between slices.
struct Argon2Bound {
    slices: Vec<std::sync::mpsc::Sender<Instant>>,
    counts: std::sync::mpsc::Receiver<u64>,
}

impl Argon2Bound {
    fn new() -> Self {
        let (count_tx, counts) = std::sync::mpsc::channel();
        let slices = (0..cores())
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel::<Instant>();
                let count_tx = count_tx.clone();
                std::thread::spawn(move || {
                    let params = Params::new(ARGON2_MIN_MEMORY_KIB, ARGON2_MIN_ITERATIONS, 1, None).unwrap();
                    let mut memory = vec![Block::default(); params.block_count()];
                    let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                    let salt = b"saltsaltsaltsalt";
                    let mut out = [0u8; 32];
                    for deadline in rx {
                        let mut n = 0u64;
                        loop {
                            a.hash_password_into_with_memory(PASSWORD.as_bytes(), salt, &mut out, &mut memory).unwrap();
                            if Instant::now() > deadline {
                                // Finished after the slice, like a login answered late: not counted.
                                break;
                            }
                            n += 1;
                        }
                        count_tx.send(n).unwrap();
                    }
                });
                tx
            })
            .collect();
        Argon2Bound { slices, counts }
    }

    /// Hashes finished on all cores within one slice of this length.
    fn slice(&self, length: Duration) -> u64 {
        let deadline = Instant::now() + length;
        for tx in &self.slices {
            tx.send(deadline).unwrap();
        }
        self.slices.iter().map(|_| self.counts.recv().unwrap()).sum()
    }
}

/// One busy loop per core at nice 19 (the password-hashing threads' priority),
/// outside the server, for `seconds`.
fn busy_loops(seconds: u64) -> Vec<std::thread::JoinHandle<()>> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    (0..cores())
        .map(|_| {
            std::thread::spawn(move || {
                #[cfg(target_os = "linux")]
                // SAFETY: setpriority only reads its integer arguments; on Linux it
                // applies to the calling thread only.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                }
                let mut x = 0u64;
                while Instant::now() < deadline {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
            })
        })
        .collect()
}

/// CPU time (user + system, in seconds) spent by each kind of thread on the
/// machine, read from `/proc`: the server's threads by name (`argon2-*`: password
/// hashing; `sqlx-sqlite-*`: SQLite's connection threads; `tokio-runtime-*`:
/// the server's async workers, which parse, resolve and answer; anything else),
/// PostgreSQL's processes, and this load generator. Taken before and after a phase,
/// the difference says where the phase's time went.
#[derive(Default, Clone, Copy)]
struct CpuSplit {
    hashing: f64,
    sqlite: f64,
    runtime: f64,
    server_other: f64,
    postgres: f64,
    generator: f64,
}

/// (command name, user + system seconds) of `/proc/.../stat`.
fn stat_cpu(path: &std::path::Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), counted from the state at 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads its integer argument.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((name, ticks as f64 / per_second))
}

impl CpuSplit {
    fn now(server: u32) -> Self {
        let mut s = CpuSplit::default();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{server}/task")) {
            for task in tasks.flatten() {
                let Some((name, secs)) = stat_cpu(&task.path().join("stat")) else { continue };
                let slot = if name.starts_with("argon2") {
                    &mut s.hashing
                } else if name.starts_with("sqlx-sqlite") {
                    &mut s.sqlite
                } else if name.starts_with("tokio") {
                    &mut s.runtime
                } else {
                    &mut s.server_other
                };
                *slot += secs;
            }
        }
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                if let Some((name, secs)) = stat_cpu(&p.path().join("stat"))
                    && name.starts_with("postgres")
                {
                    s.postgres += secs;
                }
            }
        }
        s.generator = stat_cpu(std::path::Path::new("/proc/self/stat")).map_or(0.0, |(_, secs)| secs);
        s
    }

    /// What was spent after `before`.
    fn since(self, before: CpuSplit) -> CpuSplit {
        self.zip(before, |a, b| a - b)
    }

    fn plus(self, other: CpuSplit) -> CpuSplit {
        self.zip(other, |a, b| a + b)
    }

    fn zip(self, o: CpuSplit, f: impl Fn(f64, f64) -> f64) -> CpuSplit {
        CpuSplit {
            hashing: f(self.hashing, o.hashing),
            sqlite: f(self.sqlite, o.sqlite),
            runtime: f(self.runtime, o.runtime),
            server_other: f(self.server_other, o.server_other),
            postgres: f(self.postgres, o.postgres),
            generator: f(self.generator, o.generator),
        }
    }

    /// Each part, by its JSON key and label.
    fn parts(self) -> [(&'static str, &'static str, f64); 6] {
        [
            ("hashing", "argon2 threads", self.hashing),
            ("sqlite", "SQLite threads", self.sqlite),
            ("runtime", "async workers", self.runtime),
            ("server_other", "other server threads", self.server_other),
            ("postgres", "PostgreSQL processes", self.postgres),
            ("generator", "load generator", self.generator),
        ]
    }
}

struct Seeded {
    access: Vec<String>,
    refresh: Vec<String>,
    emails: Vec<String>,
}

async fn seed(url: &str, tag: &str, n: usize) -> Seeded {
    let c = client();
    let mut s = Seeded { access: vec![], refresh: vec![], emails: vec![] };
    for i in 0..n {
        let email = format!("{tag}{i}@example.com");
        let v = post(
            &c,
            url,
            None,
            &json!({ "query": "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken } }",
                     "variables": { "i": { "email": email, "password": PASSWORD, "transport": "BODY" } } }),
        )
        .await
        .expect("seed registration");
        s.access.push(v["data"]["register"]["accessToken"].as_str().unwrap().to_owned());
        s.refresh.push(v["data"]["register"]["refreshToken"].as_str().unwrap().to_owned());
        s.emails.push(email);
    }
    s
}

async fn refresh_rate(url: &str, tokens: Vec<String>, seconds: u64) -> Stats {
    let url = Arc::new(url.to_owned());
    let tokens = Arc::new(tokens);
    let connections = tokens.len();
    run(connections, seconds, move |i| tokens[i].clone(), move |c, token: String| {
        let url = url.clone();
        Box::pin(async move {
            let body = json!({ "query": "mutation($t: String) { refreshToken(refreshToken: $t) { refreshToken } }", "variables": { "t": token } });
            match post(&c, &url, None, &body).await {
                Some(v) => (true, v["data"]["refreshToken"]["refreshToken"].as_str().unwrap().to_owned()),
                None => (false, token),
            }
        })
    })
    .await
}

/// What an open-loop flood saw.
struct Flood {
    sent: u64,
    ok: u64,
    limited: u64,
    failed: u64,
    /// Latencies of every answer, success or refusal.
    answered: Stats,
}

/// Sends logins of `emails` at `rate` per second for `seconds`, each at its own
/// time whether or not earlier ones were answered (open loop: a closed loop would
/// slow down with the server and hide a growing queue).
async fn open_loop_logins(url: &str, emails: &[String], rate: f64, seconds: u64) -> Flood {
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let n = (rate * seconds.max(1) as f64) as usize;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        let (c, url, email) = (c.clone(), url.to_owned(), emails[i % emails.len()].clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let body = json!({ "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                               "variables": { "i": { "email": email, "password": PASSWORD, "transport": "BODY" } } });
            let answer: Option<Value> = match c.post(&url).json(&body).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            (t0.elapsed(), answer)
        }));
    }
    let mut f = Flood { sent: n as u64, ok: 0, limited: 0, failed: 0, answered: Stats::default() };
    for t in tasks {
        let (took, answer) = t.await.unwrap();
        let code = answer.as_ref().map(|v| v["errors"][0]["extensions"]["code"].clone());
        match (answer.as_ref().is_some_and(|v| v["errors"].is_null()), code) {
            (true, _) => f.ok += 1,
            (false, Some(Value::String(c))) if c == "RATE_LIMITED" => f.limited += 1,
            _ => {
                f.failed += 1;
                continue;
            }
        }
        f.answered.latencies_us.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
    }
    f
}

/// The performance targets, as ratios measured in the same run: JSON key, what it
/// says, the limit, and whether the figure must be at least (or at most) that.
/// (A refresh rotation being one write transaction is a test, not a timing:
/// `sessions::a_refresh_rotation_is_one_write_transaction`.)
/// Targets whose figures a run did not measure (no `--users`, no `--postgres`)
/// are left out of the verdicts.
const TARGETS: [(&str, &str, f64, bool); 20] = [
    ("sqlite.me_vs_ceiling_pct", "me at least 70 % of the ceiling", 70.0, true),
    ("sqlite.login_vs_bound_pct", "SQLite: login at least 95 % of the argon2 bound", 95.0, true),
    ("sqlite.me_flood_vs_idle_x", "SQLite: me p99 during a login flood at most 3x idle", 3.0, false),
    ("postgres.login_vs_bound_pct", "PostgreSQL: login at least 95 % of the argon2 bound", 95.0, true),
    ("postgres.me_flood_vs_idle_x", "PostgreSQL: me p99 during a login flood at most 3x idle", 3.0, false),
    ("sqlite.overload_p99_ms", "login p99 under a 3x-bound flood at most 2000 ms", 2000.0, false),
    ("sqlite.scale_ready_s", "SQLite: start to /readyz at N users at most 3 s", 3.0, false),
    ("sqlite.scale_peak_rss_mib", "SQLite: server peak RSS at N users under 300 MiB", 300.0, false),
    ("sqlite.scale_search_p99_ms", "SQLite: search p99 at N users under 50 ms", 50.0, false),
    ("sqlite.scale_me_vs_10k_pct", "SQLite: me at N users within 10 % of 10k", 90.0, true),
    ("sqlite.scale_login_vs_10k_pct", "SQLite: login at N users within 10 % of 10k", 90.0, true),
    ("sqlite.scale_refresh_vs_10k_pct", "SQLite: refresh at N users within 10 % of 10k", 90.0, true),
    ("postgres.scale_ready_s", "PostgreSQL: start to /readyz at N users at most 3 s", 3.0, false),
    ("postgres.scale_peak_rss_mib", "PostgreSQL: server peak RSS at N users under 300 MiB", 300.0, false),
    ("postgres.scale_search_p99_ms", "PostgreSQL: search p99 at N users under 50 ms", 50.0, false),
    ("postgres.scale_me_vs_10k_pct", "PostgreSQL: me at N users within 10 % of 10k", 90.0, true),
    ("postgres.scale_login_vs_10k_pct", "PostgreSQL: login at N users within 10 % of 10k", 90.0, true),
    ("postgres.scale_refresh_vs_10k_pct", "PostgreSQL: refresh at N users within 10 % of 10k", 90.0, true),
    ("postgres.overload_p99_ms", "PostgreSQL: login p99 under a 3x-bound flood at most 2000 ms", 2000.0, false),
    ("postgres.propagation_p99_ms", "PostgreSQL: a logout refused by another instance, p99 under 100 ms", 100.0, false),
];

/// Two instances on `database_url`: how long after a logout on one the other
/// refuses the session's access token.
async fn propagation(database_url: &str, report: &mut Report) {
    const USERS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(database_url, dir.path());
    let b = Server::start(database_url, dir.path());
    let c = client();
    let mut tokens = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let body = json!({
            "query": "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
            "variables": { "i": { "email": format!("spread{i}@example.com"), "password": PASSWORD, "transport": "BODY" } }
        });
        let v = post(&c, &a.url, None, &body).await.expect("register");
        tokens.push(v["data"]["register"]["accessToken"].as_str().expect("a token").to_owned());
    }
    let me = json!({ "query": ME });
    let logout = json!({ "query": "mutation { logout }" });
    let mut delays = Stats::default();
    for token in &tokens {
        // The second instance knows the session before it ends.
        post(&c, &b.url, Some(token), &me).await.expect("me");
        post(&c, &a.url, Some(token), &logout).await.expect("logout");
        let ended = Instant::now();
        loop {
            // `post` answers only successes; a refusal is what is awaited here.
            let v: Value =
                c.post(&b.url).bearer_auth(token).json(&me).send().await.expect("me").json().await.expect("json");
            if v["errors"][0]["extensions"]["reason"] == "TOKEN_REVOKED" {
                delays.record(true, ended);
                break;
            }
            assert!(ended.elapsed() < Duration::from_secs(10), "the logout never reached the second instance");
        }
    }
    report.add(
        "postgres.propagation_p50_ms",
        "PostgreSQL: logout refused by another instance, p50",
        delays.percentile_ms(0.5),
        "ms",
    );
    report.add(
        "postgres.propagation_p99_ms",
        "PostgreSQL: logout refused by another instance, p99",
        delays.percentile_ms(0.99),
        "ms",
    );
    drop((a, b));
}

struct Report {
    rows: Vec<(String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn add(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        self.rows.push((label.to_owned(), format!("{value:.1} {unit}")));
        self.json.insert(key.to_owned(), json!(value));
    }

    /// CPU time per operation (`n` of them) by where it was spent, in µs; a
    /// part that took nothing is left out.
    fn split(&mut self, key: &str, what: &str, spent: CpuSplit, n: u64) {
        for (part, label, secs) in spent.parts() {
            let us = 1e6 * secs / n.max(1) as f64;
            if us > 0.0 {
                self.add(&format!("{key}.{part}"), &format!("{what}: CPU per op, {label}"), us, "µs");
            }
        }
    }
}

async fn bench_backend(name: &str, database_url: &str, o: &Options, report: &mut Report) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(database_url, dir.path());
    let url = Arc::new(server.url.clone());
    let seeded = seed(&url, "bench", 16).await;
    let conns = o.connections;
    let secs = o.seconds;
    let pre = |k: &str| format!("{name}.{k}");

    if name == "sqlite" {
        let bearers: Vec<Option<String>> = seeded.access.iter().cloned().map(Some).collect();
        let mut both =
            fire(&server.addr, conns, secs, &[Load::query("{ __typename }", NO_BEARER), Load::query(ME, &bearers)])
                .await;
        let (mut ceiling, mut me) = (both.remove(0), both.remove(0));
        report.add(&pre("ceiling_rps"), "ceiling: { __typename } req/s", ceiling.rate(), "req/s");
        report.add(&pre("ceiling_p99_ms"), "ceiling p99", ceiling.percentile_ms(0.99), "ms");

        report.add(&pre("me_rps"), "me req/s", me.rate(), "req/s");
        report.add(&pre("me_p50_ms"), "me p50", me.percentile_ms(0.50), "ms");
        report.add(&pre("me_p99_ms"), "me p99", me.percentile_ms(0.99), "ms");
        report.add(&pre("me_vs_ceiling_pct"), "me / ceiling", 100.0 * me.rate() / ceiling.rate(), "%");
        report.add(&pre("me_failed"), "me failed requests", me.failed as f64, "");
    }

    // Login and the argon2 bound alternate in one-second slices, like the
    // ceiling and `me`: a change in the machine's speed falls on both alike.
    // Each slice counts only what finished inside it.
    let hashing = Argon2Bound::new();
    let (mut hashes, mut login) = (0u64, Stats::default());
    let mut spent = CpuSplit::default();
    for _ in 0..secs.max(1) {
        hashes += hashing.slice(Duration::from_secs(1));
        let before = CpuSplit::now(server.pid());
        let slice = fire(&server.addr, 8, 1, &[Load::logins(&seeded.emails)]).await.remove(0);
        let after = CpuSplit::now(server.pid());
        spent = spent.plus(after.since(before));
        login = login.merge(slice);
    }
    drop(hashing);
    login.elapsed = Duration::from_secs(secs.max(1));
    let bound = hashes as f64 / secs.max(1) as f64;
    report.add(&pre("argon2_bound_per_s"), "argon2id bound (all cores)", bound, "hashes/s");
    report.add(&pre("login_per_s"), "login", login.rate(), "logins/s");
    report.add(&pre("login_p99_ms"), "login p99", login.percentile_ms(0.99), "ms");
    report.add(&pre("login_vs_bound_pct"), "login / argon2 bound", 100.0 * login.rate() / bound, "%");
    // Per login the server worked on, answered in time or not.
    report.split(&pre("login_cpu_us"), "login", spent, login.ok + login.failed + login.late);

    // Isolation: `me` at a quarter of the connections, idle and during a login flood.
    let bearers: Vec<Option<String>> = seeded.access.iter().cloned().map(Some).collect();
    let me_conns = (conns / 4).max(1);
    let mut idle = fire(&server.addr, me_conns, secs, &[Load::query(ME, &bearers)]).await.remove(0);
    let (addr, emails) = (server.addr.clone(), seeded.emails.clone());
    let flood = tokio::spawn(async move { fire(&addr, 32, secs, &[Load::logins(&emails)]).await.remove(0) });
    let mut busy = fire(&server.addr, me_conns, secs, &[Load::query(ME, &bearers)]).await.remove(0);
    let flood = flood.await.unwrap();
    report.add(&pre("me_idle_p99_ms"), "me p99 idle", idle.percentile_ms(0.99), "ms");
    report.add(&pre("me_flood_p99_ms"), "me p99 during login flood", busy.percentile_ms(0.99), "ms");
    report.add(
        &pre("me_flood_vs_idle_x"),
        "me p99 flood / idle",
        busy.percentile_ms(0.99) / idle.percentile_ms(0.99),
        "x",
    );
    report.add(&pre("flood_logins_per_s"), "logins/s during the flood", flood.rate(), "logins/s");
    // The machine's own floor for that ratio: the same `me` load beside busy
    // loops at the hashing threads' priority that have nothing to do with the
    // server. What the flood adds beyond this is the server's doing.
    let spinning = busy_loops(secs + 1);
    let mut beside = fire(&server.addr, me_conns, secs, &[Load::query(ME, &bearers)]).await.remove(0);
    spinning.into_iter().for_each(|t| t.join().unwrap());
    report.add(&pre("me_spin_p99_ms"), "me p99 beside busy loops", beside.percentile_ms(0.99), "ms");
    report.add(
        &pre("me_spin_vs_idle_x"),
        "me p99 busy loops / idle",
        beside.percentile_ms(0.99) / idle.percentile_ms(0.99),
        "x",
    );

    // Overload: logins sent open-loop at three times what the cores can hash. The
    // hashing queue is bounded, so the answers' p99 stays bounded too, and what
    // does not fit is refused at once with RATE_LIMITED.
    let flood = open_loop_logins(&url, &seeded.emails, 3.0 * bound, secs).await;
    let mut answered = flood.answered.clone();
    report.add(&pre("overload_sent_per_s"), "overload: logins sent (3x bound)", 3.0 * bound, "logins/s");
    report.add(
        &pre("overload_ok_per_s"),
        "overload: logins succeeded",
        flood.ok as f64 / secs.max(1) as f64,
        "logins/s",
    );
    report.add(
        &pre("overload_refused_pct"),
        "overload: refused (RATE_LIMITED)",
        100.0 * flood.limited as f64 / flood.sent as f64,
        "%",
    );
    report.add(&pre("overload_failed"), "overload: other failures", flood.failed as f64, "");
    report.add(&pre("overload_p99_ms"), "overload: p99 of all answers", answered.percentile_ms(0.99), "ms");

    let fresh = seed(&url, "refresh", 16).await;
    let before = CpuSplit::now(server.pid());
    let refresh = refresh_rate(&url, fresh.refresh, secs).await;
    report.split(
        &pre("refresh_cpu_us"),
        "refresh",
        CpuSplit::now(server.pid()).since(before),
        refresh.ok + refresh.failed,
    );
    report.add(&pre("refresh_per_s"), &format!("refresh rotations ({name})"), refresh.rate(), "rotations/s");
    report.add(&pre("refresh_failed"), &format!("refresh failures ({name})"), refresh.failed as f64, "");
    if let Some(kib) = server.peak_rss_kib() {
        report.add(&pre("peak_rss_mib"), &format!("server peak RSS ({name})"), kib as f64 / 1024.0, "MiB");
    }
}

/// A small deterministic generator (splitmix64), so that seeded names and the
/// search terms drawn from them are the same in every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A made-up name of two words, from syllables, for account `i`: varied enough
/// that a fragment of it is rare, as real surnames are.
fn seeded_name(i: usize) -> String {
    const C: &[u8] = b"bcdfghjklmnprstvwz";
    const V: &[u8] = b"aeiou";
    let mut r = mix(i as u64);
    let mut word = |syllables: u64| {
        let mut w = String::new();
        for k in 0..syllables {
            w.push(C[(r % C.len() as u64) as usize] as char);
            r /= C.len() as u64;
            w.push(V[(r % V.len() as u64) as usize] as char);
            r /= V.len() as u64;
            if k == 0 {
                w = w.to_uppercase();
            }
            if r == 0 {
                r = mix(i as u64 ^ 0xA5A5);
            }
        }
        w
    };
    let first = word(2 + (i as u64 % 2));
    let last = word(3 + (i as u64 % 2));
    format!("{first} {last}")
}

fn seeded_email(i: usize) -> String {
    format!("u{i}@seed.example")
}

/// Writes `n` accounts, each with one live session and its refresh token, straight
/// into the database at `url` (migrated first), in transactions of 1,000 rows.
/// Every account has the password [`PASSWORD`] through one real argon2id hash with
/// the server's parameters; account 0 is an admin.
async fn seed_bulk(url: &str, n: usize) -> Vec<(usize, uuid::Uuid, uuid::Uuid)> {
    use argon2::{
        PasswordHasher as _,
        password_hash::{SaltString, rand_core::OsRng},
    };
    use entity::{refresh_token, session, user};
    use sea_orm::{EntityTrait, Set, TransactionTrait};
    let db = authgraph::db::connect(url, Duration::from_secs(60), 1).await.expect("connect to the scale database");
    authgraph::db::migrate(&db).await.expect("migrate the scale database");
    let params = Params::new(ARGON2_MIN_MEMORY_KIB, ARGON2_MIN_ITERATIONS, 1, None).unwrap();
    let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::days(7);
    let mut sample = Vec::new();
    let every = (n / COLD_SESSIONS).max(1);
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        let ids: Vec<(uuid::Uuid, uuid::Uuid)> =
            (start..end).map(|_| (uuid::Uuid::now_v7(), uuid::Uuid::now_v7())).collect();
        sample.extend((start..end).zip(&ids).filter(|(i, _)| *i > 0 && i % every == 0).map(|(i, (u, s))| (i, *u, *s)));
        let users = (start..end).zip(&ids).map(|(i, (id, _))| {
            let (email, name) = (seeded_email(i), seeded_name(i));
            user::ActiveModel {
                id: Set(*id),
                email_normalized: Set(entity::keys::email_key(&email).unwrap()),
                search_key: Set(entity::keys::search_key(&name, &email)),
                email: Set(email),
                name: Set(name),
                password_hash: Set(hash.clone()),
                role: Set(if i == 0 { user::Role::Admin } else { user::Role::User }),
                created_at: Set(now),
                updated_at: Set(now),
                last_login_at: Set(None),
                email_verified_at: Set(Some(now)),
                address_proven_at: Set(Some(now)),
            }
        });
        let sessions = ids.iter().map(|(user_id, session_id)| session::ActiveModel {
            id: Set(*session_id),
            user_id: Set(*user_id),
            created_at: Set(now),
            last_used_at: Set(now),
            expires_at: Set(expires),
            revoked_at: Set(None),
            user_agent: Set(Some("seeded".into())),
            ip: Set(Some("127.0.0.1".into())),
            authenticated_at: Set(Some(now)),
        });
        let tokens = ids.iter().map(|(_, session_id)| refresh_token::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            session_id: Set(*session_id),
            token_hash: Set(format!("seeded-{session_id}")),
            issued_at: Set(now),
            expires_at: Set(expires),
            rotated_at: Set(None),
            replaced_by: Set(None),
        });
        let txn = db.begin().await.unwrap();
        user::Entity::insert_many(users).exec_without_returning(&txn).await.expect("seed users");
        session::Entity::insert_many(sessions).exec_without_returning(&txn).await.expect("seed sessions");
        refresh_token::Entity::insert_many(tokens).exec_without_returning(&txn).await.expect("seed tokens");
        txn.commit().await.unwrap();
    }
    // PostgreSQL's own background work after a million inserts (autovacuum,
    // analyze, the checkpoint) is done now, not during the measurements.
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("VACUUM ANALYZE").await.expect("vacuum the scale database");
        // Needs a superuser; without one the checkpoint falls where it falls.
        db.execute_unprepared("CHECKPOINT").await.ok();
    }
    db.close().await.ok();
    sample
}

/// How many seeded sessions the cold `me` phase presents tokens of, each once
/// (more than the server caches by default, so that every request misses).
const COLD_SESSIONS: usize = 200_000;

/// Access tokens for seeded sessions, signed with the bench's `JWT_SECRET` as
/// the server would have signed them at login.
fn mint_tokens(seeded: &[(usize, uuid::Uuid, uuid::Uuid)]) -> Vec<String> {
    use authgraph::{
        auth::tokens::TokenKeys,
        domain::{SessionId, UserId},
        secret::Secret,
    };
    let keys = TokenKeys::new(
        &Secret::new(JWT_SECRET.as_bytes().to_vec()),
        "authgraph",
        "authgraph",
        Duration::from_secs(15 * 60),
    );
    let now = chrono::Utc::now().timestamp();
    seeded
        .iter()
        .map(|(i, user, session)| {
            let (user, session) = (UserId::from(*user), SessionId::from(*session));
            let email = seeded_email(*i);
            keys.issue(user, &email, entity::user::Role::User, session, now, now + 3600).unwrap().token
        })
        .collect()
}

/// One size of the scale phase on a fresh database at `url`; figures go under
/// `{name}.scale_{n}.…`. Returns (me req/s, logins/s, refreshes/s, search p99
/// ms, start to `/readyz` s, peak RSS MiB).
async fn scale_at(name: &str, url: &str, n: usize, o: &Options, report: &mut Report) -> [f64; 6] {
    let pre = |k: &str| format!("{name}.scale_{n}.{k}");
    let t0 = Instant::now();
    let seeded = seed_bulk(url, n).await;
    report.add(&pre("seed_s"), &format!("scale {name} {n}: seeding"), t0.elapsed().as_secs_f64(), "s");
    // The seeding's writes reach the disk before anything is measured, so the
    // kernel's write-back of a gigabyte does not fall on the phases at N only.
    #[cfg(target_os = "linux")]
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe {
        libc::sync();
    }

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let server = Server::start(url, dir.path());
    let c = client();
    let ready = loop {
        let r = c.get(format!("http://{}/readyz", server.addr)).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report.add(&pre("ready_s"), &format!("scale {name} {n}: start to /readyz 200"), ready.as_secs_f64(), "s");

    // Sixteen accounts log in (new sessions, tokens the phases can use); account 0
    // is the admin.
    let picked: Vec<usize> = (1..=16).map(|k| 1 + (mix(k) as usize % (n - 1))).collect();
    let emails: Vec<String> = picked.iter().map(|&i| seeded_email(i)).collect();
    let login = |email: String| {
        let (c, url) = (c.clone(), server.url.clone());
        async move {
            let body = json!({ "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
                               "variables": { "i": { "email": email, "password": PASSWORD, "transport": "BODY" } } });
            let v = post(&c, &url, None, &body).await.expect("login of a seeded account");
            (
                v["data"]["login"]["accessToken"].as_str().unwrap().to_owned(),
                v["data"]["login"]["refreshToken"].as_str().unwrap().to_owned(),
            )
        }
    };
    let admin = login(seeded_email(0)).await.0;
    let mut bearers = Vec::new();
    let mut refresh = Vec::new();
    for e in &emails {
        let (a, r) = login(e.clone()).await;
        bearers.push(Some(a));
        refresh.push(r);
    }

    let mut me = fire(&server.addr, o.connections, o.seconds, &[Load::query(ME, &bearers)]).await.remove(0);
    report.add(&pre("me_rps"), &format!("scale {name} {n}: me"), me.rate(), "req/s");
    report.add(&pre("me_p99_ms"), &format!("scale {name} {n}: me p99"), me.percentile_ms(0.99), "ms");
    let logins = fire(&server.addr, 8, o.seconds, &[Load::logins(&emails)]).await.remove(0);
    report.add(&pre("login_per_s"), &format!("scale {name} {n}: login"), logins.rate(), "logins/s");
    let refreshes = refresh_rate(&server.url, refresh, o.seconds).await;
    report.add(&pre("refresh_per_s"), &format!("scale {name} {n}: refresh"), refreshes.rate(), "rotations/s");

    // `me` with tokens of sessions the server has not seen since it started:
    // each request presents another one, so each reads its session and user
    // from the database once.
    let cold_tokens = Arc::new(mint_tokens(&seeded));
    let spread = cold_tokens.len() / 16;
    let me_url = Arc::new(server.url.clone());
    let mut cold = run(
        16,
        o.seconds,
        move |i| i * spread,
        move |c: reqwest::Client, k: usize| -> futures_util::future::BoxFuture<'static, (bool, usize)> {
            let (url, tokens) = (me_url.clone(), cold_tokens.clone());
            Box::pin(async move {
                let token = &tokens[k % tokens.len()];
                (post(&c, &url, Some(token), &json!({ "query": ME })).await.is_some(), k + 1)
            })
        },
    )
    .await;
    report.add(
        &pre("me_cold_rps"),
        &format!("scale {name} {n}: me, another seeded session each time"),
        cold.rate(),
        "req/s",
    );
    report.add(
        &pre("me_cold_p99_ms"),
        &format!("scale {name} {n}: me, another seeded session each time, p99"),
        cold.percentile_ms(0.99),
        "ms",
    );

    let url = Arc::new(server.url.clone());
    let admin = Arc::new(admin);
    let query = |query: &'static str, vars: fn(u64) -> Value| {
        let (url, admin) = (url.clone(), admin.clone());
        move |c: reqwest::Client, k: u64| -> futures_util::future::BoxFuture<'static, (bool, u64)> {
            let (url, admin) = (url.clone(), admin.clone());
            Box::pin(async move {
                let body = json!({ "query": query, "variables": vars(k) });
                (post(&c, &url, Some(&admin), &body).await.is_some(), k + 1)
            })
        }
    };
    let mut listing = run(
        4,
        o.seconds,
        |i| i as u64,
        query("{ users(first: 20) { totalCount edges { cursor node { id email } } } }", |_| json!({})),
    )
    .await;
    report.add(
        &pre("list_p99_ms"),
        &format!("scale {name} {n}: users(first: 20) + totalCount p99"),
        listing.percentile_ms(0.99),
        "ms",
    );
    // What an admin types: five letters from the middle of a seeded surname.
    static SIZE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    SIZE.store(n, std::sync::atomic::Ordering::Relaxed);
    let mut search = run(
        4,
        o.seconds,
        |i| 1000 * i as u64,
        query("query($s: String) { users(first: 20, search: $s) { totalCount edges { node { id email } } } }", |k| {
            let n = SIZE.load(std::sync::atomic::Ordering::Relaxed);
            let name = seeded_name(mix(k) as usize % n);
            let last: Vec<char> = name.split(' ').nth(1).unwrap().chars().collect();
            let at = last.len().saturating_sub(5) / 2;
            json!({ "s": last[at..(at + 5).min(last.len())].iter().collect::<String>() })
        }),
    )
    .await;
    report.add(
        &pre("search_p99_ms"),
        &format!("scale {name} {n}: users(search:) p99"),
        search.percentile_ms(0.99),
        "ms",
    );
    report.add(&pre("search_per_s"), &format!("scale {name} {n}: users(search:)"), search.rate(), "req/s");
    report.add(
        &pre("failed"),
        &format!("scale {name} {n}: failed requests"),
        (me.failed + cold.failed + logins.failed + refreshes.failed + listing.failed + search.failed) as f64,
        "",
    );
    let rss_mib = server.peak_rss_kib().map_or(f64::NAN, |kib| kib as f64 / 1024.0);
    report.add(&pre("peak_rss_mib"), &format!("scale {name} {n}: server peak RSS"), rss_mib, "MiB");
    [me.rate(), logins.rate(), refreshes.rate(), search.percentile_ms(0.99), ready.as_secs_f64(), rss_mib]
}

/// The scale phase on one backend: 10,000 accounts, then `n`, each on a fresh
/// database made by `fresh` (and dropped by it when it is a server's).
async fn bench_scale<F, Fut>(name: &str, n: usize, o: &Options, report: &mut Report, fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (String, Box<dyn FnOnce() + Send>)>,
{
    const SMALL: usize = 10_000;
    let (url, drop_db) = fresh().await;
    let small = scale_at(name, &url, SMALL.min(n), o, report).await;
    drop_db();
    if n <= SMALL {
        return;
    }
    let (url, drop_db) = fresh().await;
    let large = scale_at(name, &url, n, o, report).await;
    drop_db();
    report.add(&format!("{name}.scale_search_p99_ms"), &format!("scale {name}: search p99 at {n}"), large[3], "ms");
    report.add(&format!("{name}.scale_ready_s"), &format!("scale {name}: start to /readyz at {n}"), large[4], "s");
    report.add(&format!("{name}.scale_peak_rss_mib"), &format!("scale {name}: peak RSS at {n}"), large[5], "MiB");
    for (k, key) in ["me", "login", "refresh"].iter().enumerate() {
        report.add(
            &format!("{name}.scale_{key}_vs_10k_pct"),
            &format!("scale {name}: {key} at {n} / at {SMALL}"),
            100.0 * large[k] / small[k],
            "%",
        );
    }
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut report = Report { rows: vec![], json: serde_json::Map::new() };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "authgraph load benchmark: release server and load generator on the same {cores}-core machine, \
         over 127.0.0.1; {} s per phase, {} connections, argon2id m={ARGON2_MIN_MEMORY_KIB} KiB \
         t={ARGON2_MIN_ITERATIONS} p=1 (the server's defaults)",
        o.seconds, o.connections
    );
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
        bench_backend("sqlite", &sqlite, &o, &mut report).await;
        if let Some(admin_url) = &o.postgres {
            // A fresh database on that server, dropped afterwards.
            use sea_orm::ConnectionTrait;
            let name = format!("authgraph_bench_{}", uuid::Uuid::new_v4().simple());
            let admin = sea_orm::Database::connect(admin_url).await.expect("connect to --postgres");
            admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create the bench database");
            let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
            bench_backend("postgres", &format!("{base}/{name}"), &o, &mut report).await;
            propagation(&format!("{base}/{name}"), &mut report).await;
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
        if let Some(n) = o.users {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_owned();
            bench_scale("sqlite", n, &o, &mut report, || {
                let file = path.join(format!("scale-{}.db", uuid::Uuid::new_v4().simple()));
                let url = format!("sqlite://{}?mode=rwc", file.display());
                async move {
                    (
                        url,
                        Box::new(move || {
                            let _ = std::fs::remove_file(file);
                        }) as Box<dyn FnOnce() + Send>,
                    )
                }
            })
            .await;
            if let Some(admin_url) = &o.postgres {
                let admin_url = admin_url.clone();
                bench_scale("postgres", n, &o, &mut report, || {
                    let admin_url = admin_url.clone();
                    async move {
                        use sea_orm::ConnectionTrait;
                        let name = format!("authgraph_scale_{}", uuid::Uuid::new_v4().simple());
                        let admin = sea_orm::Database::connect(&admin_url).await.expect("connect to --postgres");
                        admin
                            .execute_unprepared(&format!("CREATE DATABASE {name}"))
                            .await
                            .expect("create a scale database");
                        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b).to_owned();
                        let url = format!("{base}/{name}");
                        let drop_db = move || {
                            // Dropped from a thread of its own: this runs inside the runtime.
                            let _ = std::thread::spawn(move || {
                                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                                rt.block_on(async {
                                    let _ = admin
                                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                        .await;
                                });
                            })
                            .join();
                        };
                        (url, Box::new(drop_db) as Box<dyn FnOnce() + Send>)
                    }
                })
                .await;
            }
        }
    });
    let width = report.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(10);
    for (label, value) in &report.rows {
        println!("{label:<width$}  {value}");
    }
    println!("targets:");
    let mut targets = serde_json::Map::new();
    let width = TARGETS.iter().map(|t| t.1.len()).max().unwrap_or(0);
    for (key, says, limit, at_least) in TARGETS {
        let Some(value) = report.json.get(key).and_then(Value::as_f64) else { continue };
        let met = if at_least { value >= limit } else { value <= limit };
        println!("  {says:<width$}  {value:.1}: {}", if met { "met" } else { "MISSED" });
        targets.insert(key.into(), json!({ "limit": limit, "at_least": at_least, "value": value, "met": met }));
    }
    report.json.insert("targets".into(), Value::Object(targets));
    report.json.insert("seconds_per_phase".into(), json!(o.seconds));
    report.json.insert("connections".into(), json!(o.connections));
    report.json.insert("scale_users".into(), json!(o.users));
    report.json.insert("cores".into(), json!(cores));
    if let Some(dir) = std::path::Path::new(&o.json).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).expect("create the JSON output's folder");
    }
    std::fs::write(&o.json, serde_json::to_string_pretty(&Value::Object(report.json)).unwrap()).unwrap();
    println!("written: {}", o.json);
}

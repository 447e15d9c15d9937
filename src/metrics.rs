//! Prometheus metrics: their names (one place, so the README's table and the
//! code agree), the process's recorder, and the gauges read at scrape time.
//!
//! Counters and histograms are recorded where things happen, through the
//! `metrics` facade (a no-op until [`install`] runs, which the server does
//! only when `METRICS_ADDR` is set). Gauges that need the database (live
//! sessions, the outbox) are read when `/metrics` is scraped
//! ([`refresh_gauges`]), as Prometheus collectors do, so an instance that is
//! never scraped never counts. Label values come from fixed sets (schema
//! field names, error codes and reasons), never from a client's text, so a
//! client cannot grow the number of series.

use std::{sync::OnceLock, time::Duration};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Root fields served, by `operation` (the schema's field name: `login`,
/// `me`) and `outcome` (`OK`, or the error's reason, or its code when it has
/// none).
pub const OPERATIONS_TOTAL: &str = "authgraph_graphql_operations_total";
/// How long each root field took, by `operation`.
pub const OPERATION_SECONDS: &str = "authgraph_graphql_operation_duration_seconds";
/// Logins, registrations and refreshes, by `action` and `outcome` (`success`,
/// `invalid_credentials`, `rate_limited`, `refresh_token_reused`, … : the
/// reason or code in lower case).
pub const AUTH_ATTEMPTS_TOTAL: &str = "authgraph_auth_attempts_total";
/// Sessions neither ended nor expired, in the database (read at scrape).
pub const SESSIONS_LIVE: &str = "authgraph_sessions_live";
/// Sessions this instance holds in its cache.
pub const SESSION_CACHE_ENTRIES: &str = "authgraph_session_cache_entries";
/// `sessionEvents` subscriptions open on this instance.
pub const SESSION_WATCHERS: &str = "authgraph_session_watchers";
/// Password checks waiting for a hashing thread.
pub const PASSWORD_QUEUE_DEPTH: &str = "authgraph_password_queue_depth";
/// How long a password check waited for a hashing thread.
pub const PASSWORD_QUEUE_WAIT_SECONDS: &str = "authgraph_password_queue_wait_seconds";
/// Database connections of this instance's pool, by `state` (`in_use`, `idle`).
pub const DB_POOL_CONNECTIONS: &str = "authgraph_db_pool_connections";
/// How long each database statement took, by `outcome` (`ok`, `error`).
pub const DB_QUERY_SECONDS: &str = "authgraph_db_query_duration_seconds";
/// Mails waiting in the outbox (queued, or waiting to be retried; read at scrape).
pub const MAIL_OUTBOX_PENDING: &str = "authgraph_mail_outbox_pending";
/// Mails handled by this instance's sender, by `kind` and `outcome` (`sent`,
/// `retried`, `failed`, `skipped`, `deferred` (a notice over its recipient's
/// budget, sent later), or `superseded`: the row was ended
/// elsewhere while the attempt ran, as when a recovery voids an account's
/// links, and the attempt's outcome was dropped).
pub const MAILS_TOTAL: &str = "authgraph_mails_total";
/// How long a session change took to reach this instance from the one that
/// made it (PostgreSQL: commit to apply, through the change log).
pub const SESSION_FEED_LAG_SECONDS: &str = "authgraph_session_feed_lag_seconds";

/// Upper bounds of the time histograms, in seconds: from half a millisecond
/// (a cached token check) to ten seconds (a queue under a login flood).
const SECONDS_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process's Prometheus recorder (once; later calls get the same
/// handle) and describes every metric. Errors: another recorder is installed.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| format!("installing the metrics recorder: {e}"))?;
            describe();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(OPERATIONS_TOTAL, "GraphQL root fields served, by operation (field name) and outcome");
    describe_histogram!(OPERATION_SECONDS, metrics::Unit::Seconds, "Time to serve a GraphQL root field");
    describe_counter!(AUTH_ATTEMPTS_TOTAL, "Logins, registrations and refreshes, by action and outcome");
    describe_gauge!(SESSIONS_LIVE, "Sessions neither ended nor expired (read from the database at scrape)");
    describe_gauge!(SESSION_CACHE_ENTRIES, "Sessions held in this instance's cache");
    describe_gauge!(SESSION_WATCHERS, "sessionEvents subscriptions open on this instance");
    describe_gauge!(PASSWORD_QUEUE_DEPTH, "Password checks waiting for a hashing thread");
    describe_histogram!(PASSWORD_QUEUE_WAIT_SECONDS, metrics::Unit::Seconds, "Wait for a hashing thread");
    describe_gauge!(DB_POOL_CONNECTIONS, "Database connections of this instance's pool, by state");
    describe_histogram!(DB_QUERY_SECONDS, metrics::Unit::Seconds, "Time of one database statement, by outcome");
    describe_gauge!(MAIL_OUTBOX_PENDING, "Mails queued or waiting for a retry (read from the database at scrape)");
    describe_counter!(MAILS_TOTAL, "Mails handled by this instance's sender, by kind and outcome");
    describe_histogram!(
        SESSION_FEED_LAG_SECONDS,
        metrics::Unit::Seconds,
        "Time from a session change's commit on one instance to its apply on this one"
    );
}

/// One root field served: its outcome (`OK`, a reason, or a code) and time.
/// Logins, registrations and refreshes are also counted by action.
pub fn operation(field: &'static str, outcome: &'static str, took: Duration) {
    counter!(OPERATIONS_TOTAL, "operation" => field, "outcome" => outcome).increment(1);
    histogram!(OPERATION_SECONDS, "operation" => field).record(took.as_secs_f64());
    let action = match field {
        "login" => "login",
        "register" => "register",
        "refreshToken" => "refresh",
        _ => return,
    };
    let outcome = if outcome == "OK" { "success".to_owned() } else { outcome.to_ascii_lowercase() };
    counter!(AUTH_ATTEMPTS_TOTAL, "action" => action, "outcome" => outcome).increment(1);
}

/// The gauges read at scrape time.
pub struct Gauges {
    pub sessions_live: u64,
    pub session_cache_entries: usize,
    pub session_watchers: usize,
    pub pool_in_use: u32,
    pub pool_idle: u32,
    pub outbox_pending: u64,
}

/// Sets the gauges read at scrape time.
pub fn set_gauges(g: &Gauges) {
    gauge!(SESSIONS_LIVE).set(g.sessions_live as f64);
    gauge!(SESSION_CACHE_ENTRIES).set(g.session_cache_entries as f64);
    gauge!(SESSION_WATCHERS).set(g.session_watchers as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(f64::from(g.pool_in_use));
    gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(g.pool_idle));
    gauge!(MAIL_OUTBOX_PENDING).set(g.outbox_pending as f64);
}

/// One database statement and how it ended (sea-orm's metric callback).
pub fn db_statement(took: Duration, failed: bool) {
    histogram!(DB_QUERY_SECONDS, "outcome" => if failed { "error" } else { "ok" }).record(took.as_secs_f64());
}

/// A password check entered the hashing queue (`+1`) or left it (`-1`, with
/// the time it waited).
pub fn password_queue(entered: bool, waited: Option<Duration>) {
    gauge!(PASSWORD_QUEUE_DEPTH).increment(if entered { 1.0 } else { -1.0 });
    if let Some(waited) = waited {
        histogram!(PASSWORD_QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
    }
}

/// A mail of `kind` handled by the sender.
pub fn mail(kind: &str, outcome: &'static str) {
    // Kinds are the outbox's fixed names; anything else is one label.
    let kind = crate::mail::Kind::parse(kind).map_or("unknown", crate::mail::Kind::as_str);
    counter!(MAILS_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
}

/// A session change from another instance applied `lag` after its commit.
pub fn feed_lag(lag: Duration) {
    histogram!(SESSION_FEED_LAG_SECONDS).record(lag.as_secs_f64());
}

//! `/metrics` on METRICS_ADDR: scraped before and after a scripted run of
//! logins, failures, a refresh-token reuse and a revocation, its counters move
//! as they should, its gauges are there, no client text becomes a label, and
//! the public port does not serve it. The recorder is the process's, shared
//! by every test running beside this one, so the counters are checked to
//! have moved by at least what this test did.

use std::time::Duration;

use serde_json::json;

use crate::{helpers::*, ops};

/// The value of the series `name` whose labels include all of `labels`
/// (summed over the series that match), or 0 when there is none.
pub fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

pub async fn scrape(app: &TestApp) -> String {
    let resp = bare().get(app.metrics_url().expect("metrics are on")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let app = spawn_with(|c| {
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        c.rate_limits.login_per_account = "3/1h".parse().unwrap();
    })
    .await;
    let before = scrape(&app).await;

    let user = app.user("counted@example.com").await;
    let other = user.login(&app).await;
    for _ in 0..2 {
        assert_eq!(reason(&app.login_body("counted@example.com", "wrong password").await), "INVALID_CREDENTIALS");
    }
    // The account's fourth check of the hour is its last.
    assert_eq!(code(&app.login_body("counted@example.com", PASSWORD).await), "RATE_LIMITED");
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": other.refresh_token })).await;
    assert!(v["errors"].is_null(), "{v}");
    // The rotated token again, after the grace window: reuse, the session ends.
    app.clock.advance(Duration::from_secs(11));
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": other.refresh_token })).await;
    assert_eq!(reason(&v), "REFRESH_TOKEN_REUSED", "{v}");
    // A client's operation name and alias never become labels.
    let v = app
        .gql_named(
            &app.client(),
            Some(&user.access_token),
            "query Sneaky_Label_42 { whoami: me { id } }",
            "Sneaky_Label_42",
        )
        .await;
    assert!(v["errors"].is_null(), "{v}");
    let v = app
        .gql(
            &app.client(),
            None,
            "mutation($e: String!) { requestPasswordReset(email: $e) }",
            json!({ "e": "counted@example.com" }),
        )
        .await;
    assert!(v["errors"].is_null(), "{v}");
    let mut after = scrape(&app).await;
    for _ in 0..100 {
        if value(&after, "authgraph_mails_total", &[("kind", "reset_password"), ("outcome", "sent")])
            > value(&before, "authgraph_mails_total", &[("kind", "reset_password"), ("outcome", "sent")])
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(&app).await;
    }

    let moved = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    let auth = "authgraph_auth_attempts_total";
    assert!(moved(auth, &[("action", "register"), ("outcome", "success")]) >= 1.0, "{after}");
    assert!(moved(auth, &[("action", "login"), ("outcome", "success")]) >= 1.0);
    assert!(moved(auth, &[("action", "login"), ("outcome", "invalid_credentials")]) >= 2.0);
    assert!(moved(auth, &[("action", "login"), ("outcome", "rate_limited")]) >= 1.0);
    assert!(moved(auth, &[("action", "refresh"), ("outcome", "success")]) >= 1.0);
    assert!(moved(auth, &[("action", "refresh"), ("outcome", "refresh_token_reused")]) >= 1.0);
    let ops = "authgraph_graphql_operations_total";
    assert!(moved(ops, &[("operation", "me"), ("outcome", "OK")]) >= 1.0);
    assert!(moved(ops, &[("operation", "login"), ("outcome", "INVALID_CREDENTIALS")]) >= 2.0);
    assert!(moved("authgraph_graphql_operation_duration_seconds_count", &[("operation", "login")]) >= 4.0);
    assert!(moved("authgraph_password_queue_wait_seconds_count", &[]) >= 4.0);
    assert!(moved("authgraph_db_query_duration_seconds_count", &[("outcome", "ok")]) >= 10.0);
    assert!(moved("authgraph_mails_total", &[("kind", "reset_password"), ("outcome", "sent")]) >= 1.0, "{after}");
    assert!(!after.contains("Sneaky_Label_42") && !after.contains("whoami"), "a client's text became a label");

    // Gauges read at scrape.
    assert!(value(&after, "authgraph_sessions_live", &[]) >= 1.0, "{after}");
    assert!(value(&after, "authgraph_session_cache_entries", &[]) >= 1.0);
    assert!(after.contains("authgraph_db_pool_connections{state=\"idle\"}"), "{after}");
    assert!(after.contains("authgraph_mail_outbox_pending "), "{after}");
    assert!(after.contains("authgraph_password_queue_depth "), "{after}");
    assert!(after.contains("# HELP authgraph_auth_attempts_total"), "{after}");
    if app.database.is_postgres() {
        assert!(moved("authgraph_session_feed_lag_seconds_count", &[]) >= 1.0, "{after}");
    }

    // Not on the public port.
    let public = bare().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
}

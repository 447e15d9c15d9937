//! What the operator reads: the real binary's log output, captured from pipes.

use serde_json::json;

use crate::helpers::*;

const TOKEN_INFO: &str = "query($t: String!) { tokenInfo(accessToken: $t) { active } }";

fn marker(what: &str) -> String {
    format!("{what}{}", uuid::Uuid::new_v4().simple())
}

/// The log lines that report an answered request with this status.
fn response_lines(log: &str, status: u16) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" response ") && l.contains(&format!("status={status} "))).collect()
}

#[tokio::test]
async fn request_log_holds_the_path_never_the_query_string() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_process(database.url(), dir.path(), &[("NO_COLOR", "1")]);
    let c = reqwest::Client::new();
    let url = format!("{}/graphql", server.base);

    // A token in the variables of a GET query, from a peer that forges X-Forwarded-For.
    let token = marker("TOKENMARK");
    let r = c
        .get(&url)
        .query(&[("query", TOKEN_INFO), ("variables", &json!({ "t": token }).to_string())])
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A login sent as GET by mistake: refused, and its password is not logged either.
    let password = marker("PASSWORDMARK");
    let login = format!(
        r#"mutation {{ login(input: {{ email: "ada@example.com", password: "{password}" }}) {{ accessToken }} }}"#
    );
    let r = c.get(&url).query(&[("query", &login)]).send().await.unwrap();
    assert_eq!(r.status(), 405);

    let log = server.stop();
    assert!(!log.contains(&token), "the token was logged:\n{log}");
    assert!(!log.contains(&password), "the password was logged:\n{log}");
    assert!(!log.contains("203.0.113.77"), "a forged X-Forwarded-For was logged:\n{log}");
    assert!(!log.contains("variables"), "a query string was logged:\n{log}");
    for status in [200, 405] {
        let lines = response_lines(&log, status);
        assert_eq!(lines.len(), 1, "one line for the {status} request:\n{log}");
        let line = lines[0];
        for field in ["method=GET", "path=/graphql", "client_ip=127.0.0.1", "duration_ms="] {
            assert!(line.contains(field), "{field} missing from {line}");
        }
        assert!(!line.contains('?'), "{line}");
    }
}

#[tokio::test]
async fn request_log_believes_forwarded_for_only_from_trusted_proxies() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_process(database.url(), dir.path(), &[("NO_COLOR", "1"), ("TRUSTED_PROXIES", "127.0.0.1/32")]);
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = server.stop();
    let lines = response_lines(&log, 200);
    assert_eq!(lines.len(), 1, "{log}");
    // The rightmost untrusted hop, as the GraphQL handler and the rate limits see it.
    assert!(lines[0].contains("client_ip=198.51.100.7") && lines[0].contains("path=/healthz"), "{}", lines[0]);
    assert!(!log.contains("6.6.6.6"), "{log}");
}

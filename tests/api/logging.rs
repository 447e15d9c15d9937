//! What the operator reads: the real binary's log output, captured from pipes.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const TOKEN_INFO: &str = "query($t: String!) { tokenInfo(accessToken: $t) { active } }";
const TOKEN_INFO_NAMED: &str = "query Check($t: String!) { tokenInfo(accessToken: $t) { active } }";

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
        if status == 200 {
            assert!(line.contains("request_id=") && line.contains("outcome="), "{line}");
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

#[tokio::test]
async fn piped_logs_carry_no_colour_escapes() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    // No NO_COLOR: a pipe alone must be enough.
    let mut server = start_process(database.url(), dir.path(), &[]);
    let r = reqwest::Client::new().get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let log = server.stop_bytes();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("status=200"), "{text}");
    assert!(!log.contains(&0x1b), "ANSI escapes in piped output:\n{text}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_process(database.url(), dir.path(), &[("LOG_FORMAT", "json")]);
    let token = marker("JSONMARK");
    let r = reqwest::Client::new()
        .get(format!("{}/graphql", server.base))
        .query(&[
            ("query", TOKEN_INFO_NAMED),
            ("operationName", "Check\nforged=line"),
            ("variables", &json!({ "t": token }).to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    let log = server.stop_bytes();
    let text = String::from_utf8_lossy(&log);
    assert!(!text.contains(&token), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{text}");
    for line in &lines {
        assert!(line.is_object(), "{line}");
        assert!(line["level"].is_string(), "no level: {line}");
        assert!(line["fields"].is_object(), "no fields: {line}");
    }
    assert!(
        lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("listening on"))),
        "{text}"
    );
    // The request line: the status with the event, the rest with its span.
    let request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "response" && l["span"]["path"] == "/graphql")
        .unwrap_or_else(|| panic!("no request line:\n{text}"));
    assert_eq!(request["fields"]["status"], 200, "{request}");
    assert!(request["fields"]["duration_ms"].is_number(), "{request}");
    assert_eq!(request["span"]["method"], "GET", "{request}");
    assert_eq!(request["span"]["client_ip"], "127.0.0.1", "{request}");
    // The GraphQL request's id, operation (only a name's characters) and outcome.
    let id = request["span"]["request_id"].as_str().unwrap_or_else(|| panic!("no request_id: {request}"));
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{request}");
    assert_eq!(request["span"]["operation"], "Checkforgedline", "{request}");
    let reason =
        answer["errors"][0]["extensions"]["reason"].as_str().or(answer["errors"][0]["extensions"]["code"].as_str());
    assert_eq!(request["span"]["outcome"].as_str(), reason.or(Some("OK")), "{request} {answer}");
}

#[tokio::test]
async fn an_unknown_log_format_is_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    for args in [&["serve"][..], &["migrate"], &["print-schema"], &[]] {
        let mut cmd = authgraph_command(dir.path());
        cmd.env("DATABASE_URL", &url).env("LISTEN_ADDR", "127.0.0.1:0").env("LOG_FORMAT", "xml").args(args);
        let out = output_within(&mut cmd, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted LOG_FORMAT=xml");
        assert!(stderr.contains("LOG_FORMAT") && stderr.contains("json"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(!db.exists(), "the database was created");
    // Before or after the subcommand, the flag is accepted.
    for args in [["--log-format", "json", "print-schema"], ["print-schema", "--log-format", "json"]] {
        let out = output_within(authgraph_command(dir.path()).args(args), Duration::from_secs(20));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("type Query"), "{args:?}");
    }
}

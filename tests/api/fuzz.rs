//! Property-based fuzzing of the request path: whatever arrives, the answer is a
//! well-formed client error or a result, never a 5xx, a panic or a leaked
//! internal message. Bounded case counts keep it a few seconds long.

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// Asserts an answer is sane: below 500, JSON, and every error has a code that is
/// not INTERNAL_SERVER_ERROR.
fn check(status: u16, body: &str) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "status {status}: {body}");
    let v: Value = serde_json::from_str(body).map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {body}")))?;
    let errors = match &v {
        Value::Array(list) => list.iter().flat_map(|r| r["errors"].as_array().cloned().unwrap_or_default()).collect(),
        v => v["errors"].as_array().cloned().unwrap_or_default(),
    };
    for e in errors {
        let code = e["extensions"]["code"].as_str().unwrap_or("<none>");
        prop_assert!(code != "<none>" && code != "INTERNAL_SERVER_ERROR", "{e}");
    }
    Ok(())
}

#[test]
fn arbitrary_requests_get_clean_answers() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(spawn_app());
    let client = app.client();
    let url = app.url("/graphql");
    let post = |body: Vec<u8>| {
        rt.block_on(async {
            let r = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    };

    // Raw bytes.
    runner(150)
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            let (status, body) = post(bytes);
            check(status, &body)
        })
        .unwrap();

    // Arbitrary query text, with and without GraphQL-ish structure.
    let query =
        prop_oneof!["\\PC{0,200}", "(query|mutation|subscription|fragment)? ?[{}()a-zA-Z_ :$!@.\"0-9,\\[\\]]{0,120}",];
    runner(200)
        .run(&query, |q| {
            let (status, body) = post(json!({ "query": q }).to_string().into_bytes());
            check(status, &body)
        })
        .unwrap();

    // Hostile variable values into every input of the auth mutations.
    let text = prop_oneof![
        "\\PC{0,300}",
        Just("\u{0}".to_owned()),
        Just("a\u{0}b@example.com".to_owned()),
        Just("🙂".repeat(200)),
        Just("x".repeat(5000)),
        "[\\u{0}-\\u{1f}\\u{7f}]{1,20}",
    ];
    let op = prop_oneof![
        Just(
            "mutation($a: String!, $b: String!) { register(input: {email: $a, password: $b, transport: BODY}) { accessToken } }"
        ),
        Just(
            "mutation($a: String!, $b: String!) { login(input: {email: $a, password: $b, transport: BODY}) { accessToken } }"
        ),
        Just("mutation($a: String!, $b: String!) { refreshToken(refreshToken: $a) { accessToken } }"),
        Just("mutation($a: String!, $b: String!) { logout(refreshToken: $b) }"),
        Just("query($a: String!, $b: String!) { me { id } }"),
    ];
    runner(120)
        .run(&(op, text.clone(), text), |(op, a, b)| {
            let (status, body) = post(json!({ "query": op, "variables": { "a": a, "b": b } }).to_string().into_bytes());
            check(status, &body)
        })
        .unwrap();

    // Hostile Authorization and X-API-Key headers on `me`.
    let header = "[ -~]{0,300}";
    runner(120)
        .run(&(header, prop::bool::ANY), |(value, as_key)| {
            let (status, body) = rt.block_on(async {
                let name = if as_key { "x-api-key" } else { "authorization" };
                let r =
                    client.post(&url).header(name, value).json(&json!({ "query": ops::ME_ID })).send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.text().await.unwrap())
            });
            check(status, &body)
        })
        .unwrap();

    // Still healthy.
    let ok = rt.block_on(async { client.get(app.url("/healthz")).send().await.unwrap().status() });
    assert_eq!(ok, 200);
    drop(app);
}

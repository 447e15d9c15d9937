//! Abuse resistance: alias and batch amplification, rate limits per IP and per
//! account, trusted proxies, recovery after the window, query-shape limits,
//! introspection, and health under a flood.

use std::time::{Duration, Instant};

use authgraph::config::QuotaSpec;
use futures_util::future::join_all;
use reqwest::Client;
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { accessToken user { email } } }";
const REGISTER: &str =
    "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken user { email } } }";

fn spec(s: &str) -> QuotaSpec {
    s.parse().unwrap()
}

fn trust_localhost(c: &mut authgraph::config::Config) {
    c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// POSTs a JSON body (one request or a batch) with the given `X-Forwarded-For`
/// headers (one header per entry); returns the status and the raw body text.
async fn send(app: &TestApp, c: &Client, xff: &[&str], body: &Value) -> (u16, String) {
    let mut req = c.post(app.url("/graphql")).json(body);
    for h in xff {
        req = req.header("x-forwarded-for", *h);
    }
    let r = req.send().await.expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// Sends and parses; panics on a non-JSON answer.
async fn send_json(app: &TestApp, c: &Client, xff: &[&str], body: &Value) -> Value {
    let (status, text) = send(app, c, xff, body).await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}, not JSON: {text}"))
}

fn login_body(email: &str, password: &str) -> Value {
    json!({ "query": LOGIN, "variables": { "i": { "email": email, "password": password, "transport": "BODY" } } })
}

fn register_req(email: &str, password: &str) -> Value {
    json!({ "query": REGISTER, "variables": { "i": { "email": email, "password": password, "transport": "BODY" } } })
}

fn refresh_body(token: &str) -> Value {
    json!({ "query": ops::REFRESH_BODY, "variables": { "t": token } })
}

/// One login with the BODY transport from the given forwarded addresses.
async fn login_from(app: &TestApp, c: &Client, xff: &[&str], email: &str, password: &str) -> Value {
    send_json(app, c, xff, &login_body(email, password)).await
}

/// `extensions.retryAfter` of the first error, which must be a whole number.
fn retry_after(v: &Value) -> u64 {
    v["errors"][0]["extensions"]["retryAfter"]
        .as_u64()
        .unwrap_or_else(|| panic!("retryAfter is not a non-negative integer: {v}"))
}

/// A RATE_LIMITED answer: no data, one error, integer retryAfter in 1..=max.
fn assert_limited(v: &Value, max_retry: u64) -> u64 {
    assert_eq!(code(v), "RATE_LIMITED", "{v}");
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(all_errors(v).len(), 1, "{v}");
    let ra = retry_after(v);
    assert!((1..=max_retry).contains(&ra), "implausible retryAfter {ra}: {v}");
    ra
}

/// Not rate limited: a normal answer of the resolver (success or INVALID_CREDENTIALS).
fn assert_login_ran(v: &Value) {
    assert!(
        reason(v) == "INVALID_CREDENTIALS" || v["data"]["login"]["accessToken"].is_string(),
        "expected the login to run: {v}"
    );
}

fn all_errors(v: &Value) -> Vec<&Value> {
    v["errors"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// `n` aliased copies of `field` in one selection set.
fn aliased(n: usize, field: impl Fn(usize) -> String) -> String {
    (0..n).map(|i| format!("a{i}: {}", field(i))).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// Alias and batch amplification
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_thousand_aliased_logins_are_refused_before_any_hashing() {
    let app = spawn_with(|c| {
        c.rate_limits.login_per_account = spec("3/1h");
        c.max_body_bytes = 1 << 20;
    })
    .await;
    let c = app.client();
    app.register(&c, "victim@example.com").await;

    // Inline arguments: every alias guesses a different password (~90 KB).
    let inline = aliased(1000, |i| {
        format!(
            r#"login(input: {{email: "victim@example.com", password: "guess-number-{i}", transport: BODY}}) {{ accessToken }}"#
        )
    });
    // The same through one variable: small enough for the default body limit.
    let with_var = aliased(1000, |_| "login(input: $i) { accessToken }".to_owned());
    let bodies = [
        json!({ "query": format!("mutation {{ {inline} }}") }),
        json!({
            "query": format!("mutation($i: LoginInput!) {{ {with_var} }}"),
            "variables": { "i": { "email": "victim@example.com", "password": "guess", "transport": "BODY" } }
        }),
    ];
    assert!(bodies[0].to_string().len() > 64 * 1024 && bodies[1].to_string().len() < 64 * 1024);
    for body in &bodies {
        let started = Instant::now();
        let (status, text) = send(&app, &c, &[], body).await;
        let elapsed = started.elapsed();
        // 1000 argon2 verifications would take 30 s or more.
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}: hashing happened?");
        assert!(status < 500, "{status}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["data"].is_null(), "{v}");
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
        assert!(["TOO_MANY_ALIASES", "TOO_MANY_CREDENTIAL_FIELDS"].contains(&reason(&v)), "unexpected reason: {v}");
        assert_eq!(all_errors(&v).len(), 1, "one request error, no per-field errors: {v}");
    }

    // The account's budget of 3 attempts is untouched: no alias reached the resolver.
    for password in ["wrong password 1", "wrong password 2", PASSWORD] {
        let v = login_from(&app, &c, &[], "victim@example.com", password).await;
        assert_login_ran(&v);
    }
    // ...and it is a real budget of 3.
    let v = login_from(&app, &c, &[], "victim@example.com", PASSWORD).await;
    assert_limited(&v, 1200);
}

#[tokio::test]
async fn two_credential_fields_in_one_operation_are_refused() {
    let app = spawn_app().await;
    let c = app.client();
    let login = |alias: &str| {
        format!(
            r#"{alias}: login(input: {{email: "two@example.com", password: "correct horse battery", transport: BODY}}) {{ accessToken }}"#
        )
    };
    let register = r#"register(input: {email: "two@example.com", password: "correct horse battery", transport: BODY}) { accessToken }"#;
    let cases = [
        format!("mutation {{ {} {} }}", login("a"), login("b")),
        format!("mutation {{ {} {register} }}", login("a")),
        format!(r#"mutation {{ {} changePassword(currentPassword: "x", newPassword: "yyyyyyyyyy") }}"#, login("a")),
        // Fragments do not hide them.
        format!(
            "mutation {{ ...F ...G }} fragment F on Mutation {{ {} }} fragment G on Mutation {{ {} }}",
            login("a"),
            login("b")
        ),
        format!("mutation {{ ... on Mutation {{ {} }} ... on Mutation {{ {register} }} }}", login("a")),
    ];
    for q in &cases {
        let started = Instant::now();
        let v = send_json(&app, &c, &[], &json!({ "query": q })).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(v["data"].is_null(), "{q}: {v}");
        assert_eq!(code(&v), "BAD_USER_INPUT", "{q}: {v}");
        assert_eq!(reason(&v), "TOO_MANY_CREDENTIAL_FIELDS", "{q}: {v}");
        assert_eq!(all_errors(&v).len(), 1, "{v}");
    }
    // Nothing ran: the address used by `register` above is still free.
    app.register(&c, "two@example.com").await;

    // With the default 64 KiB body limit, the 90 KB inline alias bomb never reaches GraphQL.
    let inline = aliased(1000, |i| {
        format!(r#"login(input: {{email: "two@example.com", password: "guess-number-{i}"}}) {{ accessToken }}"#)
    });
    let started = Instant::now();
    let (status, _) = send(&app, &c, &[], &json!({ "query": format!("mutation {{ {inline} }}") })).await;
    assert_eq!(status, 413);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_batch_runs_at_most_one_credential_field() {
    // A per-account budget of 1: had the second login of a batch run, it would say RATE_LIMITED.
    let app = spawn_with(|c| c.rate_limits.login_per_account = spec("1/1h")).await;
    let c = app.client();

    let batch = json!([login_body("batch@example.com", "guess one"), login_body("batch@example.com", "guess two")]);
    let (status, text) = send(&app, &c, &[], &batch).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let list = v.as_array().expect("a batch answer");
    assert_eq!(list.len(), 2);
    assert_eq!(reason(&list[0]), "INVALID_CREDENTIALS", "{v}");
    assert!(list[1]["data"].is_null(), "{v}");
    assert_eq!(code(&list[1]), "BAD_USER_INPUT", "{v}");
    assert_eq!(reason(&list[1]), "TOO_MANY_CREDENTIAL_FIELDS", "{v}");

    // A full batch of ten logins of different accounts: exactly one runs.
    let batch: Vec<Value> = (0..10).map(|i| login_body(&format!("b{i}@example.com"), "guess")).collect();
    let v = send_json(&app, &c, &[], &Value::Array(batch)).await;
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 10);
    let ran = list.iter().filter(|r| reason(r) != "TOO_MANY_CREDENTIAL_FIELDS").count();
    assert_eq!(ran, 1, "{v}");
    assert_eq!(reason(&list[0]), "INVALID_CREDENTIALS", "{v}");

    // Register and login mixed in one batch: the register is refused and not executed.
    let batch = json!([login_body("mix@example.com", "guess"), register_req("mix@example.com", PASSWORD)]);
    let v = send_json(&app, &c, &[], &batch).await;
    assert_eq!(reason(&v[1]), "TOO_MANY_CREDENTIAL_FIELDS", "{v}");
    app.register(&c, "mix@example.com").await;

    // Non-credential operations in a batch are unaffected by a login in it.
    let batch = json!([login_body("other@example.com", "guess"), { "query": ops::TYPENAME }]);
    let v = send_json(&app, &c, &[], &batch).await;
    assert_eq!(reason(&v[0]), "INVALID_CREDENTIALS", "{v}");
    assert_eq!(v[1]["data"]["__typename"], "Query", "{v}");
}

#[tokio::test]
async fn every_batched_or_aliased_refresh_counts_against_the_ip() {
    let app = spawn_with(|c| c.rate_limits.refresh_per_ip = spec("3/1h")).await;
    let c = app.client();
    let (_, refresh, _) = app.register_body("refresher@example.com").await;

    let batch: Vec<Value> = (0..5).map(|_| refresh_body(&refresh)).collect();
    let v = send_json(&app, &c, &[], &Value::Array(batch)).await;
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 5);
    let limited = list.iter().filter(|r| code(r) == "RATE_LIMITED").count();
    assert!(5 - limited <= 3, "more than 3 refreshes ran: {v}");
    assert_eq!(limited, 2, "{v}");
    // The first one ran and rotated the token.
    assert!(list[0]["data"]["refreshToken"]["accessToken"].is_string(), "{v}");
    for r in &list[3..] {
        assert_limited(r, 1200);
    }

    // The budget is spent: a lone request is limited as well.
    let v = send_json(&app, &c, &[], &refresh_body("whatever")).await;
    assert_limited(&v, 1200);

    // Aliases inside one operation count one by one too. The same token inside the
    // reuse grace window yields the same successor, so the first three run; the
    // fourth is limited (and, the field being non-null, mutation execution stops).
    let app = spawn_with(|c| c.rate_limits.refresh_per_ip = spec("3/1h")).await;
    let (_, refresh, _) = app.register_body("aliased@example.com").await;
    let q = format!(
        "mutation($t: String) {{ {} }}",
        aliased(5, |_| "refreshToken(refreshToken: $t) { accessToken }".to_owned())
    );
    let v = send_json(&app, &c, &[], &json!({ "query": q, "variables": { "t": refresh } })).await;
    let errors = all_errors(&v);
    assert!(!errors.is_empty(), "{v}");
    assert!(errors.iter().all(|e| e["extensions"]["code"] == "RATE_LIMITED"), "{v}");
    assert_eq!(errors[0]["path"], json!(["a3"]), "{v}");
}

// ---------------------------------------------------------------------------
// Per-IP limits and trusted proxies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn login_per_ip_limit_ignores_spoofed_forwarded_for() {
    let app = spawn_with(|c| c.rate_limits.login_per_ip = spec("3/1h")).await;
    let c = app.client();
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        let v = login_from(&app, &c, &[&xff], &format!("ip{i}@example.com"), "guess").await;
        assert_login_ran(&v);
    }
    let v = login_from(&app, &c, &["203.0.113.99"], "ip9@example.com", "guess").await;
    // 3/1h: one attempt comes back every 1200 s.
    assert_limited(&v, 1200);
    // Rotating or dropping the header changes nothing: 127.0.0.1 is not a trusted proxy.
    for xff in [vec!["198.51.100.1"], vec!["10.9.9.9, 198.51.100.2"], vec![]] {
        let v = login_from(&app, &c, &xff, "ip-rot@example.com", "guess").await;
        assert_limited(&v, 1200);
    }
    // Other actions keep their own budgets.
    let v = send_json(&app, &c, &[], &refresh_body("bogus")).await;
    assert_ne!(code(&v), "RATE_LIMITED", "{v}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let app = spawn_with(|c| {
        trust_localhost(c);
        c.rate_limits.login_per_ip = spec("3/1h");
    })
    .await;
    let c = app.client();
    for _ in 0..3 {
        assert_login_ran(&login_from(&app, &c, &["198.51.100.1"], "proxied@example.com", "guess").await);
    }
    assert_limited(&login_from(&app, &c, &["198.51.100.1"], "proxied@example.com", "guess").await, 1200);
    // A different client behind the same proxy has its own budget.
    assert_login_ran(&login_from(&app, &c, &["198.51.100.2"], "proxied@example.com", "guess").await);

    // "spoofed, real": the rightmost untrusted hop is the client.
    for spoof in ["6.6.6.6", "6.6.6.7", "6.6.6.8"] {
        let chain = format!("{spoof}, 198.51.100.7");
        assert_login_ran(&login_from(&app, &c, &[&chain], "chain@example.com", "guess").await);
    }
    // Changing only the part the client controls does not reset the budget.
    for xff in [vec!["7.7.7.7, 198.51.100.7"], vec!["198.51.100.7"], vec!["1.2.3.4", "198.51.100.7"]] {
        assert_limited(&login_from(&app, &c, &xff, "chain@example.com", "guess").await, 1200);
    }
    // An inner trusted hop (127.0.0.1 again) is skipped: still keyed on 198.51.100.7.
    assert_limited(
        &login_from(&app, &c, &["6.6.6.6, 198.51.100.7, 127.0.0.1"], "chain@example.com", "guess").await,
        1200,
    );
}

// ---------------------------------------------------------------------------
// Per-account limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_account_attacked_from_many_ips_is_limited_alike_whether_it_exists_or_not() {
    let app = spawn_with(|c| {
        trust_localhost(c);
        // Tight per IP too: every attempt below comes from a fresh address, so only
        // the per-account limit can stop them.
        c.rate_limits.login_per_ip = spec("3/1h");
        c.rate_limits.login_per_account = spec("5/1h");
    })
    .await;
    let c = app.client();
    app.register(&c, "target@example.com").await;

    for step in 0..8 {
        // Case variants name the same account (and the same non-account).
        let (known, unknown) = if step % 2 == 0 {
            ("target@example.com", "ghost@example.com")
        } else {
            ("Target@EXAMPLE.com", "GHOST@example.COM")
        };
        // Wrong guesses first; from step 5 on the right password.
        let password = if step < 5 { format!("wrong password {step}") } else { PASSWORD.to_owned() };
        let xff_known = format!("203.0.113.{step}");
        let xff_unknown = format!("198.51.100.{step}");
        let (s_known, t_known) = send(&app, &c, &[&xff_known], &login_body(known, &password)).await;
        let (s_unknown, t_unknown) = send(&app, &c, &[&xff_unknown], &login_body(unknown, &password)).await;
        assert_eq!(s_known, s_unknown, "step {step}");
        let v_known: Value = serde_json::from_str(&t_known).unwrap();
        let v_unknown: Value = serde_json::from_str(&t_unknown).unwrap();
        if step < 5 {
            assert_eq!(reason(&v_known), "INVALID_CREDENTIALS", "step {step}: {v_known}");
            // Byte-identical bodies: nothing tells an account from a non-account.
            assert_eq!(t_known, t_unknown, "step {step}");
        } else {
            // Even the right password is refused now.
            assert!(v_known["data"].is_null(), "step {step}: {v_known}");
            let ra_known = assert_limited(&v_known, 720);
            let ra_unknown = assert_limited(&v_unknown, 720);
            // retryAfter is computed a few milliseconds apart and may round to the
            // next second for one of them; compare the bodies with it blanked out
            // (it is also part of the message).
            assert!(ra_known.abs_diff(ra_unknown) <= 1, "step {step}: {ra_known} vs {ra_unknown}");
            let blank = |t: &str, ra: u64| {
                t.replace(&format!("retry in {ra} seconds"), "retry in N seconds")
                    .replace(&format!("\"retryAfter\":{ra}"), "\"retryAfter\":N")
            };
            assert_eq!(blank(&t_known, ra_known), blank(&t_unknown, ra_unknown), "step {step}");
        }
    }
    // Other accounts are not affected, from an already-used address either.
    let v = login_from(&app, &c, &["203.0.113.0"], "someone-else@example.com", "guess").await;
    assert_login_ran(&v);
}

// ---------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------

/// Drains a "2/2h" budget with `cheap` calls (they count, but do no
/// hashing), then checks that the answer's
/// retryAfter is exactly enough: with the server's clock moved that far ahead,
/// `real` passes.
async fn drain_and_recover(app: &TestApp, c: &Client, cheap: &Value, real: &Value) {
    for _ in 0..2 {
        let v = send_json(app, c, &[], cheap).await;
        assert_ne!(code(&v), "RATE_LIMITED", "{v}");
    }
    let v = send_json(app, c, &[], cheap).await;
    // "2/2h": one attempt comes back every hour. (An hour, not a second: the
    // limiters' clock runs in real time too, and a busy machine can take a
    // second over three requests.)
    let ra = assert_limited(&v, 3600);
    assert!(ra > 3500, "{ra}");

    // Exactly retryAfter seconds later is enough.
    app.clock.advance(Duration::from_secs(ra));
    let v = send_json(app, c, &[], real).await;
    assert_ne!(code(&v), "RATE_LIMITED", "after {ra} s: {v}");
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");

    // Only one attempt came back, not the whole burst.
    assert_limited(&send_json(app, c, &[], cheap).await, 3600);
}

#[tokio::test]
async fn limits_recover_after_retry_after_seconds() {
    let app = spawn_with(|c| {
        c.rate_limits.login_per_ip = spec("2/2h");
        c.rate_limits.refresh_per_ip = spec("2/2h");
        c.rate_limits.register_per_ip = spec("2/2h");
    })
    .await;
    let c = app.client();
    // An invalid address is refused before hashing, but after the per-IP count.
    let (bad_login, real_login) = (login_body("not-an-email", "guess"), login_body("r@example.com", "guess"));
    let bogus_refresh = refresh_body("bogus");
    // One limiter after the other: moving the clock refills them all, so a
    // drained one must not see another's jump.
    drain_and_recover(&app, &c, &bad_login, &real_login).await;
    drain_and_recover(&app, &c, &bogus_refresh, &bogus_refresh).await;
    // Registration: the recovery call is a real one and must succeed.
    let bad = register_req("not-an-email", PASSWORD);
    for _ in 0..2 {
        assert_eq!(reason(&send_json(&app, &c, &[], &bad).await), "INVALID_EMAIL");
    }
    let ra = assert_limited(&send_json(&app, &c, &[], &bad).await, 3600);
    app.clock.advance(Duration::from_secs(ra));
    let v = send_json(&app, &c, &[], &register_req("recovered@example.com", PASSWORD)).await;
    assert!(v["data"]["register"]["accessToken"].is_string(), "after {ra} s: {v}");
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

#[tokio::test]
async fn register_per_ip_counts_every_attempt_before_validation() {
    let app = spawn_with(|c| {
        trust_localhost(c);
        c.rate_limits.register_per_ip = spec("3/1h");
    })
    .await;
    let c = app.client();
    let attacker = ["203.0.113.50"];

    // The per-IP limit is checked first in the resolver, so invalid attempts count.
    let v = send_json(&app, &c, &attacker, &register_req("not-an-email", PASSWORD)).await;
    assert_eq!(reason(&v), "INVALID_EMAIL", "{v}");
    let v = send_json(&app, &c, &attacker, &register_req("weak@example.com", "short")).await;
    assert_eq!(reason(&v), "WEAK_PASSWORD", "{v}");
    let v = send_json(&app, &c, &attacker, &register_req("first@example.com", PASSWORD)).await;
    assert!(v["data"]["register"]["accessToken"].is_string(), "{v}");

    // The 4th is refused before validation: the invalid one too is RATE_LIMITED.
    let v = send_json(&app, &c, &attacker, &register_req("second@example.com", PASSWORD)).await;
    assert_limited(&v, 1200);
    let v = send_json(&app, &c, &attacker, &register_req("not-an-email", PASSWORD)).await;
    assert_limited(&v, 1200);
    let v = send_json(&app, &c, &attacker, &register_req("first@example.com", PASSWORD)).await;
    assert_limited(&v, 1200);

    // Logins from the same address have their own budget.
    let v = login_from(&app, &c, &attacker, "first@example.com", PASSWORD).await;
    assert!(v["data"]["login"]["accessToken"].is_string(), "{v}");

    // The refused registration stored nothing: another client can take the address.
    let v = send_json(&app, &c, &["203.0.113.51"], &register_req("second@example.com", PASSWORD)).await;
    assert!(v["data"]["register"]["accessToken"].is_string(), "{v}");
}

// ---------------------------------------------------------------------------
// Query shape
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deep_and_wide_queries_are_refused_before_resolvers_run() {
    let app = spawn_with(|c| c.max_body_bytes = 1 << 20).await;
    let c = app.client();

    // Deeper than the limit (15), next to a `me` that would say MISSING_TOKEN if run.
    let mut deep = String::from("name");
    for _ in 0..20 {
        deep = format!("ofType {{ {deep} }}");
    }
    let q = format!("{{ me {{ id }} __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}");
    let started = Instant::now();
    let v = send_json(&app, &c, &[], &json!({ "query": q })).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert_eq!(all_errors(&v).len(), 1, "{v}");
    assert!(all_errors(&v).iter().all(|e| e["extensions"]["reason"] != "MISSING_TOKEN"), "{v}");

    // 10,000 aliases of `me` (about 150 KB).
    let q = format!("{{ {} }}", aliased(10_000, |_| "me { id }".to_owned()));
    assert!(q.len() > 64 * 1024);
    let started = Instant::now();
    let (status, text) = send(&app, &c, &[], &json!({ "query": q })).await;
    let elapsed = started.elapsed();
    assert!(status < 500, "{status}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    // Parsing 150 KB takes about half a second in a debug build; the proof that no
    // resolver ran is the single error below, the bound only catches a runaway.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert_eq!(all_errors(&v).len(), 1, "no per-alias errors: {text:.500}");
    assert!(all_errors(&v).iter().all(|e| e["extensions"]["reason"] != "MISSING_TOKEN"), "{text:.500}");

    // Under the limits the same field runs (control): its resolver answers MISSING_TOKEN.
    let v = send_json(&app, &c, &[], &json!({ "query": format!("{{ {} }}", aliased(3, |_| "me { id }".to_owned())) }))
        .await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
}

#[tokio::test]
async fn introspection_and_suggestions_can_be_turned_off() {
    let off = spawn_with(|c| c.introspection = false).await;
    let on = spawn_app().await;
    let c = off.client();

    let schema_q = json!({ "query": "{ __schema { types { name } } }" });
    let type_q = json!({ "query": r#"{ __type(name: "User") { name fields { name } } }"# });
    let typos = [json!({ "query": "{ me { emai } }" }), json!({ "query": "{ me { sesions { id } } }" })];

    // Nothing of the schema comes back.
    for q in [&schema_q, &type_q] {
        let (status, text) = send(&off, &c, &[], q).await;
        assert!(status < 500, "{status}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["data"]["__schema"].is_null() && v["data"]["__type"].is_null(), "introspection answered: {v}");
        assert!(!text.contains("User") && !text.contains("AuthPayload"), "schema leaked: {text}");
    }
    for q in &typos {
        let v = send_json(&off, &c, &[], q).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
        assert!(v["data"].is_null(), "{v}");
        let text = v.to_string();
        assert!(!text.contains("Did you mean"), "suggestion leaked: {text}");
    }
    // __typename is not introspection: it still works.
    let v = send_json(&off, &c, &[], &json!({ "query": ops::TYPENAME })).await;
    assert_eq!(v["data"]["__typename"], "Query", "{v}");

    // Control: with introspection on, both work.
    let v = send_json(&on, &c, &[], &schema_q).await;
    assert!(v["data"]["__schema"]["types"].as_array().is_some_and(|t| !t.is_empty()), "{v}");
    let v = send_json(&on, &c, &[], &type_q).await;
    assert_eq!(v["data"]["__type"]["name"], "User", "{v}");
    for q in &typos {
        let v = send_json(&on, &c, &[], q).await;
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("Did you mean"), "{v}");
    }
}

/// `__schema` is `__Schema!`: with introspection off, a query for it must fail with
/// an error (as Apollo Server answers), not come back as a bare `null` that
/// GraphiQL and codegen tools misread as a broken server.
#[tokio::test]
async fn disabled_introspection_answers_with_an_error() {
    let off = spawn_with(|c| c.introspection = false).await;
    let c = off.client();
    let v = send_json(&off, &c, &[], &json!({ "query": "{ __schema { types { name } } }" })).await;
    assert!(v["data"]["__schema"].is_null(), "{v}");
    assert!(!all_errors(&v).is_empty(), "no error for a refused __schema: {v}");
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
}

// ---------------------------------------------------------------------------
// Health under load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_stays_healthy_through_a_flood() {
    let app = spawn_with(|c| {
        c.rate_limits.login_per_ip = spec("5/1h");
        c.max_body_bytes = 1 << 20;
    })
    .await;
    let c = app.client();
    let token = app.register(&c, "survivor@example.com").await["accessToken"].as_str().unwrap().to_owned();

    let logins = (0..200).map(|i| {
        let (app, c) = (&app, &c);
        async move { send(app, c, &[], &login_body(&format!("flood{i}@example.com"), "guess")).await }
    });
    // Alias bombs and deep queries at the same time.
    let bomb = json!({ "query": format!("mutation {{ {} }}", aliased(1000, |_| r#"login(input: {email: "x@example.com", password: "guessguess"}) { accessToken }"#.to_owned())) });
    let others = (0..5).map(|_| {
        let (app, c, bomb) = (&app, &c, &bomb);
        async move { send(app, c, &[], bomb).await }
    });
    let started = Instant::now();
    let (logins, others) = tokio::join!(join_all(logins), join_all(others));
    let elapsed = started.elapsed();

    let mut ran = 0;
    let mut limited = 0;
    for (status, text) in &logins {
        assert!(*status < 500, "{status}: {text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_ne!(code(&v), "INTERNAL_SERVER_ERROR", "{v}");
        assert_ne!(code(&v), "SERVICE_UNAVAILABLE", "{v}");
        match code(&v) {
            "RATE_LIMITED" => {
                assert_limited(&v, 720);
                limited += 1;
            }
            _ => {
                assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
                ran += 1;
            }
        }
    }
    assert_eq!(ran, 5, "only the budget of 5 may run");
    assert_eq!(limited, 195);
    for (status, text) in &others {
        assert!(*status < 500, "{status}: {text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    }
    // Limited calls are cheap: 195 of them do not take 195 hashes.
    assert!(elapsed < Duration::from_secs(10), "flood took {elapsed:?}");

    let r = c.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v = app.gql(&c, Some(&token), ops::ME_EMAIL, json!({})).await;
    assert_eq!(v["data"]["me"]["email"], "survivor@example.com", "{v}");
}

/// Writes that check no credential are metered per account and per client:
/// twenty aliased `enrollTotp` in one request write five times, then answer
/// RATE_LIMITED; another account from another client is not held back.
#[tokio::test]
async fn writes_without_a_credential_check_spend_a_budget() {
    let app = spawn_with(|c| {
        c.second_factor = authgraph::config::SecondFactorConfig::local();
        c.rate_limits.write_per_account = spec("5/1h");
    })
    .await;
    let user = app.user("writer@example.com").await;
    let many = format!("mutation {{ {} }}", aliased(20, |_| "enrollTotp { secret }".to_owned()));
    let v = user.gql(&app, &many, json!({})).await;
    let limited = all_errors(&v).iter().filter(|e| e["extensions"]["code"] == "RATE_LIMITED").count();
    let written = (0..20).filter(|i| v["data"][format!("a{i}")]["secret"].is_string()).count();
    assert_eq!((written, limited), (5, 15), "{v}");
    let other = app.user("other.writer@example.com").await;
    let v = other.gql(&app, "mutation { enrollTotp { secret } }", json!({})).await;
    assert!(v["errors"].is_null(), "{v}");
}

/// Open passkey ceremonies are capped per account: starting one more closes
/// the oldest, so an account keeps at most five rows open.
#[tokio::test]
async fn open_ceremonies_are_capped_per_account() {
    use sea_orm::{EntityTrait, PaginatorTrait};
    let app = spawn_with(|c| c.second_factor = authgraph::config::SecondFactorConfig::local()).await;
    let user = app.user("ceremonies@example.com").await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        let v = user.gql(&app, "mutation { startPasskeyRegistration { id } }", json!({})).await;
        ids.push(v["data"]["startPasskeyRegistration"]["id"].as_str().expect("a ceremony").to_owned());
    }
    let open = entity::webauthn_ceremony::Entity::find().count(&app.state().services.db).await.unwrap();
    assert_eq!(open, authgraph::service::signin::passkeys::MAX_OPEN_CEREMONIES as u64);
    let kept: Vec<String> = entity::webauthn_ceremony::Entity::find()
        .all(&app.state().services.db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert!(ids[7..].iter().all(|id| kept.contains(id)), "the newest were closed: {kept:?}");
}

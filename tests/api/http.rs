//! The HTTP surface: GraphQL over HTTP, GraphiQL, health, limits, errors.

use std::time::{Duration, Instant};

use futures_util::stream;
use serde_json::{Value, json};

use crate::{helpers::*, ops};

#[tokio::test]
async fn health_readiness_and_typename() {
    let app = spawn_app().await;
    let c = app.client();
    let r = c.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let body = app.gql(&c, None, ops::TYPENAME, json!({})).await;
    assert_eq!(body, json!({ "data": { "__typename": "Query" } }));
    let r = c.get(app.url("/graphql?query=%7B__typename%7D")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.json::<Value>().await.unwrap()["data"]["__typename"], "Query");
}

#[tokio::test]
async fn graphiql_is_served_offline_and_can_be_turned_off() {
    let app = spawn_app().await;
    let c = app.client();
    let r = c.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = r.text().await.unwrap();
    // Every script and stylesheet comes from this server, none from a CDN.
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//unpkg"), "{html}");
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            assets.push(part.split('"').next().unwrap().to_owned());
        }
    }
    assert_eq!(assets.len(), 5, "{assets:?}");
    for path in &assets {
        assert!(path.starts_with("/graphiql/"), "{path}");
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(if path.ends_with(".css") { "text/css" } else { "text/javascript" }), "{path}: {ct}");
        assert!(r.bytes().await.unwrap().len() > 100, "{path}");
    }
    let init = c.get(app.url("/graphiql/init.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("url: '/graphql'"), "{init}");
    assert_eq!(c.get(app.url("/graphiql/../Cargo.toml")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(app.url("/graphiql/nope.js")).send().await.unwrap().status(), 404);

    let off = spawn_with(|c| c.graphiql = false).await;
    let r = off.client().get(off.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = off.client().get(off.url("/graphiql/graphiql.min.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn mutation_over_get_is_refused_and_not_executed() {
    let app = spawn_app().await;
    let c = app.client();
    let q = r#"mutation { register(input: {email: "get@example.com", password: "correct horse battery"}) { accessToken } }"#;
    let r = c.get(app.url("/graphql")).query(&[("query", q)]).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    // Named operations are resolved too.
    let q2 = "query A { __typename } mutation B { logout }";
    let r = c.get(app.url("/graphql")).query(&[("query", q2), ("operationName", "B")]).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = c.get(app.url("/graphql")).query(&[("query", q2), ("operationName", "A")]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The same text is now kept parsed: still refused for its mutation.
    let r = c.get(app.url("/graphql")).query(&[("query", q2), ("operationName", "B")]).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // A mutation kept from a POST is refused over GET as well.
    let logout = ops::LOGOUT;
    for _ in 0..2 {
        let r = c.post(app.url("/graphql")).json(&json!({ "query": logout })).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c.get(app.url("/graphql")).query(&[("query", logout)]).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // Not executed: the address is still free.
    app.register(&c, "get@example.com").await;
}

#[tokio::test]
async fn non_json_bodies_get_415_and_are_not_executed() {
    let app = spawn_app().await;
    let c = app.client();
    let q = r#"mutation { register(input: {email: "csrf@example.com", password: "correct horse battery"}) { accessToken } }"#;
    let body = json!({ "query": q }).to_string();
    for ct in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None]
    {
        let mut req = c.post(app.url("/graphql")).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "BAD_USER_INPUT");
    }
    // charset parameters are fine
    let r = c
        .post(app.url("/graphql"))
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({ "query": ops::TYPENAME }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.register(&c, "csrf@example.com").await;
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_answered_cleanly() {
    let app = spawn_app().await;
    let c = app.client();
    for bad in ["{", "[]", "null", "42", r#"{"variables": {}}"#, "\u{0}"] {
        let r = c.post(app.url("/graphql")).header("content-type", "application/json").body(bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "BAD_USER_INPUT", "{bad:?}: {v}");
    }
    // A syntax error in the query itself is a GraphQL error with a code.
    let v = app.gql(&c, None, "{ me { ", json!({})).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");

    let huge = json!({ "query": format!("{{ __typename }} #{}", "x".repeat(200_000)) }).to_string();
    let r =
        c.post(app.url("/graphql")).header("content-type", "application/json").body(huge.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // Chunked, without Content-Length: the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = huge.into_bytes().chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The server is fine afterwards.
    assert_eq!(app.gql(&c, None, ops::TYPENAME, json!({})).await["data"]["__typename"], "Query");
}

#[tokio::test]
async fn depth_and_complexity_are_limited() {
    let app = spawn_app().await;
    let c = app.client();
    let mut deep = String::from("name");
    for _ in 0..20 {
        deep = format!("ofType {{ {deep} }}");
    }
    let q = format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}");
    let v = app.gql(&c, None, &q, json!({})).await;
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(code(&v), "BAD_USER_INPUT");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("deep"), "{v}");

    // 40 aliases (under the alias limit) of a 16-field selection: complexity 680.
    let fields = "id email name role createdAt updatedAt lastLoginAt sessions { id createdAt lastUsedAt expiresAt userAgent ip current }";
    let wide = (0..40).map(|i| format!("a{i}: me {{ {fields} }}")).collect::<Vec<_>>().join(" ");
    let v = app.gql(&c, None, &format!("{{ {wide} }}"), json!({})).await;
    assert!(v["data"].is_null(), "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("complex"), "{v}");
    // Within the limits the same shape runs (and fails only for want of a token).
    let narrow = (0..10).map(|i| format!("a{i}: me {{ {fields} }}")).collect::<Vec<_>>().join(" ");
    let v = app.gql(&c, None, &format!("{{ {narrow} }}"), json!({})).await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
}

#[tokio::test]
async fn batches_are_bounded() {
    let app = spawn_app().await;
    let c = app.client();
    let one = json!({ "query": ops::TYPENAME });
    let r = c.post(app.url("/graphql")).json(&json!([one, one])).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["data"]["__typename"], "Query");

    let many: Vec<Value> = (0..11).map(|_| one.clone()).collect();
    let r = c.post(app.url("/graphql")).json(&many).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

/// POSTs a raw request body; returns the response's length and JSON body.
async fn post_sized(app: &TestApp, body: &Value) -> (usize, Value) {
    let r = app.client().post(app.url("/graphql")).json(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    (bytes.len(), serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn errors_quote_only_an_excerpt_of_what_the_client_sent() {
    let app = spawn_app().await;
    // A 60 KB one-line document with a syntax error at its end.
    let long = "x".repeat(60_000);
    let (len, v) = post_sized(&app, &json!({ "query": format!("{{ {long} nope( }}") })).await;
    assert!(len < 2048, "{len} bytes: {v}");
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert_eq!(reason(&v), "GRAPHQL_VALIDATION_FAILED", "{v}");
    assert_eq!(v["errors"][0]["locations"][0]["line"], 1, "{v}");
    assert!(v["errors"][0]["locations"][0]["column"].as_u64().unwrap() > 60_000, "{v}");
    let message = v["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("nope(") && message.contains('^') && message.contains('…'), "{message}");

    // Validation errors quote names and values: a long field name, operation
    // name and enum value are cut too.
    for body in [
        json!({ "query": format!("{{ {long} }}") }),
        json!({ "query": ops::TYPENAME, "operationName": long }),
        json!({ "query": "query($r: Role!) { users(role: $r) { totalCount } }", "variables": { "r": "x ".repeat(30_000) } }),
        json!({ "query": format!("query($v{long}: Int!) {{ __typename }}") }),
    ] {
        let (len, v) = post_sized(&app, &body).await;
        assert!(len < 2048, "{len} bytes: {v}");
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains('…'), "{v}");
    }
}

#[tokio::test]
async fn graphql_response_json_is_negotiated() {
    let app = spawn_app().await;
    let c = app.client();
    let r = c
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json, application/json;q=0.9")
        .json(&json!({ "query": "{ nope }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/graphql-response+json"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "BAD_USER_INPUT");

    // Plain application/json: 200 with errors, as Apollo and urql expect.
    let r = c.post(app.url("/graphql")).json(&json!({ "query": "{ nope }" })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    // A field error is not a request error: 200 either way.
    let r = c
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": ops::ME_ID }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(reason(&v), "MISSING_TOKEN");
}

/// POSTs `body` asking for `accept`; returns the status and the JSON body.
async fn post_accepting(app: &TestApp, accept: &str, body: Value) -> (u16, Value) {
    let r = app.client().post(app.url("/graphql")).header("accept", accept).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn request_errors_have_no_data_entry_in_graphql_response_json() {
    let app = spawn_app().await;
    const GQL: &str = "application/graphql-response+json";
    // A document that does not validate, and one that does not parse.
    for query in ["{ nope }", "{ me {"] {
        let (status, v) = post_accepting(&app, GQL, json!({ "query": query })).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(!v.as_object().unwrap().contains_key("data"), "{query}: {v}");
        assert_eq!(code(&v), "BAD_USER_INPUT", "{query}: {v}");
        // application/json keeps today's shape: 200 and "data": null.
        let (status, v) = post_accepting(&app, "application/json", json!({ "query": query })).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert!(v.as_object().unwrap().get("data").is_some_and(Value::is_null), "{query}: {v}");
    }
    // A field error is not a request error: `data` is there (null, as `me` is non-null).
    let (status, v) = post_accepting(&app, GQL, json!({ "query": ops::ME_ID })).await;
    assert_eq!(status, 200, "{v}");
    assert!(v.as_object().unwrap().get("data").is_some_and(Value::is_null), "{v}");
    // In a batch, each request error on its own.
    let batch = json!([{ "query": "{ nope }" }, { "query": ops::TYPENAME }]);
    let (status, v) = post_accepting(&app, GQL, batch).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v[0].as_object().unwrap().contains_key("data"), "{v}");
    assert_eq!(v[1]["data"]["__typename"], "Query", "{v}");
}

#[tokio::test]
async fn committed_schema_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql is committed");
    let current = authgraph::graphql::sdl();
    assert!(
        committed == current,
        "schema.graphql differs from the code's schema: run `cargo run -- print-schema > schema.graphql`"
    );
    // print-schema prints exactly that.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgraph")).arg("print-schema").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[tokio::test]
async fn bad_configuration_stops_the_binary_with_a_clear_message() {
    let cases: &[(&str, &str, &str)] = &[
        ("ACCESS_TOKEN_TTL", "fifteen", "ACCESS_TOKEN_TTL"),
        ("TRUSTED_PROXIES", "10.0.0.0/99", "TRUSTED_PROXIES"),
        ("CORS_ALLOWED_ORIGINS", "https://app.example.com/path", "CORS_ALLOWED_ORIGINS"),
        ("JWT_SECRET", "tooshort", "JWT_SECRET"),
        ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none", "cannot open the database"),
    ];
    for (var, value, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgraph"))
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("DATABASE_TIMEOUT", "2s")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{var}={value}: {stderr}");
        if *var == "JWT_SECRET" {
            assert!(!stderr.contains(value), "the secret was echoed: {stderr}");
        }
    }
    // Production without a secret refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgraph"))
        .current_dir(dir.path())
        .env_clear()
        .env("APP_ENV", "production")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A new install signs ES256: its keys are sealed with KEY_ENCRYPTION_SECRET.
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY_ENCRYPTION_SECRET is required"));
}

#[tokio::test]
async fn readiness_and_requests_follow_the_database() {
    let app = spawn_with(|c| c.database_timeout = Duration::from_secs(1)).await;
    let c = app.client();
    let token = app.register(&c, "ready@example.com").await["accessToken"].as_str().unwrap().to_owned();

    let outage = app.database.outage().await;
    let started = Instant::now();
    let r = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v = app
        .gql(
            &c,
            None,
            "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
            json!({ "i": { "email": "during@example.com", "password": PASSWORD, "transport": "BODY" } }),
        )
        .await;
    assert_eq!(code(&v), "SERVICE_UNAVAILABLE", "{v}");
    assert!(v["errors"][0]["extensions"]["requestId"].is_string(), "{v}");
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(!msg.to_lowercase().contains("sql") && !msg.contains("locked"), "internals leaked: {msg}");
    assert!(started.elapsed() < Duration::from_secs(15), "outage answers must be bounded");
    // Liveness is not readiness.
    assert_eq!(c.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    if app.database.is_postgres() {
        // An API key cannot be checked without the database (on SQLite reads go on
        // while another process holds the write lock, so this is PostgreSQL only).
        let key = format!("sk_live_{}{}", "0".repeat(16), "a".repeat(43));
        let r = c
            .post(app.url("/graphql"))
            .header("x-api-key", key)
            .json(&json!({ "query": ops::TYPENAME }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "SERVICE_UNAVAILABLE", "{v}");
        assert!(v["errors"][0]["extensions"]["requestId"].is_string(), "{v}");
    }

    outage.restore().await;
    let mut ready = false;
    for _ in 0..50 {
        if c.get(app.url("/readyz")).send().await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness did not come back without a restart");
    let v = app.gql(&c, Some(&token), ops::ME_EMAIL, json!({})).await;
    assert_eq!(v["data"]["me"]["email"], "ready@example.com", "{v}");
    // Nothing was half-stored: the address used during the outage is free.
    app.register(&c, "during@example.com").await;
}

/// The probe has a connection of its own: with every request connection busy
/// (on SQLite there is one), it still answers, at once, instead of queueing
/// behind the work for DATABASE_TIMEOUT and then failing.
#[tokio::test]
async fn readiness_does_not_queue_behind_the_request_pool() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = spawn_with(|c| {
        c.database_max_connections = 1;
        c.database_timeout = Duration::from_secs(3);
    })
    .await;
    let c = app.client();
    app.register(&c, "busy@example.com").await;
    // A long read holds the pool's only connection.
    let txn = app.state().services.db.begin().await.unwrap();
    txn.execute_unprepared("SELECT count(*) FROM users").await.unwrap();
    let r = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "readiness waited behind the request pool");
    txn.rollback().await.unwrap();
}

#[tokio::test]
async fn graceful_stop_and_restart_keep_data_and_sessions() {
    let mut app = spawn_app().await;
    let c = app.client();
    let token = app.register(&c, "restart@example.com").await["accessToken"].as_str().unwrap().to_owned();
    app.stop().await;
    // Same database, same key: the token is still good after a restart.
    let config = app.config.clone();
    let again = authgraph::app::spawn(&config).await.unwrap();
    let v = gql_at(again.addr, Some(&token), ops::ME_EMAIL).await;
    assert_eq!(v["data"]["me"]["email"], "restart@example.com", "{v}");
    again.stop().await.unwrap();
}

#[tokio::test]
async fn variables_left_out_take_their_defaults_or_are_refused() {
    // The engine alone read `@skip`/`@include` conditions from the sent variables
    // only: a left-out `$x: Boolean = true` counted as false.
    let app = spawn_app().await;
    let c = app.client();
    let (alice, _, _) = app.register_body("alice@example.com").await;
    let include = "query($x: Boolean = true) { me { id email @include(if: $x) } }";
    let skip = "query($x: Boolean = true) { me { id email @skip(if: $x) } }";
    // Twice: once parsed, once from the kept document.
    for _ in 0..2 {
        let v = app.gql(&c, Some(&alice), include, json!({})).await;
        assert_eq!(v["data"]["me"]["email"], "alice@example.com", "{v}");
        let v = app.gql(&c, Some(&alice), skip, json!({})).await;
        assert!(v["data"]["me"]["id"].is_string() && v["data"]["me"]["email"].is_null(), "{v}");
        // A value sent still wins over the default.
        let v = app.gql(&c, Some(&alice), include, json!({ "x": false })).await;
        assert!(v["data"]["me"]["id"].is_string() && v["data"]["me"]["email"].is_null(), "{v}");
    }
    // A non-null variable without a default must be sent.
    let required = "query($x: Boolean!) { me { id email @include(if: $x) } }";
    for _ in 0..2 {
        let v = app.gql(&c, Some(&alice), required, json!({})).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
        assert!(v["data"].is_null(), "{v}");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("$x"), "{v}");
    }
    let v = app.gql(&c, Some(&alice), required, json!({ "x": true })).await;
    assert_eq!(v["data"]["me"]["email"], "alice@example.com", "{v}");
    // With several operations, the chosen one's definitions count.
    let two = "query A($x: Boolean = true) { me { email @include(if: $x) } } \
               query B($y: Boolean!) { me { id @include(if: $y) } }";
    let v = app.gql_named(&c, Some(&alice), two, "A").await;
    assert_eq!(v, json!({ "data": { "me": { "email": "alice@example.com" } } }));
    let v = app.gql_named(&c, Some(&alice), two, "B").await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("$y"), "{v}");
}

#[tokio::test]
async fn repeated_documents_answer_for_their_own_operation_variables_and_caller() {
    // Documents without variables are kept parsed and validated after their first
    // use; what is kept must never stand in for what a later request asks.
    let app = spawn_app().await;
    let c = app.client();
    let (alice, _, _) = app.register_body("alice@example.com").await;
    let (bob, _, _) = app.register_body("bob@example.com").await;

    let two = "query A { me { email } } query B { me { name } }";
    let send_named = |name: &'static str| app.gql_named(&c, Some(&alice), two, name);
    for _ in 0..2 {
        assert_eq!(send_named("A").await, json!({ "data": { "me": { "email": "alice@example.com" } } }));
    }
    assert_eq!(send_named("B").await, json!({ "data": { "me": { "name": "alice" } } }));
    assert_eq!(send_named("A").await, json!({ "data": { "me": { "email": "alice@example.com" } } }));
    // Without a name the document is ambiguous, kept or not.
    let v = app.gql(&c, Some(&alice), two, json!({})).await;
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");

    // The same text for another caller, or for nobody, is executed for them.
    let me = ops::ME_EMAIL;
    assert_eq!(app.gql(&c, Some(&alice), me, json!({})).await["data"]["me"]["email"], "alice@example.com");
    assert_eq!(app.gql(&c, Some(&bob), me, json!({})).await["data"]["me"]["email"], "bob@example.com");
    let v = app.gql(&c, None, me, json!({})).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");

    // Kept without variables, then sent with them: the variables count.
    let q = "query($x: Boolean = false) { me { id email @include(if: $x) } }";
    for _ in 0..2 {
        let v = app.gql(&c, Some(&alice), q, json!({})).await;
        assert!(v["data"]["me"]["email"].is_null(), "{v}");
    }
    let v = app.gql(&c, Some(&alice), q, json!({ "x": true })).await;
    assert_eq!(v["data"]["me"]["email"], "alice@example.com", "{v}");
    let v = app.gql(&c, Some(&alice), q, json!({ "x": "not a boolean" })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");

    // Kept (parsed only) from a request with variables: each later request is
    // validated and run with its own values.
    let q = "query($x: Boolean!) { me { id email @include(if: $x) } }";
    let v = app.gql(&c, Some(&alice), q, json!({ "x": false })).await;
    assert!(v["data"]["me"]["id"].is_string() && v["data"]["me"]["email"].is_null(), "{v}");
    let v = app.gql(&c, Some(&alice), q, json!({ "x": "not a boolean" })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    for _ in 0..2 {
        let v = app.gql(&c, Some(&alice), q, json!({ "x": true })).await;
        assert_eq!(v["data"]["me"]["email"], "alice@example.com", "{v}");
        let v = app.gql(&c, Some(&alice), q, json!({ "x": 1 })).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    }
    let v = app.gql(&c, Some(&alice), q, json!({ "x": false })).await;
    assert!(v["data"]["me"]["email"].is_null(), "{v}");

    // One login document, many credentials: each request is checked for its own.
    let login = "mutation($i: LoginInput!) { login(input: $i) { user { email } } }";
    let input =
        |email: &str, password: &str| json!({ "i": { "email": email, "password": password, "transport": "BODY" } });
    for email in ["alice@example.com", "bob@example.com", "alice@example.com"] {
        let v = app.gql(&c, None, login, input(email, PASSWORD)).await;
        assert_eq!(v["data"]["login"]["user"]["email"], email, "{v}");
    }
    let v = app.gql(&c, None, login, input("bob@example.com", "not bob's password")).await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
    let v = app.gql(&c, None, login, json!({ "i": { "email": "bob@example.com" } })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert!(v["data"].is_null(), "{v}");
}

/// SQLite is one instance's: a second `serve` of the same file, in this
/// process or another, refuses to start and names the file; once the first
/// stops, the file can be served again. PostgreSQL runs several instances.
#[tokio::test]
async fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let mut app = spawn_app().await;
    let TestDatabase::Sqlite { dir, .. } = &app.database else {
        return; // Several instances on PostgreSQL are the point.
    };
    let file = dir.path().join("test.db").display().to_string();
    let mut second = app.config.clone();
    second.listen_addr = "127.0.0.1:0".parse().unwrap();
    let err = authgraph::app::spawn(&second).await.err().expect("a second server started on the same file");
    let message = err.to_string();
    assert!(message.contains(&file) && message.contains("one instance"), "{message}");

    // Another process gets the same answer, and exits with failure.
    let mut cmd = authgraph_command(dir.path());
    cmd.args(["serve", "--listen-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", app.database.url())
        .env("JWT_SECRET", JWT_SECRET)
        .env("COOKIE_SECURE", "false");
    let out = output_within(&mut cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second process served the same file: {stderr}");
    assert!(stderr.contains("already served by another authgraph process"), "{stderr}");

    app.stop().await;
    let again = authgraph::app::spawn(&app.config).await.expect("the file is free once the first server stopped");
    again.stop().await.unwrap();
}

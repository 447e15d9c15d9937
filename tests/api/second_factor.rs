//! A second factor through the API: TOTP enrolment and login with codes
//! computed here from the secret (replay, skew, a challenge's death),
//! recovery codes, disabling, step-up, an admin's reset, and the passkey
//! endpoints' refusals (the passkey ceremonies themselves run in Chromium,
//! in examples/web's end-to-end test).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const ENROLL: &str = "mutation { enrollTotp { secret otpauthUri qrCodeSvg } }";
const CONFIRM: &str = "mutation($c: String!) { confirmTotp(code: $c) }";
const DISABLE: &str = "mutation($c: String!) { disableTotp(code: $c) }";
const VERIFY: &str = "mutation($ch: String!, $c: String!) { verifySecondFactor(challenge: $ch, code: $c, transport: BODY) \
    { accessToken refreshToken user { id email } } }";
const STATUS: &str = "{ me { secondFactor { totp recoveryCodesLeft passkeys required } } }";
const REAUTH: &str = "mutation($p: String!, $c: String) { reauthenticate(password: $p, code: $c) }";
const EVENTS: &str = "{ me { securityEvents(first: 50) { edges { node { type detail } } } } }";

/// The code an authenticator app shows for `secret` (base32) at `at`.
fn code_at(secret: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    totp.generate(at.timestamp() as u64).to_string()
}

fn now(app: &TestApp) -> chrono::DateTime<chrono::Utc> {
    app.clock.clock().now()
}

/// Moves the server's clock to the start of the next 30 s step (plus 1 s), so
/// that a fresh code is of a later step than any used before.
fn next_step(app: &TestApp) {
    let t = now(app).timestamp();
    app.clock.advance(Duration::from_secs((30 - t.rem_euclid(30) + 1) as u64));
}

/// Enrols and confirms an authenticator for `user`; returns (secret, recovery codes).
async fn enable_totp(app: &TestApp, user: &TestUser) -> (String, Vec<String>) {
    let e = ok(app, &user.access_token, ENROLL, json!({})).await;
    let secret = e["enrollTotp"]["secret"].as_str().unwrap().to_owned();
    let codes = ok(app, &user.access_token, CONFIRM, json!({ "c": code_at(&secret, now(app)) })).await;
    let codes = codes["confirmTotp"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    (secret, codes)
}

/// Logs in with the password; returns the challenge of SECOND_FACTOR_REQUIRED.
async fn challenge(app: &TestApp, email: &str) -> String {
    let v = app.login_body(email, PASSWORD).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "SECOND_FACTOR_REQUIRED", "{v}");
    assert!(v["data"].is_null() || v["data"]["login"].is_null(), "no tokens with the challenge: {v}");
    v["errors"][0]["extensions"]["challenge"].as_str().expect("extensions.challenge").to_owned()
}

async fn verify(app: &TestApp, challenge: &str, code: &str) -> Value {
    app.gql(&app.client(), None, VERIFY, json!({ "ch": challenge, "c": code })).await
}

fn event_types(v: &Value) -> Vec<String> {
    v["me"]["securityEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn totp_enrolment_gates_login_and_codes_work_once() {
    let app = spawn_app().await;
    let user = app.user("totp@example.com").await;
    app.confirm_address(&user).await;

    let e = ok(&app, &user.access_token, ENROLL, json!({})).await;
    let secret = e["enrollTotp"]["secret"].as_str().unwrap().to_owned();
    let uri = e["enrollTotp"]["otpauthUri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/authgraph:totp%40example.com?"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")) && uri.contains("issuer=authgraph"), "{uri}");
    assert_eq!(totp_rs::Secret::try_from_base32(&secret).unwrap().as_bytes().len(), 20);
    let qr = e["enrollTotp"]["qrCodeSvg"].as_str().unwrap();
    let svg = qr.strip_prefix("data:image/svg+xml;base64,").expect("an SVG data URL");
    use base64::Engine;
    let svg = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(svg).unwrap()).unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");

    // Until it is confirmed, nothing changes for logins.
    assert!(app.login_body("totp@example.com", PASSWORD).await["errors"].is_null());
    let wrong = user.gql(&app, CONFIRM, json!({ "c": "000000" })).await;
    let wrong = if code_at(&secret, now(&app)) == "000000" {
        user.gql(&app, CONFIRM, json!({ "c": "111111" })).await
    } else {
        wrong
    };
    assert_eq!(reason(&wrong), "INVALID_SECOND_FACTOR", "{wrong}");

    let confirm_code = code_at(&secret, now(&app));
    let codes = ok(&app, &user.access_token, CONFIRM, json!({ "c": confirm_code })).await;
    let codes = codes["confirmTotp"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    let again = user.gql(&app, CONFIRM, json!({ "c": confirm_code })).await;
    assert_eq!(reason(&again), "TOTP_ALREADY_ENABLED", "{again}");
    let again = user.gql(&app, ENROLL, json!({})).await;
    assert_eq!(reason(&again), "TOTP_ALREADY_ENABLED", "{again}");
    let status = ok(&app, &user.access_token, STATUS, json!({})).await;
    assert_eq!(
        status["me"]["secondFactor"],
        json!({ "totp": true, "recoveryCodesLeft": 10, "passkeys": 0, "required": true })
    );

    // A login now issues a challenge, no tokens, no cookie.
    let resp = app
        .post(
            &app.client(),
            None,
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "totp@example.com", "password": PASSWORD } }),
        )
        .await;
    assert!(set_cookies(&resp).is_empty(), "no cookie before the second factor");
    let ch = challenge(&app, "totp@example.com").await;

    // The code that confirmed the enrolment is of a step used already.
    assert_eq!(reason(&verify(&app, &ch, &confirm_code).await), "INVALID_SECOND_FACTOR");
    next_step(&app);
    let code = code_at(&secret, now(&app));
    let v = verify(&app, &ch, &code).await;
    assert!(v["errors"].is_null(), "{v}");
    let session = v["data"]["verifySecondFactor"]["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(v["data"]["verifySecondFactor"]["user"]["email"], "totp@example.com");
    assert!(ok(&app, &session, "{ me { id } }", json!({})).await["me"]["id"].is_string());

    // The challenge is spent; the code is spent, on a new challenge too.
    assert_eq!(reason(&verify(&app, &ch, &code).await), "INVALID_SECOND_FACTOR");
    let ch2 = challenge(&app, "totp@example.com").await;
    assert_eq!(reason(&verify(&app, &ch2, &code).await), "INVALID_SECOND_FACTOR");
    // A forged challenge, and one that is not even shaped like one.
    assert_eq!(reason(&verify(&app, &"A".repeat(43), &code).await), "INVALID_SECOND_FACTOR");
    assert_eq!(reason(&verify(&app, "x", &code).await), "INVALID_SECOND_FACTOR");

    // A wrong password still says only INVALID_CREDENTIALS, and gives no challenge.
    let v = app.login_body("totp@example.com", "not the password").await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS");
    assert!(v["errors"][0]["extensions"]["challenge"].is_null());

    let events = ok(&app, &session, EVENTS, json!({})).await;
    let types = event_types(&events);
    assert!(types.contains(&"SECOND_FACTOR_ENABLED".to_owned()), "{types:?}");
    let details: Vec<&str> = events["me"]["securityEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["node"]["detail"].as_str())
        .collect();
    // The password held: a challenge was asked for, not a failed login.
    assert!(types.contains(&"SECOND_FACTOR_REQUIRED".to_owned()), "{types:?}");
    assert!(!details.contains(&"SECOND_FACTOR_REQUIRED"), "recorded as a failed login: {details:?}");
    assert!(details.contains(&"INVALID_SECOND_FACTOR"), "{details:?}");
    assert!(details.contains(&"TOTP"), "the login records its factor: {details:?}");
    app.next_mail_file("totp@example.com", "Two-step sign-in was turned on").await;
}

#[tokio::test]
async fn codes_one_step_either_side_pass_and_two_steps_do_not() {
    let app = spawn_app().await;
    let user = app.user("skew@example.com").await;
    let (secret, _) = enable_totp(&app, &user).await;
    for (offset, accepted) in [(-30i64, true), (30, true), (-60, false), (60, false)] {
        // Each try on a fresh step, later than any used: only the skew decides.
        app.clock.advance(Duration::from_secs(120));
        next_step(&app);
        let ch = challenge(&app, "skew@example.com").await;
        let at = now(&app) + chrono::Duration::seconds(offset);
        let v = verify(&app, &ch, &code_at(&secret, at)).await;
        assert_eq!(v["errors"].is_null(), accepted, "offset {offset}s: {v}");
    }
}

#[tokio::test]
async fn a_challenge_dies_after_five_wrong_codes_and_when_the_password_changes() {
    let app = spawn_app().await;
    let user = app.user("guess@example.com").await;
    let (secret, _) = enable_totp(&app, &user).await;
    next_step(&app);
    let ch = challenge(&app, "guess@example.com").await;
    let right = code_at(&secret, now(&app));
    let wrong = if right == "123456" { "654321" } else { "123456" };
    for _ in 0..5 {
        assert_eq!(reason(&verify(&app, &ch, wrong).await), "INVALID_SECOND_FACTOR");
    }
    // Dead: the right code no longer opens it.
    assert_eq!(reason(&verify(&app, &ch, &right).await), "INVALID_SECOND_FACTOR");
    // A new login gets a new challenge that works.
    let ch = challenge(&app, "guess@example.com").await;
    assert!(verify(&app, &ch, &right).await["errors"].is_null());

    // A challenge expires after five minutes.
    next_step(&app);
    let ch = challenge(&app, "guess@example.com").await;
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(reason(&verify(&app, &ch, &code_at(&secret, now(&app))).await), "INVALID_SECOND_FACTOR");

    // A password change ends the challenges the old password let out.
    next_step(&app);
    let ch = challenge(&app, "guess@example.com").await;
    let me = challenge_session(&app, "guess@example.com", &secret).await;
    ok(
        &app,
        &me,
        "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }",
        json!({ "c": PASSWORD, "n": "a brand new password" }),
    )
    .await;
    next_step(&app);
    assert_eq!(reason(&verify(&app, &ch, &code_at(&secret, now(&app))).await), "INVALID_SECOND_FACTOR");
}

/// Logs `email` in with the password and a fresh code; returns the access token.
async fn challenge_session(app: &TestApp, email: &str, secret: &str) -> String {
    next_step(app);
    let ch = challenge(app, email).await;
    let v = verify(app, &ch, &code_at(secret, now(app))).await;
    assert!(v["errors"].is_null(), "{v}");
    v["data"]["verifySecondFactor"]["accessToken"].as_str().unwrap().to_owned()
}

/// A challenge takes five tries, however many arrive at once: each is taken,
/// and committed, before its code is looked at.
#[tokio::test]
async fn concurrent_guesses_share_five_tries() {
    use sea_orm::EntityTrait;
    let app = spawn_app().await;
    let user = app.user("burst@example.com").await;
    let (secret, _) = enable_totp(&app, &user).await;
    next_step(&app);
    let ch = challenge(&app, "burst@example.com").await;
    let right = code_at(&secret, now(&app));
    let wrong: Vec<String> =
        (0..12).map(|i| format!("{:06}", (right.parse::<u32>().unwrap() + 1 + i) % 1_000_000)).collect();
    let results = futures_util::future::join_all(wrong.iter().map(|w| verify(&app, &ch, w))).await;
    assert!(results.iter().all(|v| reason(v) == "INVALID_SECOND_FACTOR"), "{results:?}");
    let rows = entity::second_factor_challenge::Entity::find().all(&app.state().services.db).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].failures, 5, "twelve guesses at once got {} tries", rows[0].failures);
    assert!(rows[0].used_at.is_some(), "the challenge is dead");
    assert_eq!(reason(&verify(&app, &ch, &right).await), "INVALID_SECOND_FACTOR");
}

#[tokio::test]
async fn two_requests_with_one_challenge_and_code_start_one_session() {
    let app = spawn_app().await;
    let user = app.user("race2fa@example.com").await;
    let (secret, codes) = enable_totp(&app, &user).await;
    for code in [None, Some(codes[0].clone())] {
        next_step(&app);
        let ch = challenge(&app, "race2fa@example.com").await;
        let code = code.unwrap_or_else(|| code_at(&secret, now(&app)));
        let tries = (0..4).map(|_| verify(&app, &ch, &code));
        let results = futures_util::future::join_all(tries).await;
        let won = results.iter().filter(|v| v["errors"].is_null()).count();
        assert_eq!(won, 1, "{results:?}");
        for v in results.iter().filter(|v| !v["errors"].is_null()) {
            assert_eq!(reason(v), "INVALID_SECOND_FACTOR", "{v}");
        }
    }
}

#[tokio::test]
async fn recovery_codes_stand_in_once_and_regeneration_voids_the_old_set() {
    let app = spawn_app().await;
    let user = app.user("lostphone@example.com").await;
    app.confirm_address(&user).await;
    let (secret, codes) = enable_totp(&app, &user).await;
    assert_eq!(codes.len(), 10);
    assert!(codes.iter().all(|c| c.len() == 19 && c.matches('-').count() == 3), "{codes:?}");

    // Typed loosely: lower case, spaces instead of dashes.
    let typed = codes[3].to_lowercase().replace('-', " ");
    let ch = challenge(&app, "lostphone@example.com").await;
    let v = verify(&app, &ch, &typed).await;
    assert!(v["errors"].is_null(), "{v}");
    let session = v["data"]["verifySecondFactor"]["accessToken"].as_str().unwrap().to_owned();
    let ch = challenge(&app, "lostphone@example.com").await;
    assert_eq!(reason(&verify(&app, &ch, &codes[3]).await), "INVALID_SECOND_FACTOR", "used once");
    let status = ok(&app, &session, STATUS, json!({})).await;
    assert_eq!(status["me"]["secondFactor"]["recoveryCodesLeft"], 9);
    app.next_mail_file("lostphone@example.com", "A recovery code was used").await;
    let types = event_types(&ok(&app, &session, EVENTS, json!({})).await);
    assert!(types.contains(&"RECOVERY_CODE_USED".to_owned()), "{types:?}");

    // Regenerating needs a recent sign-in, which this session has.
    let regenerate = "mutation($c: String!) { regenerateRecoveryCodes(code: $c) }";
    let v = app.gql(&app.client(), Some(&session), regenerate, json!({ "c": codes[3] })).await;
    assert_eq!(reason(&v), "INVALID_SECOND_FACTOR", "new codes need a live code: {v}");
    let fresh = ok(&app, &session, regenerate, json!({ "c": codes[4] })).await;
    let fresh: Vec<String> =
        fresh["regenerateRecoveryCodes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    assert_eq!(fresh.len(), 10);
    app.next_mail_file("lostphone@example.com", "New recovery codes were made").await;
    let ch = challenge(&app, "lostphone@example.com").await;
    assert_eq!(reason(&verify(&app, &ch, &codes[5]).await), "INVALID_SECOND_FACTOR", "the old set is void");
    assert!(verify(&app, &ch, &fresh[0]).await["errors"].is_null());

    // Disabling takes a code (a recovery code will do) and removes everything.
    let wrong = app.gql(&app.client(), Some(&session), DISABLE, json!({ "c": codes[5] })).await;
    assert_eq!(reason(&wrong), "INVALID_SECOND_FACTOR", "{wrong}");
    ok(&app, &session, DISABLE, json!({ "c": fresh[1] })).await;
    let status = ok(&app, &session, STATUS, json!({})).await;
    assert_eq!(
        status["me"]["secondFactor"],
        json!({ "totp": false, "recoveryCodesLeft": 0, "passkeys": 0, "required": false })
    );
    assert!(app.login_body("lostphone@example.com", PASSWORD).await["errors"].is_null(), "a password login again");
    let again = app.gql(&app.client(), Some(&session), DISABLE, json!({ "c": code_at(&secret, now(&app)) })).await;
    assert_eq!(reason(&again), "TOTP_NOT_ENROLLED", "{again}");
    // Mail: each notice once, in no promised order (several are sent at once).
    app.next_mail_file("lostphone@example.com", "Two-step sign-in was turned off").await;
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(
        app.mail_subjects_to("lostphone@example.com"),
        [
            "A recovery code was used",
            "A recovery code was used",
            "Confirm your email address",
            "New recovery codes were made",
            "Two-step sign-in was turned off",
            "Two-step sign-in was turned on",
        ]
    );
}

#[tokio::test]
async fn sensitive_operations_need_a_recent_sign_in() {
    let app = spawn_with(|c| c.second_factor = authgraph::config::SecondFactorConfig::local()).await;
    let user = app.user("stepup@example.com").await;
    let change_password = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    // A session eleven minutes old, refreshed or not, is not a recent sign-in.
    app.clock.advance(Duration::from_secs(11 * 60));
    let refreshed = app.gql(&app.client(), None, crate::ops::REFRESH_BODY, json!({ "t": user.refresh_token })).await;
    let token = refreshed["data"]["refreshToken"]["accessToken"].as_str().unwrap().to_owned();
    for (query, variables) in [
        (ENROLL, json!({})),
        (change_password, json!({ "c": PASSWORD, "n": "another long password" })),
        ("mutation { updateProfile(input: { email: \"moved@example.com\" }) { id } }", json!({})),
        ("mutation { startPasskeyRegistration { id } }", json!({})),
    ] {
        let v = app.gql(&app.client(), Some(&token), query, variables).await;
        assert_eq!(code(&v), "FORBIDDEN", "{query}: {v}");
        assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "{query}: {v}");
    }
    // A name change is not sensitive.
    ok(&app, &token, "mutation { updateProfile(input: { name: \"Still Me\" }) { name } }", json!({})).await;

    // A wrong password does not re-authenticate.
    let v = app.gql(&app.client(), Some(&token), REAUTH, json!({ "p": "wrong password" })).await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
    ok(&app, &token, REAUTH, json!({ "p": PASSWORD })).await;
    let (secret, _) = enable_totp(&app, &TestUser { access_token: token.clone(), ..user.clone() }).await;

    // With an authenticator, the password alone no longer re-authenticates.
    app.clock.advance(Duration::from_secs(11 * 60));
    let v = app.gql(&app.client(), Some(&token), ENROLL, json!({})).await;
    assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "{v}");
    let v = app.gql(&app.client(), Some(&token), REAUTH, json!({ "p": PASSWORD })).await;
    assert_eq!(reason(&v), "INVALID_SECOND_FACTOR", "{v}");
    next_step(&app);
    ok(&app, &token, REAUTH, json!({ "p": PASSWORD, "c": code_at(&secret, now(&app)) })).await;
    ok(&app, &token, change_password, json!({ "c": PASSWORD, "n": "another long password" })).await;
    let types = event_types(&ok(&app, &token, EVENTS, json!({})).await);
    assert!(types.contains(&"REAUTHENTICATED".to_owned()) && types.contains(&"REAUTHENTICATION_FAILED".to_owned()));
}

/// SQLite's default pool has one connection: every read a transaction makes
/// must go through it, or the request waits for itself until the pool times out.
#[tokio::test]
async fn second_factor_writes_work_on_a_single_connection() {
    let app = spawn_with(|c| c.database_max_connections = 1).await;
    let user = app.user("oneconn@example.com").await;
    let (secret, codes) = enable_totp(&app, &user).await;
    app.clock.advance(Duration::from_secs(11 * 60));
    ok(&app, &user.access_token, REAUTH, json!({ "p": PASSWORD, "c": codes[0] })).await;
    let session = challenge_session(&app, "oneconn@example.com", &secret).await;
    let ch = challenge(&app, "oneconn@example.com").await;
    assert!(verify(&app, &ch, &codes[1]).await["errors"].is_null());
    ok(&app, &session, DISABLE, json!({ "c": codes[2] })).await;
}

#[tokio::test]
async fn an_admin_sees_and_resets_a_users_factors_with_a_recent_sign_in() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, "root@example.com").await;
    let user = app.user("locked@example.com").await;
    app.confirm_address(&user).await;
    let (_, _) = enable_totp(&app, &user).await;

    let seen = ok(
        &app,
        &admin,
        "query($id: ID!) { user(id: $id) { secondFactor { totp required recoveryCodesLeft } } }",
        json!({ "id": user.id }),
    )
    .await;
    assert_eq!(seen["user"]["secondFactor"], json!({ "totp": true, "required": true, "recoveryCodesLeft": 10 }));
    // A listing page loads every user's factors at once.
    let page =
        ok(&app, &admin, "{ users(first: 10) { edges { node { email secondFactor { totp } } } } }", json!({})).await;
    let flags: Vec<(String, bool)> = page["users"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["node"]["email"].as_str().unwrap().to_owned(), e["node"]["secondFactor"]["totp"].as_bool().unwrap())
        })
        .collect();
    assert!(
        flags.contains(&("locked@example.com".into(), true)) && flags.contains(&("root@example.com".into(), false))
    );
    let other = app.user("nosy@example.com").await;
    let v =
        other.gql(&app, "query($id: ID!) { user(id: $id) { secondFactor { totp } } }", json!({ "id": user.id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    let reset = "mutation($id: ID!) { resetSecondFactors(userId: $id) { totp passkeys } }";
    let v = other.gql(&app, reset, json!({ "id": user.id })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");

    app.clock.advance(Duration::from_secs(11 * 60));
    let v = app.gql(&app.client(), Some(&admin), reset, json!({ "id": user.id })).await;
    assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "{v}");
    let v = app
        .gql(
            &app.client(),
            Some(&admin),
            "mutation { createApiKey(name: \"ci\", scopes: [USERS_READ]) { secret } }",
            json!({}),
        )
        .await;
    assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "an admin's API key needs a recent sign-in too: {v}");
    let v = app
        .gql(
            &app.client(),
            Some(&admin),
            "mutation($id: ID!) { setUserRole(id: $id, role: ADMIN) { role } }",
            json!({ "id": user.id }),
        )
        .await;
    assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "and so does a new admin: {v}");
    ok(&app, &admin, REAUTH, json!({ "p": PASSWORD })).await;

    // A key with USERS_WRITE resets a user's factors, never an admin's.
    let key =
        ok(&app, &admin, "mutation { createApiKey(name: \"support\", scopes: [USERS_WRITE]) { secret } }", json!({}))
            .await;
    let key = key["createApiKey"]["secret"].as_str().unwrap().to_owned();
    let (admin_user, _) = enable_totp(
        &app,
        &TestUser {
            id: String::new(),
            email: "root@example.com".into(),
            access_token: admin.clone(),
            refresh_token: String::new(),
        },
    )
    .await;
    assert!(!admin_user.is_empty());
    let admin_id = ok(&app, &admin, "{ me { id } }", json!({})).await["me"]["id"].as_str().unwrap().to_owned();
    let with_key = |id: String| {
        app.client()
            .post(app.url("/graphql"))
            .header("x-api-key", key.clone())
            .json(&json!({ "query": reset, "variables": { "id": id } }))
            .send()
    };
    let v: Value = with_key(admin_id).await.unwrap().json().await.unwrap();
    assert_eq!(code(&v), "FORBIDDEN", "a key on an admin: {v}");
    let done = ok(&app, &admin, reset, json!({ "id": user.id })).await;
    assert_eq!(done["resetSecondFactors"], json!({ "totp": true, "passkeys": 0 }));
    // Mail: enabled, then reset (by someone else: its own text).
    let notice = app.next_mail_file("locked@example.com", "Your second factors were removed").await;
    assert!(notice.text().contains("An administrator removed"), "{}", notice.text());
    // The lost device's session ended with it.
    let v = user.gql(&app, "{ me { id } }", json!({})).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    assert!(app.login_body("locked@example.com", PASSWORD).await["errors"].is_null());
    let audit = ok(
        &app,
        &admin,
        "{ auditEvents(filter: { type: SECOND_FACTOR_RESET }) { edges { node { type userId actorType } } } }",
        json!({}),
    )
    .await;
    assert_eq!(audit["auditEvents"]["edges"][0]["node"]["userId"], user.id.as_str());
    assert_eq!(audit["auditEvents"]["edges"][0]["node"]["actorType"], "ADMIN");
}

#[tokio::test]
async fn the_key_is_sealed_at_rest_and_bound_to_its_account() {
    use sea_orm::{ActiveModelTrait, EntityTrait, Set};
    let app = spawn_app().await;
    let user = app.user("sealed@example.com").await;
    let other = app.user("thief@example.com").await;
    let (secret, _) = enable_totp(&app, &user).await;
    let (_, _) = enable_totp(&app, &other).await;
    let key = totp_rs::Secret::try_from_base32(&secret).unwrap().as_bytes().to_vec();
    let db = &app.state().services.db;
    let id: uuid::Uuid = user.id.parse().unwrap();
    let row = entity::totp_factor::Entity::find_by_id(id).one(db).await.unwrap().unwrap();
    assert!(!row.secret.windows(key.len()).any(|w| w == key.as_slice()), "the key is not stored in the clear");

    // The sealed key copied onto another account does not give its codes.
    let other_id: uuid::Uuid = other.id.parse().unwrap();
    let mut theirs: entity::totp_factor::ActiveModel =
        entity::totp_factor::Entity::find_by_id(other_id).one(db).await.unwrap().unwrap().into();
    theirs.secret = Set(row.secret.clone());
    theirs.update(db).await.unwrap();
    next_step(&app);
    let ch = challenge(&app, "thief@example.com").await;
    let v = verify(&app, &ch, &code_at(&secret, now(&app))).await;
    assert!(!v["errors"].is_null(), "{v}");
    assert!(v["data"].is_null() || v["data"]["verifySecondFactor"].is_null(), "{v}");
}

#[tokio::test]
async fn one_code_check_per_request() {
    let app = spawn_app().await;
    let user = app.user("alias2fa@example.com").await;
    let (secret, _) = enable_totp(&app, &user).await;
    next_step(&app);
    let ch = challenge(&app, "alias2fa@example.com").await;
    let v = app
        .gql(
            &app.client(),
            None,
            "mutation($ch: String!) { a: verifySecondFactor(challenge: $ch, code: \"000000\") { accessToken } \
             b: verifySecondFactor(challenge: $ch, code: \"111111\") { accessToken } }",
            json!({ "ch": ch }),
        )
        .await;
    assert_eq!(reason(&v), "TOO_MANY_CREDENTIAL_FIELDS", "{v}");
    // The refused request cost the challenge nothing.
    assert!(verify(&app, &ch, &code_at(&secret, now(&app))).await["errors"].is_null());
}

#[tokio::test]
async fn passkey_endpoints_refuse_what_does_not_verify() {
    let app = spawn_with(|c| {
        c.second_factor = authgraph::config::SecondFactorConfig::local();
    })
    .await;
    let user = app.user("keys@example.com").await;
    let start = ok(&app, &user.access_token, "mutation { startPasskeyRegistration { id options } }", json!({})).await;
    let options = &start["startPasskeyRegistration"]["options"]["publicKey"];
    assert_eq!(options["rp"]["id"], "localhost", "{options}");
    assert_eq!(options["authenticatorSelection"]["residentKey"], "required", "{options}");
    assert_eq!(options["authenticatorSelection"]["userVerification"], "required", "{options}");
    assert!(options["challenge"].as_str().unwrap().len() >= 43, "{options}");
    let ceremony = start["startPasskeyRegistration"]["id"].as_str().unwrap();
    let finish = "mutation($id: ID!, $c: JSON!) { finishPasskeyRegistration(ceremony: $id, credential: $c) { id } }";
    let v = user.gql(&app, finish, json!({ "id": ceremony, "c": { "nonsense": true } })).await;
    assert_eq!(reason(&v), "PASSKEY_REFUSED", "{v}");
    let forged = json!({ "id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": { "attestationObject": "AAAA", "clientDataJSON": "AAAA" } });
    let v = user.gql(&app, finish, json!({ "id": ceremony, "c": forged })).await;
    assert_eq!(reason(&v), "PASSKEY_REFUSED", "{v}");
    // The forged answer spent the ceremony.
    let v = user.gql(&app, finish, json!({ "id": ceremony, "c": forged })).await;
    assert_eq!(reason(&v), "PASSKEY_REFUSED", "{v}");
    // Another account cannot finish this account's ceremony.
    let start = ok(&app, &user.access_token, "mutation { startPasskeyRegistration { id } }", json!({})).await;
    let other = app.user("other@example.com").await;
    let v = other.gql(&app, finish, json!({ "id": start["startPasskeyRegistration"]["id"], "c": forged })).await;
    assert_eq!(reason(&v), "PASSKEY_REFUSED", "{v}");

    // A discoverable sign-in's options allow any credential; an answer must verify.
    let login = app.gql(&app.client(), None, "mutation { startPasskeyLogin { id options } }", json!({})).await;
    let options = &login["data"]["startPasskeyLogin"]["options"];
    assert!(options["mediation"].is_null(), "{options}");
    assert_eq!(options["publicKey"]["rpId"], "localhost", "{options}");
    let assertion = json!({ "id": "AAAA", "rawId": "AAAA", "type": "public-key", "response":
        { "authenticatorData": "AAAA", "clientDataJSON": "AAAA", "signature": "AAAA", "userHandle": "AAAA" } });
    let v = app
        .gql(
            &app.client(),
            None,
            "mutation($id: ID!, $c: JSON!) { finishPasskeyLogin(ceremony: $id, credential: $c) { accessToken } }",
            json!({ "id": login["data"]["startPasskeyLogin"]["id"], "c": assertion }),
        )
        .await;
    assert_eq!(reason(&v), "PASSKEY_REFUSED", "{v}");
    // Without passkeys, a login's challenge cannot start a passkey ceremony.
    let v = app.gql(&app.client(), None, "mutation { startPasskeyLogin(challenge: \"nope\") { id } }", json!({})).await;
    assert_eq!(reason(&v), "INVALID_SECOND_FACTOR", "{v}");
}

#[tokio::test]
async fn passkeys_are_off_when_the_origin_is_an_ip_address() {
    // The tests' default APP_URL is http://127.0.0.1:8000: no relying party.
    let app = spawn_app().await;
    let user = app.user("noip@example.com").await;
    for query in ["mutation { startPasskeyRegistration { id } }", "mutation { startPasskeyLogin { id } }"] {
        let v = app.gql(&app.client(), Some(&user.access_token), query, json!({})).await;
        assert_eq!(code(&v), "FORBIDDEN", "{v}");
        assert_eq!(reason(&v), "PASSKEYS_UNAVAILABLE", "{v}");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("WEBAUTHN_RP_ID"), "{v}");
    }
}

/// A passkey (a row as a registration leaves it; its ceremonies run in
/// Chromium) makes the password alone insufficient: for a login, and for a
/// re-authentication. Removing it takes a recent sign-in and is mailed about.
#[tokio::test]
async fn a_passkey_is_a_second_factor_for_logins_and_reauthentication() {
    use sea_orm::EntityTrait;
    let app = spawn_with(|c| c.second_factor = authgraph::config::SecondFactorConfig::local()).await;
    let user = app.user("passkeyonly@example.com").await;
    app.confirm_address(&user).await;
    let other = app.user("someoneelse@example.com").await;
    // `user`'s first session grows old; a second one is fresh.
    app.clock.advance(Duration::from_secs(11 * 60));
    let fresh = user.login(&app).await;
    let id = uuid::Uuid::now_v7();
    entity::passkey::Entity::insert(entity::passkey::ActiveModel {
        id: sea_orm::Set(id),
        user_id: sea_orm::Set(user.id.parse().unwrap()),
        credential_id: sea_orm::Set("c2VlZGVk".into()),
        name: sea_orm::Set("Laptop".into()),
        credential: sea_orm::Set("{}".into()),
        created_at: sea_orm::Set(now(&app)),
        last_used_at: sea_orm::Set(None),
    })
    .exec_without_returning(&app.state().services.db)
    .await
    .unwrap();

    let ch = challenge(&app, "passkeyonly@example.com").await;
    assert_eq!(reason(&verify(&app, &ch, "123456").await), "INVALID_SECOND_FACTOR", "no TOTP to answer with");
    let status = ok(&app, &fresh.access_token, STATUS, json!({})).await;
    assert_eq!(
        status["me"]["secondFactor"],
        json!({ "totp": false, "recoveryCodesLeft": 0, "passkeys": 1, "required": true })
    );
    let listed = ok(&app, &fresh.access_token, "{ me { passkeys { id name } } }", json!({})).await;
    assert_eq!(listed["me"]["passkeys"], json!([{ "id": id.to_string(), "name": "Laptop" }]));

    let v = user.gql(&app, REAUTH, json!({ "p": PASSWORD })).await;
    assert_eq!(reason(&v), "INVALID_SECOND_FACTOR", "the password alone does not re-authenticate: {v}");

    let remove = "mutation($id: ID!) { removePasskey(id: $id) }";
    let v = other.gql(&app, remove, json!({ "id": id.to_string() })).await;
    assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "{v}");
    let v = user.gql(&app, remove, json!({ "id": id.to_string() })).await;
    assert_eq!(reason(&v), "REAUTHENTICATION_REQUIRED", "{v}");
    let another = app.user("fresh.other@example.com").await;
    let v = another.gql(&app, remove, json!({ "id": id.to_string() })).await;
    assert_eq!(reason(&v), "NOT_FOUND", "not theirs: {v}");
    ok(&app, &fresh.access_token, remove, json!({ "id": id.to_string() })).await;
    app.next_mail_file("passkeyonly@example.com", "A passkey was removed").await;
    assert!(app.login_body("passkeyonly@example.com", PASSWORD).await["errors"].is_null(), "a password login again");
}

/// A stored passkey row for `user_id`, made `created_at` (the ceremony itself
/// runs in Chromium, in examples/web's end-to-end test).
async fn insert_passkey(app: &TestApp, user_id: &str, created_at: chrono::DateTime<chrono::Utc>) {
    use sea_orm::EntityTrait;
    let id = uuid::Uuid::now_v7();
    entity::passkey::Entity::insert(entity::passkey::ActiveModel {
        id: sea_orm::Set(id),
        user_id: sea_orm::Set(user_id.parse().unwrap()),
        credential_id: sea_orm::Set(id.simple().to_string()),
        name: sea_orm::Set("Stranger's key".into()),
        credential: sea_orm::Set("{}".into()),
        created_at: sea_orm::Set(created_at),
        last_used_at: sea_orm::Set(None),
    })
    .exec_without_returning(&app.state().services.db)
    .await
    .unwrap();
}

/// Resets the password of `email` through the mailed link.
async fn reset_by_mail(app: &TestApp, email: &str, password: &str) {
    let ask = "mutation($e: String!) { requestPasswordReset(email: $e) }";
    assert!(app.gql(&app.client(), None, ask, json!({ "e": email })).await["errors"].is_null());
    let token = app.next_mail_file(email, "Reset your password").await.token();
    let reset = "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) }";
    let v = app.gql(&app.client(), None, reset, json!({ "t": token, "p": password })).await;
    assert!(v["errors"].is_null(), "{v}");
}

/// A stranger registers someone else's address (nothing confirms it by
/// default), adds an authenticator and a passkey from that fresh session,
/// and waits. The owner meets EMAIL_TAKEN and recovers the account through
/// her mailbox: she signs in with her new password alone, and neither of
/// the stranger's factors is left. A factor added once the address is
/// confirmed stays through a later reset.
#[tokio::test]
async fn whoever_proves_the_mailbox_gets_a_clean_account() {
    let app = spawn_with(|c| c.second_factor = authgraph::config::SecondFactorConfig::local()).await;
    let stranger = app.user("taken@example.com").await;
    enable_totp(&app, &stranger).await;
    insert_passkey(&app, &stranger.id, now(&app)).await;
    challenge(&app, "taken@example.com").await;

    let v = register_raw(&app, "taken@example.com", "the owner's own passphrase", None).await;
    assert_eq!(reason(&v), "EMAIL_TAKEN", "{v}");
    app.clock.advance(Duration::from_secs(1));
    reset_by_mail(&app, "taken@example.com", "the owner's new passphrase").await;
    let v = app.login_body("taken@example.com", "the owner's new passphrase").await;
    assert!(v["errors"].is_null(), "the owner is asked for a factor she never added: {v}");
    let owner = v["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let status = ok(&app, &owner, STATUS, json!({})).await;
    assert_eq!(
        status["me"]["secondFactor"],
        json!({ "totp": false, "recoveryCodesLeft": 0, "passkeys": 0, "required": false })
    );
    let v = stranger.gql(&app, "{ me { id } }", json!({})).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    let types = event_types(&ok(&app, &owner, EVENTS, json!({})).await);
    assert!(types.contains(&"SECOND_FACTOR_RESET".to_owned()), "{types:?}");

    // Added by the owner after she proved the address: kept through a reset,
    // even after a move to another address (which someone who later gets
    // into that mailbox must not turn into a way around her factors).
    app.clock.advance(Duration::from_secs(1));
    let owner_user = TestUser {
        id: stranger.id.clone(),
        email: "taken@example.com".into(),
        access_token: owner.clone(),
        refresh_token: String::new(),
    };
    enable_totp(&app, &owner_user).await;
    insert_passkey(&app, &stranger.id, now(&app)).await;
    app.clock.advance(Duration::from_secs(1));
    app.change_address(&owner, "moved@example.com").await;
    app.clock.advance(Duration::from_secs(1));
    reset_by_mail(&app, "moved@example.com", "yet another passphrase").await;
    let v = app.login_body("moved@example.com", "yet another passphrase").await;
    assert_eq!(reason(&v), "SECOND_FACTOR_REQUIRED", "the owner's own factors were removed: {v}");
    use sea_orm::{EntityTrait, PaginatorTrait};
    let passkeys = entity::passkey::Entity::find().count(&app.state().services.db).await.unwrap();
    assert_eq!(passkeys, 1, "the owner's passkey was removed");
}

/// Second-factor logins finishing a few milliseconds apart, with a password
/// change among them (on PostgreSQL they run at once): once the change has
/// returned, no session one of them started is alive, whichever committed
/// first.
#[tokio::test]
async fn no_second_factor_login_outlives_a_password_change_beside_it() {
    let app = spawn_with(|c| c.second_factor = authgraph::config::SecondFactorConfig::local()).await;
    for round in 0..3 {
        let email = format!("beside{round}@example.com");
        let user = app.user(&email).await;
        let (_, codes) = enable_totp(&app, &user).await;
        let mut challenges = Vec::new();
        for _ in 0..8 {
            challenges.push(challenge(&app, &email).await);
        }
        let finishes = challenges.iter().zip(&codes).enumerate().map(|(i, (ch, code))| {
            let app = &app;
            async move {
                tokio::time::sleep(Duration::from_millis(4 * i as u64)).await;
                verify(app, ch, code).await
            }
        });
        let change = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            user.gql(&app, crate::ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "the new passphrase" })).await
        };
        let (results, changed) = tokio::join!(futures_util::future::join_all(finishes), change);
        assert_eq!(changed["data"]["changePassword"], true, "{changed}");
        for v in &results {
            if !v["errors"].is_null() {
                assert_eq!(reason(v), "INVALID_SECOND_FACTOR", "{v}");
                continue;
            }
            let p = &v["data"]["verifySecondFactor"];
            let me = app.gql(&app.client(), p["accessToken"].as_str(), "{ me { id } }", json!({})).await;
            assert_eq!(code(&me), "UNAUTHENTICATED", "round {round}: a session started beside the change lives: {me}");
            let r = app.gql(&app.client(), None, crate::ops::REFRESH_BODY, json!({ "t": p["refreshToken"] })).await;
            assert_eq!(code(&r), "UNAUTHENTICATED", "round {round}: it still refreshes: {r}");
        }
    }
}

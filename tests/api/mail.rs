//! Account recovery, address verification and address changes, end to end:
//! the server sends through a real SMTP server on 127.0.0.1 (`smtp::SmtpSink`),
//! and the tests take each link's token from the delivered message, as a
//! person would.

use std::time::Duration;

use authgraph::{
    config::{Config, MailDelivery},
    secret::Secret,
};
use serde_json::{Value, json};

use crate::{
    helpers::*,
    ops,
    smtp::{Delivered, SmtpSink},
};

const REQUEST_RESET: &str = "mutation($e: String!) { requestPasswordReset(email: $e) }";
const RESET: &str = "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) }";
const SEND_VERIFICATION: &str = "mutation { sendVerificationEmail }";
const VERIFY: &str = "mutation($t: String!) { verifyEmail(token: $t) }";
const CONFIRM_CHANGE: &str = "mutation($t: String!) { confirmEmailChange(token: $t) }";
const CHANGE_EMAIL: &str = "mutation($e: String) { updateProfile(input: { email: $e }) { email emailVerified } }";
const ME_VERIFIED: &str = "{ me { email emailVerified emailVerifiedAt } }";
const NEW_PASSWORD: &str = "a brand new passphrase";
const APP_URL: &str = "https://app.example.com";

fn send_to(config: &mut Config, sink: &SmtpSink) {
    config.mail.delivery = MailDelivery::Smtp(Secret::new(sink.url().into_bytes()));
    config.mail.app_url = APP_URL.to_owned();
}

/// An app that mails through a fresh sink.
async fn app_with_sink() -> (TestApp, SmtpSink) {
    app_with_sink_and(|_| {}).await
}

async fn app_with_sink_and(tweak: impl FnOnce(&mut Config)) -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let app = spawn_with(|c| {
        send_to(c, &sink);
        tweak(c);
    })
    .await;
    (app, sink)
}

async fn anonymous(app: &TestApp, query: &str, variables: Value) -> Value {
    app.gql(&app.client(), None, query, variables).await
}

async fn reset_mail(app: &TestApp, sink: &SmtpSink, email: &str) -> Delivered {
    let v = anonymous(app, REQUEST_RESET, json!({ "e": email })).await;
    assert_eq!(v, json!({ "data": { "requestPasswordReset": true } }));
    sink.next_mail(email, "Reset your password").await
}

/// Confirms `user`'s address through the mailed verification link.
async fn confirm(app: &TestApp, sink: &SmtpSink, user: &TestUser) {
    assert_eq!(user.gql(app, SEND_VERIFICATION, json!({})).await["data"]["sendVerificationEmail"], true);
    let token = sink.next_mail(&user.email, "Confirm your email address").await.token();
    assert!(anonymous(app, VERIFY, json!({ "t": token })).await["errors"].is_null());
}

#[track_caller]
fn assert_link_refused(v: &Value, what: &str) {
    assert_all_errors(v, "BAD_USER_INPUT", Some("LINK_INVALID_OR_EXPIRED"), what);
    assert_eq!(v["errors"][0]["extensions"]["field"], "token", "{what}: {v}");
}

/// The whole reset: the link arrives by SMTP, points at the app, resets the
/// password once, ends every session, logs nobody in, confirms the address,
/// and a notice follows.
#[tokio::test]
async fn a_password_is_reset_through_a_delivered_link() {
    let (app, sink) = app_with_sink().await;
    let user = app.user("reset@example.com").await;
    let other_device = user.login(&app).await;

    let mail = reset_mail(&app, &sink, "reset@example.com").await;
    assert_eq!(mail.subject(), "Reset your password");
    let link = mail.link();
    assert!(link.starts_with(&format!("{APP_URL}/reset-password?token=")), "{link}");
    assert_eq!(mail.token().len(), 43, "256 bits, base64url");
    assert!(mail.html().contains(&mail.token()), "the HTML part carries the same token");

    let v = anonymous(&app, RESET, json!({ "t": mail.token(), "p": NEW_PASSWORD })).await;
    assert_eq!(v, json!({ "data": { "resetPassword": true } }), "nothing is issued");
    for session in [&user, &other_device] {
        let v = session.gql(&app, ops::ME_ID, json!({})).await;
        assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
        let v = anonymous(&app, ops::REFRESH_BODY, json!({ "t": session.refresh_token })).await;
        assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    }
    assert_eq!(reason(&app.login_body("reset@example.com", PASSWORD).await), "INVALID_CREDENTIALS");
    let v = app.login_body("reset@example.com", NEW_PASSWORD).await;
    assert!(v["errors"].is_null(), "{v}");
    let token = v["data"]["login"]["accessToken"].as_str().unwrap();
    let me = ok(&app, token, ME_VERIFIED, json!({})).await;
    assert_eq!(me["me"]["emailVerified"], true, "a reset link proves the address: {me}");

    let v = anonymous(&app, RESET, json!({ "t": mail.token(), "p": "yet another passphrase" })).await;
    assert_link_refused(&v, "a used reset token");
    let notice = sink.next_mail("reset@example.com", "Your password was changed").await;
    assert!(crate::smtp::link_in(&notice.text()).is_none(), "a notice carries no token");
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(
        sink.subjects_to("reset@example.com"),
        ["Reset your password", "Your password was changed"],
        "each once"
    );
}

/// Two uses of one token at once: exactly one succeeds.
#[tokio::test]
async fn a_token_used_twice_at_once_works_once() {
    let (app, sink) = app_with_sink().await;
    app.user("race@example.com").await;
    let token = reset_mail(&app, &sink, "race@example.com").await.token();
    let tries = (0..6).map(|i| {
        let (app, token) = (&app, token.clone());
        async move { anonymous(app, RESET, json!({ "t": token, "p": format!("{NEW_PASSWORD} {i}") })).await }
    });
    let answers = futures_util::future::join_all(tries).await;
    let won: Vec<usize> = (0..answers.len()).filter(|&i| answers[i]["errors"].is_null()).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    for (i, v) in answers.iter().enumerate() {
        if i != won[0] {
            assert_link_refused(v, "the losing use");
        }
    }
    let v = app.login_body("race@example.com", &format!("{NEW_PASSWORD} {}", won[0])).await;
    assert!(v["errors"].is_null(), "the winner's password is the account's: {v}");
}

/// A token past its lifetime, of another purpose, replaced by a newer one,
/// malformed, or unknown is refused with one reason; opening the link (a GET,
/// as a mail scanner does) spends nothing.
#[tokio::test]
async fn late_foreign_replaced_and_forged_tokens_are_refused() {
    let (app, sink) = app_with_sink().await;
    let user = app.user("late@example.com").await;

    // Replaced: the second mail's token voids the first's.
    let first = reset_mail(&app, &sink, "late@example.com").await.token();
    let second = reset_mail(&app, &sink, "late@example.com").await.token();
    assert_ne!(first, second);
    assert_link_refused(&anonymous(&app, RESET, json!({ "t": first, "p": NEW_PASSWORD })).await, "a replaced token");

    // Of another purpose: a reset token does not verify, and stays usable.
    assert_link_refused(&anonymous(&app, VERIFY, json!({ "t": second })).await, "a reset token used to verify");
    assert_link_refused(&anonymous(&app, CONFIRM_CHANGE, json!({ "t": second })).await, "a reset token used to move");

    // Opening the link, and a mutation over GET, spend nothing.
    let scanner = bare();
    let _ = scanner.get(app.url(&format!("/reset-password?token={second}"))).send().await.unwrap();
    let get = scanner
        .get(app.url("/graphql"))
        .query(&[("query", format!("mutation {{ verifyEmail(token: \"{second}\") }}"))])
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);

    // Forged and malformed.
    let forged = "A".repeat(43);
    assert_link_refused(&anonymous(&app, RESET, json!({ "t": forged, "p": NEW_PASSWORD })).await, "an unknown token");
    assert_link_refused(&anonymous(&app, VERIFY, json!({ "t": "x" })).await, "a malformed token");
    assert_link_refused(&anonymous(&app, VERIFY, json!({ "t": "" })).await, "an empty token");

    // Late: an hour and a second after it was made.
    app.clock.advance(Duration::from_secs(3601));
    assert_link_refused(&anonymous(&app, RESET, json!({ "t": second, "p": NEW_PASSWORD })).await, "an expired token");
    let v = anonymous(&app, ops::REFRESH_BODY, json!({ "t": user.refresh_token })).await;
    assert!(v["errors"].is_null(), "nothing was reset, no session ended: {v}");

    // A weak password is refused before the token is looked at, and spends it not.
    app.clock.advance(Duration::from_secs(60));
    let fresh = reset_mail(&app, &sink, "late@example.com").await.token();
    let v = anonymous(&app, RESET, json!({ "t": fresh, "p": "short" })).await;
    assert_eq!(reason(&v), "WEAK_PASSWORD", "{v}");
    let v = anonymous(&app, RESET, json!({ "t": fresh, "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
}

/// A registered and an unknown address get the same answer, byte for byte,
/// and the same budgets; only the registered one is sent anything.
#[tokio::test]
async fn unknown_addresses_are_indistinguishable() {
    let (app, sink) = app_with_sink_and(|c| c.rate_limits.mail_per_recipient = vec!["1/1h".parse().unwrap()]).await;
    app.user("known@example.com").await;
    let mut answers = Vec::new();
    for email in ["known@example.com", "unknown@example.com"] {
        let (first, _) = raw(&app, None, REQUEST_RESET, json!({ "e": email })).await;
        let (second, v) = raw(&app, None, REQUEST_RESET, json!({ "e": email })).await;
        assert_eq!(code(&v), "RATE_LIMITED", "{email}: {v}");
        answers.push((first, second));
    }
    assert_eq!(answers[0], answers[1], "the answers tell the addresses apart");
    assert_eq!(answers[0].0, r#"{"data":{"requestPasswordReset":true}}"#);

    sink.next_mail("known@example.com", "Reset your password").await;
    // Both rows ended (the unknown address's skipped): nothing more goes.
    wait_outbox_settled(&app.state().services.db).await;
    assert!(sink.to("unknown@example.com").is_empty(), "mail went to an address without an account");
    assert_eq!(sink.messages().len(), 1);
    use sea_orm::EntityTrait;
    let rows = entity::mail_outbox::Entity::find().all(&app.state().services.db).await.unwrap();
    assert!(!format!("{rows:?}").contains("unknown@"), "the outbox keeps an address without an account: {rows:?}");

    // A malformed address is the one thing told apart, before any budget.
    let v = anonymous(&app, REQUEST_RESET, json!({ "e": "not an address" })).await;
    assert_eq!(reason(&v), "INVALID_EMAIL", "{v}");
}

/// Verification: asked for by the signed-in user, confirmed by the link, and
/// not sent again once confirmed.
#[tokio::test]
async fn an_address_is_verified_through_a_delivered_link() {
    let (app, sink) = app_with_sink().await;
    let user = app.user("verify@example.com").await;
    let me = user.gql(&app, ME_VERIFIED, json!({})).await;
    assert_eq!(me["data"]["me"]["emailVerified"], false, "{me}");
    assert_eq!(me["data"]["me"]["emailVerifiedAt"], Value::Null, "{me}");

    assert_eq!(user.gql(&app, SEND_VERIFICATION, json!({})).await["data"]["sendVerificationEmail"], true);
    let mail = sink.next_mail("verify@example.com", "Confirm your email address").await;
    assert!(mail.link().starts_with(&format!("{APP_URL}/verify-email?token=")), "{}", mail.link());
    assert!(mail.text().contains("24 hours"), "{}", mail.text());

    let v = anonymous(&app, VERIFY, json!({ "t": mail.token() })).await;
    assert_eq!(v, json!({ "data": { "verifyEmail": true } }));
    let me = user.gql(&app, ME_VERIFIED, json!({})).await;
    assert_eq!(me["data"]["me"]["emailVerified"], true, "{me}");
    assert!(me["data"]["me"]["emailVerifiedAt"].is_string(), "{me}");
    assert_link_refused(&anonymous(&app, VERIFY, json!({ "t": mail.token() })).await, "a used verification token");

    let v = user.gql(&app, SEND_VERIFICATION, json!({})).await;
    assert_eq!(v, json!({ "data": { "sendVerificationEmail": false } }), "nothing to send");
    let v = anonymous(&app, SEND_VERIFICATION, json!({})).await;
    assert_eq!(reason(&v), "MISSING_TOKEN", "{v}");
}

/// With REQUIRE_EMAIL_VERIFICATION, registration and login issue nothing
/// until the address is confirmed; a refused login sends a fresh link, at
/// most one a minute, so a login right after registering does not void the
/// link registration sent.
#[tokio::test]
async fn required_verification_holds_back_every_session() {
    let (app, sink) = app_with_sink_and(|c| {
        c.mail.require_verification = true;
        c.rate_limits.mail_per_recipient = vec!["1/1m".parse().unwrap()];
    })
    .await;
    let resp = app
        .post(
            &app.client(),
            None,
            ops::REGISTER_TOKENS,
            json!({ "i": { "email": "held@example.com", "password": PASSWORD } }),
        )
        .await;
    assert!(set_cookies(&resp).is_empty(), "no refresh cookie");
    let v: Value = resp.json().await.unwrap();
    assert_all_errors(&v, "FORBIDDEN", Some("EMAIL_NOT_VERIFIED"), "register");
    assert_eq!(v["data"], Value::Null, "{v}");
    let first = sink.next_mail("held@example.com", "Confirm your email address").await;

    let v = app.login_body("held@example.com", PASSWORD).await;
    assert_all_errors(&v, "FORBIDDEN", Some("EMAIL_NOT_VERIFIED"), "login");
    assert_eq!(v["data"], Value::Null, "{v}");
    // A wrong password is told as before: the state of the address is not.
    assert_eq!(reason(&app.login_body("held@example.com", "wrong password!").await), "INVALID_CREDENTIALS");
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(sink.to("held@example.com").len(), 1, "a login right after registering mailed a second link");

    app.clock.advance(Duration::from_secs(61));
    let v = app.login_body("held@example.com", PASSWORD).await;
    assert_all_errors(&v, "FORBIDDEN", Some("EMAIL_NOT_VERIFIED"), "a later login");
    let second = sink.next_mail("held@example.com", "Confirm your email address").await;
    assert_link_refused(&anonymous(&app, VERIFY, json!({ "t": first.token() })).await, "the replaced link");

    let v = anonymous(&app, VERIFY, json!({ "t": second.token() })).await;
    assert!(v["errors"].is_null(), "{v}");
    let v = app.login_body("held@example.com", PASSWORD).await;
    assert!(v["errors"].is_null(), "{v}");

    // An admin made by `authgraph create-admin` is not locked out.
    let (admin, _) = make_admin(&app, "root@example.com").await;
    assert_eq!(ok(&app, &admin, ME_VERIFIED, json!({})).await["me"]["emailVerified"], true);
}

/// An address change waits for the new address's confirmation; the old one
/// is told; links sent to the old address die with the move.
#[tokio::test]
async fn an_address_changes_only_once_the_new_one_confirms() {
    let (app, sink) = app_with_sink().await;
    let user = app.user("old@example.com").await;
    app.user("taken@example.com").await;
    // An unconfirmed address is told nothing (it may be a stranger's, a typo):
    // no notice, and the change is still asked for.
    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "first@example.org" })).await;
    assert!(v["errors"].is_null(), "{v}");
    sink.next_mail("first@example.org", "Confirm your new email address").await;
    assert_eq!(user.gql(&app, SEND_VERIFICATION, json!({})).await["data"]["sendVerificationEmail"], true);
    let verify = sink.next_mail("old@example.com", "Confirm your email address").await;
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(sink.to("old@example.com").len(), 1, "a notice went to the unconfirmed address");
    assert!(anonymous(&app, VERIFY, json!({ "t": verify.token() })).await["errors"].is_null());
    let reset_to_old = reset_mail(&app, &sink, "old@example.com").await.token();

    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "taken@example.com" })).await;
    assert_eq!(reason(&v), "EMAIL_TAKEN", "{v}");
    // A new spelling of the same address is taken at once.
    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "Old@Example.com" })).await;
    assert_eq!(v["data"]["updateProfile"]["email"], "Old@Example.com", "{v}");

    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "new@example.org" })).await;
    assert_eq!(v["data"]["updateProfile"]["email"], "Old@Example.com", "not moved yet: {v}");
    let confirm = sink.next_mail("new@example.org", "Confirm your new email address").await;
    assert!(confirm.link().starts_with(&format!("{APP_URL}/confirm-email-change?token=")));
    let notice = sink.next_mail("old@example.com", "Your email address is being changed").await;
    assert!(notice.text().contains("new@example.org"), "{}", notice.text());
    assert!(crate::smtp::link_in(&notice.text()).is_none(), "the old address gets no usable link");

    let v = anonymous(&app, CONFIRM_CHANGE, json!({ "t": confirm.token() })).await;
    assert_eq!(v, json!({ "data": { "confirmEmailChange": true } }));
    let me = user.gql(&app, ME_VERIFIED, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "new@example.org", "{me}");
    assert_eq!(me["data"]["me"]["emailVerified"], true, "{me}");
    assert!(app.login_body("new@example.org", PASSWORD).await["errors"].is_null());
    assert_eq!(reason(&app.login_body("old@example.com", PASSWORD).await), "INVALID_CREDENTIALS");
    let v = anonymous(&app, RESET, json!({ "t": reset_to_old, "p": NEW_PASSWORD })).await;
    assert_link_refused(&v, "a reset link mailed to the address the account left");
    assert_link_refused(&anonymous(&app, CONFIRM_CHANGE, json!({ "t": confirm.token() })).await, "a used change link");
}

/// Per-recipient, per-client and link budgets answer RATE_LIMITED with
/// retryAfter.
#[tokio::test]
async fn mail_and_link_budgets_hold() {
    let (app, _sink) = app_with_sink_and(|c| {
        c.rate_limits.mail_per_recipient = vec!["1/1m".parse().unwrap(), "3/1h".parse().unwrap()];
        c.rate_limits.mail_per_ip = "5/1h".parse().unwrap();
        c.rate_limits.link_per_ip = "3/1h".parse().unwrap();
    })
    .await;
    let user = app.user("budget@example.com").await;
    assert!(user.gql(&app, SEND_VERIFICATION, json!({})).await["errors"].is_null());
    let v = user.gql(&app, SEND_VERIFICATION, json!({})).await;
    assert_eq!(code(&v), "RATE_LIMITED", "one a minute per recipient: {v}");
    assert!(v["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap() >= 1, "{v}");
    // The recipient's budget is the address's, whichever mutation spends it.
    let v = anonymous(&app, REQUEST_RESET, json!({ "e": "BUDGET@example.com" })).await;
    assert_eq!(code(&v), "RATE_LIMITED", "{v}");

    // Other recipients, one client: five mails an hour, three spent above
    // (a refusal for the recipient still counts for the client).
    for i in 0..2 {
        let v = anonymous(&app, REQUEST_RESET, json!({ "e": format!("r{i}@example.com") })).await;
        assert!(v["errors"].is_null(), "{v}");
    }
    let v = anonymous(&app, REQUEST_RESET, json!({ "e": "r9@example.com" })).await;
    assert_eq!(code(&v), "RATE_LIMITED", "the client's budget: {v}");

    let forged = "B".repeat(43);
    for _ in 0..3 {
        assert_link_refused(&anonymous(&app, VERIFY, json!({ "t": forged })).await, "a guess");
    }
    let v = anonymous(&app, VERIFY, json!({ "t": forged })).await;
    assert_eq!(code(&v), "RATE_LIMITED", "guessing links is budgeted: {v}");
}

/// The SMTP server is down when the mail is due, and answers 451 after that;
/// once it accepts, the mail arrives, once.
#[tokio::test]
async fn mail_waits_out_an_smtp_outage_and_arrives_once() {
    let (app, mut sink) = app_with_sink().await;
    app.user("outage@example.com").await;
    sink.stop().await;
    let v = anonymous(&app, REQUEST_RESET, json!({ "e": "outage@example.com" })).await;
    assert!(v["errors"].is_null(), "a request does not wait for SMTP: {v}");
    wait_for_attempts(&app.state().services.db, 1, "").await;

    sink.refuse_temporarily(true);
    sink.restart().await;
    app.clock.advance(Duration::from_secs(6));
    wait_for_attempts(&app.state().services.db, 2, "451").await;
    assert!(sink.messages().is_empty());

    sink.refuse_temporarily(false);
    app.clock.advance(Duration::from_secs(11));
    let mail = sink.next_mail("outage@example.com", "Reset your password").await;
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(sink.messages().len(), 1, "sent once");
    let v = anonymous(&app, RESET, json!({ "t": mail.token(), "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "the link of the mail that arrived works: {v}");
}

/// The server stops with a mail queued that could not be sent; started again
/// (the SMTP server back too), it sends it, once.
#[tokio::test]
async fn mail_queued_before_a_restart_is_sent_after_it() {
    let (mut app, mut sink) = app_with_sink().await;
    app.user("restart@example.com").await;
    sink.stop().await;
    let v = anonymous(&app, REQUEST_RESET, json!({ "e": "restart@example.com" })).await;
    assert!(v["errors"].is_null(), "{v}");
    wait_for_attempts(&app.state().services.db, 1, "").await;
    app.stop().await;

    sink.restart().await;
    let again = authgraph::app::spawn(&app.config).await.expect("app restarts");
    app.clock.advance(Duration::from_secs(6));
    let mail = sink.next_mail("restart@example.com", "Reset your password").await;
    wait_outbox_settled(&again.state.services.db).await;
    assert_eq!(sink.messages().len(), 1, "sent once");
    let v = gql_vars_at(again.addr, None, RESET, json!({ "t": mail.token(), "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
    again.stop().await.unwrap();
}

/// Without SMTP (development), mail is written as .eml files to MAIL_DIR,
/// and the link in a file works.
#[tokio::test]
async fn without_smtp_mail_is_written_to_the_mail_folder() {
    let app = spawn_app().await;
    app.user("files@example.com").await;
    let v = anonymous(&app, REQUEST_RESET, json!({ "e": "files@example.com" })).await;
    assert!(v["errors"].is_null(), "{v}");
    let mut files = Vec::new();
    for _ in 0..300 {
        files = std::fs::read_dir(app.mail_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(files.len(), 1, "{files:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a mail with a live link is readable by others");
    }
    let mail = Delivered { to: vec![], data: std::fs::read(&files[0]).unwrap() };
    assert!(mail.link().starts_with("http://127.0.0.1:8000/reset-password?token="), "{}", mail.link());
    let v = anonymous(&app, RESET, json!({ "t": mail.token(), "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
}

/// Waits until every queued mail not sent yet was tried `n` times, the last
/// failing with an error that says `error`, and is not being tried again
/// (no sender holds it).
async fn wait_for_attempts(db: &sea_orm::DatabaseConnection, n: i32, error: &str) {
    use sea_orm::EntityTrait;
    wait_until(
        || format!("the queued mail to be tried {n} times"),
        async || {
            let mut rows = entity::mail_outbox::Entity::find().all(db).await.unwrap();
            rows.retain(|r| r.sent_at.is_none());
            let tried = rows.iter().all(|r| {
                r.attempts >= n
                    && r.claimed_until.is_none()
                    && r.last_error.as_deref().is_some_and(|e| e.contains(error))
            });
            (!rows.is_empty() && tried).then_some(())
        },
    )
    .await
}

/// Asking whether addresses are taken through address changes spends the
/// mail budget like any change: it is no unmetered way to enumerate accounts.
#[tokio::test]
async fn address_changes_to_taken_addresses_spend_the_budget() {
    let (app, _sink) = app_with_sink_and(|c| c.rate_limits.mail_per_ip = "2/1h".parse().unwrap()).await;
    let user = app.user("prober@example.com").await;
    for i in 0..3 {
        app.user(&format!("member{i}@example.com")).await;
    }
    for i in 0..2 {
        let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": format!("member{i}@example.com") })).await;
        assert_eq!(reason(&v), "EMAIL_TAKEN", "{v}");
    }
    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "member2@example.com" })).await;
    assert_eq!(code(&v), "RATE_LIMITED", "{v}");
}

/// An attacker holding a session asks to move the account to their address;
/// the owner recovers it (a reset, a password change, or logging out
/// everywhere): the attacker's pending link is dead, mailed or not.
#[tokio::test]
async fn a_recovery_kills_the_attackers_pending_address_change() {
    let (app, sink) = app_with_sink().await;
    let recoveries = ["resetPassword", "changePassword", "logoutEverywhere"];
    for (i, recovery) in recoveries.into_iter().enumerate() {
        let owner = app.user(&format!("owner{i}@example.com")).await;
        let attacker = owner.login(&app).await;
        let theirs = format!("attacker{i}@evil.example");
        let v = attacker.gql(&app, CHANGE_EMAIL, json!({ "e": theirs })).await;
        assert!(v["errors"].is_null(), "{v}");
        let link = sink.next_mail(&theirs, "Confirm your new email address").await.token();

        match recovery {
            "resetPassword" => {
                let token = reset_mail(&app, &sink, &owner.email).await.token();
                let v = anonymous(&app, RESET, json!({ "t": token, "p": NEW_PASSWORD })).await;
                assert!(v["errors"].is_null(), "{v}");
            }
            "changePassword" => {
                let v = owner.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": NEW_PASSWORD })).await;
                assert!(v["errors"].is_null(), "{v}");
            }
            _ => {
                let v = owner.gql(&app, ops::LOGOUT_EVERYWHERE, json!({})).await;
                assert!(v["errors"].is_null(), "{v}");
            }
        }
        let v = anonymous(&app, CONFIRM_CHANGE, json!({ "t": link })).await;
        assert_link_refused(&v, recovery);
        let v = attacker.gql(&app, ops::ME_ID, json!({})).await;
        assert_eq!(reason(&v), "TOKEN_REVOKED", "{recovery}: {v}");
    }
}

/// The same, with the confirmation on its way when the owner recovers: the
/// SMTP server holds its answer while she resets her password, then answers
/// 451 (try again later). The voided row stays ended: it is never tried
/// again, so no fresh link is minted for the attacker's address.
#[tokio::test]
async fn a_send_in_flight_during_a_recovery_is_never_retried() {
    let (app, sink) = app_with_sink_and(|c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    // The attempts at the confirmation that ended (superseded, or retried).
    let ended = async || {
        let scrape = crate::metrics::scrape(&app).await;
        ["superseded", "retried"]
            .map(|o| {
                let labels = [("kind", "confirm_email_change"), ("outcome", o)];
                crate::metrics::value(&scrape, "authgraph_mails_total", &labels)
            })
            .iter()
            .sum::<f64>()
    };
    let before = ended().await;
    let owner = app.user("inflight@example.com").await;
    let attacker = owner.login(&app).await;
    sink.hold_next("thief@evil.example");
    let v = attacker.gql(&app, CHANGE_EMAIL, json!({ "e": "thief@evil.example" })).await;
    assert!(v["errors"].is_null(), "{v}");
    sink.wait_held("thief@evil.example").await;

    let token = reset_mail(&app, &sink, &owner.email).await.token();
    let v = anonymous(&app, RESET, json!({ "t": token, "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
    sink.release("thief@evil.example", "451 4.3.0 try again later").await;
    // The sender takes the answer (and finds its row ended by the reset).
    wait_until(|| "the in-flight attempt to end".into(), async || (ended().await > before).then_some(())).await;
    // Past every backoff and lease: nothing is due.
    app.clock.advance(Duration::from_secs(3600));
    wait_outbox_settled(&app.state().services.db).await;
    assert!(sink.to("thief@evil.example").is_empty(), "the voided confirmation was sent again");
}

/// The same, with the confirmation still queued when the owner recovers
/// (the SMTP server is down): it is never sent.
#[tokio::test]
async fn a_recovery_ends_a_queued_address_change_unsent() {
    let (app, mut sink) = app_with_sink().await;
    let owner = app.user("queued@example.com").await;
    confirm(&app, &sink, &owner).await;
    let attacker = owner.login(&app).await;
    sink.stop().await;
    let v = attacker.gql(&app, CHANGE_EMAIL, json!({ "e": "thief@evil.example" })).await;
    assert!(v["errors"].is_null(), "{v}");
    wait_for_attempts(&app.state().services.db, 1, "").await;
    let v = owner.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
    sink.restart().await;
    app.clock.advance(Duration::from_secs(60));
    // The password-changed notice goes; the attacker's link does not.
    sink.next_mail("queued@example.com", "Your password was changed").await;
    wait_outbox_settled(&app.state().services.db).await;
    assert!(sink.to("thief@evil.example").is_empty(), "the voided confirmation was sent");
}

/// A 5xx about the server or the account with it (bad credentials, a quota)
/// is retried, not given up; a 5xx refusing the recipient is final.
#[tokio::test]
async fn only_a_refused_recipient_is_final() {
    let (app, sink) = app_with_sink().await;
    app.user("kept@example.com").await;
    app.user("gone@example.com").await;
    sink.answer_mail(Some("535 5.7.8 authentication credentials invalid"));
    anonymous(&app, REQUEST_RESET, json!({ "e": "kept@example.com" })).await;
    wait_for_attempts(&app.state().services.db, 1, "535").await;
    sink.answer_mail(None);
    app.clock.advance(Duration::from_secs(6));
    sink.next_mail("kept@example.com", "Reset your password").await;

    sink.refuse_recipient("gone@example.com", "550 5.1.1 no such mailbox");
    anonymous(&app, REQUEST_RESET, json!({ "e": "gone@example.com" })).await;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = &app.state().services.db;
    for _ in 0..300 {
        let rows = entity::mail_outbox::Entity::find()
            .filter(entity::mail_outbox::Column::RecipientKey.eq("gone@example.com"))
            .all(db)
            .await
            .unwrap();
        if rows.iter().any(|r| r.failed_at.is_some()) {
            assert!(rows[0].last_error.as_deref().unwrap().contains("550"), "{rows:?}");
            assert!(rows[0].next_attempt_at.is_none(), "{rows:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the refused recipient's mail was not given up");
}

/// A slow delivery of one mail does not hold back the next: a reset for a
/// registered address (which is sent) does not delay a mail asked for after
/// it, so its arrival time tells nothing about the first address.
#[tokio::test]
async fn one_slow_mail_does_not_delay_the_next() {
    let (app, sink) = app_with_sink().await;
    app.user("target@example.com").await;
    app.user("prober@example.com").await;
    sink.slow_for("target@example.com", Duration::from_secs(3));
    anonymous(&app, REQUEST_RESET, json!({ "e": "target@example.com" })).await;
    anonymous(&app, REQUEST_RESET, json!({ "e": "prober@example.com" })).await;
    sink.next_mail("prober@example.com", "Reset your password").await;
    assert!(sink.to("target@example.com").is_empty(), "the prober's mail waited for the target's");
    sink.next_mail("target@example.com", "Reset your password").await;
}

/// A spelling of the address that only a case change away is taken at once;
/// one that another server could read as another mailbox (ß for ss) is
/// confirmed first, like any new address.
#[tokio::test]
async fn a_spelling_that_may_be_another_mailbox_is_confirmed() {
    let (app, sink) = app_with_sink().await;
    let user = app.user("strasse@example.com").await;
    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "STRASSE@Example.com" })).await;
    assert_eq!(v["data"]["updateProfile"]["email"], "STRASSE@Example.com", "{v}");
    let v = user.gql(&app, CHANGE_EMAIL, json!({ "e": "straße@example.com" })).await;
    assert_eq!(v["data"]["updateProfile"]["email"], "STRASSE@Example.com", "not at once: {v}");
    let confirm = sink.next_mail("straße@example.com", "Confirm your new email address").await;
    assert!(anonymous(&app, CONFIRM_CHANGE, json!({ "t": confirm.token() })).await["errors"].is_null());
    let me = user.gql(&app, ME_VERIFIED, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "straße@example.com", "{me}");
}

/// The server is killed (SIGKILL: nothing drained or flushed) with a mail it
/// could not send yet; started again, with the SMTP server back, it sends it,
/// once.
#[tokio::test]
async fn mail_queued_when_the_server_is_killed_is_sent_after_a_restart() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SmtpSink::start().await;
    sink.stop().await;
    let smtp = sink.url();
    let mail_dir = dir.path().join("mail").display().to_string();
    let env = [("SMTP_URL", smtp.as_str()), ("APP_URL", APP_URL), ("MAIL_DIR", mail_dir.as_str())];
    let server = start_process(database.url(), dir.path(), &env);
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let email = "killed@example.com";
    let v =
        gql_vars_at(addr, None, ops::REGISTER_TOKENS, json!({ "i": { "email": email, "password": PASSWORD } })).await;
    assert!(v["errors"].is_null(), "{v}");
    let v = gql_vars_at(addr, None, REQUEST_RESET, json!({ "e": email })).await;
    assert!(v["errors"].is_null(), "{v}");
    let db = sea_orm::Database::connect(database.url()).await.unwrap();
    wait_for_attempts(&db, 1, "").await;
    server.kill();

    sink.restart().await;
    let again = start_process(database.url(), dir.path(), &env);
    let addr: std::net::SocketAddr = again.base.trim_start_matches("http://").parse().unwrap();
    let mail = sink.next_mail(email, "Reset your password").await;
    wait_outbox_settled(&db).await;
    assert_eq!(sink.messages().len(), 1, "sent once");
    let v = gql_vars_at(addr, None, RESET, json!({ "t": mail.token(), "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
    db.close().await.unwrap();
    again.stop();
}

/// Notices go only to a confirmed address: a stranger's address that
/// someone registered gets its verification link (and a reset link when one
/// is asked for), and no news of what the holder of the account does.
#[tokio::test]
async fn an_unconfirmed_address_gets_no_notices() {
    let (app, sink) = app_with_sink().await;
    let holder = app.user("not.mine@example.com").await;
    let v = holder.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(holder.gql(&app, SEND_VERIFICATION, json!({})).await["data"]["sendVerificationEmail"], true);
    reset_mail(&app, &sink, "not.mine@example.com").await;
    wait_outbox_settled(&app.state().services.db).await;
    assert_eq!(sink.subjects_to("not.mine@example.com"), ["Confirm your email address", "Reset your password"]);
}

/// Every notice spends a budget of its recipient's (the per-recipient
/// quotas, kept apart from the links'): a session changing the password six
/// times reaches the mailbox three times in the hour; of the rest, one is
/// deferred until the budget admits it (no news is lost) and the others are
/// coalesced with it. The owner's reset link still goes at once.
#[tokio::test]
async fn notices_spend_the_recipients_budget_and_spare_the_links() {
    let (app, sink) = app_with_sink_and(|c| c.rate_limits.mail_per_recipient = vec!["3/1h".parse().unwrap()]).await;
    let user = app.user("flooded@example.com").await;
    confirm(&app, &sink, &user).await;
    let mut password = PASSWORD.to_owned();
    for i in 0..6 {
        let next = format!("{NEW_PASSWORD} {i}");
        let v = user.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": password, "n": next })).await;
        assert!(v["errors"].is_null(), "{v}");
        password = next;
    }
    let changed = "Your password was changed";
    for _ in 0..3 {
        sink.next_mail("flooded@example.com", changed).await;
    }
    // The other three: one deferred, two coalesced with it.
    let db = &app.state().services.db;
    let ended = |r: &entity::mail_outbox::Model| r.next_attempt_at.is_none() || r.last_error.is_some();
    let rows = wait_until_rows(db, |rows| rows.iter().all(ended)).await;
    let deferred = rows.iter().filter(|r| r.next_attempt_at.is_some()).count();
    let coalesced = rows.iter().filter(|r| r.last_error.as_deref().is_some_and(|e| e.contains("coalesced"))).count();
    assert_eq!((deferred, coalesced), (1, 2), "{rows:?}");
    reset_mail(&app, &sink, "flooded@example.com").await;
    app.clock.advance(Duration::from_secs(3600));
    sink.next_mail("flooded@example.com", changed).await;
    wait_outbox_settled(db).await;
    let notices = sink.subjects_to("flooded@example.com").iter().filter(|s| *s == changed).count();
    assert_eq!(notices, 4, "{:?}", sink.subjects_to("flooded@example.com"));
}

/// Waits until the outbox's rows satisfy `done`; returns them.
async fn wait_until_rows(
    db: &sea_orm::DatabaseConnection,
    done: impl Fn(&[entity::mail_outbox::Model]) -> bool,
) -> Vec<entity::mail_outbox::Model> {
    use sea_orm::EntityTrait;
    let last = std::cell::RefCell::new(String::new());
    wait_until(
        || format!("the outbox to reach the state awaited: {}", last.borrow()),
        async || {
            let rows = entity::mail_outbox::Entity::find().all(db).await.unwrap();
            *last.borrow_mut() = format!("{rows:?}");
            done(&rows).then_some(rows)
        },
    )
    .await
}

/// Mail that failed again and again backs off for minutes; once the SMTP
/// server answers again it goes within seconds (a probe tries the oldest
/// every 5 s, and a mail that goes brings the rest forward), not when each
/// row's backoff ends: the clock is not moved after the server returns.
#[tokio::test]
async fn a_backlog_drains_as_soon_as_the_server_answers_again() {
    let (app, mut sink) = app_with_sink().await;
    let emails = ["backlog1@example.com", "backlog2@example.com", "backlog3@example.com"];
    for email in emails {
        app.user(email).await;
    }
    sink.stop().await;
    for email in emails {
        assert!(anonymous(&app, REQUEST_RESET, json!({ "e": email })).await["errors"].is_null());
    }
    let db = &app.state().services.db;
    for attempt in 1..=5 {
        wait_for_attempts(db, attempt, "").await;
        app.clock.advance(authgraph::service::core::outbox::backoff(attempt) + Duration::from_secs(1));
    }
    wait_for_attempts(db, 6, "").await;
    // Each row now waits 160 s or more on the server's clock, which stays put.
    sink.restart().await;
    for email in emails {
        sink.next_mail(email, "Reset your password").await;
    }
}

/// A sender that dies with a mail in flight (its SMTP answer never came)
/// leaves a claim nobody renews: a restarted instance takes the row over
/// once the lease lapses (15 s after the last renewal, not 90), and the
/// mail goes.
#[tokio::test]
async fn a_dead_senders_claim_is_taken_over_after_its_lease() {
    let (mut app, sink) = app_with_sink().await;
    app.user("orphan@example.com").await;
    sink.hold_next("orphan@example.com");
    assert!(anonymous(&app, REQUEST_RESET, json!({ "e": "orphan@example.com" })).await["errors"].is_null());
    sink.wait_held("orphan@example.com").await;
    app.stop().await;
    let again = authgraph::app::spawn(&app.config).await.expect("app restarts");
    app.clock.advance(Duration::from_secs(16));
    let mail = sink.next_mail("orphan@example.com", "Reset your password").await;
    let v = gql_vars_at(again.addr, None, RESET, json!({ "t": mail.token(), "p": NEW_PASSWORD })).await;
    assert!(v["errors"].is_null(), "{v}");
    again.stop().await.unwrap();
}

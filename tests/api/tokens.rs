//! Access tokens: what an issued token carries, and forged or tampered tokens
//! presented to a protected field.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&B64.decode(part).expect("base64url without padding")).expect("JSON")
}

/// (header, claims, signature) of a compact JWT.
fn split(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    (decode_part(parts[0]), decode_part(parts[1]), parts[2].to_owned())
}

/// HS256 over `b64url(header).b64url(claims)` with `key`.
fn sign_with(header: &Value, claims: &Value, key: &[u8]) -> String {
    let msg = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(msg.as_bytes());
    format!("{msg}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Signed with the server's own test secret.
fn sign(header: &Value, claims: &Value) -> String {
    sign_with(header, claims, JWT_SECRET.as_bytes())
}

fn good_header() -> Value {
    json!({ "alg": "HS256", "typ": "at+jwt" })
}

/// A user with a live session: (app, real access token, refresh token, user id).
async fn setup() -> (TestApp, String, String, String) {
    let app = spawn_app().await;
    let (token, refresh, id) = app.register_body("tok@example.com").await;
    (app, token, refresh, id)
}

async fn me_with_header(app: &TestApp, authorization: &str) -> Value {
    app.client()
        .post(app.url("/graphql"))
        .header("authorization", authorization)
        .json(&json!({ "query": ops::ME_ID }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn me_with(app: &TestApp, token: &str) -> Value {
    me_with_header(app, &format!("Bearer {token}")).await
}

#[track_caller]
fn assert_rejected(v: &Value, reason_: &str, what: &str) {
    assert_eq!(code(v), "UNAUTHENTICATED", "{what}: {v}");
    assert_eq!(reason(v), reason_, "{what}: {v}");
    assert!(v["data"].is_null(), "{what}: {v}");
}

/// The control: the real claims, re-signed here, are accepted. Proves that the
/// forging code below produces tokens the server would take if not for the edit.
async fn assert_resigned_control_accepted(app: &TestApp, token: &str, id: &str) {
    let (header, claims, _) = split(token);
    let v = me_with(app, &sign(&header, &claims)).await;
    assert_eq!(v["data"]["me"]["id"], id, "control token refused: {v}");
    let v = me_with(app, &sign(&good_header(), &claims)).await;
    assert_eq!(v["data"]["me"]["id"], id, "control token with a rebuilt header refused: {v}");
}

#[tokio::test]
async fn issued_access_token_has_the_contract_header_and_claims() {
    let (app, token, _, id) = setup().await;
    let (header, claims, signature) = split(&token);
    assert_eq!(header["alg"], "HS256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(B64.decode(&signature).unwrap().len(), 32, "an HS256 signature is 32 bytes");
    for claim in ["sub", "email", "role", "sid", "jti", "iat", "exp", "iss", "aud"] {
        assert!(!claims[claim].is_null(), "claim {claim} missing: {claims}");
    }
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["email"], "tok@example.com");
    assert_eq!(claims["role"], "USER");
    assert_eq!(claims["iss"], app.config.jwt_issuer.as_str());
    let aud_ok = claims["aud"] == app.config.jwt_audience.as_str()
        || claims["aud"].as_array().is_some_and(|a| a.iter().any(|x| x == app.config.jwt_audience.as_str()));
    assert!(aud_ok, "{claims}");
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert!((iat - now()).abs() < 60, "iat {iat} is not now");
    assert_eq!(exp - iat, 900, "ACCESS_TOKEN_TTL defaults to 15 minutes");
    for claim in ["sub", "sid", "jti"] {
        let s = claims[claim].as_str().unwrap_or_else(|| panic!("{claim} is not a string"));
        assert!(uuid::Uuid::parse_str(s).is_ok(), "{claim} is not a UUID: {s}");
    }
    // sid is the session; jti is unique per token.
    let v = app.gql(&app.client(), Some(&token), ops::ME_SESSIONS_CURRENT, json!({})).await;
    let sessions = v["data"]["me"]["sessions"].as_array().unwrap_or_else(|| panic!("{v}"));
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{v}");
    assert_eq!(current[0]["id"], claims["sid"], "sid is not the current session's id");
    let again = app.login_body("tok@example.com", PASSWORD).await;
    let (_, claims2, _) = split(again["data"]["login"]["accessToken"].as_str().unwrap());
    assert_ne!(claims2["jti"], claims["jti"]);
    assert_ne!(claims2["sid"], claims["sid"], "a login starts a new session");
    assert_eq!(claims2["sub"], claims["sub"]);
}

#[tokio::test]
async fn resigned_unedited_token_is_accepted() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    // And the real one, of course.
    let v = me_with(&app, &token).await;
    assert_eq!(v["data"]["me"]["id"], id.as_str(), "{v}");
}

#[tokio::test]
async fn alg_none_is_rejected_in_every_spelling() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    let (_, claims, signature) = split(&token);
    let payload = B64.encode(claims.to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        for typ in [Some("at+jwt"), Some("JWT"), None] {
            let mut header = json!({ "alg": alg });
            if let Some(t) = typ {
                header["typ"] = t.into();
            }
            let head = B64.encode(header.to_string());
            for forged in
                [format!("{head}.{payload}."), format!("{head}.{payload}"), format!("{head}.{payload}.{signature}")]
            {
                let v = me_with(&app, &forged).await;
                assert_rejected(&v, "INVALID_TOKEN", &format!("alg {alg}, typ {typ:?}"));
            }
        }
    }
}

#[tokio::test]
async fn wrong_key_and_other_algorithms_are_rejected() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    let (header, claims, _) = split(&token);
    for key in [
        b"another-secret-another-secret-0123".as_slice(),
        b"".as_slice(),
        &JWT_SECRET.as_bytes()[..JWT_SECRET.len() - 1],
    ] {
        let v = me_with(&app, &sign_with(&header, &claims, key)).await;
        assert_rejected(&v, "INVALID_TOKEN", &format!("key of {} bytes", key.len()));
    }
    // The algorithm is pinned: another one named in the header, right key or not.
    for alg in ["HS384", "HS512", "RS256", "ES256"] {
        let header = json!({ "alg": alg, "typ": "at+jwt" });
        let v = me_with(&app, &sign(&header, &claims)).await;
        assert_rejected(&v, "INVALID_TOKEN", alg);
    }
}

#[tokio::test]
async fn edited_claims_with_the_original_signature_are_rejected() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    let other = app.register_body("victim@example.com").await;
    let (header, claims, signature) = split(&token);
    let head = B64.encode(header.to_string());
    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("role ADMIN", Box::new(|c: &mut Value| c["role"] = "ADMIN".into())),
        ("sub of another user", Box::new(move |c: &mut Value| c["sub"] = other.2.clone().into())),
        ("exp extended", Box::new(|c: &mut Value| c["exp"] = (c["exp"].as_i64().unwrap() + 86400).into())),
        ("email", Box::new(|c: &mut Value| c["email"] = "victim@example.com".into())),
    ];
    for (what, edit) in edits {
        let mut edited = claims.clone();
        edit(&mut edited);
        let forged = format!("{head}.{}.{signature}", B64.encode(edited.to_string()));
        let v = me_with(&app, &forged).await;
        assert_rejected(&v, "INVALID_TOKEN", what);
    }
    // A flipped signature bit.
    let mut sig = B64.decode(&signature).unwrap();
    sig[0] ^= 1;
    let (h, p) = token.rsplit_once('.').map(|(hp, _)| hp.split_once('.').unwrap()).unwrap();
    let v = me_with(&app, &format!("{h}.{p}.{}", B64.encode(sig))).await;
    assert_rejected(&v, "INVALID_TOKEN", "flipped signature bit");
    // The header edited (typ dropped), original signature kept.
    let v = me_with(&app, &format!("{}.{p}.{signature}", B64.encode(r#"{"alg":"HS256"}"#))).await;
    assert_rejected(&v, "INVALID_TOKEN", "header edited");
}

#[tokio::test]
async fn expired_tokens_are_rejected_as_expired() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    let (header, claims, _) = split(&token);
    for (ago, what) in [(60, "a minute ago"), (3600, "an hour ago"), (30 * 86400, "a month ago")] {
        let mut c = claims.clone();
        c["iat"] = (now() - ago - 900).into();
        if !c["nbf"].is_null() {
            c["nbf"] = (now() - ago - 900).into();
        }
        c["exp"] = (now() - ago).into();
        let v = me_with(&app, &sign(&header, &c)).await;
        assert_rejected(&v, "ACCESS_TOKEN_EXPIRED", what);
    }
}

#[tokio::test]
async fn tokens_not_yet_valid_are_rejected() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    let (header, claims, _) = split(&token);
    let mut c = claims.clone();
    c["nbf"] = (now() + 600).into();
    let v = me_with(&app, &sign(&header, &c)).await;
    assert_rejected(&v, "INVALID_TOKEN", "nbf ten minutes ahead");
}

#[tokio::test]
async fn wrong_issuer_audience_or_type_is_rejected() {
    let (app, token, _, id) = setup().await;
    assert_resigned_control_accepted(&app, &token, &id).await;
    let (header, claims, _) = split(&token);
    let edits: Vec<(&str, Value)> = vec![
        ("iss", json!("evil")),
        ("iss", json!("")),
        ("iss", json!("Authgraph")),
        ("aud", json!("other-app")),
        ("aud", json!(["other-app"])),
        ("aud", json!("")),
    ];
    for (claim, value) in edits {
        let mut c = claims.clone();
        c[claim] = value.clone();
        let v = me_with(&app, &sign(&header, &c)).await;
        assert_rejected(&v, "INVALID_TOKEN", &format!("{claim} = {value}"));
    }
    // Required claims cannot be left out.
    for claim in ["exp", "iss", "aud", "sub", "sid", "iat"] {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove(claim);
        let v = me_with(&app, &sign(&header, &c)).await;
        assert_rejected(&v, "INVALID_TOKEN", &format!("without {claim}"));
    }
    // typ must be at+jwt: an ordinary JWT (say an ID token) is not an access token.
    for typ in [json!("JWT"), json!("jwt"), json!("rt+jwt"), json!(null)] {
        let mut h = header.clone();
        match &typ {
            Value::Null => {
                h.as_object_mut().unwrap().remove("typ");
            }
            t => h["typ"] = t.clone(),
        }
        let v = me_with(&app, &sign(&h, &claims)).await;
        assert_rejected(&v, "INVALID_TOKEN", &format!("typ {typ}"));
    }
}

#[tokio::test]
async fn refresh_tokens_garbage_and_empty_bearers_are_rejected() {
    let (app, token, refresh, id) = setup().await;
    let v = me_with(&app, &refresh).await;
    assert_rejected(&v, "INVALID_TOKEN", "refresh token as bearer");
    let long = "x".repeat(4000);
    let garbage = ["junk", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9.e30.", "null", long.as_str()];
    for g in garbage {
        let v = me_with(&app, g).await;
        assert_rejected(&v, "INVALID_TOKEN", &format!("garbage {}", &g[..g.len().min(30)]));
    }
    // The token with something tacked on, or cut short.
    let v = me_with(&app, &format!("{token}x")).await;
    assert_rejected(&v, "INVALID_TOKEN", "token with a byte appended");
    let v = me_with(&app, &token[..token.len() - 1]).await;
    assert_rejected(&v, "INVALID_TOKEN", "token with a byte removed");
    let v = me_with(&app, &format!("{token} {token}")).await;
    assert_rejected(&v, "INVALID_TOKEN", "two tokens");
    // Empty bearers.
    for header in ["Bearer", "Bearer ", "Bearer    ", "Bearer \"\""] {
        let v = me_with_header(&app, header).await;
        assert_rejected(&v, "INVALID_TOKEN", &format!("{header:?}"));
    }
    // None of this hurt the real token.
    let v = me_with(&app, &token).await;
    assert_eq!(v["data"]["me"]["id"], id.as_str(), "{v}");
}

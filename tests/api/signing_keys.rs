//! Asymmetric signing keys: a new install signs ES256 (or EdDSA) with a key kept
//! in the database and published at `/.well-known/jwks.json`; a verifier that
//! holds only the JWK Set accepts the tokens; forgeries that lean on the public
//! key, the `kid` or a key carried in the token are refused; an HS256 install
//! publishes nothing.

use authgraph::{config::SigningAlgorithm, secret::Secret, service::core::signing_keys};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const KEK: &str = "key-encryption-secret-for-tests-0123456789";

async fn spawn_signing(alg: SigningAlgorithm) -> TestApp {
    spawn_with(move |c| {
        c.jwt_algorithm = alg;
        c.key_encryption_secret = Some(Secret::new(KEK.as_bytes().to_vec()));
    })
    .await
}

async fn get_json(app: &TestApp, path: &str) -> (reqwest::header::HeaderMap, Value) {
    let resp = bare().get(app.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let headers = resp.headers().clone();
    (headers, resp.json().await.unwrap())
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap()
}

/// A token's claims, read without checking anything.
fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

async fn me_id(app: &TestApp, token: &str) -> Value {
    gql_at(app.addr, Some(token), "{ me { id } }").await
}

/// Verifies `token` as an outside service would: with the JWK Set alone.
fn verify_with_jwks(jwks: &Value, token: &str, app: &TestApp) -> Result<Value, String> {
    let kid = header_of(token)["kid"].as_str().ok_or("no kid")?.to_owned();
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or("kid not published")?;
    let alg: Algorithm = jwk["alg"].as_str().ok_or("no alg")?.parse().map_err(|e| format!("{e}"))?;
    let key = DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&app.config.jwt_issuer]);
    validation.set_audience(&[&app.config.jwt_audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims).map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_new_install_signs_with_a_published_key_that_outside_verifiers_accept() {
    for (alg, name, kty) in [(SigningAlgorithm::Es256, "ES256", "EC"), (SigningAlgorithm::EdDsa, "EdDSA", "OKP")] {
        let app = spawn_signing(alg).await;
        let (headers, jwks) = get_json(&app, "/.well-known/jwks.json").await;
        let cache = headers["cache-control"].to_str().unwrap();
        assert!(cache.starts_with("public, max-age="), "{cache}");
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{jwks}");
        let key = &keys[0];
        assert_eq!(key["kty"], kty);
        assert_eq!(key["alg"], name);
        assert_eq!(key["use"], "sig");
        assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
        assert!(key.get("d").is_none(), "{name}: the private key was published: {key}");

        let user = app.user(&format!("{}@example.com", name.to_lowercase())).await;
        let header = header_of(&user.access_token);
        assert_eq!(header["alg"], name);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], key["kid"]);
        let claims = verify_with_jwks(&jwks, &user.access_token, &app).unwrap();
        assert_eq!(claims["sub"], user.id.as_str());
        assert_eq!(me_id(&app, &user.access_token).await["data"]["me"]["id"], user.id.as_str());
    }
}

#[tokio::test]
async fn an_hs256_install_publishes_no_key_and_names_its_own() {
    let app = spawn_app().await;
    let (_, jwks) = get_json(&app, "/.well-known/jwks.json").await;
    assert_eq!(jwks, json!({ "keys": [] }));
    let user = app.user("hs@example.com").await;
    let header = header_of(&user.access_token);
    assert_eq!(header["alg"], "HS256");
    let kid = header["kid"].as_str().unwrap();
    assert!(kid.starts_with("hs256-") && !kid.contains(JWT_SECRET), "{kid}");
    // A token from before keys had ids (no kid) still passes.
    let claims = claims_of(&user.access_token);
    let mut old = Header::new(Algorithm::HS256);
    old.typ = Some("at+jwt".into());
    let unnamed = jsonwebtoken::encode(&old, &claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap();
    assert_eq!(me_id(&app, &unnamed).await["data"]["me"]["id"], user.id.as_str());
}

#[tokio::test]
async fn discovery_points_at_the_key_set() {
    let app = spawn_signing(SigningAlgorithm::Es256).await;
    let (headers, doc) = get_json(&app, "/.well-known/openid-configuration").await;
    // Built from the request's Host: never from a shared cache.
    assert!(headers["cache-control"].to_str().unwrap().starts_with("private"), "{headers:?}");
    assert!(headers["vary"].to_str().unwrap().contains("Host"), "{headers:?}");
    assert_eq!(doc["issuer"], app.config.jwt_issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("http://{}/.well-known/jwks.json", app.addr));
    assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["ES256"]));
    // X-Forwarded-Proto counts only from a trusted proxy.
    let forwarded = |app: &TestApp| {
        let url = app.url("/.well-known/openid-configuration");
        async move {
            bare().get(url).header("x-forwarded-proto", "https").send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    assert_eq!(forwarded(&app).await["jwks_uri"], format!("http://{}/.well-known/jwks.json", app.addr));
    let proxied = spawn_with(|c| {
        c.jwt_algorithm = SigningAlgorithm::Es256;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    assert_eq!(forwarded(&proxied).await["jwks_uri"], format!("https://{}/.well-known/jwks.json", proxied.addr));

    let app = spawn_with(|c| {
        c.jwt_algorithm = SigningAlgorithm::Es256;
        c.jwt_issuer = "https://auth.example.com/".into();
    })
    .await;
    let (headers, doc) = get_json(&app, "/.well-known/openid-configuration").await;
    assert_eq!(doc["jwks_uri"], "https://auth.example.com/.well-known/jwks.json");
    assert!(headers["cache-control"].to_str().unwrap().starts_with("public"), "{headers:?}");
}

/// Forgeries a verifier that trusts the token's header would fall for.
#[tokio::test]
async fn forgeries_around_the_public_key_are_refused() {
    let app = spawn_signing(SigningAlgorithm::Es256).await;
    let user = app.user("victim@example.com").await;
    let (_, jwks) = get_json(&app, "/.well-known/jwks.json").await;
    let jwk = &jwks["keys"][0];
    let kid = jwk["kid"].as_str().unwrap();
    let claims: Value = claims_of(&user.access_token);
    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("ADMIN");

    let header = |alg: Algorithm, kid: Option<&str>| {
        let mut h = Header::new(alg);
        h.typ = Some("at+jwt".into());
        h.kid = kid.map(str::to_owned);
        h
    };
    let hs = |secret: &[u8], kid: Option<&str>| {
        jsonwebtoken::encode(&header(Algorithm::HS256, kid), &claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    // The public key as an HMAC secret (the RS/HS confusion of CVE-2016-10555),
    // in every form a verifier might hold it.
    let x = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = B64.decode(jwk["y"].as_str().unwrap()).unwrap();
    let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
    let mut forgeries = vec![
        ("HS256 under the JWK text", hs(jwk.to_string().as_bytes(), Some(kid))),
        ("HS256 under the JWK Set text", hs(jwks.to_string().as_bytes(), Some(kid))),
        ("HS256 under the public point", hs(&point, Some(kid))),
        ("HS256 under x", hs(&x, Some(kid))),
        ("HS256 without kid", hs(&point, None)),
    ];
    // alg none, with the real kid.
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string()),
        B64.encode(claims.to_string())
    );
    forgeries.push(("alg none", none));
    // Signed by a key of our own, named by the real kid, or carried in the
    // header (`jwk`), or pointed at (`jku`, `x5u`).
    let ours = authgraph::auth::keys::generate(SigningAlgorithm::Es256, "attacker").unwrap();
    let our_key = EncodingKey::from_ec_der(&ours.pkcs8);
    let mut h = header(Algorithm::ES256, Some(kid));
    forgeries.push(("a foreign key under the real kid", jsonwebtoken::encode(&h, &admin_claims, &our_key).unwrap()));
    h.kid = Some("attacker".into());
    h.jwk = Some(serde_json::from_value(ours.public_jwk.clone()).unwrap());
    forgeries.push(("a key carried in the header", jsonwebtoken::encode(&h, &admin_claims, &our_key).unwrap()));
    h.jwk = None;
    h.jku = Some("http://127.0.0.1:9/jwks.json".into());
    h.x5u = Some("http://127.0.0.1:9/cert.pem".into());
    forgeries.push(("jku and x5u", jsonwebtoken::encode(&h, &admin_claims, &our_key).unwrap()));
    let mut missing = header(Algorithm::ES256, Some("no-such-key"));
    forgeries.push(("a kid never published", jsonwebtoken::encode(&missing, &claims, &our_key).unwrap()));
    missing.kid = None;
    forgeries.push(("no kid", jsonwebtoken::encode(&missing, &claims, &our_key).unwrap()));

    for (what, token) in forgeries {
        let v = me_id(&app, &token).await;
        assert_eq!(code(&v), "UNAUTHENTICATED", "{what}: {v}");
        assert_eq!(reason(&v), "INVALID_TOKEN", "{what}: {v}");
    }
    // The control: the real token passes.
    assert_eq!(me_id(&app, &user.access_token).await["data"]["me"]["id"], user.id.as_str());
}

/// Keys live in the database: a restart signs with the same key, so tokens
/// issued before it still pass; another `KEY_ENCRYPTION_SECRET` cannot open
/// them and the server says so instead of starting; a change of algorithm
/// retires the old key, which stays published while its tokens live.
#[tokio::test]
async fn keys_survive_a_restart_and_an_algorithm_change_breaks_no_token() {
    let mut app = spawn_signing(SigningAlgorithm::Es256).await;
    let user = app.user("keep@example.com").await;
    let kid = header_of(&user.access_token)["kid"].clone();
    let config = app.config.clone();
    app.stop().await;

    let mut wrong = config.clone();
    wrong.key_encryption_secret = Some(Secret::new(b"another-key-encryption-secret-0123456789".to_vec()));
    let err = authgraph::app::spawn(&wrong).await.err().expect("started with keys it cannot open").to_string();
    assert!(err.contains("KEY_ENCRYPTION_SECRET"), "{err}");
    assert!(!err.contains(KEK), "{err}");

    let again = authgraph::app::spawn(&config).await.expect("restart");
    let v = gql_at(again.addr, Some(&user.access_token), "{ me { id } }").await;
    assert_eq!(v["data"]["me"]["id"], user.id.as_str(), "{v}");
    again.stop().await.unwrap();

    let mut eddsa = config.clone();
    eddsa.jwt_algorithm = SigningAlgorithm::EdDsa;
    let switched = authgraph::app::spawn(&eddsa).await.expect("restart with EdDSA");
    let v = gql_at(switched.addr, Some(&user.access_token), "{ me { id } }").await;
    assert_eq!(v["data"]["me"]["id"], user.id.as_str(), "a token of the ES256 key: {v}");
    // The new key is published, and signs only after the lead time: the ES256
    // key still signs meanwhile.
    let fresh = gql_vars_at(
        switched.addr,
        None,
        ops::LOGIN_TOKENS,
        json!({ "i": { "email": "keep@example.com", "password": PASSWORD, "transport": "BODY" } }),
    )
    .await;
    let fresh = fresh["data"]["login"]["accessToken"].as_str().unwrap();
    assert_eq!(header_of(fresh)["alg"], "ES256");
    let jwks: Value = bare()
        .get(format!("http://{}/.well-known/jwks.json", switched.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let algs: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs.len(), 2, "{jwks}");
    assert!(algs.contains(&"ES256") && algs.contains(&"EdDSA"), "{jwks}");
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid));
    switched.stop().await.unwrap();
}

/// Verifies an ES256 token from a JWK Set with no JWT library at all, as an
/// independent implementation would: the key by `kid`, the P-256 signature
/// over `header.payload` (p256), then `iss`, `aud` and `exp` by hand.
fn verify_es256_by_hand(jwks: &Value, token: &str, app: &TestApp) -> Result<Value, String> {
    use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
    let json = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&B64.decode(part).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    };
    let [h, p, sig]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().map_err(|_| "not three parts")?;
    let header = json(h)?;
    if header["alg"] != "ES256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header["kid"]))
        .ok_or("kid not published")?;
    if jwk["alg"] != "ES256" || jwk["kty"] != "EC" || jwk["crv"] != "P-256" {
        return Err(format!("not a P-256 key: {jwk}"));
    }
    let coordinate = |c: &str| B64.decode(jwk[c].as_str().unwrap_or_default()).map_err(|e| e.to_string());
    let point = [vec![4u8], coordinate("x")?, coordinate("y")?].concat();
    let key = VerifyingKey::from_sec1_bytes(&point).map_err(|e| e.to_string())?;
    let signature = Signature::from_slice(&B64.decode(sig).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    key.verify(format!("{h}.{p}").as_bytes(), &signature).map_err(|e| format!("signature: {e}"))?;
    let claims = json(p)?;
    if claims["iss"] != app.config.jwt_issuer.as_str() || claims["aud"] != app.config.jwt_audience.as_str() {
        return Err(format!("iss or aud: {claims}"));
    }
    if claims["exp"].as_i64().is_none_or(|exp| exp <= app.config.clock.unix()) {
        return Err(format!("expired: {claims}"));
    }
    Ok(claims)
}

/// A verifier outside authgraph that caches the JWK Set for its `max-age`
/// (judged by the server's clock, which the test moves) and fetches it again
/// only when that has passed: never on an unknown `kid`, the strictest of the
/// common behaviours. It checks tokens with no JWT library
/// ([`verify_es256_by_hand`]).
struct CachingVerifier {
    jwks: Value,
    fetched_at: i64,
    max_age: i64,
}

impl CachingVerifier {
    async fn new(app: &TestApp) -> Self {
        let (headers, jwks) = get_json(app, "/.well-known/jwks.json").await;
        let max_age = headers["cache-control"].to_str().unwrap().rsplit('=').next().unwrap().parse().unwrap();
        Self { jwks, fetched_at: app.config.clock.unix(), max_age }
    }

    async fn verify(&mut self, app: &TestApp, token: &str) -> Result<Value, String> {
        if app.config.clock.unix() - self.fetched_at >= self.max_age {
            *self = Self::new(app).await;
        }
        verify_es256_by_hand(&self.jwks, token, app)
    }
}

/// Clients keep refreshing and calling while the key rotates: through the
/// lead time, the switch, and until the old key leaves the set, every token
/// authgraph issued is accepted by authgraph and by a verifier that caches the
/// JWK Set, at every step of 30 s, including tokens issued just before the
/// switch.
#[tokio::test]
async fn a_rotation_under_load_refuses_no_valid_token() {
    let app = spawn_with(|c| {
        c.jwt_algorithm = SigningAlgorithm::Es256;
        c.jwt_key_lead_time = std::time::Duration::from_secs(360);
    })
    .await;
    let (admin, _) = make_admin(&app, "root@example.com").await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(app.user(&format!("c{i}@example.com")).await);
    }
    let mut verifier = CachingVerifier::new(&app).await;
    let step = std::time::Duration::from_secs(30);
    // Tokens still within their lifetime, with when they expire.
    let mut live: Vec<(String, String, i64)> = Vec::new();
    let mut kids = std::collections::BTreeSet::new();
    let mut rotated_kid = None;
    for round in 0..46 {
        if round == 3 {
            let v = ok(&app, &admin, "mutation { rotateSigningKey { kid state signsFrom } }", json!({})).await;
            assert_eq!(v["rotateSigningKey"]["state"], "NEXT", "{v}");
            rotated_kid = Some(v["rotateSigningKey"]["kid"].as_str().unwrap().to_owned());
        }
        for client in &mut clients {
            let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": client.refresh_token })).await;
            let access =
                v["data"]["refreshToken"]["accessToken"].as_str().unwrap_or_else(|| panic!("round {round}: {v}"));
            client.access_token = access.to_owned();
            client.refresh_token = v["data"]["refreshToken"]["refreshToken"].as_str().unwrap().to_owned();
            kids.insert(header_of(access)["kid"].as_str().unwrap().to_owned());
            let exp = app.config.clock.unix() + 900;
            live.push((client.id.clone(), client.access_token.clone(), exp));
        }
        // The background round (every 30 s on a server) at this moment.
        let services = &app.state().services;
        let keys = services.signing.as_ref().unwrap();
        signing_keys::refresh(&services.db, keys, &services.tokens, app.config.clock.now()).await.unwrap();
        let now = app.config.clock.unix();
        live.retain(|(_, _, exp)| *exp > now);
        // This round's tokens and the oldest still alive (signed by the old
        // key until they expire, well after the switch).
        let newest = live.len().saturating_sub(clients.len());
        let checked = live.iter().take(clients.len()).chain(live.iter().skip(newest.max(clients.len())));
        for (id, token, _) in checked {
            let v = me_id(&app, token).await;
            assert_eq!(v["data"]["me"]["id"], id.as_str(), "round {round}: authgraph refused a valid token: {v}");
            let claims =
                verifier.verify(&app, token).await.unwrap_or_else(|e| panic!("round {round}: the verifier: {e}"));
            assert_eq!(claims["sub"], id.as_str());
        }
        app.clock.advance(step);
    }
    let rotated = rotated_kid.unwrap();
    assert!(kids.contains(&rotated), "the new key never signed: {kids:?}");
    assert_eq!(kids.len(), 2, "{kids:?}");
    // Once the old key's tokens have all expired (and the margin is past), it
    // leaves the set.
    app.clock.advance(std::time::Duration::from_secs(300));
    let services = &app.state().services;
    let keys = services.signing.as_ref().unwrap();
    signing_keys::refresh(&services.db, keys, &services.tokens, app.config.clock.now()).await.unwrap();
    let (_, jwks) = get_json(&app, "/.well-known/jwks.json").await;
    let published: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(published, vec![rotated.as_str()], "{jwks}");

    // A key that has left the set signs nothing authgraph accepts, even with
    // its real private key and a token that has not expired.
    let old_kid = kids.iter().find(|k| **k != rotated).unwrap().clone();
    let row = entity::signing_key::Entity::find_by_id(old_kid.clone()).one(&services.db).await.unwrap().unwrap();
    let sealer = authgraph::auth::keys::Sealer::new(&Secret::new(JWT_SECRET.as_bytes().to_vec()));
    let pkcs8 =
        sealer.open(&authgraph::auth::keys::identity(&row.kid, &row.alg, &row.public_jwk), &row.private_key).unwrap();
    let claims = claims_of(&clients[0].access_token);
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some("at+jwt".into());
    h.kid = Some(old_kid);
    let resigned = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(&pkcs8)).unwrap();
    let v = me_id(&app, &resigned).await;
    assert_eq!(reason(&v), "INVALID_TOKEN", "a token of a key no longer published passed: {v}");
    // The control: the same claims under the current token pass.
    assert_eq!(me_id(&app, &clients[0].access_token).await["data"]["me"]["id"], clients[0].id.as_str());
}

/// Claims for gateways: `scope` (what Apollo Router's `@requiresScopes` reads)
/// always, Hasura's claims when asked for; both seen by an outside verifier,
/// and both following the role at issue.
#[tokio::test]
async fn tokens_carry_scope_and_on_request_hasura_claims() {
    let app = spawn_with(|c| {
        c.jwt_algorithm = SigningAlgorithm::Es256;
        c.jwt_hasura_claims = true;
    })
    .await;
    let (_, jwks) = get_json(&app, "/.well-known/jwks.json").await;
    let user = app.user("member@example.com").await;
    let claims = verify_with_jwks(&jwks, &user.access_token, &app).unwrap();
    assert_eq!(claims["scope"], "user");
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-user-id"], user.id.as_str());
    assert_eq!(hasura["x-hasura-default-role"], "user");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["user"]));

    let (admin, admin_id) = make_admin(&app, "root@example.com").await;
    let claims = verify_with_jwks(&jwks, &admin, &app).unwrap();
    assert_eq!(claims["scope"], "user admin");
    let hasura = &claims["https://hasura.io/jwt/claims"];
    assert_eq!(hasura["x-hasura-user-id"], admin_id.as_str());
    assert_eq!(hasura["x-hasura-default-role"], "admin");
    assert_eq!(hasura["x-hasura-allowed-roles"], json!(["user", "admin"]));

    // Off by default: no Hasura claims, the scope still there.
    let plain = spawn_signing(SigningAlgorithm::Es256).await;
    let user = plain.user("plain@example.com").await;
    let claims: Value = claims_of(&user.access_token);
    assert_eq!(claims["scope"], "user");
    assert!(claims.get("https://hasura.io/jwt/claims").is_none(), "{claims}");
}

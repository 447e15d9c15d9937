//! Faults found by trying authgraph with inputs from bugs reported against
//! other auth servers: one mailbox is one account whatever its spelling,
//! invisible characters are refused, passwords are normalised, search folds
//! every script, every password check spends one budget, and credentials that
//! change under a concurrent request leave nothing authenticated by the old ones.

use std::time::Duration;

use futures_util::future::join_all;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::{helpers::*, ops};

const ME_SESSIONS: &str = "{ me { id sessions { id } } }";

fn data<'a>(v: &'a Value, field: &str) -> &'a Value {
    assert!(v["errors"].is_null(), "{field}: {v}");
    &v["data"][field]
}

async fn stored_user(app: &TestApp, id: &str) -> entity::user::Model {
    entity::user::Entity::find_by_id(id.parse::<uuid::Uuid>().unwrap())
        .one(&app.state().services.db)
        .await
        .unwrap()
        .expect("the user row")
}

// Identity: one mailbox, one account

#[tokio::test]
async fn every_unicode_spelling_of_an_address_is_one_account() {
    let app = spawn_app().await;
    let composed = "jos\u{e9}@example.com";
    let decomposed = "jose\u{301}@example.com";
    let id = data(&register_raw(&app, composed, PASSWORD, None).await, "register")["user"]["id"].clone();
    for spelling in [decomposed, "JOSE\u{301}@EXAMPLE.COM", "Jos\u{c9}@Example.com"] {
        let v = register_raw(&app, spelling, PASSWORD, None).await;
        assert_eq!(reason(&v), "EMAIL_TAKEN", "{spelling:?}: {v}");
        // Like every input error, it names the field.
        assert_eq!(v["errors"][0]["extensions"]["field"], "email", "{v}");
        let v = login_raw(&app, spelling, PASSWORD).await;
        assert_eq!(data(&v, "login")["user"]["id"], id, "{spelling:?} reached another account");
    }

    // A domain typed with a decomposed letter is the same domain as composed or
    // in its ASCII (punycode) form.
    let v = register_raw(&app, "u@bu\u{308}cher.example", PASSWORD, None).await;
    let id = data(&v, "register")["user"]["id"].clone();
    for spelling in ["u@b\u{fc}cher.example", "U@B\u{dc}CHER.EXAMPLE", "u@xn--bcher-kva.example"] {
        assert_eq!(reason(&register_raw(&app, spelling, PASSWORD, None).await), "EMAIL_TAKEN", "{spelling:?}");
        assert_eq!(data(&login_raw(&app, spelling, PASSWORD).await, "login")["user"]["id"], id, "{spelling:?}");
    }
    // The profile keeps the address in NFC, and a change of address is keyed alike.
    let other = app.user("other@example.com").await;
    let v = other
        .gql(&app, "mutation($e: String) { updateProfile(input: { email: $e }) { email } }", json!({ "e": decomposed }))
        .await;
    assert_eq!(reason(&v), "EMAIL_TAKEN", "{v}");
}

/// Rows keyed by the old rule (lower-casing only) are re-keyed by the migration;
/// two accounts that turn out to be one mailbox stop it, named, with nothing
/// changed, instead of being merged.
#[tokio::test]
async fn old_rows_are_re_keyed_and_collisions_are_reported() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, sea_query::Query};
    let database = TestDatabase::create().await;
    let db = authgraph::db::connect(database.url(), Duration::from_secs(5), 1).await.unwrap();
    Migrator::up(&db, Some(4)).await.unwrap();
    let insert = |id: uuid::Uuid, email: &str| {
        let now = chrono::Utc::now();
        Query::insert()
            .into_table("users")
            .columns(["id", "email", "email_normalized", "name", "password_hash", "role", "created_at", "updated_at"])
            .values_panic([
                id.into(),
                email.into(),
                email.to_lowercase().into(),
                "n".into(),
                "$argon2id$x".into(),
                "user".into(),
                now.into(),
                now.into(),
            ])
            .to_owned()
    };
    let (a, b, c) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, email) in [(a, "Jos\u{e9}@Example.com"), (b, "jose\u{301}@example.com"), (c, "U@B\u{dc}cher.example")] {
        db.execute(&insert(id, email)).await.unwrap();
    }
    let err = Migrator::up(&db, None).await.expect_err("a collision must stop the migration").to_string();
    assert!(err.contains(&format!("{a}, {b}")), "{err}");
    assert!(!err.contains(&c.to_string()) && !err.contains("example"), "only the colliding ids: {err}");
    // The operator resolves it; the next run re-keys what is left.
    db.execute(
        &Query::delete()
            .from_table("users")
            .and_where(sea_orm::ExprTrait::eq(sea_orm::sea_query::Expr::col("id"), b))
            .to_owned(),
    )
    .await
    .unwrap();
    Migrator::up(&db, None).await.unwrap();
    let rows = entity::user::Entity::find().all(&db).await.unwrap();
    let key_of = |id| rows.iter().find(|r| r.id == id).unwrap();
    assert_eq!(key_of(a).email_normalized, "jos\u{e9}@example.com");
    assert_eq!(key_of(a).search_key, "n\njos\u{e9}@example.com");
    assert_eq!(key_of(c).search_key, "n\nu@b\u{fc}cher.example\nu@xn--bcher-kva.example");
    assert_eq!(key_of(c).email_normalized, "u@xn--bcher-kva.example");
    db.close().await.unwrap();
}

/// Case folding and IDNA lengthen an address; one whose key would not fit the
/// key column is refused as input, on both backends, not failed as a 500.
#[tokio::test]
async fn an_address_whose_key_would_overflow_is_invalid_input() {
    let app = spawn_app().await;
    let label = "d".repeat(60);
    let domain = format!("{label}.{label}.{label}.{}.com", "d".repeat(30));
    let email = format!("{}@{domain}", "\u{df}".repeat(32));
    assert!(email.chars().count() <= 254);
    let v = register_raw(&app, &email, PASSWORD, None).await;
    assert_eq!(reason(&v), "INVALID_EMAIL", "{v}");
}

#[tokio::test]
async fn invisible_and_direction_changing_characters_are_refused() {
    let app = spawn_app().await;
    data(&register_raw(&app, "admin@example.com", PASSWORD, None).await, "register");
    for email in [
        "ad\u{200b}min@example.com",
        "ad\u{2060}min@example.com",
        "ad\u{ad}min@example.com",
        "ad\u{200d}min@example.com",
        "\u{feff}admin@example.com",
        "\u{202e}admin@example.com",
        "admin@exam\u{200b}ple.com",
        "ad\u{34f}min@example.com",
        "ad\u{fe0f}min@example.com",
        "\u{3164}admin@example.com",
        "ad\u{180b}min@example.com",
        "admin\u{e0041}@example.com",
    ] {
        let v = register_raw(&app, email, PASSWORD, None).await;
        assert_eq!(reason(&v), "INVALID_EMAIL", "{email:?}: {v}");
        assert_eq!(v["errors"][0]["extensions"]["field"], "email", "{v}");
    }
    for name in [
        "Ada\u{202e}txt.exe",
        "\u{2066}Ada",
        "A\u{200b}da",
        "Ada\u{200f}",
        "\u{feff}Ada",
        "Ada\u{61c}",
        "A\u{200d}da",
        "Ada\u{34f}",
        "\u{3164}",
        "Ada\u{e0041}",
    ] {
        let v = register_raw(&app, "named@example.com", PASSWORD, Some(name)).await;
        assert_eq!(reason(&v), "INVALID_NAME", "{name:?}: {v}");
    }
    // Emoji keep the joiners they need, and a name is kept in NFC.
    let v = register_raw(&app, "emoji@example.com", PASSWORD, Some("Ada \u{1f469}\u{200d}\u{1f4bb}")).await;
    assert_eq!(data(&v, "register")["user"]["name"], "Ada \u{1f469}\u{200d}\u{1f4bb}");
    let v = register_raw(&app, "elodie@example.com", PASSWORD, Some("E\u{301}lodie")).await;
    assert_eq!(data(&v, "register")["user"]["name"], "\u{c9}lodie");
}

#[tokio::test]
async fn a_password_is_the_same_password_however_its_accents_are_typed() {
    let app = spawn_app().await;
    let composed = "Cr\u{e8}me br\u{fb}l\u{e9}e \u{e0} la fran\u{e7}aise";
    let decomposed = "Cre\u{300}me bru\u{302}le\u{301}e a\u{300} la franc\u{327}aise";
    data(&register_raw(&app, "creme@example.com", composed, None).await, "register");
    data(&login_raw(&app, "creme@example.com", decomposed).await, "login");
    data(&login_raw(&app, "creme@example.com", composed).await, "login");
    assert_eq!(
        reason(&login_raw(&app, "creme@example.com", "Creme brulee a la francaise").await),
        "INVALID_CREDENTIALS"
    );

    // An account whose hash was made from the typed bytes (before passwords were
    // normalised) keeps working, and moves to the normalised form at its next login.
    let v = register_raw(&app, "legacy@example.com", PASSWORD, None).await;
    let id = data(&v, "register")["user"]["id"].as_str().unwrap().to_owned();
    let raw_hash = {
        use argon2::{PasswordHasher as _, password_hash::SaltString};
        let salt = SaltString::encode_b64(b"a fixed test salt").unwrap();
        argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(19 * 1024, 2, 1, None).unwrap(),
        )
        .hash_password(decomposed.as_bytes(), &salt)
        .unwrap()
        .to_string()
    };
    entity::user::Entity::update_many()
        .col_expr(entity::user::Column::PasswordHash, sea_orm::sea_query::Expr::value(raw_hash.clone()))
        .filter(entity::user::Column::Id.eq(id.parse::<uuid::Uuid>().unwrap()))
        .exec(&app.state().services.db)
        .await
        .unwrap();
    data(&login_raw(&app, "legacy@example.com", decomposed).await, "login");
    let rehashed = stored_user(&app, &id).await.password_hash;
    assert_ne!(rehashed, raw_hash, "the raw-bytes hash was not replaced");
    data(&login_raw(&app, "legacy@example.com", composed).await, "login");

    // Eight characters as typed, 144 once normalised (U+FDFA expands): an old
    // account with such a password is not refused by the length limit.
    let long = "\u{fdfa}".repeat(8);
    let v = register_raw(&app, "expands@example.com", PASSWORD, None).await;
    let id = data(&v, "register")["user"]["id"].as_str().unwrap().to_owned();
    set_hash(&app, &id, &raw_argon2(argon2::Algorithm::Argon2id, &long)).await;
    data(&login_raw(&app, "expands@example.com", &long).await, "login");
}

/// A PHC hash of `password`'s bytes as typed, with the server's parameters.
fn raw_argon2(algorithm: argon2::Algorithm, password: &str) -> String {
    use argon2::{PasswordHasher as _, password_hash::SaltString};
    let salt = SaltString::encode_b64(b"a fixed test salt").unwrap();
    argon2::Argon2::new(algorithm, argon2::Version::V0x13, argon2::Params::new(19 * 1024, 2, 1, None).unwrap())
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

async fn set_hash(app: &TestApp, id: &str, hash: &str) {
    entity::user::Entity::update_many()
        .col_expr(entity::user::Column::PasswordHash, sea_orm::sea_query::Expr::value(hash.to_owned()))
        .filter(entity::user::Column::Id.eq(id.parse::<uuid::Uuid>().unwrap()))
        .exec(&app.state().services.db)
        .await
        .unwrap();
}

/// Two correct logins at once on an account whose hash is upgraded at login:
/// both get in (the second sees the first's upgrade, not a changed password).
#[tokio::test]
async fn concurrent_logins_that_upgrade_one_hash_both_succeed() {
    let app = spawn_app().await;
    for round in 0..3 {
        let email = format!("upgrade{round}@example.com");
        let v = register_raw(&app, &email, PASSWORD, None).await;
        let id = data(&v, "register")["user"]["id"].as_str().unwrap().to_owned();
        set_hash(&app, &id, &raw_argon2(argon2::Algorithm::Argon2i, PASSWORD)).await;
        let (a, b) = tokio::join!(login_raw(&app, &email, PASSWORD), login_raw(&app, &email, PASSWORD));
        data(&a, "login");
        data(&b, "login");
        assert!(stored_user(&app, &id).await.password_hash.starts_with("$argon2id$"), "round {round}");
    }
}

/// A login that read the row before a role change commits must not bring the
/// old role back: the session goes live with the row as the login wrote it.
#[tokio::test]
async fn a_login_racing_a_demotion_does_not_keep_the_admin_role() {
    let app = spawn_with(|c| c.password.threads = 1).await;
    let (root, _) = make_admin(&app, "root@example.com").await;
    let (_, victim) = make_admin(&app, "demoted@example.com").await;
    for i in 0..6 {
        app.register_body(&format!("filler{i}@example.com")).await;
    }
    // Fillers occupy the one hashing thread, so the admin's login waits in the
    // queue, with its row read, while the demotion commits.
    let fillers =
        (0..6).map(|i| login_raw(&app, Box::leak(format!("filler{i}@example.com").into_boxed_str()), PASSWORD));
    let login = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        login_raw(&app, "demoted@example.com", PASSWORD).await
    };
    let demote = async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        ok(&app, &root, "mutation($id: ID!) { setUserRole(id: $id, role: USER) { role } }", json!({ "id": victim }))
            .await
    };
    let (_, v, demoted) = tokio::join!(join_all(fillers), login, demote);
    assert_eq!(demoted["setUserRole"]["role"], "USER");
    let token = data(&v, "login")["accessToken"].as_str().unwrap().to_owned();
    let me = app.gql(&app.client(), Some(&token), ops::ME_ROLE, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "USER", "{me}");
    let users = app.gql(&app.client(), Some(&token), "{ users { totalCount } }", json!({})).await;
    assert_eq!(code(&users), "FORBIDDEN", "a demoted admin's new session still acts as admin: {users}");
}

#[tokio::test]
async fn admin_search_folds_case_and_spelling_in_every_script() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, "root@example.com").await;
    data(&register_raw(&app, "elodie@example.com", PASSWORD, Some("\u{c9}lodie \u{dc}nal")).await, "register");
    data(
        &register_raw(&app, "dmitry@example.com", PASSWORD, Some("\u{414}\u{43c}\u{438}\u{442}\u{440}\u{438}\u{439}"))
            .await,
        "register",
    );
    data(&register_raw(&app, "ascii@example.com", PASSWORD, Some("Plain Name")).await, "register");
    data(&register_raw(&app, "u@b\u{fc}cher.example", PASSWORD, Some("Mailer")).await, "register");
    let search = "query($s: String) { users(search: $s) { totalCount nodes { email } } }";
    let found = |v: Value| -> Vec<String> {
        v["users"]["nodes"].as_array().unwrap().iter().map(|n| n["email"].as_str().unwrap().to_owned()).collect()
    };
    for (term, email) in [
        ("\u{c9}lodie", "elodie@example.com"),
        ("\u{e9}lodie", "elodie@example.com"),
        ("\u{c9}LODIE", "elodie@example.com"),
        ("E\u{301}LODIE", "elodie@example.com"),
        ("\u{fc}nal", "elodie@example.com"),
        ("\u{414}\u{43c}\u{438}\u{442}\u{440}\u{438}\u{439}", "dmitry@example.com"),
        ("\u{434}\u{43c}\u{438}\u{442}\u{440}\u{438}\u{439}", "dmitry@example.com"),
        ("\u{414}\u{41c}\u{418}\u{422}\u{420}\u{418}\u{419}", "dmitry@example.com"),
        ("plain", "ascii@example.com"),
        ("B\u{dc}CHER", "u@b\u{fc}cher.example"),
        ("ASCII@EXAMPLE", "ascii@example.com"),
    ] {
        let v = ok(&app, &admin, search, json!({ "s": term })).await;
        assert_eq!(found(v.clone()), vec![email.to_owned()], "search {term:?}: {v}");
        assert_eq!(v["users"]["totalCount"], 1, "{term:?}: {v}");
    }
    // LIKE's wildcards and the index's query syntax are matched literally.
    for term in ["%", "_", "\"", "a\" OR \"b", "NEAR(x y)", "*"] {
        let v = ok(&app, &admin, search, json!({ "s": term })).await;
        assert_eq!(v["users"]["totalCount"], 0, "{term:?}: {v}");
    }
    // The index follows every change: a new name is found, the old one is not,
    // and a deleted account is gone.
    let renamed = app.user("renamed@example.com").await;
    ok(&app, &renamed.access_token, "mutation { updateProfile(input: { name: \"Zoë Quixote\" }) { name } }", json!({}))
        .await;
    let v = ok(&app, &admin, search, json!({ "s": "zoë quix" })).await;
    assert_eq!(found(v), vec!["renamed@example.com".to_owned()]);
    let v = ok(&app, &admin, search, json!({ "s": "renamed@" })).await;
    assert_eq!(v["users"]["totalCount"], 1, "{v}");
    app.change_address(&renamed.access_token, "moved@example.com").await;
    let v = ok(&app, &admin, search, json!({ "s": "renamed@" })).await;
    assert_eq!(v["users"]["totalCount"], 0, "the old address is still found: {v}");
    ok(&app, &admin, ops::DELETE_USER, json!({ "id": renamed.id })).await;
    let v = ok(&app, &admin, search, json!({ "s": "quixote" })).await;
    assert_eq!(v["users"]["totalCount"], 0, "a deleted account is still found: {v}");
}

/// Two profile changes at once (one of the name, and the confirmation of a
/// new address): the stored search key always matches the stored name and
/// address.
#[tokio::test]
async fn concurrent_profile_changes_keep_the_search_key_in_step() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, "root@example.com").await;
    let search = "query($s: String) { users(search: $s) { totalCount } }";
    for round in 0..5 {
        let user = app.user(&format!("before{round}@example.com")).await;
        let set = |input: Value| {
            let (app, user) = (&app, &user);
            async move {
                user.gql(
                    app,
                    "mutation($i: UpdateProfileInput!) { updateProfile(input: $i) { id } }",
                    json!({ "i": input }),
                )
                .await
            }
        };
        let link = app.request_address_change(&user.access_token, &format!("after{round}@example.com")).await;
        let client = app.client();
        let confirm = "mutation($t: String!) { confirmEmailChange(token: $t) }";
        let (a, b) = tokio::join!(
            set(json!({ "name": format!("Newname Round{round}") })),
            app.gql(&client, None, confirm, json!({ "t": link })),
        );
        assert!(a["errors"].is_null() && b["errors"].is_null(), "{a} {b}");
        for term in [format!("newname round{round}"), format!("after{round}@")] {
            let v = ok(&app, &admin, search, json!({ "s": term })).await;
            assert_eq!(v["users"]["totalCount"], 1, "round {round}, {term}: {v}");
        }
        let v = ok(&app, &admin, search, json!({ "s": format!("before{round}@") })).await;
        assert_eq!(v["users"]["totalCount"], 0, "round {round}: the old address is still found: {v}");
    }
}

/// The substring search is served by an index on both backends (a trigram GIN
/// index on PostgreSQL, an FTS5 trigram table on SQLite), not by reading every row.
#[tokio::test]
async fn the_admin_search_is_served_by_an_index() {
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app().await;
    let db = &app.state().services.db;
    if app.database.is_postgres() {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'users' AND indexdef LIKE '%gin_trgm_ops%'",
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "no trigram index on users.search_key");
        let def: String = rows[0].try_get("", "indexdef").unwrap();
        assert!(def.contains("search_key"), "{def}");
    } else {
        // The statement the listing runs, as SQLite would run it.
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "EXPLAIN QUERY PLAN SELECT id FROM users WHERE search_key LIKE '%lodie%' ESCAPE '\\' AND \
                 users.id IN (SELECT m.user_id FROM user_search_ids m WHERE m.id IN \
                 (SELECT rowid FROM users_fts WHERE users_fts MATCH '\"lodie\"'))",
            ))
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.try_get::<String>("", "detail").unwrap()).collect();
        assert!(plan.iter().any(|d| d.contains("VIRTUAL TABLE INDEX")), "{plan:?}");
        assert!(!plan.iter().any(|d| d == "SCAN users" || d.starts_with("SCAN users ")), "{plan:?}");
    }
}

// Credentials that change under a concurrent request

#[tokio::test]
async fn change_password_spends_the_login_budget() {
    let app = spawn_with(|c| c.rate_limits.login_per_account = "5/1h".parse().unwrap()).await;
    let (token, _, _) = app.register_body("budget@example.com").await;
    let c = app.client();
    let mut outcomes = Vec::new();
    for i in 0..12 {
        let v = app
            .gql(
                &c,
                Some(&token),
                ops::CHANGE_PASSWORD,
                json!({ "c": format!("wrong guess {i}"), "n": "a new passphrase" }),
            )
            .await;
        outcomes.push(reason(&v).to_owned() + code(&v));
        if code(&v) == "RATE_LIMITED" {
            assert!(v["errors"][0]["extensions"]["retryAfter"].as_u64().is_some_and(|s| s >= 1), "{v}");
        }
    }
    let wrong = outcomes.iter().filter(|o| o.starts_with("INVALID_CREDENTIALS")).count();
    assert_eq!(wrong, 5, "only the budget of 5 may be checked: {outcomes:?}");
    // The thirteenth, correct guess is refused too: the budget is spent.
    let v = app.gql(&c, Some(&token), ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "a new passphrase" })).await;
    assert_eq!(code(&v), "RATE_LIMITED", "{v}");
    // And it is one budget: login on the same account is limited as well.
    assert_eq!(code(&login_raw(&app, "budget@example.com", PASSWORD).await), "RATE_LIMITED");
}

#[tokio::test]
async fn change_password_spends_the_per_ip_login_budget() {
    let app = spawn_with(|c| c.rate_limits.login_per_ip = "3/1h".parse().unwrap()).await;
    let (token, _, _) = app.register_body("ipbudget@example.com").await;
    let c = app.client();
    for _ in 0..3 {
        let v = app
            .gql(&c, Some(&token), ops::CHANGE_PASSWORD, json!({ "c": "wrong guess", "n": "a new passphrase" }))
            .await;
        assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
    }
    let v = app.gql(&c, Some(&token), ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "a new passphrase" })).await;
    assert_eq!(code(&v), "RATE_LIMITED", "{v}");
    assert_eq!(code(&login_raw(&app, "ipbudget@example.com", PASSWORD).await), "RATE_LIMITED");
}

/// Logins with the old password fired a few milliseconds apart, with the change
/// in the middle of them: once the change has returned, no session
/// authenticated with the old password may be alive.
#[tokio::test]
async fn no_login_with_the_old_password_outlives_a_password_change() {
    let app = spawn_app().await;
    for round in 0..4 {
        let email = format!("race{round}@example.com");
        let user = app.user(&email).await;
        // Spread over longer than the change takes (two hashes behind the queued
        // logins), so that some logins read the old hash before the change commits
        // and finish verifying it after.
        let logins = (0..40).map(|i| {
            let (app, email) = (&app, email.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(8 * i)).await;
                login_raw(app, &email, PASSWORD).await
            }
        });
        let change = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            user.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "the new passphrase" })).await
        };
        let (results, changed) = tokio::join!(join_all(logins), change);
        assert_eq!(changed["data"]["changePassword"], true, "{changed}");
        for v in &results {
            if !v["errors"].is_null() {
                assert_eq!(reason(v), "INVALID_CREDENTIALS", "{v}");
                continue;
            }
            let p = &v["data"]["login"];
            let me = app.gql(&app.client(), p["accessToken"].as_str(), ops::ME_ID, json!({})).await;
            assert_eq!(code(&me), "UNAUTHENTICATED", "round {round}: an old-password session still answers me: {me}");
            let r = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": p["refreshToken"] })).await;
            assert_eq!(code(&r), "UNAUTHENTICATED", "round {round}: an old-password session still refreshes: {r}");
        }
        let v = user.gql(&app, ME_SESSIONS, json!({})).await;
        assert_eq!(v["data"]["me"]["sessions"].as_array().map(Vec::len), Some(1), "round {round}: {v}");
        // The new password works, the old one no longer does.
        data(&login_raw(&app, &email, "the new passphrase").await, "login");
        assert_eq!(reason(&login_raw(&app, &email, PASSWORD).await), "INVALID_CREDENTIALS");
    }
}

/// Two concurrent changes from the same current password: one wins; the other
/// is refused rather than written over it (the stored hash is compared and set).
#[tokio::test]
async fn concurrent_password_changes_do_not_both_succeed() {
    let app = spawn_app().await;
    for round in 0..3 {
        let email = format!("twice{round}@example.com");
        let user = app.user(&email).await;
        let change = |n: &'static str| {
            let (app, user) = (&app, &user);
            async move { user.gql(app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": n })).await }
        };
        let (a, b) = tokio::join!(change("first new passphrase"), change("second new passphrase"));
        let won: Vec<&str> = [(&a, "first new passphrase"), (&b, "second new passphrase")]
            .into_iter()
            .filter(|(v, _)| v["data"]["changePassword"] == true)
            .map(|(_, n)| n)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {a} {b}");
        let lost = if won[0] == "first new passphrase" { &b } else { &a };
        assert_eq!(reason(lost), "INVALID_CREDENTIALS", "{lost}");
        data(&login_raw(&app, &email, won[0]).await, "login");
    }
}

#[tokio::test]
async fn a_stale_refresh_token_cannot_log_out_everywhere() {
    let grace = Duration::from_secs(10);
    let app = spawn_with(|c| c.refresh_reuse_grace = grace).await;
    let user = app.user("stale@example.com").await;
    let stale = &user.refresh_token;
    let v = app.gql(&app.client(), None, ops::REFRESH_BODY, json!({ "t": stale })).await;
    let first = data(&v, "refreshToken")["accessToken"].as_str().unwrap().to_owned();
    // Another session of the same user, on another device.
    let other = user.login(&app).await;
    app.clock.advance(grace + Duration::from_secs(1));

    let v = app.gql(&app.client(), None, ops::LOGOUT_EVERYWHERE_TOKEN, json!({ "t": stale })).await;
    assert_eq!(reason(&v), "REFRESH_TOKEN_REUSED", "{v}");
    // Reuse detection ended the stale token's own session…
    let me = app.gql(&app.client(), Some(&first), ops::ME_ID, json!({})).await;
    assert_eq!(reason(&me), "TOKEN_REVOKED", "{me}");
    // …and nothing else.
    let me = other.gql(&app, ops::ME_ID, json!({})).await;
    assert!(me["errors"].is_null(), "a stale token ended another session: {me}");

    // A token of an ended session has no power at all.
    // (See also the idle-timeout case below.)
    let v = app.gql(&app.client(), None, ops::LOGOUT_EVERYWHERE_TOKEN, json!({ "t": stale })).await;
    assert_eq!(v["data"]["logout"], true, "{v}");
    let me = other.gql(&app, ops::ME_ID, json!({})).await;
    assert!(me["errors"].is_null(), "a dead session's token ended another session: {me}");
}

// Load and growth

/// A burst of password checks beyond the hashing threads and the queue's depth
/// is refused at once with RATE_LIMITED and retryAfter, not queued without end.
#[tokio::test]
async fn a_full_hashing_queue_answers_rate_limited() {
    let app = spawn_with(|c| {
        c.password.threads = 1;
        c.password.queue_depth = 1;
    })
    .await;
    app.register_body("burst@example.com").await;
    let logins = (0..20).map(|_| login_raw(&app, "burst@example.com", PASSWORD));
    let results = join_all(logins).await;
    let mut limited = 0;
    for v in &results {
        match code(v) {
            "RATE_LIMITED" => {
                assert_eq!(v["errors"][0]["extensions"]["retryAfter"], 1, "{v}");
                limited += 1;
            }
            _ => assert!(v["errors"].is_null(), "{v}"),
        }
    }
    assert!(limited > 0, "twenty concurrent logins all queued behind one thread");
    assert!(limited < 20, "none got through");
    // Nothing was lost: the queue drains and the next login works.
    data(&login_raw(&app, "burst@example.com", PASSWORD).await, "login");
}

/// What the server logs on the test's thread (the test runtime is single-threaded,
/// so the server's tasks log here too).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_page_of_users_reads_their_sessions_in_one_query() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("authgraph::service::sessions=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, "root@example.com").await;
    for i in 0..30 {
        app.register_body(&format!("member{i}@example.com")).await;
    }
    let reads = || String::from_utf8_lossy(&log.0.lock().unwrap()).matches("live sessions read").count();
    let before = reads();
    let v = ok(&app, &admin, "{ users(first: 100) { edges { node { email sessions { id } } } } }", json!({})).await;
    let edges = v["users"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 31);
    assert!(edges.iter().all(|e| e["node"]["sessions"].as_array().unwrap().len() == 1), "{v}");
    // One batch, or two: async-graphql resolves a list of more than 30 items
    // through FuturesOrdered, which may register the page's keys over two polls,
    // and a thread preempted between them lets the loader's 1 ms window close
    // (seen on PostgreSQL under CI load, before this change too). Never one per user.
    let batches = reads() - before;
    assert!((1..=2).contains(&batches), "{batches} queries for the page's sessions, not one or two");
}

#[tokio::test]
async fn an_idle_expired_refresh_token_cannot_log_out_everywhere() {
    let timeout = Duration::from_secs(1800);
    let app = spawn_with(|c| c.session_idle_timeout = Some(timeout)).await;
    let idle = app.user("idle@example.com").await;
    app.clock.advance(timeout + Duration::from_secs(1));
    let other = idle.login(&app).await;
    let v = app.gql(&app.client(), None, ops::LOGOUT_EVERYWHERE_TOKEN, json!({ "t": idle.refresh_token })).await;
    assert_eq!(v["data"]["logout"], true, "{v}");
    let me = other.gql(&app, ops::ME_ID, json!({})).await;
    assert!(me["errors"].is_null(), "an idle-expired token ended another session: {me}");
}

#[tokio::test]
async fn search_terms_with_control_characters_are_refused() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, "root@example.com").await;
    for term in ["ab\u{0}cd", "line\nbreak", &"x".repeat(257)] {
        let v = app
            .gql(
                &app.client(),
                Some(&admin),
                "query($s: String) { users(search: $s) { totalCount } }",
                json!({ "s": term }),
            )
            .await;
        assert_eq!(reason(&v), "INVALID_SEARCH", "{v}");
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    }
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_ready() {
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return; // SQLite only.
    }
    let app = spawn_with(|c| {
        c.database_url = "sqlite::memory:".into();
        c.database_max_connections = 1;
    })
    .await;
    let r = app.client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.register_body("memory@example.com").await;
}

/// The registry is loaded a page of sessions at a time: sessions past the first
/// page are live after a restart too.
#[tokio::test]
async fn live_sessions_past_the_first_page_are_loaded_at_start() {
    use sea_orm::Set;
    let mut app = spawn_app().await;
    let (_, _, user_id) = app.register_body("many@example.com").await;
    let user_id: uuid::Uuid = user_id.parse().unwrap();
    let db = app.state().services.db.clone();
    let now = chrono::Utc::now();
    let mut last = uuid::Uuid::nil();
    for _ in 0..11 {
        let rows: Vec<_> = (0..1000)
            .map(|_| {
                last = uuid::Uuid::now_v7();
                entity::session::ActiveModel {
                    id: Set(last),
                    user_id: Set(user_id),
                    created_at: Set(now),
                    last_used_at: Set(now),
                    expires_at: Set(now + chrono::Duration::days(1)),
                    revoked_at: Set(None),
                    user_agent: Set(None),
                    ip: Set(None),
                    authenticated_at: Set(Some(now)),
                }
            })
            .collect();
        entity::session::Entity::insert_many(rows).exec_without_returning(&db).await.unwrap();
    }
    app.stop().await;
    let again = authgraph::app::spawn(&app.config).await.unwrap();
    let svc = &again.state.services;
    let token = svc
        .tokens
        .issue(
            user_id.into(),
            "many@example.com",
            entity::user::Role::User,
            last.into(),
            now.timestamp(),
            (now + chrono::Duration::days(1)).timestamp(),
        )
        .unwrap()
        .token;
    let v = gql_at(again.addr, Some(&token), ops::ME_EMAIL).await;
    assert_eq!(v["data"]["me"]["email"], "many@example.com", "the 11,001st session was not loaded: {v}");
    again.stop().await.unwrap();
}

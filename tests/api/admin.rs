//! Administration: who may reach the admin fields (and every way a user might
//! try to sneak past), the user listing, roles, deletion, forced logout, the
//! last-admin rule and the `create-admin` command.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::{helpers::*, ops};

async fn register_named(app: &TestApp, email: &str, name: &str) -> String {
    let v = app
        .gql(
            &app.client(),
            None,
            "mutation($i: RegisterInput!) { register(input: $i) { user { id } } }",
            json!({ "i": { "email": email, "password": PASSWORD, "name": name, "transport": "BODY" } }),
        )
        .await;
    assert!(v["errors"].is_null(), "register {email}: {v}");
    v["data"]["register"]["user"]["id"].as_str().unwrap().to_owned()
}

const SET_ROLE: &str = "mutation($id: ID!, $role: Role!) { setUserRole(id: $id, role: $role) { id role } }";
const USER_COUNT: &str = "query($role: Role) { users(role: $role) { totalCount nodes { email role } } }";

// ---------------------------------------------------------------------------
// Escalation attempts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_user_cannot_reach_admin_fields_by_any_route() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (victim_token, _, victim_id) = app.register_body("victim@example.com").await;
    let (mallory, _, mallory_id) = app.register_body("mallory@example.com").await;
    let key =
        ok(&app, &admin, r#"mutation { createApiKey(name: "ci", scopes: [USERS_READ]) { apiKey { id } } }"#, json!({}))
            .await["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let others = ["victim@example.com", ADMIN_EMAIL, "victim", "admin@"];

    // (response key, operation): each must be refused with FORBIDDEN.
    let attempts: Vec<(&str, String)> = vec![
        ("users", "{ users { totalCount edges { cursor node { id email } } } }".into()),
        ("x", "{ x: users { totalCount nodes { email } } }".into()),
        ("users", "query { ...Everyone } fragment Everyone on Query { users { nodes { email name } } }".into()),
        ("users", "{ ... on Query { users { nodes { email } } } }".into()),
        ("users", "{ me { email } users { nodes { email } } }".into()),
        ("users", r#"{ users(search: "victim", role: USER) { totalCount } }"#.into()),
        ("user", format!(r#"{{ user(id: "{victim_id}") {{ email sessions {{ id ip userAgent }} lastLoginAt }} }}"#)),
        ("v", format!(r#"{{ v: user(id: "{victim_id}") {{ email }} }}"#)),
        ("user", format!(r#"query {{ ...One }} fragment One on Query {{ user(id: "{victim_id}") {{ email }} }}"#)),
        ("apiKeys", "{ apiKeys { id name prefix scopes } }".into()),
        ("tokenInfo", format!(r#"{{ tokenInfo(accessToken: "{victim_token}") {{ active userId role }} }}"#)),
        ("setUserRole", format!(r#"mutation {{ setUserRole(id: "{mallory_id}", role: ADMIN) {{ role }} }}"#)),
        ("setUserRole", format!(r#"mutation {{ setUserRole(id: "{victim_id}", role: ADMIN) {{ email }} }}"#)),
        ("boom", format!(r#"mutation {{ boom: deleteUser(id: "{victim_id}") }}"#)),
        ("deleteUser", format!(r#"mutation {{ ... on Mutation {{ deleteUser(id: "{victim_id}") }} }}"#)),
        ("revokeUserSessions", format!(r#"mutation {{ revokeUserSessions(id: "{victim_id}") }}"#)),
        (
            "createApiKey",
            "mutation { createApiKey(name: \"mine\", scopes: [USERS_READ, USERS_WRITE, SESSIONS_REVOKE, TOKENS_INTROSPECT]) { secret apiKey { id } } }"
                .into(),
        ),
        ("rotateApiKey", format!(r#"mutation {{ rotateApiKey(id: "{key}") {{ secret }} }}"#)),
        ("revokeApiKey", format!(r#"mutation {{ revokeApiKey(id: "{key}") }}"#)),
    ];
    for (field, query) in &attempts {
        let (text, v) = raw(&app, Some(&mallory), query, json!({})).await;
        assert_all_errors(&v, "FORBIDDEN", None, query);
        assert!(v["data"].is_null() || v["data"][field].is_null(), "{query}: {v}");
        for other in others {
            assert!(!text.contains(other), "{query} leaked {other}: {text}");
        }
        // Anonymous callers are told to log in.
        let (text, v) = raw(&app, None, query, json!({})).await;
        assert_all_errors(&v, "UNAUTHENTICATED", Some("MISSING_TOKEN"), query);
        assert!(v["data"].is_null() || v["data"][field].is_null(), "{query}: {v}");
        for other in others {
            assert!(!text.contains(other), "{query} leaked {other} anonymously: {text}");
        }
    }
    // Another user's private fields: refused at `user` itself.
    let (_, v) = raw(&app, Some(&mallory), &attempts[6].1, json!({})).await;
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["errors"][0]["path"], json!(["user"]), "{v}");

    // Array batches: the allowed operation runs, the admin one is refused.
    let c = app.client();
    let batch = json!([
        { "query": "{ me { email role } }" },
        { "query": "{ users { nodes { email } } }" },
        { "query": format!(r#"mutation {{ setUserRole(id: "{mallory_id}", role: ADMIN) {{ role }} }}"#) },
        { "query": ops::ME_ROLE },
    ]);
    let text =
        c.post(app.url("/graphql")).bearer_auth(&mallory).json(&batch).send().await.unwrap().text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v[0]["data"]["me"], json!({ "email": "mallory@example.com", "role": "USER" }), "{v}");
    assert_eq!(code(&v[1]), "FORBIDDEN", "{v}");
    assert!(v[1]["data"].is_null(), "{v}");
    assert_eq!(code(&v[2]), "FORBIDDEN", "{v}");
    assert_eq!(v[3]["data"]["me"]["role"], "USER", "{v}");
    for other in others {
        assert!(!text.contains(other), "batch leaked {other}: {text}");
    }
    // Over GET too.
    let r = c
        .get(app.url("/graphql"))
        .query(&[("query", "{ users { nodes { email } } }")])
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    assert!(!text.contains("victim@example.com"), "{text}");

    // Nothing changed: mallory is still a USER, the victim still logged in and
    // present, the only API key the admin's and live, no new key.
    assert_eq!(ok(&app, &mallory, ops::ME_ROLE, json!({})).await["me"]["role"], "USER");
    assert_eq!(ok(&app, &victim_token, ops::ME_EMAIL, json!({})).await["me"]["email"], "victim@example.com");
    let keys = ok(&app, &admin, "{ apiKeys { id name revokedAt } }", json!({})).await;
    assert_eq!(keys["apiKeys"], json!([{ "id": key, "name": "ci", "revokedAt": null }]));
    let users = ok(&app, &admin, USER_COUNT, json!({ "role": "ADMIN" })).await;
    assert_eq!(users["users"]["totalCount"], 1, "{users}");
}

#[tokio::test]
async fn a_role_cannot_be_chosen_at_registration_or_in_the_profile() {
    let app = spawn_app().await;
    let c = app.client();
    // As a literal field: not part of the input type, the request is refused.
    let q = r#"mutation { register(input: { email: "sneaky@example.com", password: "correct horse battery", role: ADMIN, transport: BODY }) { accessToken user { role } } }"#;
    let v = app.gql(&c, None, q, json!({})).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert!(v["data"].is_null(), "{v}");
    // In the variables.
    let v = app
        .gql(
            &c,
            None,
            "mutation($i: RegisterInput!) { register(input: $i) { accessToken user { role } } }",
            json!({ "i": { "email": "sneaky@example.com", "password": PASSWORD, "role": "ADMIN", "transport": "BODY" } }),
        )
        .await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    assert!(v["data"].is_null(), "{v}");
    // No account was created: the address is free and the login unknown.
    let login = app.login_body("sneaky@example.com", PASSWORD).await;
    assert_eq!(reason(&login), "INVALID_CREDENTIALS", "{login}");
    let p = app.register(&c, "sneaky@example.com").await;
    assert_eq!(p["user"]["role"], "USER");
    let token = p["accessToken"].as_str().unwrap();

    for (query, vars) in [
        (r#"mutation { updateProfile(input: { name: "Boss", role: ADMIN }) { role } }"#, json!({})),
        (
            "mutation($i: UpdateProfileInput!) { updateProfile(input: $i) { role } }",
            json!({ "i": { "name": "Boss", "role": "ADMIN" } }),
        ),
        (
            "mutation($i: UpdateProfileInput!) { updateProfile(input: $i) { role } }",
            json!({ "i": { "role": "ADMIN" } }),
        ),
    ] {
        let v = app.gql(&c, Some(token), query, vars).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{query}: {v}");
        assert!(v["data"].is_null(), "{query}: {v}");
    }
    let me = ok(&app, token, "{ me { name role } }", json!({})).await;
    assert_eq!(me["me"], json!({ "name": "sneaky", "role": "USER" }), "the refused update changed something");
}

// ---------------------------------------------------------------------------
// The listing
// ---------------------------------------------------------------------------

const LIST: &str = "query($first: Int, $after: String, $last: Int, $before: String, $search: String, $role: Role) {
  users(first: $first, after: $after, last: $last, before: $before, search: $search, role: $role) {
    totalCount
    edges { cursor node { id email name role } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}";

fn emails(users: &Value) -> Vec<String> {
    users["edges"].as_array().unwrap().iter().map(|e| e["node"]["email"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn admins_search_and_filter_the_user_listing() {
    let app = spawn_app().await;
    let (admin, admin_id) = make_admin(&app, ADMIN_EMAIL).await;
    register_named(&app, "ada@example.com", "Ada Lovelace").await;
    register_named(&app, "GRACE.Hopper@Example.com", "Amazing Grace").await;
    register_named(&app, "percent@example.com", "100% Real").await;
    register_named(&app, "snake@example.com", "snake_case").await;
    register_named(&app, "plain@example.com", "Plain").await;
    let list = |vars: Value| {
        let (app, admin) = (&app, &admin);
        async move { ok(app, admin, LIST, vars).await["users"].clone() }
    };

    let all = list(json!({})).await;
    assert_eq!(all["totalCount"], 6, "{all}");
    assert_eq!(
        emails(&all),
        [
            ADMIN_EMAIL,
            "ada@example.com",
            "GRACE.Hopper@Example.com",
            "percent@example.com",
            "snake@example.com",
            "plain@example.com"
        ]
    );
    assert_eq!(all["edges"][0]["node"]["id"], admin_id.as_str());
    assert_eq!(all["edges"][0]["node"]["role"], "ADMIN");
    assert_eq!(all["pageInfo"]["hasNextPage"], false);
    assert_eq!(all["pageInfo"]["hasPreviousPage"], false);
    assert_eq!(all["pageInfo"]["startCursor"], all["edges"][0]["cursor"]);
    assert_eq!(all["pageInfo"]["endCursor"], all["edges"][5]["cursor"]);

    for (search, expect) in [
        ("ADA", vec!["ada@example.com"]),      // name and email, any case
        ("lovelace", vec!["ada@example.com"]), // name only
        ("grace", vec!["GRACE.Hopper@Example.com"]),
        ("hopper@EXAMPLE", vec!["GRACE.Hopper@Example.com"]), // email, any case
        ("  amazing ", vec!["GRACE.Hopper@Example.com"]),     // trimmed
        ("%", vec!["percent@example.com"]),                   // literal, not a wildcard
        ("100%", vec!["percent@example.com"]),
        ("_", vec!["snake@example.com"]),
        ("e_c", vec!["snake@example.com"]), // `_` as a wildcard would match every "e.c"om
        ("\\", vec![]),
        ("nobody", vec![]),
    ] {
        let page = list(json!({ "search": search })).await;
        assert_eq!(emails(&page), expect, "search {search:?}: {page}");
        assert_eq!(page["totalCount"], expect.len(), "search {search:?}: {page}");
    }
    let admins = list(json!({ "role": "ADMIN" })).await;
    assert_eq!(emails(&admins), [ADMIN_EMAIL]);
    assert_eq!(admins["totalCount"], 1);
    let users = list(json!({ "role": "USER" })).await;
    assert_eq!(users["totalCount"], 5);
    assert!(users["edges"].as_array().unwrap().iter().all(|e| e["node"]["role"] == "USER"), "{users}");
    // Filters combine: "ad" is in admin@ and in Ada.
    assert_eq!(emails(&list(json!({ "role": "USER", "search": "ad" })).await), ["ada@example.com"]);
    assert_eq!(emails(&list(json!({ "role": "ADMIN", "search": "ad" })).await), [ADMIN_EMAIL]);
    assert_eq!(list(json!({ "role": "ADMIN", "search": "grace" })).await["totalCount"], 0);
    // totalCount counts the filter over all pages, not the page.
    let page = list(json!({ "role": "USER", "first": 2 })).await;
    assert_eq!((page["totalCount"].as_i64(), emails(&page).len()), (Some(5), 2), "{page}");
}

#[tokio::test]
async fn cursor_pagination_walks_every_user_once_both_ways() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let mut expected = vec![ADMIN_EMAIL.to_owned()];
    for i in 1..=6 {
        let email = format!("page{i}@example.com");
        app.register_body(&email).await;
        expected.push(email);
    }

    // Forward.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for round in 0.. {
        assert!(round < 10, "forward walk does not end");
        let page = ok(&app, &admin, LIST, json!({ "first": 2, "after": after })).await["users"].clone();
        assert_eq!(page["totalCount"], 7, "{page}");
        let edges = page["edges"].as_array().unwrap();
        assert!(!edges.is_empty() && edges.len() <= 2, "{page}");
        let info = &page["pageInfo"];
        assert_eq!(info["hasPreviousPage"], after.is_some(), "{page}");
        assert_eq!(info["startCursor"], edges[0]["cursor"], "{page}");
        assert_eq!(info["endCursor"], edges[edges.len() - 1]["cursor"], "{page}");
        seen.extend(emails(&page));
        if info["hasNextPage"] == false {
            break;
        }
        after = Some(info["endCursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, expected, "forward walk");

    // Backward.
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    for round in 0.. {
        assert!(round < 10, "backward walk does not end");
        let page = ok(&app, &admin, LIST, json!({ "last": 2, "before": before })).await["users"].clone();
        assert_eq!(page["totalCount"], 7, "{page}");
        let edges = page["edges"].as_array().unwrap();
        assert!(!edges.is_empty() && edges.len() <= 2, "{page}");
        let info = &page["pageInfo"];
        assert_eq!(info["hasNextPage"], before.is_some(), "{page}");
        assert_eq!(info["startCursor"], edges[0]["cursor"], "{page}");
        let mut page_emails = emails(&page);
        page_emails.extend(seen);
        seen = page_emails;
        if info["hasPreviousPage"] == false {
            break;
        }
        before = Some(info["startCursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, expected, "backward walk");

    // A cursor stays good for the same position; an empty page past the end.
    let first = ok(&app, &admin, LIST, json!({ "first": 3 })).await["users"].clone();
    let cursor = first["pageInfo"]["endCursor"].as_str().unwrap();
    let again = ok(&app, &admin, LIST, json!({ "first": 1, "after": cursor })).await["users"].clone();
    assert_eq!(emails(&again), [expected[3].clone()]);
    let last = ok(&app, &admin, LIST, json!({ "last": 1 })).await["users"].clone();
    let end =
        ok(&app, &admin, LIST, json!({ "first": 5, "after": last["pageInfo"]["endCursor"] })).await["users"].clone();
    assert_eq!(end["edges"], json!([]), "{end}");
    assert_eq!(end["pageInfo"]["hasNextPage"], false);

    // Bad arguments.
    for vars in [
        json!({ "first": 2, "after": "not a cursor!" }),
        json!({ "last": 2, "before": "AAAA" }),
        json!({ "after": "" }),
        json!({ "first": 1000 }),
        json!({ "last": 1000 }),
        json!({ "first": -1 }),
        json!({ "first": 2, "last": 2 }),
    ] {
        let v = app.gql(&app.client(), Some(&admin), LIST, vars.clone()).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{vars}: {v}");
        assert!(v["data"].is_null(), "{vars}: {v}");
    }
}

#[tokio::test]
async fn admins_see_one_user_with_private_fields() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (_, _, id) = app.register_body("carol@example.com").await;
    login_token(&app, "carol@example.com").await;
    let q = "query($id: ID!) { user(id: $id) { id email role lastLoginAt sessions { id current } } }";
    let user = ok(&app, &admin, q, json!({ "id": id })).await["user"].clone();
    assert_eq!(user["id"], id.as_str());
    assert_eq!(user["email"], "carol@example.com");
    assert_eq!(user["role"], "USER");
    assert!(user["lastLoginAt"].is_string(), "{user}");
    let sessions = user["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{user}");
    assert!(sessions.iter().all(|s| s["current"] == false), "{user}");

    let unknown = uuid::Uuid::now_v7().to_string();
    let v = app.gql(&app.client(), Some(&admin), q, json!({ "id": unknown })).await;
    assert_eq!(v, json!({ "data": { "user": null } }));
    for garbage in ["not-an-id", "", "1", "' OR 1=1 --"] {
        let v = app.gql(&app.client(), Some(&admin), q, json!({ "id": garbage })).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{garbage:?}: {v}");
        assert!(v["data"]["user"].is_null(), "{v}");
    }
}

// ---------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------

#[tokio::test]
async fn role_changes_apply_to_live_tokens_at_once() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (second, second_id) = make_admin(&app, "second@example.com").await;
    let (dave, _, dave_id) = app.register_body("dave@example.com").await;

    let v = app.gql(&app.client(), Some(&dave), USER_COUNT, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");

    // Promotion: the token Dave already holds may list users on its next request.
    let d = ok(&app, &admin, SET_ROLE, json!({ "id": dave_id, "role": "ADMIN" })).await;
    assert_eq!(d["setUserRole"], json!({ "id": dave_id, "role": "ADMIN" }));
    let d = ok(
        &app,
        &dave,
        &format!("{{ me {{ role }} {} }}", "users(role: ADMIN) { totalCount nodes { email role } }"),
        json!({}),
    )
    .await;
    assert_eq!(d["me"]["role"], "ADMIN");
    assert_eq!(d["users"]["totalCount"], 3, "{d}");
    assert!(
        d["users"]["nodes"].as_array().unwrap().contains(&json!({ "email": "dave@example.com", "role": "ADMIN" })),
        "{d}"
    );

    // Demotion of an admin whose token was issued while an admin.
    assert_eq!(ok(&app, &second, ops::API_KEY_IDS, json!({})).await["apiKeys"], json!([]));
    let d = ok(&app, &admin, SET_ROLE, json!({ "id": second_id, "role": "USER" })).await;
    assert_eq!(d["setUserRole"]["role"], "USER");
    let v = app.gql(&app.client(), Some(&second), USER_COUNT, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    assert!(v["data"].is_null(), "{v}");
    let v = app.gql(&app.client(), Some(&second), ops::API_KEY_IDS, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    assert_eq!(ok(&app, &second, ops::ME_ROLE, json!({})).await["me"]["role"], "USER");
    // The demoted user cannot promote themself back.
    let v = app.gql(&app.client(), Some(&second), SET_ROLE, json!({ "id": second_id, "role": "ADMIN" })).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");
    // And Dave, demoted too, loses it as fast as he got it.
    ok(&app, &admin, SET_ROLE, json!({ "id": dave_id, "role": "USER" })).await;
    let v = app.gql(&app.client(), Some(&dave), USER_COUNT, json!({})).await;
    assert_eq!(code(&v), "FORBIDDEN", "{v}");

    // Unknown and malformed ids.
    let v =
        app.gql(&app.client(), Some(&admin), SET_ROLE, json!({ "id": uuid::Uuid::now_v7(), "role": "ADMIN" })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    let v = app.gql(&app.client(), Some(&admin), SET_ROLE, json!({ "id": "nope", "role": "ADMIN" })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    let v = app.gql(&app.client(), Some(&admin), SET_ROLE, json!({ "id": dave_id, "role": "ROOT" })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
}

#[tokio::test]
async fn the_last_admin_cannot_be_demoted_or_deleted() {
    let app = spawn_app().await;
    let (admin, admin_id) = make_admin(&app, ADMIN_EMAIL).await;
    for (query, vars) in
        [(SET_ROLE, json!({ "id": admin_id, "role": "USER" })), (ops::DELETE_USER, json!({ "id": admin_id }))]
    {
        let v = app.gql(&app.client(), Some(&admin), query, vars).await;
        assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
        assert_eq!(reason(&v), "LAST_ADMIN", "{v}");
        assert!(v["data"].is_null(), "{v}");
    }
    assert_eq!(ok(&app, &admin, ops::ME_ROLE, json!({})).await["me"]["role"], "ADMIN");
    // Re-affirming the role is not a demotion.
    ok(&app, &admin, SET_ROLE, json!({ "id": admin_id, "role": "ADMIN" })).await;

    // With a second admin, one of them can go.
    let (erin, _, erin_id) = app.register_body("erin@example.com").await;
    ok(&app, &admin, SET_ROLE, json!({ "id": erin_id, "role": "ADMIN" })).await;
    let d = ok(&app, &admin, SET_ROLE, json!({ "id": admin_id, "role": "USER" })).await;
    assert_eq!(d["setUserRole"]["role"], "USER");
    assert_eq!(code(&app.gql(&app.client(), Some(&admin), USER_COUNT, json!({})).await), "FORBIDDEN");
    // Now Erin is the last one.
    for (query, vars) in
        [(SET_ROLE, json!({ "id": erin_id, "role": "USER" })), (ops::DELETE_USER, json!({ "id": erin_id }))]
    {
        let v = app.gql(&app.client(), Some(&erin), query, vars).await;
        assert_eq!(reason(&v), "LAST_ADMIN", "{v}");
    }
    let admins = ok(&app, &erin, USER_COUNT, json!({ "role": "ADMIN" })).await;
    assert_eq!(admins["users"]["nodes"], json!([{ "email": "erin@example.com", "role": "ADMIN" }]));
    // Deleting an admin while another remains is allowed.
    ok(&app, &erin, SET_ROLE, json!({ "id": admin_id, "role": "ADMIN" })).await;
    assert_eq!(ok(&app, &erin, ops::DELETE_USER, json!({ "id": admin_id })).await["deleteUser"], true);
    assert_eq!(ok(&app, &erin, USER_COUNT, json!({ "role": "ADMIN" })).await["users"]["totalCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let app = spawn_app().await;
    let (a, a_id) = make_admin(&app, "a@example.com").await;
    let (b, b_id) = make_admin(&app, "b@example.com").await;
    let tokens = [(&a, &a_id), (&b, &b_id)];

    for round in 0..6 {
        let results =
            join_all(
                [(&a, &b_id), (&b, &a_id)].map(|(token, target)| {
                    let app = &app;
                    async move {
                        app.gql(&app.client(), Some(token), SET_ROLE, json!({ "id": target, "role": "USER" })).await
                    }
                }),
            )
            .await;
        let winners: Vec<usize> = (0..2).filter(|i| results[*i]["errors"].is_null()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let loser = &results[1 - winners[0]];
        assert!(
            reason(loser) == "LAST_ADMIN" || code(loser) == "FORBIDDEN",
            "round {round}: the loser failed for another reason: {loser}"
        );
        let (winner, _) = tokens[winners[0]];
        let (_, loser_id) = tokens[1 - winners[0]];
        let admins = ok(&app, winner, USER_COUNT, json!({ "role": "ADMIN" })).await;
        assert_eq!(admins["users"]["totalCount"], 1, "round {round}: {admins}");
        // Restore for the next round.
        ok(&app, winner, SET_ROLE, json!({ "id": loser_id, "role": "ADMIN" })).await;
    }

    // The same for deletion.
    let results = join_all([(&a, &b_id), (&b, &a_id)].map(|(token, target)| {
        let app = &app;
        async move { app.gql(&app.client(), Some(token), ops::DELETE_USER, json!({ "id": target })).await }
    }))
    .await;
    let winners: Vec<usize> = (0..2).filter(|i| results[*i]["data"]["deleteUser"] == true).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (winner, _) = tokens[winners[0]];
    let all = ok(&app, winner, USER_COUNT, json!({})).await;
    assert_eq!(all["users"]["totalCount"], 1, "{all}");
    assert_eq!(all["users"]["nodes"][0]["role"], "ADMIN", "{all}");
}

// ---------------------------------------------------------------------------
// Deletion and forced logout
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deleting_a_user_ends_their_tokens_at_once() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (access, refresh, id) = app.register_body("frank@example.com").await;
    assert_eq!(ok(&app, &access, ops::ME_EMAIL, json!({})).await["me"]["email"], "frank@example.com");

    assert_eq!(ok(&app, &admin, ops::DELETE_USER, json!({ "id": id })).await["deleteUser"], true);
    let v = app.gql(&app.client(), Some(&access), ops::ME_EMAIL, json!({})).await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    assert!(v["data"].is_null(), "{v}");
    let v = app
        .gql(
            &app.client(),
            None,
            "mutation($r: String) { refreshToken(refreshToken: $r) { accessToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    assert!(v["data"].is_null(), "{v}");
    let v = app.login_body("frank@example.com", PASSWORD).await;
    assert_eq!(reason(&v), "INVALID_CREDENTIALS", "{v}");
    let v = ok(&app, &admin, "query($id: ID!) { user(id: $id) { id } }", json!({ "id": id })).await;
    assert!(v["user"].is_null(), "{v}");

    // A deleted admin's token loses the admin fields at once (not only `me`,
    // which reads the account).
    let (doomed, doomed_id) = make_admin(&app, "doomed@example.com").await;
    ok(&app, &doomed, USER_COUNT, json!({})).await;
    assert_eq!(ok(&app, &admin, ops::DELETE_USER, json!({ "id": doomed_id })).await["deleteUser"], true);
    for query in [USER_COUNT, ops::API_KEY_IDS] {
        let (text, v) = raw(&app, Some(&doomed), query, json!({})).await;
        assert_eq!(code(&v), "UNAUTHENTICATED", "{query}: {v}");
        assert_eq!(reason(&v), "TOKEN_REVOKED", "{query}: {v}");
        assert!(!text.contains(ADMIN_EMAIL), "{text}");
    }
    let v = app.gql(&app.client(), Some(&doomed), ops::DELETE_USER, json!({ "id": uuid::Uuid::now_v7() })).await;
    assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");

    // Nothing to delete: false, not an error.
    assert_eq!(ok(&app, &admin, ops::DELETE_USER, json!({ "id": id })).await["deleteUser"], false);
    assert_eq!(ok(&app, &admin, ops::DELETE_USER, json!({ "id": uuid::Uuid::now_v7() })).await["deleteUser"], false);
    let v = app.gql(&app.client(), Some(&admin), ops::DELETE_USER, json!({ "id": "garbage" })).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
    // The address is free again.
    app.register_body("frank@example.com").await;
}

#[tokio::test]
async fn revoking_a_users_sessions_logs_them_out_everywhere() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, ADMIN_EMAIL).await;
    let (first, refresh, id) = app.register_body("gina@example.com").await;
    let second = login_token(&app, "gina@example.com").await;
    let (bystander, _, _) = app.register_body("henry@example.com").await;

    let v = ok(&app, &admin, ops::REVOKE_USER_SESSIONS, json!({ "id": id })).await;
    assert_eq!(v["revokeUserSessions"], 2);
    for token in [&first, &second] {
        let v = app.gql(&app.client(), Some(token), ops::ME_EMAIL, json!({})).await;
        assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
        assert_eq!(reason(&v), "TOKEN_REVOKED", "{v}");
    }
    let v = app
        .gql(
            &app.client(),
            None,
            "mutation($r: String) { refreshToken(refreshToken: $r) { accessToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert_eq!(code(&v), "UNAUTHENTICATED", "{v}");
    // Other users and the admin are untouched.
    ok(&app, &bystander, ops::ME_EMAIL, json!({})).await;
    ok(&app, &admin, ops::ME_EMAIL, json!({})).await;
    // Nothing left to end.
    assert_eq!(ok(&app, &admin, ops::REVOKE_USER_SESSIONS, json!({ "id": id })).await["revokeUserSessions"], 0);
    assert_eq!(
        ok(&app, &admin, ops::REVOKE_USER_SESSIONS, json!({ "id": uuid::Uuid::now_v7() })).await["revokeUserSessions"],
        0
    );

    // Not a ban: the user logs in again.
    let again = login_token(&app, "gina@example.com").await;
    let me = ok(&app, &again, "{ me { email sessions { id } } }", json!({})).await;
    assert_eq!(me["me"]["sessions"].as_array().unwrap().len(), 1, "{me}");
}

// ---------------------------------------------------------------------------
// `authgraph create-admin`
// ---------------------------------------------------------------------------

/// Runs `authgraph create-admin` in an empty directory with a clean environment.
async fn create_admin(url: &str, email: &str, env_password: Option<&str>, stdin: Option<&str>) -> Output {
    let (url, email) = (url.to_owned(), email.to_owned());
    let (env_password, stdin) = (env_password.map(str::to_owned), stdin.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgraph"));
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["create-admin", "--email", &email, "--database-url", &url, "--jwt-secret", JWT_SECRET])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        if email.starts_with("boss@") {
            cmd.args(["--name", "The Boss"]);
        }
        if let Some(p) = &env_password {
            cmd.env("AUTHGRAPH_ADMIN_PASSWORD", p);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = &stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[track_caller]
fn assert_quiet_about(out: &Output, secrets: &[&str]) {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for s in secrets {
        assert!(!stdout.contains(s) && !stderr.contains(s), "password printed:\n{stdout}\n{stderr}");
    }
}

#[tokio::test]
async fn create_admin_command_creates_and_promotes_admins() {
    let database = TestDatabase::create().await;
    let url = database.url();
    const ENV_PW: &str = "env-password-Kq93";
    const STDIN_PW: &str = "stdin-password-Zr71";
    const WEAK_PW: &str = "Xq7!z";
    let passwords = [ENV_PW, STDIN_PW, WEAK_PW];

    let out = create_admin(url, "boss@example.com", Some(ENV_PW), None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created admin boss@example.com"), "{out:?}");
    assert_quiet_about(&out, &passwords);

    let out = create_admin(url, "deputy@example.com", None, Some(&format!("{STDIN_PW}\n"))).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_quiet_about(&out, &passwords);

    for (env, stdin) in [(Some(WEAK_PW), None), (None, Some(format!("{WEAK_PW}\n"))), (None, Some(String::new()))] {
        let out = create_admin(url, "weak@example.com", env, stdin.as_deref()).await;
        assert!(!out.status.success(), "a weak password was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Password must be at least 8 characters"), "{stderr}");
        assert_quiet_about(&out, &passwords);
    }
    // An account that exists already cannot be "created" twice: it stays, its
    // password unchanged (checked by the login below).
    let out = create_admin(url, "BOSS@example.com", Some("another-password-1"), None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let config = config_from(&[
        "--database-url",
        url,
        "--listen-addr",
        "127.0.0.1:0",
        "--jwt-secret",
        JWT_SECRET,
        "--cookie-secure",
        "false",
    ])
    .unwrap();
    let running = authgraph::app::spawn(&config).await.expect("app starts");
    let c = reqwest::Client::new();
    let addr = running.addr;
    let gql = |token: Option<String>, query: &'static str, variables: Value| {
        let (c, url) = (&c, format!("http://{addr}/graphql"));
        async move {
            let mut req = c.post(url).json(&json!({ "query": query, "variables": variables }));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { accessToken user { role } } }";
    let login = |email: &'static str, password: &'static str| {
        gql(None, LOGIN, json!({ "i": { "email": email, "password": password, "transport": "BODY" } }))
    };
    const USERS: &str = "{ users { totalCount nodes { email name role } } }";

    let v = login("boss@example.com", ENV_PW).await;
    assert_eq!(v["data"]["login"]["user"]["role"], "ADMIN", "{v}");
    let boss = v["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let v = gql(Some(boss.clone()), USERS, json!({})).await;
    assert_eq!(
        v["data"]["users"],
        json!({ "totalCount": 2, "nodes": [
            { "email": "boss@example.com", "name": "The Boss", "role": "ADMIN" },
            { "email": "deputy@example.com", "name": "deputy", "role": "ADMIN" },
        ] }),
        "{v}"
    );
    let v = login("deputy@example.com", STDIN_PW).await;
    assert_eq!(v["data"]["login"]["user"]["role"], "ADMIN", "{v}");

    // An existing USER is promoted; no password is asked for (stdin is empty).
    let v = gql(
        None,
        "mutation($i: RegisterInput!) { register(input: $i) { user { role } } }",
        json!({ "i": { "email": "ivy@example.com", "password": PASSWORD, "transport": "BODY" } }),
    )
    .await;
    assert_eq!(v["data"]["register"]["user"]["role"], "USER", "{v}");
    let out = create_admin(url, "ivy@example.com", None, None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("promoted"), "{out:?}");
    let v = login("ivy@example.com", PASSWORD).await;
    assert_eq!(v["data"]["login"]["user"]["role"], "ADMIN", "{v}");
    let ivy = v["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let v = gql(Some(ivy), USERS, json!({})).await;
    assert_eq!(v["data"]["users"]["totalCount"], 3, "{v}");
    assert!(!v.to_string().contains("weak@example.com"), "{v}");
    running.stop().await.unwrap();
}

/// A count or flag that a mutation returns counts what was live and is now
/// ended: a session past its seven days is not counted by
/// `revokeUserSessions`, and revoking an expired key answers false.
#[tokio::test]
async fn counts_count_only_what_was_live() {
    let app = spawn_app().await;
    make_admin(&app, ADMIN_EMAIL).await;
    let user = app.user("counted@example.com").await;
    app.clock.advance(std::time::Duration::from_secs(8 * 24 * 3600));
    user.login(&app).await;
    let admin = login_token(&app, ADMIN_EMAIL).await;
    let revoke = "mutation($id: ID!) { revokeUserSessions(id: $id) }";
    let v = ok(&app, &admin, revoke, json!({ "id": user.id })).await;
    assert_eq!(v["revokeUserSessions"], 1, "the session past its age was counted: {v}");

    let create = "mutation { createApiKey(name: \"short\", scopes: [USERS_READ], expiresInDays: 1) { apiKey { id } } }";
    let key = ok(&app, &admin, create, json!({})).await["createApiKey"]["apiKey"]["id"].as_str().unwrap().to_owned();
    app.clock.advance(std::time::Duration::from_secs(2 * 24 * 3600));
    let admin = login_token(&app, ADMIN_EMAIL).await;
    let v = ok(&app, &admin, "mutation($id: ID!) { revokeApiKey(id: $id) }", json!({ "id": key })).await;
    assert_eq!(v["revokeApiKey"], false, "an expired key's revocation stopped nothing: {v}");
}

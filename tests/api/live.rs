//! `sessionEvents` over `graphql-transport-ws`: a tab learns at once that its
//! session ended elsewhere (and the socket then closes with 4403), or that
//! its role changed; a handshake without a valid token is never
//! acknowledged (4401 for a missing or expired one, 4403 for a forged one or
//! an ended session); a browser on another site is refused before
//! the upgrade; and, on PostgreSQL, an end made on one instance reaches a
//! socket held by another.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

use crate::{helpers::*, ops};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const SUBSCRIBE: &str = "subscription { sessionEvents { kind sessionId role occurredAt } }";
/// How long a change may take to reach a socket.
const WITHIN: Duration = Duration::from_secs(2);

/// Opens a socket to `addr` with the subprotocol (and `origin`, as a browser would).
async fn open(addr: SocketAddr, origin: Option<&str>) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/graphql").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn send(ws: &mut Socket, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next text message as JSON, or the close frame's code.
async fn receive(ws: &mut Socket) -> Result<Value, Option<u16>> {
    loop {
        match tokio::time::timeout(WITHIN, ws.next()).await.expect("nothing arrived in time") {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// A socket to the server at `addr` (whose state is `state`) of the session
/// of `token`, acknowledged and subscribed: returns once the server watches
/// the session, so a change the test makes next cannot come before it.
async fn subscribed(addr: SocketAddr, state: &authgraph::http::AppState, token: &str) -> Socket {
    let registry = &state.services.registry;
    let before = registry.watchers();
    let mut ws = open(addr, None).await.unwrap();
    send(&mut ws, json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
        .await;
    assert_eq!(receive(&mut ws).await.unwrap()["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": SUBSCRIBE } })).await;
    wait_until(
        || "the server to watch the subscribed session".into(),
        async || (registry.watchers() > before).then_some(()),
    )
    .await;
    ws
}

/// Waits for the session's end: its event, then the close with 4403.
async fn ends(ws: &mut Socket) {
    let next = receive(ws).await.unwrap();
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["payload"]["data"]["sessionEvents"]["kind"], "SESSION_ENDED", "{next}");
    loop {
        match receive(ws).await {
            Ok(m) if m["type"] == "complete" => continue,
            Ok(m) => panic!("after the end: {m}"),
            Err(code) => {
                assert_eq!(code, Some(4403));
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_tab_learns_its_session_ended_elsewhere() {
    let app = spawn_app().await;
    let (admin, _) = make_admin(&app, "root@example.com").await;

    // A logout in another tab of the same session.
    let user = app.user("tabs@example.com").await;
    let mut tab = subscribed(app.addr, app.state(), &user.access_token).await;
    ok(&app, &user.access_token, ops::LOGOUT, json!({})).await;
    ends(&mut tab).await;

    // An admin's revocation.
    let user = app.user("revoked@example.com").await;
    let mut tab = subscribed(app.addr, app.state(), &user.access_token).await;
    ok(&app, &admin, ops::REVOKE_USER_SESSIONS, json!({ "id": user.id })).await;
    ends(&mut tab).await;

    // A password change on another device ends this one.
    let user = app.user("changed@example.com").await;
    let phone = user.login(&app).await;
    let mut tab = subscribed(app.addr, app.state(), &user.access_token).await;
    let v = phone.gql(&app, ops::CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": "another long passphrase" })).await;
    assert!(v["errors"].is_null(), "{v}");
    ends(&mut tab).await;

    // A role change is told, and the socket stays.
    let user = app.user("promoted@example.com").await;
    let mut tab = subscribed(app.addr, app.state(), &user.access_token).await;
    let set_role = "mutation($id: ID!, $r: Role!) { setUserRole(id: $id, role: $r) { role } }";
    ok(&app, &admin, set_role, json!({ "id": user.id, "r": "ADMIN" })).await;
    let next = receive(&mut tab).await.unwrap();
    assert_eq!(next["payload"]["data"]["sessionEvents"]["kind"], "ROLE_CHANGED", "{next}");
    assert!(next["payload"]["data"]["sessionEvents"]["sessionId"].is_string(), "the session it is about: {next}");
    assert_eq!(next["payload"]["data"]["sessionEvents"]["role"], "ADMIN", "{next}");
    ok(&app, &admin, ops::DELETE_USER, json!({ "id": user.id })).await;
    ends(&mut tab).await;
}

#[tokio::test]
async fn a_handshake_without_a_valid_token_is_refused() {
    let app = spawn_app().await;
    let user = app.user("socket@example.com").await;
    let refused = |payload: Value| {
        let addr = app.addr;
        async move {
            let mut ws = open(addr, None).await.unwrap();
            send(&mut ws, json!({ "type": "connection_init", "payload": payload })).await;
            receive(&mut ws).await.expect_err("acknowledged")
        }
    };
    assert_eq!(refused(json!({})).await, Some(4401), "no token");
    assert_eq!(refused(json!({ "Authorization": "Bearer not-a-token" })).await, Some(4403), "a forged token");
    // A token of an ended session.
    ok(&app, &user.access_token, ops::LOGOUT, json!({})).await;
    assert_eq!(refused(json!({ "Authorization": format!("Bearer {}", user.access_token) })).await, Some(4403));
    // An expired token: refresh, then connect again (4401, not 4403).
    let later = app.user("later@example.com").await;
    app.clock.advance(Duration::from_secs(16 * 60));
    assert_eq!(refused(json!({ "Authorization": format!("Bearer {}", later.access_token) })).await, Some(4401));
    // Anything before the init.
    let mut ws = open(app.addr, None).await.unwrap();
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": SUBSCRIBE } })).await;
    assert_eq!(receive(&mut ws).await.expect_err("acknowledged"), Some(4400));
}

#[tokio::test]
async fn a_browser_on_another_site_cannot_open_a_socket() {
    let app = spawn_with(|c| {
        c.cors_allowed_origins = vec![authgraph::config::Origin::parse("https://app.example.com").unwrap()]
    })
    .await;
    let err = open(app.addr, Some("https://evil.example")).await.expect_err("a cross-site socket was opened");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{err:?}") };
    assert_eq!(resp.status(), 403);
    assert!(open(app.addr, Some("https://app.example.com")).await.is_ok(), "an allowed origin");
    // The subprotocol is required.
    let request = format!("ws://{}/graphql", app.addr).into_client_request().unwrap();
    let err = tokio_tungstenite::connect_async(request).await.expect_err("no subprotocol");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{err:?}") };
    assert_eq!(resp.status(), 400);
}

/// The socket serves subscriptions only: queries and mutations (a login,
/// whose cookie could not be set there) go over HTTP.
#[tokio::test]
async fn the_socket_serves_subscriptions_only() {
    let app = spawn_app().await;
    let user = app.user("only@example.com").await;
    let mut ws = open(app.addr, None).await.unwrap();
    let init =
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", user.access_token) } });
    send(&mut ws, init).await;
    assert_eq!(receive(&mut ws).await.unwrap()["type"], "connection_ack");
    let login = format!(
        "mutation {{ login(input: {{ email: \"only@example.com\", password: \"{PASSWORD}\" }}) {{ accessToken }} }}"
    );
    for (id, query) in [("1", "{ me { id } }".to_owned()), ("2", login)] {
        send(&mut ws, json!({ "id": id, "type": "subscribe", "payload": { "query": query } })).await;
        let next = receive(&mut ws).await.unwrap();
        assert_eq!(next["id"], id, "{next}");
        assert_eq!(next["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{next}");
        assert!(next["payload"]["data"].is_null(), "{next}");
        assert_eq!(receive(&mut ws).await.unwrap()["type"], "complete");
    }
}

/// On PostgreSQL, a socket held by one instance learns of an end made on
/// another.
#[tokio::test]
async fn an_end_on_one_instance_reaches_a_socket_on_another() {
    let app = spawn_app().await;
    if !app.database.is_postgres() {
        return;
    }
    let other = authgraph::app::spawn(&app.config).await.expect("second instance");
    let user = app.user("far@example.com").await;
    let mut tab = subscribed(other.addr, &other.state, &user.access_token).await;
    ok(&app, &user.access_token, ops::LOGOUT, json!({})).await;
    ends(&mut tab).await;
    other.stop().await.unwrap();
}

/// A socket's limits: no message larger than a request body (checked before
/// the token is), at most 16 sockets per session and 4 subscriptions per
/// socket (4429 past them).
#[tokio::test]
async fn sockets_have_limits() {
    let app = spawn_app().await;
    let user = app.user("limits@example.com").await;
    let init =
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", user.access_token) } });

    let mut big = open(app.addr, None).await.unwrap();
    let padding = "x".repeat(200 * 1024);
    let sent =
        big.send(Message::text(json!({ "type": "connection_init", "payload": { "x": padding } }).to_string())).await;
    if sent.is_ok() {
        let code = receive(&mut big).await.expect_err("a 200 KiB message was taken");
        assert!(matches!(code, None | Some(1009)), "{code:?}");
    }

    let mut held = Vec::new();
    for _ in 0..16 {
        let mut ws = open(app.addr, None).await.unwrap();
        send(&mut ws, init.clone()).await;
        assert_eq!(receive(&mut ws).await.unwrap()["type"], "connection_ack");
        held.push(ws);
    }
    let mut extra = open(app.addr, None).await.unwrap();
    send(&mut extra, init.clone()).await;
    assert_eq!(receive(&mut extra).await.expect_err("a 17th socket"), Some(4429));
    // One closes: room for another, once the server has seen it go (until
    // then the cap still answers 4429).
    held.pop().unwrap().close(None).await.unwrap();
    let mut again = wait_until(
        || "room for a socket once one closed".into(),
        async || {
            let mut ws = open(app.addr, None).await.unwrap();
            send(&mut ws, init.clone()).await;
            match receive(&mut ws).await {
                Ok(ack) => {
                    assert_eq!(ack["type"], "connection_ack", "{ack}");
                    Some(ws)
                }
                Err(code) => {
                    assert_eq!(code, Some(4429), "{code:?}");
                    None
                }
            }
        },
    )
    .await;

    for i in 0..5 {
        send(&mut again, json!({ "id": i.to_string(), "type": "subscribe", "payload": { "query": SUBSCRIBE } })).await;
    }
    assert_eq!(receive(&mut again).await.expect_err("a fifth subscription"), Some(4429));
}

/// A socket that keeps talking is still looked at unprompted: a session that
/// ends by age (no notice is sent for that) closes it.
#[tokio::test]
async fn a_talking_socket_still_ends_with_its_session() {
    let app = spawn_with(|c| c.session_watch_recheck = Duration::from_millis(500)).await;
    let user = app.user("chatty@example.com").await;
    let mut tab = subscribed(app.addr, app.state(), &user.access_token).await;
    // Past the session's seven days.
    app.clock.advance(Duration::from_secs(8 * 24 * 3600));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the socket outlived its session");
        // Talking all the while; a send after the server's close may fail.
        let _ = tab.send(Message::text(json!({ "type": "ping" }).to_string())).await;
        match tokio::time::timeout(Duration::from_millis(200), tab.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4403));
                return;
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                let m: Value = serde_json::from_str(&text).unwrap();
                assert!(m["type"] == "pong" || m["type"] == "next" || m["type"] == "complete", "{m}");
            }
            Ok(None) | Ok(Some(Err(_))) => panic!("the socket broke instead of closing with 4403"),
            _ => {}
        }
    }
}

/// On PostgreSQL, a database outage long enough to clear the session cache
/// does not tell open sockets that their sessions ended.
#[tokio::test]
async fn an_outage_is_not_a_session_end() {
    let app = spawn_with(|c| c.session_watch_recheck = Duration::from_millis(500)).await;
    if !app.database.is_postgres() {
        return;
    }
    let user = app.user("steady@example.com").await;
    let mut tab = subscribed(app.addr, app.state(), &user.access_token).await;
    let outage = app.database.outage().await;
    // Past the five seconds after which the change log is called stale and
    // the cache cleared.
    tokio::time::sleep(Duration::from_secs(7)).await;
    outage.restore().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(&mut tab, json!({ "type": "ping" })).await;
    let answer = receive(&mut tab).await.unwrap_or_else(|code| panic!("the socket closed: {code:?}"));
    assert_eq!(answer["type"], "pong", "{answer}");
}

/// A socket, acknowledged, of the session of `token`.
async fn acknowledged(addr: SocketAddr, token: &str) -> Socket {
    let mut ws = open(addr, None).await.unwrap();
    send(&mut ws, json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
        .await;
    assert_eq!(receive(&mut ws).await.unwrap()["type"], "connection_ack");
    ws
}

/// Only graphql-transport-ws's own client messages are taken: the older
/// protocol's `start`, which the protocol library would also run (and the
/// subscription cap would not count), closes the socket with 4400, as does
/// any other unknown message; a second init closes it with 4429, and an id
/// in use with 4409.
#[tokio::test]
async fn every_message_that_starts_an_operation_is_counted() {
    let app = spawn_app().await;
    let user = app.user("spelling@example.com").await;
    let registry = &app.state().services.registry;
    let before = registry.watchers();
    let mut ws = acknowledged(app.addr, &user.access_token).await;
    for i in 0..10 {
        // A send after the server's close may fail.
        let start = json!({ "id": i.to_string(), "type": "start", "payload": { "query": SUBSCRIBE } });
        let _ = ws.send(Message::text(start.to_string())).await;
    }
    assert_eq!(receive(&mut ws).await.expect_err("a legacy start was run"), Some(4400));
    wait_until(|| "the closed socket's watch to go".into(), async || (registry.watchers() == before).then_some(()))
        .await;

    for (message, close) in [
        (json!({ "type": "connection_init", "payload": {} }), 4429),
        (json!({ "type": "connection_terminate" }), 4400),
        (json!({ "id": "1", "type": "subscribe" }), 4400),
    ] {
        let mut ws = acknowledged(app.addr, &user.access_token).await;
        send(&mut ws, message.clone()).await;
        assert_eq!(receive(&mut ws).await.expect_err("taken"), Some(close), "{message}");
    }
    let mut ws = acknowledged(app.addr, &user.access_token).await;
    for _ in 0..2 {
        let _ = ws
            .send(Message::text(
                json!({ "id": "same", "type": "subscribe", "payload": { "query": SUBSCRIBE } }).to_string(),
            ))
            .await;
    }
    assert_eq!(receive(&mut ws).await.expect_err("an id used twice"), Some(4409));
}

/// One subscription is one stream: a document selecting `sessionEvents`
/// fifty times (aliases) is refused, and starts no watcher.
#[tokio::test]
async fn a_subscription_selects_one_root_field() {
    let app = spawn_app().await;
    let user = app.user("aliases@example.com").await;
    let registry = &app.state().services.registry;
    let mut ws = acknowledged(app.addr, &user.access_token).await;
    let before = registry.watchers();
    let fields: Vec<String> = (0..50).map(|i| format!("e{i}: sessionEvents {{ kind }}")).collect();
    for query in [
        format!("subscription {{ {} }}", fields.join(" ")),
        "subscription { sessionEvents { kind } ...More } fragment More on Subscription { again: sessionEvents { kind } }"
            .to_owned(),
    ]
    .iter()
    .enumerate()
    {
        send(&mut ws, json!({ "id": query.0.to_string(), "type": "subscribe", "payload": { "query": query.1 } })).await;
        // The refusal comes as the operation's result (`next` with errors, or
        // `error`), and the operation is over.
        let mut answers = Vec::new();
        loop {
            let answer = receive(&mut ws).await.unwrap();
            answers.push(answer.to_string());
            if answer["type"] == "complete" || answer["type"] == "error" {
                break;
            }
        }
        assert!(answers.iter().any(|a| a.contains("exactly one root field")), "{answers:?}");
        assert_eq!(registry.watchers(), before, "watchers started for a refused subscription");
    }
    // Over HTTP the same document is refused alike.
    let v = user.gql(&app, "subscription { a: sessionEvents { kind } b: sessionEvents { kind } }", json!({})).await;
    assert_eq!(code(&v), "BAD_USER_INPUT", "{v}");
}

/// What sockets cost is bounded per account too: past 32 on an instance,
/// over all of the account's sessions, a handshake closes with 4429.
#[tokio::test]
async fn sockets_are_bounded_per_account() {
    let app = spawn_app().await;
    let user = app.user("many.tabs@example.com").await;
    let second = user.login(&app).await;
    let third = user.login(&app).await;
    let mut held = Vec::new();
    for token in [&user.access_token, &second.access_token] {
        for _ in 0..16 {
            held.push(acknowledged(app.addr, token).await);
        }
    }
    let mut extra = open(app.addr, None).await.unwrap();
    let init =
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", third.access_token) } });
    send(&mut extra, init).await;
    assert_eq!(receive(&mut extra).await.expect_err("a 33rd socket of one account"), Some(4429));
}

//! GraphQL subscriptions: `GET /graphql` with a WebSocket upgrade, speaking
//! `graphql-transport-ws` (what Apollo Client's and urql's `graphql-ws`
//! clients use).
//!
//! The handshake is judged here, before the protocol runs: the first message
//! must be `connection_init` with `{"Authorization": "Bearer <access token>"}`
//! (within 10 s, else the socket closes with 4408). Nothing is acknowledged
//! without a valid token, and the close code tells the client what to do:
//! 4401 (Unauthorized) for a missing or expired token (refresh, then connect
//! again), 4403 (Forbidden) for a forged one or a session that has ended (log
//! in again). A browser connecting from another site is refused before the
//! upgrade (403), like a cross-site cookie mutation. Once open, the socket
//! follows its session: when the session ends (anywhere, on any instance) the
//! subscriptions' last events are sent, then the socket closes with 4403. The
//! server pings every [`PING_EVERY`], so proxies do not drop a quiet socket.

use std::{sync::Arc, sync::atomic::AtomicUsize, time::Duration};

use async_graphql::http::{WebSocketProtocols, WsMessage};
use futures_util::{SinkExt, StreamExt, future, stream};
use poem::{
    Endpoint, IntoResponse, Request, Response, Result, handler,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    web::{
        Data,
        websocket::{Message, WebSocket, WebSocketStream},
    },
};

use super::{AppState, graphql::resolve_principal, log::request_client_ip};
use crate::{
    auth::{
        principal::{Principal, RejectReason},
        rate_limit::IpKey,
    },
    domain::{SessionId, UserId},
    error::AppError,
    graphql::{CookieChanges, RequestCtx},
    service::{
        ClientInfo,
        core::watch::{Change, SessionWatch},
    },
};

/// The one subprotocol spoken.
const PROTOCOL: &str = "graphql-transport-ws";

/// How long a client has to send `connection_init`.
const INIT_WAIT: Duration = Duration::from_secs(10);

/// Most sockets one session may hold open at once (its tabs); past it the
/// handshake closes with 4429.
pub const MAX_SOCKETS_PER_SESSION: usize = 16;

/// Most sockets one account may hold open at once on an instance, over all
/// its sessions; past it the handshake closes with 4429.
pub const MAX_SOCKETS_PER_ACCOUNT: usize = 32;

/// Most subscriptions one socket may run at once; past it the socket closes
/// with 4429. With one root field per subscription, an account holds at most
/// `MAX_SOCKETS_PER_ACCOUNT × (1 + MAX_SUBSCRIPTIONS_PER_SOCKET)` session
/// watchers on an instance (each socket watches its session too).
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 4;

/// The sockets open per session and per account, for
/// [`MAX_SOCKETS_PER_SESSION`] and [`MAX_SOCKETS_PER_ACCOUNT`].
#[derive(Default)]
pub struct OpenSockets(std::sync::Mutex<Counted>);

#[derive(Default)]
struct Counted {
    sessions: std::collections::HashMap<SessionId, usize>,
    accounts: std::collections::HashMap<UserId, usize>,
}

/// Why a socket was not let in.
enum Full {
    Session,
    Account,
}

impl OpenSockets {
    /// Counts one more socket of `session` of `user`, or says which cap it
    /// meets. The counts go down when the returned guard is dropped.
    fn enter(self: &Arc<Self>, session: SessionId, user: UserId) -> Result<OpenSocket, Full> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if open.sessions.get(&session).copied().unwrap_or(0) >= MAX_SOCKETS_PER_SESSION {
            return Err(Full::Session);
        }
        if open.accounts.get(&user).copied().unwrap_or(0) >= MAX_SOCKETS_PER_ACCOUNT {
            return Err(Full::Account);
        }
        *open.sessions.entry(session).or_default() += 1;
        *open.accounts.entry(user).or_default() += 1;
        Ok(OpenSocket { sockets: self.clone(), session, user })
    }
}

struct OpenSocket {
    sockets: Arc<OpenSockets>,
    session: SessionId,
    user: UserId,
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        fn leave<K: std::hash::Hash + Eq>(counts: &mut std::collections::HashMap<K, usize>, key: &K) {
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
        let mut open = self.sockets.0.lock().unwrap_or_else(|e| e.into_inner());
        leave(&mut open.sessions, &self.session);
        leave(&mut open.accounts, &self.user);
    }
}

/// How often the server sends a protocol `ping` (clients answer `pong`):
/// under the 60 s idle time-out common in reverse proxies.
pub const PING_EVERY: Duration = Duration::from_secs(25);

/// `GET /graphql`: a WebSocket upgrade goes to the subscriptions, anything
/// else to GraphQL over HTTP GET.
pub struct GetOrUpgrade;

impl Endpoint for GetOrUpgrade {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if upgrade {
            graphql_ws.call(req).await.map(IntoResponse::into_response)
        } else {
            super::graphql::graphql_get.call(req).await.map(IntoResponse::into_response)
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    Response::builder().status(status).content_type("text/plain; charset=utf-8").body(message.to_owned())
}

#[handler]
async fn graphql_ws(req: &Request, ws: WebSocket, state: Data<&Arc<AppState>>) -> Response {
    let headers = req.headers();
    if state.site.is_cross_site(headers) {
        return refuse(StatusCode::FORBIDDEN, &AppError::CrossSiteRequest.to_string());
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    if !offered {
        return refuse(StatusCode::BAD_REQUEST, "Subscriptions speak the graphql-transport-ws subprotocol only");
    }
    let client = ClientInfo {
        ip: request_client_ip(req, &state.trusted_proxies),
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    let state = state.clone();
    // No message may be larger than a request body over HTTP.
    let mut config = poem::web::websocket::WebSocketConfig::default();
    config.max_message_size = Some(state.max_body_bytes);
    config.max_frame_size = Some(state.max_body_bytes);
    ws.protocols([PROTOCOL]).config(config).on_upgrade(move |socket| serve(socket, state, client)).into_response()
}

/// Sends the close frame and closes our side, so the client reads the code
/// before the connection goes.
async fn finish<S>(sink: &mut S, code: u16, reason: &str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = sink.send(Message::close_with(code, reason.to_owned())).await;
    let _ = sink.close().await;
}

fn message(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(text) => Message::Text(text),
        WsMessage::Close(code, reason) => Message::close_with(code, reason),
    }
}

/// The access token of a `connection_init` payload: `Authorization` (any
/// case) holding `Bearer <token>`.
fn bearer(payload: &serde_json::Value) -> Option<String> {
    let object = payload.as_object()?;
    let value = object.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?.1.as_str()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// A client message after `connection_init`, as graphql-transport-ws
/// defines them. Only these reach the protocol library, which would also
/// start an operation for other spellings (the older protocol's `start`)
/// that the subscription count would not see.
enum ClientMessage {
    Subscribe(String),
    Complete(String),
    /// `ping` or `pong`.
    Keepalive,
    /// A second `connection_init`.
    Init,
}

/// What `bytes` is, or `None` for anything the protocol does not define
/// from a client (closed with 4400).
fn classify(bytes: &[u8]) -> Option<ClientMessage> {
    let message: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = || message["id"].as_str().filter(|id| !id.is_empty()).map(str::to_owned);
    match message["type"].as_str()? {
        "subscribe" if message["payload"]["query"].is_string() => id().map(ClientMessage::Subscribe),
        "complete" => id().map(ClientMessage::Complete),
        "ping" | "pong" => Some(ClientMessage::Keepalive),
        "connection_init" => Some(ClientMessage::Init),
        _ => None,
    }
}

/// How long the subscriptions of a socket whose session ended get to send
/// their last events before the socket closes.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// The id of the operation `m` ends (`complete` or `error` sent by the
/// server): it no longer runs.
fn ended_operation(m: &WsMessage) -> Option<String> {
    let WsMessage::Text(text) = m else { return None };
    let sent = serde_json::from_str::<serde_json::Value>(text).ok()?;
    matches!(sent["type"].as_str(), Some("complete" | "error")).then(|| sent["id"].as_str().map(str::to_owned))?
}

async fn serve(socket: WebSocketStream, state: Arc<AppState>, client: ClientInfo) {
    let (mut sink, source) = socket.split();
    // Text and binary messages; `None` once the client is gone.
    let mut incoming = Box::pin(source.take_while(|m| future::ready(m.is_ok())).filter_map(|m| {
        future::ready(match m {
            Ok(Message::Text(text)) => Some(text.into_bytes()),
            Ok(Message::Binary(bytes)) => Some(bytes),
            _ => None,
        })
    }));
    // The handshake, judged here.
    let first = match tokio::time::timeout(INIT_WAIT, incoming.next()).await {
        Ok(Some(first)) => first,
        // A message over the size limit, or a broken connection.
        Ok(None) => {
            finish(&mut sink, 1009, "The message is too large, or could not be read").await;
            return;
        }
        Err(_) => {
            finish(&mut sink, 4408, "Connection initialisation timeout").await;
            return;
        }
    };
    let init: serde_json::Value = serde_json::from_slice(&first).unwrap_or_default();
    if init["type"] != "connection_init" {
        finish(&mut sink, 4400, "The first message must be connection_init").await;
        return;
    }
    let Some(token) = bearer(&init["payload"]) else {
        finish(&mut sink, 4401, "Unauthorized: send {\"Authorization\": \"Bearer <access token>\"}").await;
        return;
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let principal = resolve_principal(&headers, &state.services).await;
    let me = match &principal {
        Principal::User(me) => me.clone(),
        Principal::Rejected(RejectReason::Expired) => {
            finish(&mut sink, 4401, "Unauthorized: the access token has expired; refresh it").await;
            return;
        }
        _ => {
            finish(&mut sink, 4403, "Forbidden: the access token is invalid or its session has ended").await;
            return;
        }
    };
    let _open = match state.sockets.enter(me.session_id, me.user_id) {
        Ok(open) => open,
        Err(Full::Session) => {
            finish(&mut sink, 4429, "Too many sockets for this session").await;
            return;
        }
        Err(Full::Account) => {
            finish(&mut sink, 4429, "Too many sockets for this account").await;
            return;
        }
    };
    let Ok(mut watch) = SessionWatch::start(&state.services, me.user_id, me.session_id).await else {
        finish(&mut sink, 4403, "Forbidden: the session has ended").await;
        return;
    };
    let ctx = Arc::new(RequestCtx {
        principal,
        ip_key: IpKey::from(client.ip),
        client,
        refresh_cookie: None,
        cross_site: false,
        credential_fields: AtomicUsize::new(0),
        over_websocket: true,
    });
    let mut data = async_graphql::Data::default();
    data.insert(ctx);
    data.insert(Arc::new(CookieChanges::default()));

    // The protocol, fed through a channel (this loop reads the client, to
    // count its subscriptions), with the judged init first.
    let (to_protocol, from_client) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let _ = to_protocol.send(first).await;
    let messages = stream::unfold(from_client, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut ws = Box::pin(
        async_graphql::http::WebSocket::new(state.schema.clone(), messages, WebSocketProtocols::GraphQLWS)
            .on_connection_init(move |_| future::ready(Ok(data))),
    );
    let mut running = std::collections::HashSet::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            from = incoming.next() => {
                let Some(bytes) = from else { return };
                // The closes the protocol names for each misstep.
                match classify(&bytes) {
                    Some(ClientMessage::Subscribe(id)) => {
                        if !running.insert(id) {
                            finish(&mut sink, 4409, "A subscriber with this id already exists").await;
                            return;
                        }
                    }
                    Some(ClientMessage::Complete(id)) => {
                        running.remove(&id);
                    }
                    Some(ClientMessage::Keepalive) => {}
                    Some(ClientMessage::Init) => {
                        finish(&mut sink, 4429, "Too many initialisation requests").await;
                        return;
                    }
                    None => {
                        finish(&mut sink, 4400, "Invalid message received").await;
                        return;
                    }
                }
                if running.len() > MAX_SUBSCRIPTIONS_PER_SOCKET {
                    finish(&mut sink, 4429, "Too many subscriptions on this socket").await;
                    return;
                }
                if to_protocol.send(bytes).await.is_err() {
                    return;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Text(r#"{"type":"ping"}"#.to_owned())).await.is_err() {
                    return;
                }
            }
            next = ws.next() => {
                let Some(m) = next else { return };
                if let Some(id) = ended_operation(&m) {
                    running.remove(&id);
                }
                let closing = matches!(m, WsMessage::Close(..));
                if sink.send(message(m)).await.is_err() || closing {
                    return;
                }
            }
            change = watch.next() => {
                if change != Change::Ended {
                    continue;
                }
                // What the subscriptions have to say of it goes first: each
                // sees the same end, sends its last event and completes. They
                // are waited for (a second at most), not guessed at.
                let forwarded = tokio::time::timeout(LAST_WORDS, async {
                    while !running.is_empty() {
                        let Some(m) = ws.next().await else { break };
                        if let Some(id) = ended_operation(&m) {
                            running.remove(&id);
                        }
                        if sink.send(message(m)).await.is_err() {
                            return false;
                        }
                    }
                    true
                })
                .await;
                if forwarded == Ok(false) {
                    return;
                }
                finish(&mut sink, 4403, "Forbidden: the session ended").await;
                // The closing handshake: read what the client still sends until
                // it closes too (a second at most), so the connection is not
                // reset under the close frame.
                let _ = tokio::time::timeout(Duration::from_secs(1), async { while incoming.next().await.is_some() {} }).await;
                return;
            }
        }
    }
}

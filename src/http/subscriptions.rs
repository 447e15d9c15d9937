//! GraphQL subscriptions: `GET /graphql` with a WebSocket upgrade, speaking
//! `graphql-transport-ws` (what Apollo Client's and urql's `graphql-ws`
//! clients use).
//!
//! The handshake is judged here, before the protocol runs: the first message
//! must be `connection_init` with `{"Authorization": "Bearer <access token>"}`
//! (within 10 s, else the socket closes with 4408); a missing token closes it
//! with 4401, an invalid, expired or revoked one with 4403, and nothing is
//! acknowledged. A browser connecting from another site is refused before the
//! upgrade (403), like a cross-site cookie mutation. Once open, the socket
//! follows its session: when the session ends (anywhere, on any instance) the
//! subscriptions' last events are sent, then the socket closes with 4403.

use std::{sync::Arc, sync::atomic::AtomicUsize, time::Duration};

use async_graphql::http::{WebSocketProtocols, WsMessage};
use futures_util::{FutureExt, SinkExt, StreamExt, future, stream};
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
    auth::rate_limit::IpKey,
    error::AppError,
    graphql::{CookieChanges, RequestCtx},
    service::{
        ClientInfo,
        watch::{Change, SessionWatch},
    },
};

/// The one subprotocol spoken.
const PROTOCOL: &str = "graphql-transport-ws";

/// How long a client has to send `connection_init`.
const INIT_WAIT: Duration = Duration::from_secs(10);

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
    ws.protocols([PROTOCOL]).on_upgrade(move |socket| serve(socket, state, client)).into_response()
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

async fn serve(socket: WebSocketStream, state: Arc<AppState>, client: ClientInfo) {
    let (mut sink, incoming) = socket.split();
    let mut incoming = incoming.filter_map(|m| {
        future::ready(match m {
            Ok(Message::Text(text)) => Some(text.into_bytes()),
            Ok(Message::Binary(bytes)) => Some(bytes),
            _ => None,
        })
    });
    let close = |code: u16, reason: &str| Message::close_with(code, reason.to_owned());

    // The handshake, judged here.
    let Ok(Some(first)) = tokio::time::timeout(INIT_WAIT, incoming.next()).await else {
        let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
        return;
    };
    let init: serde_json::Value = serde_json::from_slice(&first).unwrap_or_default();
    if init["type"] != "connection_init" {
        let _ = sink.send(close(4400, "The first message must be connection_init")).await;
        return;
    }
    let Some(token) = bearer(&init["payload"]) else {
        let _ = sink.send(close(4401, "Unauthorized: send {\"Authorization\": \"Bearer <access token>\"}")).await;
        return;
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let principal = resolve_principal(&headers, &state.services).await;
    let Some(me) = principal.user().cloned() else {
        let _ = sink.send(close(4403, "Forbidden: the access token is invalid, expired or revoked")).await;
        return;
    };
    let Ok(mut watch) = SessionWatch::start(&state.services, me.user_id, me.session_id).await else {
        let _ = sink.send(close(4403, "Forbidden: the session has ended")).await;
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

    // The protocol, with the judged init put back in front.
    let messages = stream::once(future::ready(first)).chain(incoming);
    let mut ws = Box::pin(
        async_graphql::http::WebSocket::new(state.schema.clone(), messages, WebSocketProtocols::GraphQLWS)
            .on_connection_init(move |_| future::ready(Ok(data))),
    );
    loop {
        tokio::select! {
            next = ws.next() => {
                let Some(m) = next else { return };
                let closing = matches!(m, WsMessage::Close(..));
                if sink.send(message(m)).await.is_err() || closing {
                    return;
                }
            }
            change = watch.next() => {
                if change != Change::Ended {
                    continue;
                }
                // What the subscriptions have to say of it goes first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Some(Some(m)) = ws.next().now_or_never() {
                    if sink.send(message(m)).await.is_err() {
                        return;
                    }
                }
                let _ = sink.send(close(4403, "Forbidden: the session ended")).await;
                return;
            }
        }
    }
}

//! GraphQL over HTTP. POST takes `application/json` only: form, `text/plain` and
//! multipart bodies are what a cross-site page can send without a preflight, so
//! they get 415. GET runs queries only; a mutation over GET gets 405.

use std::sync::{Arc, atomic::AtomicUsize};

use async_graphql::{
    BatchRequest, BatchResponse, Request as GqlRequest, Response as GqlResponse, Value, parser::types::OperationType,
};
use async_graphql_poem::GraphQLBatchResponse;
use poem::{
    Body, IntoResponse, Request, Response,
    error::ReadBodyError,
    handler,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    web::Data,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    auth::{
        principal::{Principal, RejectReason, UserPrincipal},
        rate_limit::IpKey,
    },
    error::{AppError, Code, Reason},
    graphql::{
        CookieChange, CookieChanges, RequestCtx,
        documents::{DocumentCache, selected_operation},
    },
    http::{AppState, error_text::cap_client_text, log::request_client_ip},
    service::{
        ClientInfo, Services,
        admin::api_keys::{self, AuthFailure},
        sessions,
    },
};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

#[handler]
pub async fn graphql_post(req: &Request, body: Body, state: Data<&Arc<AppState>>) -> Response {
    if !is_json(req.headers()) {
        return plain_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::BadRequest("POST /graphql takes Content-Type: application/json".to_owned()),
        );
    }
    let bytes = match body.into_bytes_limit(state.max_body_bytes).await {
        Ok(b) => b,
        Err(ReadBodyError::PayloadTooLarge) => {
            return plain_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                AppError::BadRequest("Request body too large".to_owned()),
            );
        }
        Err(_) => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                AppError::BadRequest("Could not read the request body".to_owned()),
            );
        }
    };
    match parse_body(&bytes, state.max_batch_size) {
        Ok(batch) => execute(req, batch, &state).await,
        Err(message) => plain_error(StatusCode::BAD_REQUEST, AppError::BadRequest(message)),
    }
}

/// One request object, or a non-empty array of at most `max_batch` of them, each
/// with a non-empty `query` (persisted queries are not supported).
fn parse_body(bytes: &[u8], max_batch: usize) -> Result<BatchRequest, String> {
    const SHAPE: &str = r#"The body must be a GraphQL request: {"query": "...", "variables": {...}}"#;
    let batch: BatchRequest = serde_json::from_slice(bytes).map_err(|_| SHAPE.to_owned())?;
    let requests: &[GqlRequest] = match &batch {
        BatchRequest::Single(r) => std::slice::from_ref(r),
        BatchRequest::Batch(list) if list.is_empty() => return Err("Empty batch".to_owned()),
        BatchRequest::Batch(list) if list.len() > max_batch => {
            return Err(format!("At most {max_batch} operations per batch"));
        }
        BatchRequest::Batch(list) => list,
    };
    if requests.iter().any(|r| r.query.trim().is_empty()) {
        return Err(SHAPE.to_owned());
    }
    Ok(batch)
}

/// GraphQL over HTTP's query-string form: `query`, `operationName`, and JSON-encoded
/// `variables` and `extensions`.
fn parse_query_string(qs: &str) -> Result<GqlRequest, String> {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(default)]
        query: String,
        #[serde(rename = "operationName")]
        operation_name: Option<String>,
        variables: Option<String>,
        extensions: Option<String>,
    }
    let p: Params = serde_urlencoded::from_str(qs).map_err(|_| "Malformed query string".to_owned())?;
    let mut req = GqlRequest::new(p.query);
    if let Some(name) = p.operation_name.filter(|n| !n.is_empty()) {
        req = req.operation_name(name);
    }
    if let Some(vars) = p.variables.filter(|v| !v.is_empty()) {
        let vars = serde_json::from_str(&vars).map_err(|_| "variables must be a JSON object".to_owned())?;
        req = req.variables(async_graphql::Variables::from_json(vars));
    }
    if let Some(ext) = p.extensions.filter(|v| !v.is_empty()) {
        req.extensions = serde_json::from_str(&ext).map_err(|_| "extensions must be a JSON object".to_owned())?;
    }
    Ok(req)
}

#[handler]
pub async fn graphql_get(req: &Request, state: Data<&Arc<AppState>>) -> Response {
    let mut gql = match parse_query_string(req.uri().query().unwrap_or_default()) {
        Ok(r) => r,
        Err(message) => return plain_error(StatusCode::BAD_REQUEST, AppError::BadRequest(message)),
    };
    if !is_query(&mut gql, &state.documents) {
        let mut resp =
            plain_error(StatusCode::METHOD_NOT_ALLOWED, AppError::BadRequest("Mutations must use POST".to_owned()));
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    execute(req, BatchRequest::Single(gql), &state).await
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// False for a document whose selected operation is a mutation or subscription.
/// Unparsable documents count as queries: execution answers them with an error.
/// A kept document is read from the cache; otherwise the document parsed here is
/// left in the request, so that execution does not parse it again.
fn is_query(req: &mut GqlRequest, documents: &DocumentCache) -> bool {
    let kept = if DocumentCache::may_keep(&req.query) { documents.get(&req.query) } else { None };
    let operation_name = req.operation_name.clone();
    let doc = match &kept {
        Some(kept) => &kept.document,
        None => match req.parsed_query() {
            Ok(doc) => doc,
            Err(_) => return true,
        },
    };
    selected_operation(doc, operation_name.as_deref()).is_none_or(|op| op.node.ty == OperationType::Query)
}

/// Decides who is calling from the `Authorization` header (never the URL).
pub async fn resolve_principal(headers: &HeaderMap, svc: &Services) -> Principal {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Principal::Anonymous;
    };
    let token = match value.to_str().ok().and_then(|v| v.trim().split_once(' ')) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Principal::Rejected(RejectReason::Invalid),
    };
    match sessions::live_access(svc, token).await {
        Ok((v, role)) => Principal::User(UserPrincipal { user_id: v.user_id, session_id: v.session_id, role }),
        Err(reason) => Principal::Rejected(reason),
    }
}

async fn execute(req: &Request, batch: BatchRequest, state: &AppState) -> Response {
    let request_id = Uuid::new_v4().simple().to_string();
    let headers = req.headers();
    let ip = request_client_ip(req, &state.trusted_proxies);
    let principal = match headers.get("x-api-key") {
        None => resolve_principal(headers, &state.services).await,
        // Two credentials at once is a confused or malicious client.
        Some(_) if headers.contains_key(header::AUTHORIZATION) => Principal::Rejected(RejectReason::Invalid),
        Some(key) => match api_keys::authenticate(&state.services, key.to_str().unwrap_or_default().trim()).await {
            Ok(service) => Principal::Service(service),
            Err(AuthFailure::Rejected(reason)) => Principal::Rejected(reason),
            Err(AuthFailure::Error(e)) => {
                tracing::warn!(request_id = %request_id, error = ?e, "API key lookup failed");
                let status = match e.code() {
                    Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                // Like errors raised inside GraphQL: the id that is also in the log.
                return error_response(status, &e, Some(&request_id));
            }
        },
    };
    let ctx = Arc::new(RequestCtx {
        principal,
        client: ClientInfo {
            ip,
            user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
        },
        refresh_cookie: state.cookies.read(headers),
        cross_site: state.site.is_cross_site(headers),
        ip_key: IpKey::from(ip),
        credential_fields: AtomicUsize::new(0),
        over_websocket: false,
    });
    // The request's line in the log (`http::log`) carries these too.
    let request_span = tracing::Span::current();
    request_span.record("request_id", request_id.as_str());
    if let Some(names) = operation_names(&batch) {
        request_span.record("operation", names.as_str());
    }
    let span = tracing::info_span!("graphql", request_id = %request_id, user_id = tracing::field::Empty);
    if let Some(user) = ctx.principal.user() {
        span.record("user_id", tracing::field::display(user.user_id));
    }
    // Each operation records its own cookie changes (a batch's run concurrently).
    let mut cookie_changes: Vec<Arc<CookieChanges>> = Vec::new();
    let mut per_operation = |request: GqlRequest| {
        let changes = Arc::new(CookieChanges::default());
        cookie_changes.push(changes.clone());
        request.data(ctx.clone()).data(changes)
    };
    let batch = match batch {
        BatchRequest::Single(request) => BatchRequest::Single(per_operation(request)),
        BatchRequest::Batch(list) => BatchRequest::Batch(list.into_iter().map(per_operation).collect()),
    };
    let mut response = state.schema.execute_batch(batch).instrument(span).await;
    match &mut response {
        BatchResponse::Single(r) => finish_errors(r, &request_id),
        BatchResponse::Batch(list) => list.iter_mut().for_each(|r| finish_errors(r, &request_id)),
    }
    request_span.record("outcome", outcome(&response));
    let request_error = matches!(&response, BatchResponse::Single(r) if is_request_error(r));
    let graphql_response_json = prefers_graphql_response_json(headers);
    // GraphQL over HTTP: in its own media type, a request error has no `data`
    // entry at all. `application/json` keeps `"data": null`, as clients expect.
    let body = graphql_response_json.then(|| body_without_request_data(&response)).flatten();
    let mut http = GraphQLBatchResponse(response).into_response();
    if let Some(body) = body {
        http.set_body(body);
    }
    let h = http.headers_mut();
    // Responses carry tokens or personal data: never cache them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The last operation (in request order) that touched the cookie decides,
    // as when each operation's headers replaced the previous one's.
    let last = cookie_changes.iter().rev().map(|changes| changes.take()).find(|changes| !changes.is_empty());
    for change in last.unwrap_or_default() {
        let value = match change {
            CookieChange::Set { refresh_token, max_age_secs } => state.cookies.set(&refresh_token, max_age_secs),
            CookieChange::Clear => state.cookies.clear(),
        };
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                h.append(header::SET_COOKIE, value);
            }
            Err(_) => tracing::error!("a Set-Cookie value was not a valid header value"),
        }
    }
    if graphql_response_json {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/graphql-response+json; charset=utf-8"));
        if request_error {
            http.set_status(StatusCode::BAD_REQUEST);
        }
    }
    http
}

/// The operation names a request sent, comma-separated, for the log: each cut
/// to 64 characters of letters, digits and `_` (what GraphQL names are made
/// of), so a client cannot write anything else into the log. `None` when it
/// named none.
fn operation_names(batch: &BatchRequest) -> Option<String> {
    let clean =
        |name: &str| name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect::<String>();
    let names: Vec<String> =
        batch.iter().filter_map(|r| r.operation_name.as_deref()).map(clean).filter(|n| !n.is_empty()).collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// `OK`, or the reason (else the code) of the first error of the response.
fn outcome(response: &BatchResponse) -> String {
    let first = match response {
        BatchResponse::Single(r) => r.errors.first(),
        BatchResponse::Batch(list) => list.iter().flat_map(|r| r.errors.iter()).next(),
    };
    let Some(err) = first else { return "OK".to_owned() };
    let ext = |name: &str| crate::graphql::error_extension(err, name);
    ext("reason").or_else(|| ext("code")).unwrap_or_else(|| "ERROR".to_owned())
}

/// The JSON body with the `data` entry left out of every response that is a
/// request error (each one of a batch on its own); `None` when there is none.
fn body_without_request_data(response: &BatchResponse) -> Option<Vec<u8>> {
    let responses: &[GqlResponse] = match response {
        BatchResponse::Single(r) => std::slice::from_ref(r),
        BatchResponse::Batch(list) => list,
    };
    if !responses.iter().any(is_request_error) {
        return None;
    }
    let mut body = serde_json::to_value(response).ok()?;
    let objects: Vec<&mut serde_json::Value> = match &mut body {
        serde_json::Value::Array(list) => list.iter_mut().collect(),
        single => vec![single],
    };
    for (object, r) in objects.into_iter().zip(responses) {
        if is_request_error(r)
            && let Some(object) = object.as_object_mut()
        {
            object.remove("data");
        }
    }
    serde_json::to_vec(&body).ok()
}

/// Every error gets a code; server-side failures get the request id that the log
/// has too. Errors the engine built from the client's text (parse and
/// validation) quote only a short excerpt of it.
fn finish_errors(resp: &mut GqlResponse, request_id: &str) {
    for err in &mut resp.errors {
        let ext = err.extensions.get_or_insert_with(Default::default);
        match ext.get("code") {
            None => {
                // Parse and validation errors, raised by the engine before any resolver.
                err.message = cap_client_text(&err.message, err.locations.first().map(|p| p.column));
                let refused = AppError::Refused { reason: Reason::GraphqlValidationFailed, message: String::new() };
                for (name, value) in refused.extensions() {
                    ext.set(name, value);
                }
            }
            Some(Value::String(code))
                if code == Code::InternalServerError.as_str() || code == Code::ServiceUnavailable.as_str() =>
            {
                ext.set("requestId", request_id);
            }
            Some(_) => {}
        }
    }
}

/// The request failed before execution (parse or validation): no data, and no
/// error that belongs to a field.
fn is_request_error(r: &GqlResponse) -> bool {
    r.data == Value::Null && !r.errors.is_empty() && r.errors.iter().all(|e| e.path.is_empty())
}

fn prefers_graphql_response_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let accept = accept.to_ascii_lowercase();
    match (accept.find(GRAPHQL_RESPONSE_JSON), accept.find("application/json")) {
        (Some(g), Some(j)) => g < j,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A client error answered before GraphQL runs, in the GraphQL error shape.
fn plain_error(status: StatusCode, err: AppError) -> Response {
    error_response(status, &err, None)
}

/// The error's message and extensions ([`AppError::extensions`], as inside
/// GraphQL), with the request id that is also in the log when there is one.
fn error_response(status: StatusCode, err: &AppError, request_id: Option<&str>) -> Response {
    let mut extensions = serde_json::Map::new();
    for (name, value) in err.extensions() {
        extensions.insert(name.to_owned(), value.into_json().unwrap_or_default());
    }
    if let Some(id) = request_id {
        extensions.insert("requestId".to_owned(), id.into());
    }
    let body = serde_json::json!({ "errors": [{ "message": err.to_string(), "extensions": extensions }] });
    Response::builder()
        .status(status)
        .content_type("application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.to_string())
}

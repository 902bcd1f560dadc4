//! The drain API the AT-SMS client's `ATSMSWorkerEnvelopeTransport` calls, with `apiUrl` =
//! this listener (docs/interfaces.md, "Added for the fourth stage"; docs/atsms.md):
//!
//! - `GET /messages/{did}/{fp}/list?type=atsms-envelope&limit=N` → `{"messages":[{"id","seq",
//!   "messageType"}]}`, oldest first, `limit` at most 100 (the default);
//! - `GET /messages/{did}/{fp}/{id}` → `{"message":{"id","seq","messageType",
//!   "encryptedContent"}}` (the envelope, base64);
//! - `DELETE /messages/{did}/{fp}/{id}` → `{"success":true,"messageId"}`: that device's copy
//!   only; 404 when it is not there.
//!
//! Every call carries the device's own token (`atproto::device_token`): read and checked
//! before anything is looked up, its signature checked with the device's published
//! certificate, and it must name the path's DID and device (403 otherwise). The path's DID
//! arrives percent-encoded, as the client writes every path; the router decodes it.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::error::XrpcError;
use crate::atproto::device_token;
use crate::atproto::identity::budget::{self, Client};
use crate::infra::device_store::DeviceStore;

/// Copies listed at most per call (the client asks for 100).
pub const MAX_LIST: usize = 100;
/// The only message type this store keeps.
const MESSAGE_TYPE: &str = "atsms-envelope";

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

/// The device the token proves, if it is the path's: `Ok` lets the call in.
async fn authorize(
    service: &super::Service,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    did: &str,
    fp: &str,
) -> Result<Arc<super::inbox::Inbox>, XrpcError> {
    let Some(inbox) = service.inbox.clone() else {
        return Err(XrpcError::new(404, "NotFound", "not found"));
    };
    let refused = |e: device_token::TokenError| {
        let (status, name) = e.answer();
        XrpcError::new(status, name, e.to_string())
    };
    let now = crate::infra::clock::unix_now();
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = device_token::parse(authorization, now).map_err(refused)?;
    token.for_path(did, fp).map_err(refused)?;
    let identity = service.signing.get().verifier.identity().clone();
    let client = service
        .client_ip(peer, headers)
        .map_or(Client::UNKNOWN, Client::network);
    let verified = budget::with_client(client, token.verify(&identity, now));
    match tokio::time::timeout(service.timeout, verified).await {
        Ok(result) => result.map_err(refused)?,
        Err(_) => return Err(refused(device_token::TokenError::Unavailable)),
    }
    Ok(inbox)
}

/// Runs store work off the async runtime (`inbox::blocking`); an I/O error is a 500.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, XrpcError> {
    super::inbox::blocking(work).await.map_err(|e| {
        tracing::warn!("inbox: device store: {e}");
        XrpcError::new(500, "InternalServerError", "the store failed")
    })
}

/// `GET /messages/{did}/{fp}/list`.
pub(super) async fn list(
    State(service): State<Arc<super::Service>>,
    Path((did, fp)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
) -> Response {
    let inbox = match authorize(&service, &headers, peer.0, &did, &fp).await {
        Ok(inbox) => inbox,
        Err(e) => return e.into_response(),
    };
    if query.kind.as_deref().is_some_and(|k| k != MESSAGE_TYPE) {
        return axum::Json(serde_json::json!({"messages": []})).into_response();
    }
    let limit = query.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
    let store = inbox.devices.clone();
    match blocking(move || store.list(&did, &fp, limit)).await {
        Ok(copies) => {
            let messages: Vec<serde_json::Value> = copies
                .iter()
                .map(|c| serde_json::json!({"id": c.id, "seq": c.seq, "messageType": MESSAGE_TYPE}))
                .collect();
            axum::Json(serde_json::json!({ "messages": messages })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Authorizes a call on the copy `id` of the path's device, then runs `op` on the store off
/// the async runtime.
async fn on_copy<T: Send + 'static>(
    service: &super::Service,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    (did, fp, id): (String, String, String),
    op: fn(&DeviceStore, &str, &str, &str) -> std::io::Result<T>,
) -> Result<T, XrpcError> {
    let inbox = authorize(service, headers, peer, &did, &fp).await?;
    let store = inbox.devices.clone();
    blocking(move || op(&store, &did, &fp, &id)).await
}

fn no_such_message() -> Response {
    XrpcError::new(404, "NotFound", "no such message").into_response()
}

/// `GET /messages/{did}/{fp}/{id}`.
pub(super) async fn get(
    State(service): State<Arc<super::Service>>,
    Path(path): Path<(String, String, String)>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
) -> Response {
    let id = path.2.clone();
    match on_copy(&service, &headers, peer.0, path, DeviceStore::get).await {
        Ok(Some(envelope)) => axum::Json(serde_json::json!({"message": {
            "seq": crate::infra::device_store::seq_of_id(&id),
            "id": id,
            "messageType": MESSAGE_TYPE,
            "encryptedContent": base64::engine::general_purpose::STANDARD.encode(envelope),
        }}))
        .into_response(),
        Ok(None) => no_such_message(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /messages/{did}/{fp}/{id}`.
pub(super) async fn delete(
    State(service): State<Arc<super::Service>>,
    Path(path): Path<(String, String, String)>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
) -> Response {
    let id = path.2.clone();
    match on_copy(&service, &headers, peer.0, path, DeviceStore::delete).await {
        Ok(true) => {
            crate::infra::metrics::global().inbox_envelope("drained", "");
            axum::Json(serde_json::json!({"success": true, "messageId": id})).into_response()
        }
        Ok(false) => no_such_message(),
        Err(e) => e.into_response(),
    }
}

/// CORS for the inbox API: the client's browser build drains from its own origin. The token,
/// not the origin, is what lets a call in, so any origin may ask; no cookies are used.
pub(super) fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{Method, header};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

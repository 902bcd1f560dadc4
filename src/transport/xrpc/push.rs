//! Push: `GET /ws/{did}/{fp}` (WebSocket, RFC 6455), what makes the AT-SMS client drain as soon
//! as a copy for its device is kept (it has no poll timer by default; its
//! `websocket-client.ts`).
//!
//! The client sends `{"type":"auth","token":"…"}` first: the device token of the drain API
//! (`atproto::device_token`), for the path's DID and device. The server answers
//! `{"type":"auth_success"}`, then `{"type":"new_message"}` each time a copy is kept for that
//! device, and `{"type":"pong"}` to `{"type":"ping"}`. A bad token closes the socket with code
//! 1008 (policy violation: the client then does not reconnect); a socket that has not
//! authenticated within [`AUTH_TIMEOUT`] is closed too. Each socket opened counts against its
//! client network's `inbox.post_rate_per_network`, at most `notify::MAX_SOCKETS` are open in
//! all (503 before the upgrade), and a device holds at most `notify::MAX_PER_DEVICE` authenticated
//! sockets (1013 after; only its own token takes one of its places). An authenticated socket
//! is closed (1001) when its token expires: the client reconnects with a fresh one.
//!
//! Push reaches the sockets of the host that kept the copy (docs/scaling.md: a fleet's
//! clients drain on start and on their own reconnects; push does not cross hosts).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::error::XrpcError;
use crate::atproto::device_token::{self, DeviceToken};
use crate::atproto::identity::budget::{self, Client};
use crate::infra::device_store::notify::Socket;

/// How long a socket may take to authenticate.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message a client may send (an auth message is about 600 bytes).
const MAX_MESSAGE: usize = 8 * 1024;

/// `GET /ws/{did}/{fp}`.
pub(super) async fn socket(
    State(service): State<Arc<super::Service>>,
    Path((did, fp)): Path<(String, String)>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Each socket opened counts against its network's rate, as a POST does: unauthenticated
    // sockets from one network cannot take the places of all.
    let (inbox, client) = match super::inbox::admitted(&service, peer, &headers) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let Some(place) = inbox.notifier.open() else {
        return XrpcError::new(503, "NotEnoughResources", "too many sockets").into_response();
    };
    // What one socket may hold, authenticated or not: a read buffer and a frame of
    // `MAX_MESSAGE` (the library's defaults are 128 KiB and 16 MiB), and what waits to be
    // written to a client that does not read (then sending waits, it does not grow).
    upgrade
        .read_buffer_size(MAX_MESSAGE)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, service, place, did, fp, client))
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

fn json(value: serde_json::Value) -> Message {
    Message::Text(value.to_string().into())
}

/// The first message: the device's token, checked as the drain API checks it.
async fn authenticate(
    socket: &mut WebSocket,
    service: &super::Service,
    did: &str,
    fp: &str,
    client: Client,
) -> Result<DeviceToken, &'static str> {
    let first = match tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => return Err("expected an auth message"),
        Err(_) => return Err("no auth message in time"),
    };
    let message: serde_json::Value =
        serde_json::from_str(first.as_str()).map_err(|_| "not JSON")?;
    let token = match (message["type"].as_str(), message["token"].as_str()) {
        (Some("auth"), Some(token)) => token,
        _ => return Err("expected an auth message"),
    };
    let now = crate::infra::clock::unix_now();
    let token = device_token::parse_token(token, now).map_err(|_| "invalid token")?;
    token
        .for_path(did, fp)
        .map_err(|_| "token of another device")?;
    let identity = service.signing.get().verifier.identity().clone();
    let verified = budget::with_client(client, token.verify(&identity, now));
    match tokio::time::timeout(service.timeout, verified).await {
        Ok(Ok(())) => Ok(token),
        _ => Err("invalid token"),
    }
}

async fn serve(
    mut socket: WebSocket,
    service: Arc<super::Service>,
    mut place: Socket,
    did: String,
    fp: String,
    client: Client,
) {
    let token = match authenticate(&mut socket, &service, &did, &fp, client).await {
        Ok(token) => token,
        // 1008, policy violation: the client does not reconnect with the same token.
        Err(why) => return close(socket, 1008, why).await,
    };
    place.authenticated();
    let Some(inbox) = service.inbox.clone() else {
        return;
    };
    let Some(mut open) = inbox.notifier.listen(&did, &fp) else {
        // 1013, try again later: the device has its sockets open already.
        return close(socket, 1013, "too many sockets for this device").await;
    };
    if socket
        .send(json(serde_json::json!({"type": "auth_success"})))
        .await
        .is_err()
    {
        return;
    }
    // At most the token's hour and its leeway from now, whatever it says (no overflow).
    let left = token
        .exp
        .saturating_add(device_token::LEEWAY)
        .saturating_sub(crate::infra::clock::unix_now())
        .clamp(0, device_token::MAX_LIFETIME + device_token::LEEWAY);
    let expires = tokio::time::Instant::now() + Duration::from_secs(left as u64);
    loop {
        tokio::select! {
            changed = open.receiver.changed() => {
                if changed.is_err() {
                    return;
                }
                if socket.send(json(serde_json::json!({"type": "new_message"}))).await.is_err() {
                    return;
                }
            }
            received = socket.recv() => match received {
                Some(Ok(Message::Text(text))) => {
                    let ping = serde_json::from_str::<serde_json::Value>(text.as_str())
                        .is_ok_and(|m| m["type"] == "ping");
                    if ping && socket.send(json(serde_json::json!({"type": "pong"}))).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            // The token's hour is over: 1001 (going away), which the client reconnects after,
            // with a fresh token (it does not after 1000 or 1008).
            () = tokio::time::sleep_until(expires) => {
                return close(socket, 1001, "token expired").await;
            }
        }
    }
}

//! The signing service (interfaces.md, "The signing service"): `POST
//! /xrpc/org.atsms-milter.mail.signEnvelope` (formerly `at.atsms.mail.signEnvelope`: still
//! served for one release, deprecated) signs what a client hashed, for the caller's own DID,
//! authenticated by an atproto inter-service token (`service_auth`). A user's own server (or
//! their PDS, proxying with `atproto-proxy: <service_did>#atsms_signer`) signs for them, so
//! clients hold no private keys. Also `GET /xrpc/_health` and, for a `did:web` service DID,
//! `GET /.well-known/did.json`.
//!
//! Plain HTTP/1.1 (TLS belongs to a reverse proxy, as for a PDS) through axum on hyper, served
//! by the same accept loop as every other listener. Bounded: 64 KiB of body, `xrpc.timeout`
//! per request, `xrpc.max_concurrent` requests at once (more get 503 at once, never a queue),
//! a fixed number of connections, and hyper's header read timeout for slow clients.

pub mod client;
mod did_json;
mod drain;
mod error;
pub mod inbox;
mod push;
mod request;
mod send;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::{debug, info, warn};

use crate::atproto::identity::budget::Client;
use crate::atproto::service_auth::{
    AuthError, Authenticator, Caller, JtiSet, SEND_MESSAGE, SIGN_ENVELOPE, SIGN_ENVELOPE_DEPRECATED,
};
use crate::format::envelope::sign::{Covered, field_value};
use crate::infra::live::Live;
use crate::infra::socket::BoundListener;
use crate::policy::signer::Signer;
use crate::verification::verify::Verifier;

pub use did_json::service_document;
pub use error::XrpcError;
pub use request::{MAX_BODY, SignEnvelopeOutput};
use request::{Request, read_body};

/// Connections held open at once; beyond, new ones are closed at once.
const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's header section (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the service signs with, in force now (the daemon replaces it on reload): the keys,
/// and the verifier that checks a `from` is aligned with the caller.
pub struct Signing {
    pub signer: Option<Arc<Signer>>,
    pub verifier: Verifier,
    /// A fixed time (Unix seconds) instead of the clock: tests only.
    pub fixed_now: Option<i64>,
}

impl Signing {
    fn now(&self) -> i64 {
        self.fixed_now.unwrap_or_else(crate::infra::clock::unix_now)
    }
}

/// The service: what it signs with (reloaded on SIGHUP), the authenticator with its `jti`
/// set, and the bounds.
pub struct Service {
    signing: Live<Signing>,
    auth: Authenticator,
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    /// The HTTPS inbox, when `xrpc.inbox` is on.
    inbox: Option<Arc<inbox::Inbox>>,
    /// `xrpc.trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    trusted_proxies: Vec<crate::infra::config::Network>,
    /// The PDS-side sender (`sendMessage`), when a `[[device]]` is held.
    sender: Option<Arc<crate::sending::Sender>>,
}

impl Service {
    pub fn new(
        signing: Live<Signing>,
        config: &crate::infra::config::XrpcConfig,
        jti_file: &std::path::Path,
    ) -> Result<Service, String> {
        let identity = signing.get().verifier.identity().clone();
        let seen = JtiSet::new(
            identity.shared_store(),
            Some(jti_file.to_path_buf()),
            crate::infra::clock::unix_now(),
        );
        Ok(Service {
            auth: Authenticator::new(identity, config.service_did(), seen),
            signing,
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.get())),
            timeout: Duration::from_secs(config.timeout.get()),
            inbox: None,
            trusted_proxies: config.trusted_proxies.clone(),
            sender: None,
        })
    }

    /// The PDS-side sender it serves (its outbox is tried again by the daemon).
    pub fn sender(&self) -> Option<Arc<crate::sending::Sender>> {
        self.sender.clone()
    }

    /// Serves `sendMessage` too.
    pub fn with_sender(mut self, sender: Arc<crate::sending::Sender>) -> Service {
        self.sender = Some(sender);
        self
    }

    /// Serves the HTTPS inbox too (`xrpc.inbox`).
    pub fn with_inbox(mut self, inbox: inbox::Inbox) -> Service {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// The client's address (`client_ip`).
    fn client_ip(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &HeaderMap,
    ) -> Option<std::net::IpAddr> {
        client_ip(&self.trusted_proxies, peer, headers)
    }

    /// One `signEnvelope` call to the method `lxm`, checked in the order of interfaces.md's
    /// table.
    async fn sign(
        &self,
        lxm: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<SignEnvelopeOutput, XrpcError> {
        let settings = self.signing.get();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(signer) = settings.signer.as_deref() else {
            return Err(AuthError::NotAuthorized("any caller: no [[signing.key]]".into()).into());
        };
        let caller: Caller = self
            .auth
            .authenticate(authorization, lxm, settings.now(), |iss| {
                signer.key_of_did(iss).is_some()
            })
            .await?;
        let key = signer
            .key_of_did(&caller.did)
            .ok_or_else(|| AuthError::NotAuthorized(caller.did.clone()))?;
        let body = read_body(headers, body).await?;
        let request = Request::parse(&body)?;
        let (_, aligned) = settings
            .verifier
            .alignment(&request.from, &caller.document.document)
            .await;
        if !aligned {
            return Err(XrpcError::new(
                400,
                "UnalignedFrom",
                format!(
                    "{} is not aligned with {} (its handle, or a mailbox its mail host vouches for)",
                    request.from, caller.did
                ),
            ));
        }
        let from = request.from.claim_form();
        let covered = Covered {
            from: &from,
            h: &request.h,
            hh: request.hh,
            bh: request.bh,
        };
        let token = signer
            .sign_covered(key, &covered, &request.rcpt, request.ttl, settings.now())
            .map_err(|e| XrpcError::new(500, "InternalServerError", e.to_string()))?;
        info!("xrpc: signed did={} kid={} from={from}", key.did, key.kid);
        Ok(SignEnvelopeOutput {
            did: key.did.clone(),
            kid: key.kid.clone(),
            signature: field_value(&key.did, &token),
            token,
        })
    }
}

async fn sign_envelope(
    State(service): State<Arc<Service>>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_sign(service, SIGN_ENVELOPE, peer, headers, body).await
}

/// The method's deprecated first name (`at.atsms.mail.signEnvelope`): served for one release,
/// with a warning in the log and a `Deprecation` header field (RFC 9745: deprecated since
/// 2026-12-05) and a `Link` to its successor on the answer.
async fn sign_envelope_deprecated(
    State(service): State<Arc<Service>>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::warn_throttled!(
        "xrpc: a client called the deprecated {SIGN_ENVELOPE_DEPRECATED}; it is served for one \
         more release: use {SIGN_ENVELOPE}"
    );
    let mut response = serve_sign(service, SIGN_ENVELOPE_DEPRECATED, peer, headers, body).await;
    response.headers_mut().insert(
        "deprecation",
        header::HeaderValue::from_static("@1796428800"),
    );
    response.headers_mut().insert(
        header::LINK,
        header::HeaderValue::from_static(
            "</xrpc/org.atsms-milter.mail.signEnvelope>; rel=\"successor-version\"",
        ),
    );
    response
}

async fn serve_sign(
    service: Arc<Service>,
    lxm: &str,
    peer: crate::infra::http::Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(&service, peer, &headers, service.sign(lxm, &headers, body)).await
}

async fn send_message(
    State(service): State<Arc<Service>>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(sender) = service.sender.clone() else {
        return XrpcError::new(
            403,
            "NotAuthorized",
            "no device is held here for any sender ([[device]])",
        )
        .into_response();
    };
    // Deliveries not finished a second before the call's deadline are queued instead.
    let budget = service
        .timeout
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_millis(500));
    let work = service.send_message(&sender, &headers, body, budget);
    serve(&service, peer, &headers, work).await
}

/// One call: a permit of `xrpc.max_concurrent`, the caller's budget client for lookups, the
/// deadline `xrpc.timeout`, the answer or the error.
async fn serve<T: serde::Serialize>(
    service: &Service,
    peer: crate::infra::http::Peer,
    headers: &HeaderMap,
    work: impl std::future::Future<Output = Result<T, XrpcError>>,
) -> Response {
    let Ok(_permit) = service.permits.clone().try_acquire_owned() else {
        crate::warn_throttled!("xrpc: more than xrpc.max_concurrent requests; one refused");
        return XrpcError::new(
            503,
            "NotEnoughResources",
            "too many requests at once; try again",
        )
        .into_response();
    };
    // The caller's lookups take its network's turn of the directory's budget.
    let client = service
        .client_ip(peer.0, headers)
        .map_or(Client::UNKNOWN, Client::network);
    let work = crate::atproto::identity::budget::with_client(client, work);
    match tokio::time::timeout(service.timeout, work).await {
        Ok(Ok(output)) => Json(output).into_response(),
        Ok(Err(e)) => {
            if e.status >= 500 {
                warn!("xrpc: {} {}: {}", e.status, e.name, e.message);
            } else {
                debug!("xrpc: {} {}: {}", e.status, e.name, e.message);
            }
            e.into_response()
        }
        Err(_) => {
            warn!("xrpc: a request took longer than xrpc.timeout");
            XrpcError::new(504, "UpstreamTimeout", "the request took too long").into_response()
        }
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "methods": {
            SIGN_ENVELOPE: "current",
            SEND_MESSAGE: "current",
            SIGN_ENVELOPE_DEPRECATED: format!(
                "deprecated: use {SIGN_ENVELOPE}; served until the next release"
            ),
        },
    }))
}

async fn did_document(State(service): State<Arc<Service>>) -> Response {
    match service_document(service.auth.service_did()) {
        Some(document) => Json(document).into_response(),
        None => XrpcError::new(404, "NotFound", "the service DID is not a did:web").into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> XrpcError {
    if uri.path().starts_with("/xrpc/") {
        XrpcError::new(404, "XRPCNotSupported", "no such method here")
    } else {
        XrpcError::new(404, "NotFound", "not found")
    }
}

async fn wrong_method() -> XrpcError {
    XrpcError::new(405, "InvalidRequest", "method not allowed")
}

/// The routes, for tests and `run`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(
            &format!("/xrpc/{SIGN_ENVELOPE}"),
            post(sign_envelope).fallback(wrong_method),
        )
        .route(
            &format!("/xrpc/{SIGN_ENVELOPE_DEPRECATED}"),
            post(sign_envelope_deprecated).fallback(wrong_method),
        )
        .route(
            &format!("/xrpc/{SEND_MESSAGE}"),
            post(send_message).fallback(wrong_method),
        )
        .route("/xrpc/_health", get(health).fallback(wrong_method))
        .route(
            "/.well-known/did.json",
            get(did_document).fallback(wrong_method),
        )
        .merge(inbox_routes())
        .fallback(not_found)
        .with_state(service)
}

/// The HTTPS inbox and its drain API, with CORS for browser clients.
fn inbox_routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/inbox/{did}", post(inbox::post).fallback(wrong_method))
        .route(
            "/messages/{did}/{fp}/list",
            get(drain::list).fallback(wrong_method),
        )
        .route(
            "/messages/{did}/{fp}/{id}",
            get(drain::get).delete(drain::delete).fallback(wrong_method),
        )
        .route("/ws/{did}/{fp}", get(push::socket).fallback(wrong_method))
        .layer(drain::cors())
}

/// Serves the signing service on `listener` until `shutdown`.
pub async fn run(
    listener: BoundListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future,
) -> std::io::Result<()> {
    info!(
        "signing service listening on {} as {}",
        listener.describe(),
        service.auth.service_did()
    );
    let bounds = crate::infra::http::Bounds {
        max_connections: MAX_CONNECTIONS,
        header_read_timeout: HEADER_READ_TIMEOUT,
    };
    crate::infra::http::serve(&listener, "xrpc", router(service), bounds, shutdown).await;
    Ok(())
}

/// The client's address: the peer's, or behind a trusted reverse proxy the rightmost address
/// of `X-Forwarded-For` that is not itself a trusted proxy (what a client wrote further left
/// is its own to forge; an unreadable entry stops the walk at the last proxy).
fn client_ip(
    trusted_proxies: &[crate::infra::config::Network],
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Option<std::net::IpAddr> {
    let trusted = |ip: &std::net::IpAddr| trusted_proxies.iter().any(|n| n.0.contains(ip));
    let peer = peer?;
    if !trusted(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<Option<std::net::IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(|a| a.trim().parse().ok())
        .collect();
    let mut client = peer;
    for hop in forwarded.into_iter().rev() {
        match hop {
            Some(ip) if trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            None => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_or_what_a_trusted_proxy_says() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let trusted = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let headers = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let at = |peer: &str, xff: &[&str]| client_ip(&trusted, Some(ip(peer)), &headers(xff));
        // Not a proxy: its own address, whatever it writes.
        assert_eq!(at("192.0.2.7", &["198.51.100.1"]), Some(ip("192.0.2.7")));
        // Behind the proxy: the rightmost address not a proxy's.
        assert_eq!(at("127.0.0.1", &["198.51.100.1"]), Some(ip("198.51.100.1")));
        assert_eq!(
            at("127.0.0.1", &["1.1.1.1, 198.51.100.1", "10.1.2.3"]),
            Some(ip("198.51.100.1"))
        );
        // A forged or unreadable entry further left is not believed.
        assert_eq!(
            at("127.0.0.1", &["1.1.1.1, junk, 198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            at("127.0.0.1", &["198.51.100.1, junk"]),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(at("127.0.0.1", &[]), Some(ip("127.0.0.1")));
        assert_eq!(client_ip(&trusted, None, &headers(&["1.1.1.1"])), None);
    }
}

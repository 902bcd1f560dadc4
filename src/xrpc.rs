//! The signing service (interfaces.md, "The signing service"): `POST
//! /xrpc/at.atsms.mail.signEnvelope` signs what a client hashed, for the caller's own DID,
//! authenticated by an atproto inter-service token (`service_auth`). A user's own server (or
//! their PDS, proxying with `atproto-proxy: <service_did>#atsms_signer`) signs for them, so
//! clients hold no private keys. Also `GET /xrpc/_health` and, for a `did:web` service DID,
//! `GET /.well-known/did.json`.
//!
//! Plain HTTP/1.1 (TLS belongs to a reverse proxy, as for a PDS) through axum on hyper, served
//! by the same accept loop as every other listener. Bounded: 64 KiB of body, `xrpc.timeout`
//! per request, `xrpc.max_concurrent` requests at once (more get 503 at once, never a queue),
//! a fixed number of connections, and hyper's header read timeout for slow clients.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::envelope::sign::{Covered, field_value};
use crate::live::Live;
use crate::service_auth::{AuthError, Authenticator, Caller, JtiSet, SERVICE_ID, SIGN_ENVELOPE};
use crate::signer::Signer;
use crate::socket::{BoundListener, Stream};
use crate::verify::Verifier;

/// The largest request body (interfaces.md: over 64 KiB → 413).
pub const MAX_BODY: usize = 64 * 1024;
/// The most `h` names and `rcpt` addresses one request may carry.
const MAX_NAMES: usize = 64;
const MAX_RECIPIENTS: usize = 1000;
/// Connections held open at once; beyond, new ones are closed at once.
const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's header section (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `ttl` a caller may ask for (the spec's longest token lifetime).
const MAX_TTL: i64 = crate::envelope::token::MAX_LIFETIME;

/// An XRPC error answer: a status and `{"error": NAME, "message": TEXT}` (atproto specs,
/// "XRPC", Error Responses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrpcError {
    pub status: u16,
    pub name: &'static str,
    pub message: String,
}

impl XrpcError {
    fn new(status: u16, name: &'static str, message: impl Into<String>) -> XrpcError {
        XrpcError {
            status,
            name,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> XrpcError {
        XrpcError::new(400, "InvalidRequest", message)
    }
}

impl From<AuthError> for XrpcError {
    fn from(e: AuthError) -> XrpcError {
        XrpcError::new(e.status(), e.name(), e.to_string())
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(serde_json::json!({ "error": self.name, "message": self.message }));
        let mut response = (status, body).into_response();
        if self.status == 401 {
            // RFC 6750 §3, as atproto's servers send it.
            let challenge = format!("Bearer error=\"{}\"", self.name);
            if let Ok(value) = challenge.parse() {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// The input of `at.atsms.mail.signEnvelope` (docs/lexicons/at/atsms/mail/signEnvelope.json).
#[derive(Debug, Deserialize)]
struct SignEnvelopeInput {
    from: String,
    h: Vec<String>,
    hh: String,
    bh: String,
    #[serde(default)]
    rcpt: Vec<String>,
    #[serde(default)]
    ttl: Option<i64>,
}

/// Its output.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignEnvelopeOutput {
    pub did: String,
    pub kid: String,
    pub token: String,
    /// `v=1; d=…; t=…`, unfolded: the client folds it and adds it as `AT-SMS-Signature`.
    pub signature: String,
}

/// What the client asks to be signed, checked.
struct Request {
    from: crate::envelope::Mailbox,
    h: Vec<String>,
    hh: [u8; 32],
    bh: [u8; 32],
    rcpt: Vec<String>,
    ttl: Option<i64>,
}

fn hash(name: &str, value: &str) -> Result<[u8; 32], XrpcError> {
    URL_SAFE_NO_PAD
        .decode(value)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| XrpcError::invalid(format!("{name} must be 32 bytes in base64url")))
}

/// A field name as `h` lists it: RFC 5322 §3.6.8 ftext, lower-case.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b':' && !b.is_ascii_uppercase())
}

impl Request {
    /// Parses and checks the JSON body (a bad one is 400 `InvalidRequest`).
    fn parse(body: &[u8]) -> Result<Request, XrpcError> {
        let input: SignEnvelopeInput = serde_json::from_slice(body)
            .map_err(|e| XrpcError::invalid(format!("body is not the lexicon's input: {e}")))?;
        let from = crate::envelope::fields::parse_mailbox(format!(" {}", input.from).as_bytes())
            .filter(|m| m.to_string().eq_ignore_ascii_case(input.from.trim()))
            .ok_or_else(|| XrpcError::invalid("from must be one addr-spec (user@domain)"))?;
        if input.h.is_empty() || input.h.len() > MAX_NAMES {
            return Err(XrpcError::invalid(format!(
                "h must list 1 to {MAX_NAMES} names"
            )));
        }
        if !input.h.iter().all(|n| is_field_name(n)) {
            return Err(XrpcError::invalid(
                "h must list lower-case header field names",
            ));
        }
        if !input.h.iter().any(|n| n == "from") {
            return Err(XrpcError::invalid("h must contain \"from\""));
        }
        if input.rcpt.len() > MAX_RECIPIENTS
            || !input.rcpt.iter().all(|r| {
                r.len() <= 320
                    && crate::envelope::fields::parse_mailbox(format!(" {r}").as_bytes()).is_some()
            })
        {
            return Err(XrpcError::invalid(format!(
                "rcpt must list at most {MAX_RECIPIENTS} addr-specs"
            )));
        }
        if let Some(ttl) = input.ttl
            && !(1..=MAX_TTL).contains(&ttl)
        {
            return Err(XrpcError::invalid(format!(
                "ttl must be 1 to {MAX_TTL} seconds"
            )));
        }
        Ok(Request {
            hh: hash("hh", &input.hh)?,
            bh: hash("bh", &input.bh)?,
            from,
            h: input.h,
            rcpt: input.rcpt,
            ttl: input.ttl,
        })
    }
}

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
        self.fixed_now.unwrap_or_else(crate::clock::unix_now)
    }
}

/// The service: what it signs with (reloaded on SIGHUP), the authenticator with its `jti`
/// set, and the bounds.
pub struct Service {
    signing: Live<Signing>,
    auth: Authenticator,
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

impl Service {
    pub fn new(
        signing: Live<Signing>,
        config: &crate::config::XrpcConfig,
        jti_file: &std::path::Path,
    ) -> Result<Service, String> {
        let identity = signing.get().verifier.identity().clone();
        let seen = JtiSet::new(
            identity.shared_store(),
            Some(jti_file.to_path_buf()),
            crate::clock::unix_now(),
        );
        Ok(Service {
            auth: Authenticator::new(identity, config.service_did(), seen),
            signing,
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.get())),
            timeout: Duration::from_secs(config.timeout.get()),
        })
    }

    /// One `signEnvelope` call, checked in the order of interfaces.md's table.
    async fn sign(&self, headers: &HeaderMap, body: Body) -> Result<SignEnvelopeOutput, XrpcError> {
        let settings = self.signing.get();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(signer) = settings.signer.as_deref() else {
            return Err(AuthError::NotAuthorized("any caller: no [[signing.key]]".into()).into());
        };
        let caller: Caller = self
            .auth
            .authenticate(authorization, settings.now(), |iss| {
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

/// How much of an oversized body is read and thrown away before answering 413: closing a
/// connection with unread data makes the kernel send a reset, which can destroy the answer
/// before the client reads it (nginx's lingering close does the same).
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// The body, at most `MAX_BODY` bytes of JSON.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Vec<u8>, XrpcError> {
    let too_large = || {
        XrpcError::new(
            413,
            "PayloadTooLarge",
            format!("the body is limited to {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // A client waiting for `100 Continue` (RFC 9110 §10.1.1) never sends the body if it
        // is answered at once; any other is drained, unless it is huge.
        let waits = headers.contains_key(header::EXPECT);
        if !waits && declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            drain(body, 0).await;
        }
        return Err(too_large());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| XrpcError::invalid(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY {
                drain(body, (bytes.len() + data.len()) as u64).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    if !json {
        return Err(XrpcError::invalid("Content-Type must be application/json"));
    }
    Ok(bytes)
}

/// Reads and drops the rest of a body, up to `DRAIN_LIMIT` bytes in all.
async fn drain(mut body: Body, mut read: u64) {
    while read <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

async fn sign_envelope(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(_permit) = service.permits.clone().try_acquire_owned() else {
        warn!("xrpc: more than xrpc.max_concurrent requests; one refused");
        return XrpcError::new(
            503,
            "NotEnoughResources",
            "too many requests at once; try again",
        )
        .into_response();
    };
    match tokio::time::timeout(service.timeout, service.sign(&headers, body)).await {
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
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// The service's own DID document, for a `did:web` service DID: the `#atsms_signer` service a
/// PDS proxies to (`atproto-proxy: <did>#atsms_signer`).
pub fn service_document(service_did: &str) -> Option<serde_json::Value> {
    let identifier = service_did.strip_prefix("did:web:")?;
    let (host, port) = crate::syntax::web_did_host(identifier)?;
    let endpoint = match port {
        Some(port) => format!("https://{host}:{port}"),
        None => format!("https://{host}"),
    };
    Some(serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": service_did,
        "service": [{
            "id": format!("#{SERVICE_ID}"),
            "type": "AtsmsSignerService",
            "serviceEndpoint": endpoint,
        }],
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
        .route("/xrpc/_health", get(health).fallback(wrong_method))
        .route(
            "/.well-known/did.json",
            get(did_document).fallback(wrong_method),
        )
        .fallback(not_found)
        .with_state(service)
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
    let app = router(service);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    crate::socket::serve(&listener, "xrpc", shutdown, |stream: Stream| {
        let app = app.clone();
        let permit = connections.clone().try_acquire_owned();
        async move {
            let Ok(_permit) = permit else {
                warn!("xrpc: more than {MAX_CONNECTIONS} connections; closing one");
                return;
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(app),
                );
            if let Err(e) = connection.await {
                debug!("xrpc: connection ended: {e}");
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn body(from: &str, h: &[&str]) -> String {
        serde_json::json!({"from": from, "h": h, "hh": b64(&[1; 32]), "bh": b64(&[2; 32])})
            .to_string()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        assert!(Request::parse(body("alice@example.com", &["from", "subject"]).as_bytes()).is_ok());
        let bad = |b: &str| Request::parse(b.as_bytes()).err().map(|e| e.name);
        assert_eq!(bad("{"), Some("InvalidRequest"));
        assert_eq!(
            bad(&body("Alice <alice@example.com>", &["from"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com, bob@example.com", &["from"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com", &["subject"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com", &["From"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com", &["from", "x:y"])),
            Some("InvalidRequest")
        );
        let short = serde_json::json!({"from": "a@example.com", "h": ["from"], "hh": b64(&[1; 31]), "bh": b64(&[2; 32])});
        assert_eq!(bad(&short.to_string()), Some("InvalidRequest"));
        let long_ttl = serde_json::json!({"from": "a@example.com", "h": ["from"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32]), "ttl": MAX_TTL + 1});
        assert_eq!(bad(&long_ttl.to_string()), Some("InvalidRequest"));
        let rcpt = serde_json::json!({"from": "a@example.com", "h": ["from"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32]), "rcpt": ["not an address"]});
        assert_eq!(bad(&rcpt.to_string()), Some("InvalidRequest"));
    }

    #[test]
    fn the_service_document_names_the_signer_endpoint() {
        let doc = service_document("did:web:signer.example.net").unwrap();
        assert_eq!(doc["service"][0]["id"], "#atsms_signer");
        assert_eq!(doc["service"][0]["type"], "AtsmsSignerService");
        assert_eq!(
            doc["service"][0]["serviceEndpoint"],
            "https://signer.example.net"
        );
        assert_eq!(
            service_document("did:web:localhost%3A8443").unwrap()["service"][0]["serviceEndpoint"],
            "https://localhost:8443"
        );
        assert!(service_document("did:plc:ofurdhfyhjhgomvfygxergep").is_none());
    }
}

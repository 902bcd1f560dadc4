//! `POST /xrpc/org.atsms-milter.mail.sendMessage` (interfaces.md, "Sending"): the PDS-side
//! sender's way in. Authenticated as `signEnvelope` is (atproto service auth, `lxm` this
//! method), the token's `iss` a DID this service holds a device for; then the body
//! `{"to": [DID, …], "text": "…"}` is handed to `sending::Sender`, whose answer is returned as
//! it is, on a task of its own (never cancelled half-way). Each `SendError` is one XRPC
//! error.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde::Deserialize;

use super::XrpcError;
use super::request::read_json_body;
use crate::atproto::service_auth::{AuthError, Caller, SEND_MESSAGE};
use crate::sending::{MAX_TEXT, SendError, SendOutput, Sender};

/// The body: the text (at most `MAX_TEXT` bytes), JSON-escaped at worst six times over, and a
/// hundred DIDs.
const MAX_BODY: usize = 6 * MAX_TEXT + 64 * 1024;

#[derive(Debug, Deserialize)]
struct Input {
    to: Vec<String>,
    text: String,
}

impl From<SendError> for XrpcError {
    fn from(e: SendError) -> XrpcError {
        match &e {
            SendError::Invalid(_) => XrpcError::invalid(e.to_string()),
            SendError::RateLimited(_, after) => {
                XrpcError::new(429, "RateLimitExceeded", e.to_string()).retry_after(*after)
            }
            SendError::TooLarge => XrpcError::new(413, "PayloadTooLarge", e.to_string()),
            SendError::NotHeld(did) => AuthError::NotAuthorized(did.clone()).into(),
            SendError::Internal(_) => XrpcError::new(500, "InternalServerError", e.to_string()),
        }
    }
}

impl super::Service {
    /// One `sendMessage` call, within `budget` (what is not delivered by then is queued).
    pub(super) async fn send_message(
        &self,
        sender: &std::sync::Arc<Sender>,
        headers: &HeaderMap,
        body: Body,
        budget: Duration,
    ) -> Result<SendOutput, XrpcError> {
        let started = Instant::now();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let now = self.signing.get().now();
        let caller: Caller = self
            .auth
            .authenticate(authorization, SEND_MESSAGE, now, |iss| sender.holds(iss))
            .await?;
        let body = read_json_body(headers, body, MAX_BODY).await?;
        let input: Input = serde_json::from_slice(&body)
            .map_err(|e| XrpcError::invalid(format!("the body is not sendMessage's input: {e}")))?;
        // On a task of its own: a client gone or the call's timeout never cancels the sending
        // half-way (a recipient neither delivered nor queued); it ends by its own deadline.
        let sender = sender.clone();
        let sending = tokio::spawn(crate::atproto::identity::budget::carried(async move {
            sender
                .send(&caller.did, &input.to, &input.text, started + budget)
                .await
        }));
        match sending.await {
            Ok(sent) => Ok(sent?),
            Err(_) => Err(XrpcError::new(
                500,
                "InternalServerError",
                "the message could not be sent",
            )),
        }
    }
}

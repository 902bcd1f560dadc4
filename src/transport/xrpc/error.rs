//! The atproto XRPC error answer: a status and `{"error": NAME, "message": TEXT}` (atproto
//! specs, "XRPC", Error Responses), with RFC 6750's challenge on 401.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::atproto::service_auth::AuthError;

/// An XRPC error answer: a status and `{"error": NAME, "message": TEXT}` (atproto specs,
/// "XRPC", Error Responses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrpcError {
    pub status: u16,
    pub name: &'static str,
    pub message: String,
    /// Seconds after which the client may try again (`Retry-After`, RFC 9110 §10.2.3).
    pub retry_after: Option<u64>,
}

impl XrpcError {
    pub(super) fn new(status: u16, name: &'static str, message: impl Into<String>) -> XrpcError {
        XrpcError {
            status,
            name,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same, saying when to try again.
    pub(super) fn retry_after(mut self, after: std::time::Duration) -> XrpcError {
        self.retry_after = Some(after.as_secs_f64().ceil() as u64);
        self
    }

    pub(super) fn invalid(message: impl Into<String>) -> XrpcError {
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
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(after));
        }
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

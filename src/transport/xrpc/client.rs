//! The signing service's client (`atsms-milter sign --remote URL --service-auth JWT`): the
//! message is hashed here (spec sections 5–6) and never leaves; the service gets the hashes
//! and signs. The service is trusted with the key, not with the message: the token it
//! returns must cover exactly what was hashed here.

use crate::format::envelope::sign;
use crate::format::envelope::token::b64url;
use crate::format::message::ParsedMessage;

use super::SignEnvelopeOutput;

/// Why the service did not sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The service or the network could not answer now (5xx, timeouts): try again.
    Temporary(String),
    /// The service refused (4xx), or the message cannot be signed.
    Refused(String),
    /// The service answered something that is not a token for this message.
    Wrong(String),
}

/// Asks the service at `url` (its base, e.g. `https://signer.example.net`) to sign `parsed`
/// with `jwt` (an atproto service token for it); `rcpt` goes into the token when given. The
/// signing DID and the token.
pub async fn sign_remote(
    url: &str,
    jwt: &str,
    parsed: &ParsedMessage,
    rcpt: &[String],
    ttl: i64,
) -> Result<(String, String), ClientError> {
    let from = crate::format::envelope::check_fields(&parsed.headers)
        .map_err(|e| ClientError::Refused(e.to_string()))?
        .claim_form();
    let h = sign::header_names_to_sign(&parsed.headers);
    let hh = crate::format::envelope::canon::header_hash(&h, &parsed.headers);
    let mut body = serde_json::json!({
        "from": from, "h": h, "hh": b64url(&hh), "bh": b64url(&parsed.body_hash), "ttl": ttl,
    });
    if !rcpt.is_empty() {
        body["rcpt"] = serde_json::json!(rcpt);
    }
    let text = call(
        url,
        crate::atproto::service_auth::SIGN_ENVELOPE,
        jwt,
        body.to_string(),
        "signing service",
    )
    .await?;
    let output: SignEnvelopeOutput = serde_json::from_str(&text)
        .map_err(|e| ClientError::Temporary(format!("signing service: unreadable answer: {e}")))?;
    let token = crate::format::envelope::token::parse(&output.token, &output.did)
        .map_err(|e| ClientError::Wrong(format!("signing service: bad token: {e}")))?;
    let claims = &token.claims;
    if claims.from != from || claims.h != h || claims.hh != hh || claims.bh != parsed.body_hash {
        return Err(ClientError::Wrong(
            "signing service: the token does not cover this message".into(),
        ));
    }
    Ok((output.did, output.token))
}

/// One XRPC procedure call to the service at `url`: its answer's body, or why not (`who`
/// names the service in the reasons).
async fn call(
    url: &str,
    method: &str,
    jwt: &str,
    body: String,
    who: &str,
) -> Result<String, ClientError> {
    let endpoint = format!("{}/xrpc/{method}", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ClientError::Temporary(e.to_string()))?;
    let response = client
        .post(&endpoint)
        .bearer_auth(jwt)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| ClientError::Temporary(format!("{endpoint}: {e}")))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| ClientError::Temporary(e.to_string()))?;
    if !status.is_success() {
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let why = format!(
            "{who}: {status} {}: {}",
            error["error"].as_str().unwrap_or("?"),
            error["message"].as_str().unwrap_or(text.trim())
        );
        return Err(if status.is_server_error() {
            ClientError::Temporary(why)
        } else {
            ClientError::Refused(why)
        });
    }
    Ok(text)
}

/// Asks the sending service at `url` to send `text` to `to` with `jwt` (a service token for
/// `org.atsms-milter.mail.sendMessage`): its answer.
pub async fn send_remote(
    url: &str,
    jwt: &str,
    to: &[String],
    text: &str,
) -> Result<crate::sending::SendOutput, ClientError> {
    let body = serde_json::json!({ "to": to, "text": text }).to_string();
    let answer = call(
        url,
        crate::atproto::service_auth::SEND_MESSAGE,
        jwt,
        body,
        "sending service",
    )
    .await?;
    serde_json::from_str(&answer)
        .map_err(|e| ClientError::Wrong(format!("sending service: unreadable answer: {e}")))
}

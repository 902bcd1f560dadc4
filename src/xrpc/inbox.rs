//! The HTTPS inbox (`xrpc.inbox`): `POST /inbox/{did}` with the AT-SMS client's body,
//! `{"envelope": "<base64>"}` (its inbound-delivery spec: an `https:` endpoint of the DID's
//! `at.atsms.inbox` record). The envelope is stored exactly as the SMTP path stores it: made
//! into the mail the client's SMTP form sends (one `application/atsms-envelope` part) and
//! handed to LMTP's delivery — the same consent check (the DID mailbox at one of
//! `inbox.hosts`), judge, size limit and Maildir, one copy. Answers: 202 stored (or already
//! stored: the same SHA-256), 400 not an envelope, 404 no consent for that DID here, 413 over
//! `lmtp.max_message_size`, 429 over the recipient's rate, 503 the store or the DID's PDS
//! unavailable.
//!
//! Who reaches it: anyone on the HTTP port. What they could make us do, and the bound:
//! - fill a mailbox: only a DID that consents to mail here; at most `reputation.rate_limit`
//!   envelopes an hour per recipient DID; each at most `lmtp.max_message_size`; a repeat is
//!   stored once (SHA-256, remembered in a `SeenFile` beside the Maildir);
//! - spend lookups: one DID document and its inbox records per new DID, under the PLC
//!   budget's share for what is not mail (`resolver.mail_share`), cached like documents;
//! - learn who has a mailbox here: 404 says no more than the DID's own public records do;
//! - be recorded: the sender's address is not kept with the envelope (their spec §7): no
//!   `Received` field, no log line with the peer's address.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::error::XrpcError;
use super::request::read_json_body;
use crate::floor::EnvelopeKind;
use crate::lmtp::LmtpService;
use crate::store::SeenFile;

/// How long a stored envelope is remembered as stored (a client retrying after a lost answer
/// does so within minutes; a week is generous).
const REMEMBER: i64 = 7 * 86_400;

/// The HTTPS inbox: LMTP's delivery, and the envelopes being stored right now.
pub struct Inbox {
    lmtp: Arc<LmtpService>,
    /// `inbox.hosts`: the DID mailbox is `<did mailbox>@<the first host it consents to>`.
    hosts: Vec<String>,
    in_flight: Mutex<HashSet<[u8; 32]>>,
}

impl Inbox {
    pub fn new(lmtp: Arc<LmtpService>, hosts: Vec<String>) -> Inbox {
        Inbox {
            lmtp,
            hosts,
            in_flight: Mutex::new(HashSet::new()),
        }
    }
}

/// The mail the client's SMTP form would send (spec/inbound-delivery.md §4): one base64
/// `application/atsms-envelope` part. No sender address: the envelope is sealed; no
/// `Received`: the poster's address is not kept.
fn as_mail(envelope: &[u8], hash: &str, mailbox: &str, host: &str, now: i64) -> Vec<u8> {
    let date = time::OffsetDateTime::from_unix_timestamp(now)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let encoded = base64::engine::general_purpose::STANDARD.encode(envelope);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "Message-ID: <{hash}@{host}>\r\nDate: {date}\r\nFrom: AT-SMS inbox <MAILER-DAEMON@{host}>\r\nTo: <{mailbox}>\r\nSubject: AT-SMS message\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"atsms-{}\"\r\n\r\n--atsms-{0}\r\nContent-Type: application/atsms-envelope\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--atsms-{0}--\r\n",
        &hash[..16],
        lines.join("\r\n")
    )
    .into_bytes()
}

/// `POST /inbox/{did}`.
pub(super) async fn post(
    State(service): State<Arc<super::Service>>,
    Path(did): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(inbox) = service.inbox.as_ref() else {
        return XrpcError::new(404, "NotFound", "not found").into_response();
    };
    let Ok(_permit) = service.permits.clone().try_acquire_owned() else {
        return XrpcError::new(503, "NotEnoughResources", "too many requests at once")
            .into_response();
    };
    match tokio::time::timeout(service.timeout, store(inbox, &did, &headers, body)).await {
        Ok(Ok(stored)) => (
            axum::http::StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"stored": stored.0, "sha256": stored.1})),
        )
            .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            XrpcError::new(504, "UpstreamTimeout", "the request took too long").into_response()
        }
    }
}

/// Stores the posted envelope: `(newly stored, its SHA-256)`.
async fn store(
    inbox: &Inbox,
    did: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(bool, String), XrpcError> {
    let mailbox_local = match crate::syntax::supported_did_method(did) {
        Some(_) if !did.contains('%') => crate::address::local_part_of_did(did),
        _ => {
            return Err(XrpcError::new(
                404,
                "NotFound",
                "no inbox here for that DID",
            ));
        }
    };
    let max = usize::try_from(inbox.lmtp.max_message_size).unwrap_or(usize::MAX);
    // base64 is 4/3 of the bytes, plus the JSON around it.
    let limit = max.saturating_mul(4) / 3 + 1024;
    let raw = read_json_body(headers, body, limit).await?;
    #[derive(serde::Deserialize)]
    struct Posted {
        envelope: String,
    }
    let posted: Posted = serde_json::from_slice(&raw)
        .map_err(|_| XrpcError::invalid("the body must be {\"envelope\": \"<base64>\"}"))?;
    let envelope = base64::engine::general_purpose::STANDARD
        .decode(posted.envelope.trim())
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(posted.envelope.trim())
        })
        .map_err(|_| XrpcError::invalid("envelope: not base64"))?;
    if envelope.len() > max {
        return Err(XrpcError::new(
            413,
            "PayloadTooLarge",
            format!("the envelope is limited to {max} bytes (lmtp.max_message_size)"),
        ));
    }
    let kind = crate::floor::classify(&envelope);
    if kind == EnvelopeKind::Malformed {
        return Err(XrpcError::new(
            400,
            "InvalidEnvelope",
            "not an AT-SMS envelope (a sealed envelope or a CMS structure)",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(&envelope).into();
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();

    // The DID mailbox here: the first of inbox.hosts it consents to.
    let settings = inbox.lmtp.settings.get();
    let enveloped_to = (kind == EnvelopeKind::CmsEnveloped)
        .then(|| crate::floor::enveloped_recipients(&envelope))
        .flatten();
    let mut unknown = None;
    let mut chosen = None;
    for host in &inbox.hosts {
        let address = format!("{mailbox_local}@{host}");
        match settings
            .router
            .consent_of(&address, enveloped_to.as_deref())
            .await
        {
            Some(crate::routing::Consent::Given) => {
                chosen = Some((address, host.clone()));
                break;
            }
            Some(crate::routing::Consent::Unknown(why)) => unknown = Some(why),
            _ => {}
        }
    }
    let Some((address, host)) = chosen else {
        return Err(match unknown {
            Some(why) => XrpcError::new(
                503,
                "Unavailable",
                format!("the DID's document or PDS is unavailable ({why}); try again later"),
            ),
            None => XrpcError::new(404, "NotFound", "no inbox here for that DID"),
        });
    };

    // Once per envelope: concurrent posts of the same one wait for none, one stores it.
    let recipient = inbox
        .lmtp
        .mailboxes()
        .resolve(&address)
        .map_err(|_| XrpcError::new(404, "NotFound", "no inbox here for that DID"))?;
    let seen = SeenFile::new(recipient.maildir.join("atsms-inbox-seen"));
    let now = settings.now();
    if seen.contains(&hash, now).unwrap_or(false) {
        return Ok((false, hash));
    }
    if !inbox
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(digest)
    {
        return Ok((false, hash));
    }
    let result = async {
        if let Some(reputation) = &settings.reputation
            && !reputation.inbox_allows(did, &hash, now).await
        {
            return Err(XrpcError::new(
                429,
                "RateLimitExceeded",
                "too many envelopes for this DID; try again later",
            ));
        }
        let mail = as_mail(&envelope, &hash, &address, &host, now);
        let reply = crate::lmtp::delivery::deliver_message(&inbox.lmtp, "", &address, &mail).await;
        answer(&reply, did, &hash)
    }
    .await;
    inbox
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&digest);
    result?;
    if let Err(e) = seen.insert(&hash, now + REMEMBER, now) {
        seen.warn(&e);
    }
    Ok((true, hash))
}

/// LMTP's reply as the inbox's answer.
fn answer(reply: &crate::reply::Reply, did: &str, hash: &str) -> Result<(), XrpcError> {
    let text = reply.lines.join(" ");
    match reply.code {
        200..=299 => {
            info!("inbox: stored {hash} for {did}");
            Ok(())
        }
        552 => Err(XrpcError::new(413, "PayloadTooLarge", text)),
        550 if reply.enhanced.is_some_and(|e| e.1 == 1) => Err(XrpcError::new(
            404,
            "NotFound",
            "no inbox here for that DID",
        )),
        400..=499 => {
            warn!("inbox: {did}: {} {text}", reply.code);
            Err(XrpcError::new(
                503,
                "Unavailable",
                "the store is unavailable; try again later",
            ))
        }
        _ => Err(XrpcError::new(400, "Refused", text)),
    }
}

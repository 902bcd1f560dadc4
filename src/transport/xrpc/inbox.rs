//! The HTTPS inbox (`xrpc.inbox`): `POST /inbox/{did}` with the AT-SMS client's body,
//! `{"envelope": "<base64>"}` (its inbound-delivery spec: an `https:` endpoint of the DID's
//! `at.atsms.inbox` record). The envelope is stored exactly as the SMTP path stores it: made
//! into the mail the client's SMTP form sends (one `application/atsms-envelope` part) and
//! handed to LMTP's delivery — the same consent check (the DID mailbox at one of
//! `inbox.hosts`), judge, Maildir and device copies (`lmtp::devices`: one copy a device,
//! one intake for both carriers). Answers: 202 stored (or already stored: the same SHA-256,
//! by either carrier), 400 not an envelope, 404 no consent for that DID here, 408 the body
//! took too long, 413 over the cap, 429 over a rate (with `Retry-After`) or every device
//! over its quota, 503 too many at once, or the store or the DID's PDS unavailable.
//!
//! Who reaches it: anyone on the HTTP port, without credentials, by design. What one client
//! could make us spend, and the bound, in the order a POST meets them:
//! - requests: `inbox.post_rate_per_network` POSTs per client network (IPv4 /24, IPv6 /48;
//!   the client as `xrpc.trusted_proxies` name it), whatever they carry, counted before
//!   anything is read or looked up; `inbox.max_concurrent_posts` at once, apart from the
//!   signing service's share (`xrpc.max_concurrent`);
//! - lookups: the DID's consent is asked from the path before the body is read (a DID with no
//!   inbox here costs no byte of body), under the PLC budget's share for what is not mail and
//!   in the turn of the client's network (`identity::budget`), cached like documents;
//! - memory: the body is read up to `MAX_BODY` (the base64 of the largest envelope taken, a
//!   CMS structure of `MAX_CMS`; a sealed envelope larger than the client's 64 KiB bucket and
//!   its framing, `format::sealed::MAX_SEALED`, is not of its shape: refused once decoded),
//!   within
//!   `inbox.upload_timeout`; the base64 is decoded in the body's own buffer, so a POST holds
//!   one copy of what it was sent (and, while storing, the mail made of it);
//! - a mailbox: `inbox.post_rate_per_did` POSTs per DID (and `reputation.rate_limit`
//!   envelopes an hour, when set); a repeat is stored once (SHA-256, one file per envelope
//!   in the device store's seen set: one `stat` whatever its size, off the runtime), and
//!   each device's copies are within its quota;
//! - half-done work: the storing runs on a task of its own, so a client gone or a timeout
//!   never cancels it half-way; an envelope is acknowledged (202) only once stored, and two
//!   deliveries of the same envelope (POSTs, or a POST and SMTP) wait for each other, so
//!   neither is told "already stored" before it is;
//! - learning who has a mailbox here: 404 says no more than the DID's own public records do;
//! - being recorded: the sender's address is not kept with the envelope (their spec §7): no
//!   `Received` field, no log line with the peer's address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::error::XrpcError;
use super::request::read_json_body;
use crate::atproto::identity::budget::{self, Client};
use crate::infra::device_store::notify::Notifier;
use crate::infra::limit::RateLimit;
use crate::policy::judge::{Gate, Refusal};
use crate::transport::lmtp::LmtpService;
use crate::transport::lmtp::delivery::Outcome;
use crate::verification::atsms_parts::EnvelopeKind;

/// The largest CMS structure taken (an EnvelopedData or SignedData the client's SMTP form
/// carries; the MIME scanner keeps an AT-SMS part of at most as much).
pub const MAX_CMS: usize = 1024 * 1024;
/// The largest body read: the base64 of `MAX_CMS` and the JSON around it.
pub const MAX_BODY: usize = MAX_CMS.div_ceil(3) * 4 + 1024;
/// Client networks and DIDs a rate is kept for at most.
const RATE_KEYS: u64 = 100_000;

/// The HTTPS inbox: LMTP's delivery, its bounds, and the envelopes being stored right now.
pub struct Inbox {
    lmtp: Arc<LmtpService>,
    /// `inbox.hosts`: the DID mailbox is `<did mailbox>@<the first host it consents to>`.
    hosts: Vec<String>,
    per_network: RateLimit<Client>,
    per_did: RateLimit<String>,
    permits: Arc<tokio::sync::Semaphore>,
    upload_timeout: Duration,
    /// Each device's copies (LMTP's, which keeps them), which the drain API serves.
    pub(super) devices: Arc<crate::infra::device_store::DeviceStore>,
    /// The devices with a push socket open.
    pub(super) notifier: Arc<Notifier>,
}

impl Inbox {
    pub fn new(
        lmtp: Arc<LmtpService>,
        hosts: Vec<String>,
        config: &crate::infra::config::InboxConfig,
    ) -> Inbox {
        Inbox {
            devices: lmtp.devices.store.clone(),
            notifier: lmtp.devices.notifier.clone(),
            lmtp,
            hosts,
            per_network: RateLimit::new(config.post_rate_per_network, RATE_KEYS),
            per_did: RateLimit::new(config.post_rate_per_did, RATE_KEYS),
            permits: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_posts.get(),
            )),
            upload_timeout: Duration::from_secs(config.upload_timeout.get()),
        }
    }
}

impl Inbox {
    /// One more request from `client`'s network (a POST, a push socket): within
    /// `inbox.post_rate_per_network`, or 429 with when to try again.
    pub(super) fn admit_network(&self, client: Client) -> Result<(), XrpcError> {
        self.per_network
            .check(client, Instant::now())
            .map_err(|limited| {
                XrpcError::new(
                    429,
                    "RateLimitExceeded",
                    "too many requests from your network; try again later",
                )
                .retry_after(limited.retry_after)
            })
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
    let head = format!(
        "Message-ID: <{hash}@{host}>\r\nDate: {date}\r\nFrom: AT-SMS inbox <MAILER-DAEMON@{host}>\r\nTo: <{mailbox}>\r\nSubject: AT-SMS message\r\n"
    );
    // The hash is hex (ours): its first 16 characters are 16 bytes.
    let boundary = format!("atsms-{}", hash.get(..16).unwrap_or(hash));
    crate::format::mime::envelope_mail(&head, &boundary, envelope)
}

/// The inbox and the client's network for a request (a POST, a push socket), once it is
/// counted against that network's rate: 404 without an inbox, 429 over the rate.
pub(super) fn admitted(
    service: &super::Service,
    peer: crate::infra::http::Peer,
    headers: &HeaderMap,
) -> Result<(Arc<Inbox>, Client), XrpcError> {
    let Some(inbox) = service.inbox.clone() else {
        return Err(XrpcError::new(404, "NotFound", "not found"));
    };
    let client = service
        .client_ip(peer.0, headers)
        .map_or(Client::UNKNOWN, Client::network);
    inbox.admit_network(client)?;
    Ok((inbox, client))
}

/// `POST /inbox/{did}`.
pub(super) async fn post(
    State(service): State<Arc<super::Service>>,
    Path(did): Path<String>,
    Extension(peer): Extension<crate::infra::http::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Every POST counts against its network's rate, before anything is read or looked up.
    let (inbox, client) = match admitted(&service, peer, &headers) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = inbox.permits.clone().try_acquire_owned() else {
        crate::warn_throttled!("inbox: more than inbox.max_concurrent_posts at once; one refused");
        return XrpcError::new(503, "NotEnoughResources", "too many requests at once")
            .into_response();
    };
    let accepted = budget::with_client(client, accept(&inbox, &did, &headers, body, permit));
    match tokio::time::timeout(service.timeout, accepted).await {
        Ok(Ok(stored)) => (
            axum::http::StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"stored": stored.0, "sha256": stored.1})),
        )
            .into_response(),
        Ok(Err(e)) => {
            // A 429 is counted where it is decided: the DID's rate below, the envelopes a DID
            // is sent and the devices' quotas by the device intake (`lmtp::devices`).
            if e.status != 429 {
                crate::infra::metrics::global().inbox_envelope("refused", refusal_reason(e.status));
            }
            e.into_response()
        }
        // Not acknowledged: if the storing goes on and ends well, the client's retry is told
        // it is stored already.
        Err(_) => XrpcError::new(503, "Unavailable", "not stored in time; try again later")
            .into_response(),
    }
}

/// The `reason` label of a refused POST, by its status.
fn refusal_reason(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        404 => "no_inbox",
        408 => "timeout",
        413 => "size",
        429 => "rate",
        _ => "unavailable",
    }
}

fn not_here() -> XrpcError {
    XrpcError::new(404, "NotFound", "no inbox here for that DID")
}

/// Takes the posted envelope in: `(newly stored, its SHA-256)`.
async fn accept(
    inbox: &Arc<Inbox>,
    did: &str,
    headers: &HeaderMap,
    body: Body,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(bool, String), XrpcError> {
    let local = match crate::format::syntax::supported_did_method(did) {
        Some(_) if !did.contains('%') => crate::format::address::local_part_of_did(did),
        _ => return Err(not_here()),
    };
    // Consent from the path first: nothing of the body is read for a DID with no inbox here.
    let (address, host) = inbox.mailbox(&local).await?;
    if let Err(limited) = inbox.per_did.check(did.to_string(), Instant::now()) {
        crate::infra::metrics::global().inbox_envelope("refused", "rate");
        return Err(XrpcError::new(
            429,
            "RateLimitExceeded",
            "too many envelopes for this DID; try again later",
        )
        .retry_after(limited.retry_after));
    }
    let read = read_json_body(headers, body, MAX_BODY);
    let raw = tokio::time::timeout(inbox.upload_timeout, read)
        .await
        .map_err(|_| {
            XrpcError::new(
                408,
                "RequestTimeout",
                format!(
                    "the body did not arrive within {} s",
                    inbox.upload_timeout.as_secs()
                ),
            )
        })??;
    let envelope = decode(raw)?;
    let too_large = |max: usize| {
        XrpcError::new(
            413,
            "PayloadTooLarge",
            format!("an envelope of this kind is limited to {max} bytes"),
        )
    };
    let max = MAX_CMS.min(usize::try_from(inbox.lmtp.max_message_size).unwrap_or(usize::MAX));
    if envelope.len() > max {
        return Err(too_large(max));
    }
    // (A sealed envelope larger than the largest bucket is not of the sealed shape.)
    if crate::verification::atsms_parts::classify(&envelope) == EnvelopeKind::Malformed {
        return Err(XrpcError::new(
            400,
            "InvalidEnvelope",
            "not an AT-SMS envelope (a sealed envelope or a CMS structure)",
        ));
    }
    // (An EnvelopedData's consent also needs it encrypted to a device the DID publishes:
    // the judge asks that of the message, whose recipients it reads.)
    let hash = crate::format::hex::hex(&Sha256::digest(&envelope));
    let mail = as_mail(
        &envelope,
        &hash,
        &address,
        &host,
        crate::infra::clock::unix_now(),
    );
    drop(envelope);
    // On a task of its own: what cancels this request (a timeout, a client gone) never
    // cancels the storing half-way. The POST's permit goes with it: a storing that outlives
    // its request still counts against `inbox.max_concurrent_posts`.
    let lmtp = inbox.lmtp.clone();
    let delivered = tokio::spawn(budget::carried(async move {
        let _permit = permit;
        crate::transport::lmtp::delivery::deliver_message(&lmtp, "", &address, &mail).await
    }));
    match delivered.await {
        Ok(outcome) => answer(&outcome, did, &hash).map(|stored| (stored, hash)),
        Err(_) => Err(XrpcError::new(
            500,
            "InternalServerError",
            "the envelope could not be stored",
        )),
    }
}

/// The envelope of `{"envelope": "<base64>"}`, decoded in the body's own buffer: a POST
/// holds one copy of what it was sent, never the JSON beside the envelope.
fn decode(mut raw: Vec<u8>) -> Result<Vec<u8>, XrpcError> {
    #[derive(serde::Deserialize)]
    struct Posted<'a> {
        #[serde(borrow)]
        envelope: std::borrow::Cow<'a, str>,
    }
    let not_json = || XrpcError::invalid("the body must be {\"envelope\": \"<base64>\"}");
    let posted: Posted = serde_json::from_slice(&raw).map_err(|_| not_json())?;
    let text = posted.envelope.trim();
    let range = match posted.envelope {
        // A string without escapes (the client's: base64 needs none) lies in `raw` itself.
        std::borrow::Cow::Borrowed(_) => {
            let start = text.as_ptr() as usize - raw.as_ptr() as usize;
            start..start + text.len()
        }
        std::borrow::Cow::Owned(ref owned) => {
            let mut copy = owned.trim().as_bytes().to_vec();
            let len = copy.len();
            return base64_in_place(&mut copy, 0..len).map(|n| {
                copy.truncate(n);
                copy
            });
        }
    };
    let decoded = base64_in_place(&mut raw, range)?;
    raw.truncate(decoded);
    raw.shrink_to_fit();
    Ok(raw)
}

/// Decodes the base64 (standard or URL-safe alphabet, padded or not) at `range` of `buf`
/// into `buf`'s start, chunk by chunk: each chunk's bytes are written only over input
/// already read (three bytes out for four in). The decoded length.
fn base64_in_place(buf: &mut [u8], range: std::ops::Range<usize>) -> Result<usize, XrpcError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = buf[range.clone()].iter().any(|b| *b == b'-' || *b == b'_');
    let engine = if url_safe {
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, config)
    } else {
        GeneralPurpose::new(&base64::alphabet::STANDARD, config)
    };
    let bad = || XrpcError::invalid("envelope: not base64");
    const CHUNK: usize = 1024;
    let mut out = 0;
    let mut at = range.start;
    let mut decoded = [0u8; CHUNK / 4 * 3];
    while at < range.end {
        let end = (at + CHUNK).min(range.end);
        let n = engine
            .decode_slice(&buf[at..end], &mut decoded)
            .map_err(|_| bad())?;
        buf[out..out + n].copy_from_slice(&decoded[..n]);
        out += n;
        at = end;
    }
    Ok(out)
}

impl Inbox {
    /// The DID mailbox here an envelope for the DID whose mailbox local part is `local` goes
    /// to: the first of `inbox.hosts` the judge takes it at (consent). 404 without, 503 when
    /// that cannot be known now.
    async fn mailbox(&self, local: &str) -> Result<(String, String), XrpcError> {
        let settings = self.lmtp.settings.get();
        let mut unknown = None;
        for host in &self.hosts {
            let address = format!("{local}@{host}");
            match settings.admit(Gate::Inbox, &address).await {
                Ok(()) => return Ok((address, host.clone())),
                Err(e @ Refusal::Unavailable(_)) => unknown = Some(e),
                Err(_) => {}
            }
        }
        Err(unknown.map_or_else(not_here, |e| refused(&e)))
    }
}

/// Runs file work off the async runtime (the drain's too).
pub(super) use crate::transport::lmtp::devices::blocking;

/// What became of the envelope, as the inbox's answer: newly stored or stored before.
fn answer(outcome: &Outcome, did: &str, hash: &str) -> Result<bool, XrpcError> {
    match outcome {
        Outcome::Saved(_) => {
            info!("inbox: stored {hash} for {did}");
            Ok(true)
        }
        Outcome::Duplicate(_) => Ok(false),
        Outcome::OverQuota => Err(XrpcError::new(
            429,
            "RateLimitExceeded",
            "every device of this DID is over its quota; try again later",
        )),
        Outcome::Refused(refusal) => Err(refused(refusal)),
        Outcome::TooLarge(why) => Err(XrpcError::new(413, "PayloadTooLarge", why.clone())),
        Outcome::Full | Outcome::Failed => {
            warn!("inbox: {did}: {}", outcome.reply());
            Err(XrpcError::new(
                503,
                "Unavailable",
                "the store is unavailable; try again later",
            ))
        }
    }
}

/// The judge's refusal as the inbox says it.
fn refused(refusal: &Refusal) -> XrpcError {
    match refusal {
        Refusal::NoMailbox => not_here(),
        Refusal::Unavailable(why) => XrpcError::new(
            503,
            "Unavailable",
            format!("the DID's document or PDS is unavailable ({why}); try again later"),
        ),
        // A transaction of its own: never asked here.
        Refusal::OtherRule => XrpcError::new(503, "Unavailable", "try again later"),
        Refusal::TooMany => XrpcError::new(
            429,
            "RateLimitExceeded",
            "too many envelopes for this DID; try again later",
        ),
        Refusal::Policy(reply) if reply.is_temporary() => XrpcError::new(
            503,
            "Unavailable",
            format!("{}; try again later", reply.lines.join(" ")),
        ),
        Refusal::Policy(reply) => XrpcError::new(400, "Refused", reply.lines.join(" ")),
    }
}

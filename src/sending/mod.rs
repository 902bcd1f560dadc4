//! The PDS-side sender (N. Gerakines' proposal; `org.atsms-milter.mail.sendMessage`): a text
//! and its recipient DIDs in, the message signed **once** by the device this service holds
//! for the sending DID (`held`), then for each recipient its published devices and their
//! checked prekeys (`atproto::identity::device_prekeys`), one envelope per device
//! (`format::one_shot::seal_for`) handed to the DID's inbox (`deliver`), what could not go now
//! kept and tried again (`outbox`). Every recipient sees the whole recipient list: the content's
//! recipients extension binds it (the client's receive path checks it).
//!
//! Bounds: `send.max_recipients`, `send.rate_limit` per sending DID, content that does not fit
//! the largest sealed bucket (64 KiB) refused whole, the call's deadline (what is not
//! delivered by then is queued), the resolver's host policy for every endpoint.

pub mod deliver;
pub mod held;
pub mod outbox;
mod retry;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::atproto::identity::IdentityResolver;
use crate::format::enveloped;
use crate::format::one_shot;
use crate::format::sealed;
use crate::infra::config::Config;
use crate::infra::limit::RateLimit;
use deliver::{Carrier, DeliveryError, Route};
pub use held::HeldDevice;
use outbox::{Outbox, Pending};

use crate::atproto::identity::inbox::NoPrekey;

/// Recipients worked on at once in one call, and queued deliveries tried at once.
const RECIPIENTS_AT_ONCE: usize = 16;
const RETRIES_AT_ONCE: usize = 8;
/// Devices of one recipient sent a copy (the rest are said in `reason`): a DID may publish a
/// hundred, each a seal and a POST of this host's.
pub const MAX_DEVICES: usize = 32;
/// Sessions with the local MTA at once.
const MTA_SESSIONS: usize = 4;
/// A text longer than the largest bucket cannot be sealed, whatever else it carries.
pub const MAX_TEXT: usize = 64 * 1024;
/// Room kept in the bucket for a recipient certificate's issuer name longer than the sender's
/// (a did:web of up to 253 characters, DER-wrapped).
const ISSUER_ROOM: usize = 300;

/// What a recipient's delivery came to (interfaces.md: `delivered|queued|failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every device's inbox said 2xx.
    Delivered,
    /// The local MTA took it, or it is kept to be tried again.
    Queued,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Queued => "queued",
            Status::Failed => "failed",
        }
    }
}

/// One recipient's line of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientResult {
    pub did: String,
    pub status: Status,
    /// Devices an envelope was made for.
    pub devices: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer: `{"messageId", "results"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOutput {
    #[serde(rename = "messageId")]
    pub message_id: String,
    pub results: Vec<RecipientResult>,
}

/// Why a call sends nothing (each one XRPC error: `transport::xrpc`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Invalid(String),
    #[error("more than {0} messages in its period from this DID (send.rate_limit)")]
    RateLimited(crate::infra::limit::Rate, std::time::Duration),
    #[error("the message does not fit the largest sealed envelope (64 KiB); it is not split")]
    TooLarge,
    #[error("no device is held for {0} ([[device]])")]
    NotHeld(String),
    #[error("{0}")]
    Internal(String),
}

/// The sender, with the devices it holds.
pub struct Sender {
    held: HashMap<String, Arc<HeldDevice>>,
    identity: Arc<IdentityResolver>,
    rate: RateLimit<String>,
    max_recipients: usize,
    mta: SocketAddr,
    /// This host's mail domains (`inbox.hosts`); the sending DIDs' mailboxes are at the first.
    mail_domains: Vec<String>,
    helo: String,
    outbox: Arc<Outbox>,
    mta_sessions: tokio::sync::Semaphore,
}

/// How one recipient's try went.
#[derive(Debug, Default)]
struct Tally {
    devices: usize,
    posted: usize,
    mailed: usize,
    /// Devices served by an earlier try (the outbox's).
    earlier: usize,
    /// Devices that got no copy, and why (no valid prekey; refused).
    missed: Vec<String>,
    /// Why some could not go now.
    temporary: Option<String>,
    /// The longest `Retry-After` an inbox asked for (seconds).
    retry_after: Option<u64>,
    /// Why none could go, for good.
    failed: Option<String>,
}

impl Sender {
    /// Loads every `[[device]]` and opens `send.queue`.
    pub fn new(config: &Config, identity: Arc<IdentityResolver>) -> Result<Sender, String> {
        let mut held = HashMap::new();
        for device in &config.devices {
            let loaded = HeldDevice::load(&device.did, &device.dir)?;
            held.insert(device.did.clone(), Arc::new(loaded));
        }
        let mut mail_domains: Vec<String> = config
            .inbox
            .hosts()
            .iter()
            .filter_map(|h| crate::format::syntax::ascii_domain(h))
            .collect();
        if mail_domains.is_empty() {
            mail_domains.push("localhost".into());
        }
        Ok(Sender {
            held,
            identity,
            rate: RateLimit::new(config.send.rate_limit, 100_000),
            max_recipients: config.send.max_recipients.get(),
            mta: config.send.smtp.0,
            helo: crate::infra::host::name(),
            mail_domains,
            outbox: Arc::new(Outbox::open(&config.send.queue)?),
            mta_sessions: tokio::sync::Semaphore::new(MTA_SESSIONS),
        })
    }

    /// Whether a device is held for `did` (who may call).
    pub fn holds(&self, did: &str) -> bool {
        self.held.contains_key(did)
    }

    /// Sends `text` from `from` to `to`; what is not delivered by `deadline` is queued.
    pub async fn send(
        &self,
        from: &str,
        to: &[String],
        text: &str,
        deadline: Instant,
    ) -> Result<SendOutput, SendError> {
        let held = self
            .held
            .get(from)
            .ok_or_else(|| SendError::NotHeld(from.to_string()))?;
        if held.not_after < crate::infra::clock::unix_now() {
            // No recipient would take what it signs: said, not sent.
            return Err(SendError::Internal(format!(
                "the device held for {from} has an expired certificate: make a new one \
                 (atsms-milter device new) and publish it"
            )));
        }
        let to = self.recipients(to)?;
        if text.is_empty() {
            return Err(SendError::Invalid("text: empty".into()));
        }
        if text.len() > MAX_TEXT {
            return Err(SendError::TooLarge);
        }
        self.rate
            .check(from.to_string(), Instant::now())
            .map_err(|l| SendError::RateLimited(self.rate_of(), l.retry_after))?;
        let now_ms = u64::try_from(crate::infra::clock::unix_now()).unwrap_or(0) * 1000;
        let signed = one_shot::sign_text(&held.sender(), &to, text, now_ms)
            .map_err(|e| SendError::Internal(e.to_string()))?;
        fits(&signed, &held.certificate)?;
        let message_id = crate::format::hex::hex(&Sha256::digest(&signed));
        let tries: Vec<_> = to
            .iter()
            .map(|did| self.first_try(&message_id, from, did, &signed, deadline))
            .collect();
        let tried: Vec<(RecipientResult, Option<Pending>)> = futures::stream::iter(tries)
            .buffered(RECIPIENTS_AT_ONCE)
            .collect()
            .await;
        let results = self.keep(tried).await;
        for r in &results {
            crate::infra::metrics::global().send_recipient(r.status.as_str(), "first");
            info!(
                "send: {message_id} from={from} to={} status={} devices={}{}",
                r.did,
                r.status.as_str(),
                r.devices,
                r.reason
                    .as_deref()
                    .map(|why| format!(" reason=\"{why}\""))
                    .unwrap_or_default()
            );
        }
        Ok(SendOutput {
            message_id,
            results,
        })
    }

    /// Keeps every pending delivery of a call in the outbox, in one batch off the runtime's
    /// threads (one sync of the folder); a recipient whose delivery cannot be kept fails.
    async fn keep(&self, tried: Vec<(RecipientResult, Option<Pending>)>) -> Vec<RecipientResult> {
        let pending: Vec<Pending> = tried.iter().filter_map(|(_, p)| p.clone()).collect();
        if pending.is_empty() {
            return tried.into_iter().map(|(r, _)| r).collect();
        }
        let outbox = self.outbox.clone();
        let kept = tokio::task::spawn_blocking(move || outbox.put_all(&pending))
            .await
            .unwrap_or_default();
        let mut kept = kept.into_iter();
        tried
            .into_iter()
            .map(|(mut result, pending)| {
                if pending.is_some() {
                    let answer = kept.next().unwrap_or_else(|| {
                        Err(outbox::KeepError::Io(std::io::Error::other("not written")))
                    });
                    if let Err(e) = answer {
                        warn!(
                            "send.queue: a delivery to {} cannot be kept: {e}",
                            result.did
                        );
                        let why = result.reason.take().unwrap_or_default();
                        result.status = Status::Failed;
                        result.reason = Some(format!("{why}; it cannot be queued: {e}"));
                    }
                }
                result
            })
            .collect()
    }

    fn rate_of(&self) -> crate::infra::limit::Rate {
        self.rate.rate()
    }

    /// The recipients, checked: DIDs this service can resolve, at most `max_recipients`,
    /// each once (the first mention's order kept).
    fn recipients(&self, to: &[String]) -> Result<Vec<String>, SendError> {
        if to.is_empty() {
            return Err(SendError::Invalid("to: no recipient".into()));
        }
        if to.len() > self.max_recipients {
            return Err(SendError::Invalid(format!(
                "to: more than {} recipients (send.max_recipients)",
                self.max_recipients
            )));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for did in to {
            if crate::format::syntax::supported_did_method(did).is_none() {
                return Err(SendError::Invalid(format!(
                    "to: \"{}\" is not a did:plc or did:web DID",
                    did.escape_default()
                )));
            }
            if seen.insert(did.as_str()) {
                out.push(did.clone());
            }
        }
        Ok(out)
    }

    /// The call's try for one recipient, cut at `deadline`: its result, and what to keep for
    /// later when some of it could not go now.
    async fn first_try(
        &self,
        message_id: &str,
        from: &str,
        to: &str,
        signed: &[u8],
        deadline: Instant,
    ) -> (RecipientResult, Option<Pending>) {
        let done = Mutex::new(BTreeSet::new());
        let tried =
            tokio::time::timeout_at(deadline.into(), self.attempt(from, to, signed, &done)).await;
        let tally = tried.unwrap_or_else(|_| Tally {
            temporary: Some("not finished when the call's time ran out".into()),
            ..Tally::default()
        });
        let now = crate::infra::clock::unix_now();
        let pending = Pending {
            message_id: message_id.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            signed: {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(signed)
            },
            done: done
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .into_iter()
                .collect(),
            attempts: 0,
            first_at: now,
            next_at: now,
            last_error: String::new(),
        };
        settle(to, tally, now, pending)
    }

    /// One try for `to`: its inbox record and devices, an envelope for each device with a valid
    /// prekey not already in `done`, each handed over; `done` grows as devices get theirs.
    async fn attempt(
        &self,
        from: &str,
        to: &str,
        signed: &[u8],
        done: &Mutex<BTreeSet<String>>,
    ) -> Tally {
        let lookup = |e: crate::atproto::identity::IdentityError, what: &str| {
            let why = format!("{what}: {e}");
            let (temporary, failed) = if e.is_transient() {
                (Some(why), None)
            } else {
                (None, Some(why))
            };
            Tally {
                temporary,
                failed,
                ..Tally::default()
            }
        };
        let inbox = match self.identity.atsms_inbox(to).await {
            Ok(found) => found.value,
            Err(e) => return lookup(e, "its at.atsms.inbox record"),
        };
        let net = self.identity.net();
        let route = Route::of(&inbox, to, net.allow_private());
        if route.is_empty() {
            return Tally {
                failed: Some("no at.atsms.inbox record with an endpoint this host may use".into()),
                ..Tally::default()
            };
        }
        let now = crate::infra::clock::unix_now();
        let devices = match self.identity.device_prekeys(to, now, MAX_DEVICES).await {
            Ok(devices) => devices,
            Err(e) => return lookup(e, "its devices"),
        };
        let mut tally = Tally::default();
        if inbox.current_devices(now).len() > MAX_DEVICES {
            tally.missed.push(format!(
                "more than {MAX_DEVICES} current devices: the first {MAX_DEVICES} served"
            ));
        }
        let already: BTreeSet<String> = done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut sealed = Vec::new();
        for (device, prekey) in &devices {
            let short = short(&device.fingerprint);
            if already.contains(&device.fingerprint) {
                tally.earlier += 1;
                continue;
            }
            match prekey {
                Ok(prekey) => match seal_to(signed, device, &prekey.key) {
                    Ok(envelope) => sealed.push((device.fingerprint.clone(), envelope)),
                    Err(why) => tally.missed.push(format!("device {short}: {why}")),
                },
                Err(NoPrekey::Unavailable(why)) => {
                    tally
                        .temporary
                        .get_or_insert(format!("device {short}: {why}"));
                }
                Err(NoPrekey::Invalid(why)) => tally.missed.push(format!("device {short}: {why}")),
            }
        }
        tally.devices = sealed.len() + tally.earlier;
        if tally.devices == 0 && tally.temporary.is_none() {
            tally.failed = Some(if devices.is_empty() {
                "no current device (at.atsms.x509)".into()
            } else {
                format!(
                    "no device with a valid prekey ({})",
                    tally.missed.join("; ")
                )
            });
            return tally;
        }
        let carrier = Carrier {
            net,
            mta: self.mta,
            helo: &self.helo,
            own: &self.mail_domains,
            sessions: &self.mta_sessions,
        };
        self.hand_over(&carrier, &route, from, &sealed, done, &mut tally)
            .await;
        tally
    }

    /// Hands each sealed envelope over: by POST to the web endpoint, all at once; those it did
    /// not take by mail in one session. Counts each device's outcome in `tally`.
    async fn hand_over(
        &self,
        carrier: &Carrier<'_>,
        route: &Route,
        from: &str,
        sealed: &[(String, Vec<u8>)],
        done: &Mutex<BTreeSet<String>>,
        tally: &mut Tally,
    ) {
        // Each device is noted served the moment its envelope is taken, so a try cut at its
        // deadline keeps what it did (the rest is tried again, not the served sent twice).
        let served = |fingerprint: &str| {
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(fingerprint.to_string());
        };
        let served = &served;
        let mut left: Vec<(&String, &Vec<u8>, DeliveryError)> = Vec::new();
        match &route.web {
            Some(url) => {
                let posts = sealed.iter().map(|(fp, envelope)| async move {
                    let posted = carrier.post(url, envelope).await;
                    if posted.is_ok() {
                        served(fp);
                    }
                    (fp, envelope, posted)
                });
                for (fp, envelope, posted) in futures::future::join_all(posts).await {
                    crate::infra::metrics::global().send_envelope("post", outcome(&posted));
                    match posted {
                        Ok(()) => tally.posted += 1,
                        Err(e) => left.push((fp, envelope, e)),
                    }
                }
            }
            None => left.extend(sealed.iter().map(|(fp, envelope)| {
                (
                    fp,
                    envelope,
                    DeliveryError::Refused("no web endpoint".into()),
                )
            })),
        }
        if let (Some(address), false) = (&route.mailto, left.is_empty()) {
            let from_mailbox = format!(
                "{}@{}",
                crate::format::address::local_part_of_did(from),
                self.mail_domains[0]
            );
            let envelopes: Vec<&[u8]> = left.iter().map(|(_, e, _)| e.as_slice()).collect();
            let taken = |i: usize| served(left[i].0);
            let mailed = carrier
                .mail_all(&from_mailbox, address, &envelopes, &taken)
                .await;
            for ((_, _, web), mail) in left.iter_mut().zip(mailed) {
                crate::infra::metrics::global().send_envelope("mail", outcome(&mail));
                match mail {
                    Ok(()) => tally.mailed += 1,
                    // The web endpoint's "not now" (and its Retry-After) outranks the MTA's
                    // answer: it is tried again.
                    Err(e) if !web.is_temporary() => *web = e,
                    Err(_) => {}
                }
            }
            left.retain(|(fp, _, _)| !done.lock().unwrap_or_else(|e| e.into_inner()).contains(*fp));
        }
        for (fp, _, e) in left {
            match e {
                DeliveryError::Temporary(why) => {
                    tally.temporary.get_or_insert(why);
                }
                DeliveryError::Later(why, after) => {
                    tally.temporary.get_or_insert(why);
                    tally.retry_after = tally.retry_after.max(Some(after));
                }
                DeliveryError::Refused(why) => {
                    tally.missed.push(format!("device {}: {why}", short(fp)))
                }
            }
        }
    }
}

/// What a try came to: the recipient's line of the answer, and the delivery to keep when
/// some of it could not go now.
fn settle(
    to: &str,
    tally: Tally,
    now: i64,
    pending: Pending,
) -> (RecipientResult, Option<Pending>) {
    let result = |status, reason: Option<String>| RecipientResult {
        did: to.to_string(),
        status,
        devices: tally.devices,
        reason,
    };
    let missed = (!tally.missed.is_empty()).then(|| tally.missed.join("; "));
    if let Some(why) = &tally.failed {
        return (result(Status::Failed, Some(why.clone())), None);
    }
    if let Some(why) = &tally.temporary {
        let why = match &missed {
            Some(missed) => format!("{why}; {missed}"),
            None => why.clone(),
        };
        return match pending.after_try(now, why.clone(), tally.retry_after) {
            Some(pending) => (
                result(
                    Status::Queued,
                    Some(format!("{why}; it will be tried again")),
                ),
                Some(pending),
            ),
            None => (result(Status::Failed, Some(why)), None),
        };
    }
    match (tally.posted + tally.earlier, tally.mailed) {
        (0, 0) => (
            result(
                Status::Failed,
                Some(missed.unwrap_or_else(|| "no device".into())),
            ),
            None,
        ),
        (_, 0) => (result(Status::Delivered, missed), None),
        _ => (result(Status::Queued, missed), None),
    }
}

/// A hand-over's outcome, as the metrics name it.
fn outcome(handed: &Result<(), DeliveryError>) -> &'static str {
    match handed {
        Ok(()) => "taken",
        Err(DeliveryError::Refused(_)) => "refused",
        Err(_) => "temporary",
    }
}

/// The signed message sealed for one device.
fn seal_to(
    signed: &[u8],
    device: &crate::atproto::identity::inbox::Device,
    prekey: &[u8; 32],
) -> Result<Vec<u8>, String> {
    use der::Decode;
    let certificate = x509_cert::Certificate::from_der(&device.der)
        .map_err(|e| format!("its certificate: {e}"))?;
    one_shot::seal_for(
        signed,
        &one_shot::Device {
            certificate: &certificate,
            prekey,
        },
    )
    .map_err(|e| e.to_string())
}

/// Refuses a message whose one-recipient EnvelopedData would not fit the largest bucket.
fn fits(signed: &[u8], own: &x509_cert::Certificate) -> Result<(), SendError> {
    let probe = enveloped::encrypt(signed, std::slice::from_ref(own))
        .map_err(|e| SendError::Internal(e.to_string()))?;
    let room = vec![0u8; probe.len() + ISSUER_ROOM];
    sealed::pad_to_bucket(sealed::CONTENT_CMS, &room)
        .map(|_| ())
        .map_err(|_| SendError::TooLarge)
}

/// A fingerprint's first 16 hex digits, for reasons and logs.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

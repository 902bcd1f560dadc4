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
use deliver::{Carrier, DeliveryError, Handed, Route};
pub use held::HeldDevice;
use outbox::{Outbox, Pending};

/// Recipients worked on at once in one call.
const RECIPIENTS_AT_ONCE: usize = 16;
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
    /// The domain of the sending DIDs' mailboxes here (the first of `inbox.hosts`).
    mail_domain: String,
    helo: String,
    outbox: Outbox,
}

/// How one recipient's try went.
#[derive(Debug, Default)]
struct Tally {
    devices: usize,
    posted: usize,
    mailed: usize,
    /// Devices that got no copy, and why (no valid prekey; refused).
    missed: Vec<String>,
    /// Why some could not go now.
    temporary: Option<String>,
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
        let hosts = config.inbox.hosts();
        let mail_domain = hosts
            .iter()
            .find_map(|h| crate::format::syntax::ascii_domain(h))
            .unwrap_or_else(|| "localhost".into());
        Ok(Sender {
            held,
            identity,
            rate: RateLimit::new(config.send.rate_limit, 100_000),
            max_recipients: config.send.max_recipients.get(),
            mta: config.send.smtp.0,
            helo: crate::infra::host::name(),
            mail_domain,
            outbox: Outbox::open(&config.send.queue)?,
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
        let message_id = hex(&Sha256::digest(&signed));
        let tries: Vec<_> = to
            .iter()
            .map(|did| self.first_try(&message_id, from, did, &signed, deadline))
            .collect();
        let results = futures::stream::iter(tries)
            .buffered(RECIPIENTS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        Ok(SendOutput {
            message_id,
            results,
        })
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

    /// The call's try for one recipient: cut at `deadline`, what is left kept for later.
    async fn first_try(
        &self,
        message_id: &str,
        from: &str,
        to: &str,
        signed: &[u8],
        deadline: Instant,
    ) -> RecipientResult {
        let done = Mutex::new(BTreeSet::new());
        let tried =
            tokio::time::timeout_at(deadline.into(), self.attempt(from, to, signed, &done)).await;
        let tally = tried.unwrap_or_else(|_| Tally {
            temporary: Some("not finished when the call's time ran out".into()),
            ..Tally::default()
        });
        let now = crate::infra::clock::unix_now();
        let pending = || Pending {
            message_id: message_id.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            signed: {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(signed)
            },
            done: done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
            attempts: 0,
            first_at: now,
            next_at: now,
            last_error: String::new(),
        };
        let result = self.settle(to, tally, now, pending);
        info!(
            "send: {message_id} from={from} to={to} status={} devices={}{}",
            serde_json::to_value(result.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            result.devices,
            result
                .reason
                .as_deref()
                .map(|r| format!(" reason=\"{r}\""))
                .unwrap_or_default()
        );
        result
    }

    /// What a try came to; a temporary failure is kept in the outbox (made by `pending`).
    fn settle(
        &self,
        to: &str,
        tally: Tally,
        now: i64,
        pending: impl FnOnce() -> Pending,
    ) -> RecipientResult {
        let result = |status, reason: Option<String>| RecipientResult {
            did: to.to_string(),
            status,
            devices: tally.devices,
            reason,
        };
        let missed = (!tally.missed.is_empty()).then(|| tally.missed.join("; "));
        if let Some(why) = &tally.failed {
            return result(Status::Failed, Some(why.clone()));
        }
        if let Some(why) = &tally.temporary {
            let kept = pending()
                .after_try(now, why.clone())
                .ok_or_else(|| "too old".to_string())
                .and_then(|p| self.outbox.put(&p).map_err(|e| e.to_string()));
            return match kept {
                Ok(()) => result(
                    Status::Queued,
                    Some(format!("{why}; it will be tried again")),
                ),
                Err(e) => {
                    warn!("send.queue: cannot keep a delivery to {to}: {e}");
                    result(
                        Status::Failed,
                        Some(format!("{why}; cannot be queued: {e}")),
                    )
                }
            };
        }
        match (tally.posted, tally.mailed) {
            (0, 0) => result(
                Status::Failed,
                Some(missed.unwrap_or_else(|| "no device".into())),
            ),
            (_, 0) => result(Status::Delivered, missed),
            _ => result(Status::Queued, missed),
        }
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
            if e.is_transient() {
                Tally {
                    temporary: Some(why),
                    ..Tally::default()
                }
            } else {
                Tally {
                    failed: Some(why),
                    ..Tally::default()
                }
            }
        };
        let inbox = match self.identity.atsms_inbox(to).await {
            Ok(found) => found.value,
            Err(e) => return lookup(e, "its at.atsms.inbox record"),
        };
        let route = Route::of(&inbox, to);
        if route.is_empty() {
            return Tally {
                failed: Some("no at.atsms.inbox record with an endpoint this host may use".into()),
                ..Tally::default()
            };
        }
        let now = crate::infra::clock::unix_now();
        let devices = match self.identity.device_prekeys(to, now).await {
            Ok(devices) => devices,
            Err(e) => return lookup(e, "its devices"),
        };
        if devices.is_empty() {
            return Tally {
                failed: Some("no current device (at.atsms.x509)".into()),
                ..Tally::default()
            };
        }
        let mut tally = Tally::default();
        let mut ready = Vec::new();
        for (device, prekey) in &devices {
            match prekey {
                Ok(prekey) => ready.push((device, prekey.key)),
                Err(why) => tally
                    .missed
                    .push(format!("device {}: {why}", short(&device.fingerprint))),
            }
        }
        if ready.is_empty() {
            tally.failed = Some(format!(
                "no device with a valid prekey ({})",
                tally.missed.join("; ")
            ));
            return tally;
        }
        tally.devices = ready.len();
        let from_mailbox = format!(
            "{}@{}",
            crate::format::address::local_part_of_did(from),
            self.mail_domain
        );
        let carrier = Carrier {
            net: self.identity.net(),
            mta: self.mta,
            helo: &self.helo,
        };
        let already: BTreeSet<String> = done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let handed = futures::future::join_all(
            ready
                .iter()
                .filter(|(device, _)| !already.contains(&device.fingerprint))
                .map(|(device, prekey)| async {
                    let outcome = self
                        .hand_over(&carrier, &route, &from_mailbox, signed, device, prekey)
                        .await;
                    if outcome.is_ok() {
                        done.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(device.fingerprint.clone());
                    }
                    (device.fingerprint.clone(), outcome)
                }),
        )
        .await;
        tally.posted = already.len();
        for (fingerprint, outcome) in handed {
            match outcome {
                Ok(Handed::Posted) => tally.posted += 1,
                Ok(Handed::Mailed) => tally.mailed += 1,
                Err(DeliveryError::Temporary(why)) => {
                    tally.temporary.get_or_insert(why);
                }
                Err(DeliveryError::Refused(why)) => tally
                    .missed
                    .push(format!("device {}: {why}", short(&fingerprint))),
            }
        }
        tally
    }

    async fn hand_over(
        &self,
        carrier: &Carrier<'_>,
        route: &Route,
        from_mailbox: &str,
        signed: &[u8],
        device: &crate::atproto::identity::inbox::Device,
        prekey: &[u8; 32],
    ) -> Result<Handed, DeliveryError> {
        use der::Decode;
        let certificate = x509_cert::Certificate::from_der(&device.der)
            .map_err(|e| DeliveryError::Refused(format!("its certificate: {e}")))?;
        let envelope = one_shot::seal_for(
            signed,
            &one_shot::Device {
                certificate: &certificate,
                prekey,
            },
        )
        .map_err(|e| DeliveryError::Refused(e.to_string()))?;
        carrier.deliver(route, from_mailbox, &envelope).await
    }

    /// Tries again every queued delivery that is due, until `stop`: delivered or refused for
    /// good ones are forgotten, the others wait longer, those too old are given up (logged).
    pub async fn run_outbox(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            for pending in self.outbox.due(Some(crate::infra::clock::unix_now())) {
                if *stop.borrow() {
                    return;
                }
                self.retry(pending).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn retry(&self, pending: Pending) {
        use base64::Engine;
        let Ok(signed) = base64::engine::general_purpose::STANDARD.decode(&pending.signed) else {
            warn!(
                "send.queue: {} to {}: damaged; dropped",
                pending.message_id, pending.to
            );
            let _ = self.outbox.remove(&pending);
            return;
        };
        let done = Mutex::new(pending.done.iter().cloned().collect::<BTreeSet<_>>());
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let tally = tokio::time::timeout_at(
            deadline.into(),
            self.attempt(&pending.from, &pending.to, &signed, &done),
        )
        .await
        .unwrap_or_else(|_| Tally {
            temporary: Some("a try took longer than a minute".into()),
            ..Tally::default()
        });
        let now = crate::infra::clock::unix_now();
        let (id, to) = (pending.message_id.clone(), pending.to.clone());
        if let Some(why) = tally.temporary {
            let mut next = pending;
            next.done = done
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .into_iter()
                .collect();
            match next.after_try(now, why.clone()) {
                Some(next) => {
                    if let Err(e) = self.outbox.put(&next) {
                        warn!("send.queue: {id} to {to}: cannot keep it: {e}");
                    }
                }
                None => {
                    warn!(
                        "send: {id} to={to}: given up after {} s: {why}",
                        outbox::MAX_AGE
                    );
                    let _ = self.outbox.remove(&pending_named(&id, &to));
                }
            }
            return;
        }
        match &tally.failed {
            Some(why) => warn!("send: {id} to={to}: refused on a later try: {why}"),
            None => info!(
                "send: {id} to={to} delivered on a later try (posted={} mailed={})",
                tally.posted, tally.mailed
            ),
        }
        let _ = self.outbox.remove(&pending_named(&id, &to));
    }
}

/// A `Pending` that names the file of `message_id` to `to` (to remove it).
fn pending_named(message_id: &str, to: &str) -> Pending {
    Pending {
        message_id: message_id.to_string(),
        from: String::new(),
        to: to.to_string(),
        signed: String::new(),
        done: Vec::new(),
        attempts: 0,
        first_at: 0,
        next_at: 0,
        last_error: String::new(),
    }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fingerprint's first 16 hex digits, for reasons and logs.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

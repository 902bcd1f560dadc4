//! Device copies: an AT-SMS envelope delivered to a DID mailbox here is also kept once for
//! each device the DID publishes (`infra::device_store`), which drains its own copy (the
//! drain API, `transport::xrpc::drain`). One intake for both carriers: SMTP reaches it through
//! LMTP's delivery (a message with one `application/atsms-envelope` part), the HTTPS inbox
//! hands LMTP the same mail (`transport::xrpc::inbox`), so
//! - the bytes kept are the decoded envelope, the same whichever carrier brought it;
//! - the same envelope by both carriers, or twice by one, is kept once: its SHA-256 is looked
//!   up in the DID's seen set (the store's `seen.d`) after consent and the size cap, before
//!   anything is written, and two deliveries of it at once wait for each other;
//! - before it is kept, the judge is asked whether the DID may be sent one more envelope
//!   (`Settings::admit_envelope`), and when every device is over its quota nothing is kept
//!   (LMTP 452 4.2.2, POST 429); when some are, the others get their copy.
//!
//! Order and durability: the Maildir copy and every device copy are written (each synced)
//! before the envelope is noted as stored and before the 250 / 202; a failure in between
//! leaves it not noted, so the sender's retry stores it again (at least once, never lost).
//! What the judge accepts is kept for the devices, junk included: the host cannot see inside
//! a sealed envelope (its sender is `none` here), the device opens it and checks the sender's
//! signature itself. A second DID mailbox of the same DID in one transaction (two of `inbox.hosts`)
//! gets its Maildir copy; the devices get theirs once.
//!
//! With `lmtp --stdio` (a process per delivery) the wait for each other is per process: two
//! deliveries of one envelope at the same instant may both be kept (a duplicate, never a loss),
//! and the push sockets of the daemon are not told (the device finds the copy when it next
//! drains).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::infra::config::InboxConfig;
use crate::infra::device_store::notify::Notifier;
use crate::infra::device_store::{DeviceStore, Kept};
use crate::policy::judge::{Refusal, Settings};

/// An envelope for a DID: the DID and the envelope's SHA-256.
type Key = (String, [u8; 32]);

/// The devices' store and who is told of new copies; shared by LMTP and the HTTPS inbox.
pub struct Devices {
    pub store: Arc<DeviceStore>,
    pub notifier: Arc<Notifier>,
    /// The envelopes being kept right now, by DID and SHA-256.
    in_flight: Mutex<HashMap<Key, tokio::sync::watch::Receiver<()>>>,
    /// DIDs whose seen set was swept of old entries in the last hour.
    swept: moka::sync::Cache<String, ()>,
}

/// What the intake says of an envelope for one DID, before anything is written.
pub enum Admission {
    /// Keep it (for these devices, maybe none) once the Maildir copy is written.
    Keep(Pending),
    /// Stored for this DID before: answered as stored, nothing written again.
    Duplicate(String),
    /// Every device is over its quota.
    OverQuota,
    Refused(Refusal),
    /// The store cannot be read now.
    Failed,
}

/// An envelope admitted and not yet kept: others of the same envelope wait while it lives.
pub struct Pending {
    did: String,
    digest: [u8; 32],
    fingerprints: Vec<String>,
    _in_flight: InFlight,
}

impl Pending {
    /// The envelope's SHA-256, in hex.
    pub fn hash(&self) -> String {
        crate::format::hex::hex(&self.digest)
    }
}

/// An envelope being kept: taken off the in-flight set however that ends, which wakes the
/// deliveries of the same envelope waiting for it.
struct InFlight {
    devices: Arc<Devices>,
    key: Key,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.devices
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// Runs file work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

impl Devices {
    pub fn new(config: &InboxConfig, host: &str) -> Devices {
        Devices {
            store: Arc::new(DeviceStore::new(
                config.store.clone(),
                host,
                config.max_envelopes_per_device.get(),
                config.max_bytes_per_device.get(),
            )),
            notifier: Arc::default(),
            in_flight: Mutex::default(),
            swept: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Waits until no other delivery is keeping `envelope` for `did`, then holds its place.
    async fn hold(self: &Arc<Self>, did: &str, digest: [u8; 32]) -> InFlight {
        let key = (did.to_string(), digest);
        loop {
            let waiting = {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                match in_flight.get(&key) {
                    Some(done) => Err(done.clone()),
                    None => {
                        let (done, waiting) = tokio::sync::watch::channel(());
                        in_flight.insert(key.clone(), waiting);
                        Ok(done)
                    }
                }
            };
            match waiting {
                Ok(done) => {
                    return InFlight {
                        devices: self.clone(),
                        key,
                        _done: done,
                    };
                }
                // Ends when the other one does (its sender dropped).
                Err(mut other) => while other.changed().await.is_ok() {},
            }
        }
    }

    /// Whether `envelope` for `did` is to be kept (see the top of this file).
    pub async fn admit(
        self: &Arc<Self>,
        settings: &Settings,
        did: &str,
        envelope: &[u8],
    ) -> Admission {
        let metrics = crate::infra::metrics::global();
        let digest: [u8; 32] = Sha256::digest(envelope).into();
        let in_flight = self.hold(did, digest).await;
        let (store, owned) = (self.store.clone(), did.to_string());
        match blocking(move || store.stored_before(&owned, &digest)).await {
            Ok(true) => {
                metrics.inbox_envelope("duplicate", "");
                return Admission::Duplicate(crate::format::hex::hex(&digest));
            }
            Ok(false) => {}
            Err(e) => {
                warn!("devices: {did}: cannot read what was stored: {e}");
                return Admission::Failed;
            }
        }
        if let Err(refusal) = settings
            .admit_envelope(did, &crate::format::hex::hex(&digest))
            .await
        {
            metrics.inbox_envelope("refused", "rate");
            return Admission::Refused(refusal);
        }
        // Devices unknown now (the PDS unreachable, nothing cached): try again later rather
        // than keep it for nobody.
        let fingerprints = match settings.devices_of(did).await {
            Ok(devices) => devices,
            Err(refusal) => {
                warn!("devices: {did}: devices unknown now: {refusal:?}");
                return Admission::Refused(refusal);
            }
        };
        let (store, owned, asked) = (self.store.clone(), did.to_string(), fingerprints.clone());
        let size = envelope.len() as u64;
        if blocking(move || store.all_over_quota(&owned, &asked, size))
            .await
            .unwrap_or(false)
        {
            metrics.inbox_envelope("refused", "quota");
            return Admission::OverQuota;
        }
        Admission::Keep(Pending {
            did: did.to_string(),
            digest,
            fingerprints,
            _in_flight: in_flight,
        })
    }

    /// Keeps the admitted envelope for its devices, notes it as stored and tells the devices'
    /// sockets. `false`: a device's copy could not be written (nothing noted: the sender is
    /// asked to try again).
    pub async fn keep(self: &Arc<Self>, pending: Pending, envelope: Arc<Vec<u8>>) -> bool {
        let Pending {
            did,
            digest,
            fingerprints,
            _in_flight,
        } = pending;
        let hash = crate::format::hex::hex(&digest);
        let store = self.store.clone();
        let (owned, asked) = (did.clone(), fingerprints.clone());
        let kept = blocking(move || {
            let refs: Vec<&str> = asked.iter().map(String::as_str).collect();
            let kept = store.store(&owned, &refs, &envelope)?;
            // Noted only when no device's copy failed: the retry a failure asks for must find
            // it not stored (the devices that got it may then get it twice, never none).
            let failed = kept.iter().any(|k| matches!(k, Kept::Failed(_)));
            if !failed && (fingerprints_kept(&kept) > 0 || refs.is_empty()) {
                store.mark_stored(&owned, &digest)?;
            }
            Ok(kept)
        })
        .await;
        let kept = match kept {
            Ok(kept) => kept,
            Err(e) => {
                warn!("devices: {did}: {hash} not kept: {e}");
                crate::infra::metrics::global().inbox_envelope("refused", "store");
                return false;
            }
        };
        self.tell(&did, &fingerprints, &kept, &hash);
        self.sweep(&did);
        let failed = kept.iter().any(|k| matches!(k, Kept::Failed(_)));
        !failed && (fingerprints.is_empty() || fingerprints_kept(&kept) > 0)
    }

    /// Counts and logs what became of each device's copy; wakes the sockets of those kept.
    fn tell(&self, did: &str, fingerprints: &[String], kept: &[Kept], hash: &str) {
        let metrics = crate::infra::metrics::global();
        let copies = fingerprints_kept(kept);
        info!(
            "devices: {hash} kept for {copies} of {} devices of {did}",
            fingerprints.len()
        );
        if copies < fingerprints.len() {
            warn!("devices: {did}: not kept for every device: {kept:?}");
        }
        for (fp, kept) in fingerprints.iter().zip(kept) {
            match kept {
                Kept::Stored(_) => {
                    metrics.inbox_envelope("stored", "");
                    self.notifier.notify(did, fp);
                }
                Kept::OverQuota => metrics.inbox_envelope("refused", "quota"),
                Kept::Failed(_) => metrics.inbox_envelope("refused", "store"),
            }
        }
    }

    /// Sweeps the DID's seen set of old entries, at most hourly, off the runtime.
    fn sweep(&self, did: &str) {
        if self.swept.contains_key(did) {
            return;
        }
        self.swept.insert(did.to_string(), ());
        let (store, did) = (self.store.clone(), did.to_string());
        tokio::task::spawn_blocking(move || store.sweep_seen(&did));
    }
}

fn fingerprints_kept(kept: &[Kept]) -> usize {
    kept.iter().filter(|k| matches!(k, Kept::Stored(_))).count()
}

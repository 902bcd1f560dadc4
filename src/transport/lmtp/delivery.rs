//! The end of an LMTP transaction: the message is verified once, the one judge decides for
//! each recipient, and each accepted copy is written durably into its Maildir before its
//! `250` (RFC 2033 §4.2: one reply per recipient, in order, duplicates included).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};

use super::LmtpService;
use super::devices::Admission;
use super::incoming::Incoming;
use super::recipient::Recipient;
use crate::format::auth_results;
use crate::format::reply::{Enhanced, Reply};
use crate::infra::maildir::{self, DeliveryError};
use crate::policy::judge::Settings;
use crate::policy::judge::judgement::{self, Disposition, Scope, Target};

/// A transaction: MAIL, its RCPTs and the message arriving.
pub struct Transaction {
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Set by DATA or the first BDAT.
    pub incoming: Option<Incoming>,
    /// How the message came: "data" or "bdat" (for the log).
    pub via: &'static str,
}

impl Transaction {
    pub fn new(sender: String) -> Transaction {
        Transaction {
            sender,
            recipients: Vec::new(),
            incoming: None,
            via: "data",
        }
    }

    /// Message bytes, dot-unstuffed (DATA) or as sent (BDAT).
    pub fn push(&mut self, bytes: &[u8]) {
        if let Some(incoming) = self.incoming.as_mut() {
            incoming.push(bytes);
        }
    }
}

/// Where a recipient's copy goes: `.Junk` over `.AT-SMS` (when that folder exists) over the
/// `+detail` folder (when it exists) over INBOX.
fn folder_for(
    recipient: &Recipient,
    disposition: &Disposition,
    atsms_envelope: bool,
) -> (PathBuf, bool) {
    let at_sms = recipient.maildir.join(".AT-SMS");
    match disposition {
        // LMTP never drops and has no hold queue: these go to Junk.
        Disposition::Junk | Disposition::Quarantine(_) | Disposition::Discard => {
            (recipient.maildir.join(".Junk"), true)
        }
        _ if atsms_envelope && maildir::is_real_dir(&at_sms) => (at_sms, true),
        _ => {
            let detail = recipient
                .detail
                .as_ref()
                .map(|d| recipient.maildir.join(format!(".{d}")));
            // A `.Detail` that is a symlink is no folder of this mailbox's.
            match detail {
                Some(folder) if maildir::is_real_dir(&folder) => (folder, true),
                _ => (recipient.maildir.clone(), false),
            }
        }
    }
}

/// What became of a message for one mailbox: what LMTP answers (`Outcome::reply`) and the
/// HTTPS inbox maps to a status (`xrpc::inbox`), each from what happened, not from a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written durably; the Maildir file's id.
    Saved(String),
    /// The judge refused it.
    Refused(crate::policy::judge::Refusal),
    /// Over a size (`lmtp.max_message_size`, the header section's limits).
    TooLarge(String),
    /// An AT-SMS envelope stored for this DID before (its SHA-256): not written again.
    Duplicate(String),
    /// Every device of the DID is over its quota (`inbox.max_*_per_device`).
    OverQuota,
    /// The disk is full.
    Full,
    /// Spooling or writing failed otherwise.
    Failed,
}

impl Outcome {
    pub fn reply(&self) -> Reply {
        match self {
            Outcome::Saved(id) => Reply::new(250, Enhanced(2, 0, 0), format!("{id} Saved")),
            Outcome::Refused(refusal) => refusal.reply(),
            Outcome::Duplicate(hash) => {
                Reply::new(250, Enhanced(2, 0, 0), format!("{hash} already stored"))
            }
            Outcome::OverQuota => Reply::new(
                452,
                Enhanced(4, 2, 2),
                "every device of this DID is over its quota, try again later",
            ),
            Outcome::TooLarge(why) => Reply::new(552, Enhanced(5, 3, 4), why.clone()),
            Outcome::Full => Reply::new(452, Enhanced(4, 3, 1), "insufficient system storage"),
            Outcome::Failed => Reply::new(451, Enhanced(4, 3, 0), "temporary delivery failure"),
        }
    }
}

/// Verifies the message once, then judges, delivers and replies for each recipient in
/// order. A recipient given twice is delivered once and answered twice, each reply naming
/// the address as that RCPT gave it.
pub async fn deliver_all(
    service: &Arc<LmtpService>,
    settings: &Arc<Settings>,
    t: Transaction,
) -> Vec<Reply> {
    let addresses: Vec<String> = t.recipients.iter().map(|r| r.address.clone()).collect();
    deliver_outcomes(service, settings, t)
        .await
        .into_iter()
        .zip(addresses)
        .map(|(outcome, address)| outcome.reply().for_recipient(&address))
        .collect()
}

/// As `deliver_all`, each recipient's outcome.
async fn deliver_outcomes(
    service: &Arc<LmtpService>,
    settings: &Arc<Settings>,
    mut t: Transaction,
) -> Vec<Outcome> {
    let each = |outcome: Outcome| vec![outcome; t.recipients.len()];
    let Some(mut incoming) = t.incoming.take() else {
        return each(Outcome::Failed);
    };
    incoming.finish();
    if let Some(why) = incoming.refused {
        warn!(
            "lmtp: message from <{}> refused: {why} ({} bytes)",
            t.sender.escape_default(),
            incoming.size
        );
        return each(Outcome::TooLarge(why.to_string()));
    }
    if let Some(e) = incoming.io_error() {
        error!(
            "lmtp: spooling a message from <{}> failed: {e}",
            t.sender.escape_default()
        );
        return each(Outcome::Failed);
    }
    let verified = incoming.session().finish(settings, settings.now()).await;
    let kept_headers = incoming.kept_header_section();
    let size = incoming.size;
    let incoming = Arc::new(Mutex::new(incoming));

    // Each mailbox is judged and written once, however often it was given.
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut unique: Vec<&Recipient> = Vec::new();
    for r in &t.recipients {
        first_of.entry(r.mailbox.clone()).or_insert_with(|| {
            unique.push(r);
            unique.len() - 1
        });
    }
    let targets: Vec<Target> = unique
        .iter()
        .map(|r| Target {
            address: r.address.clone(),
            mailbox: r.mailbox.clone(),
        })
        .collect();
    let origin = judgement::Origin {
        id: "lmtp",
        transport: "lmtp",
        sender: &t.sender,
    };
    let judgements =
        judgement::judge(settings, &origin, &verified, &targets, Scope::EachRecipient).await;
    let mut admissions = admit_devices(service, settings, &verified, &unique, &judgements).await;
    let written: Vec<bool> = admissions
        .iter()
        .map(|a| matches!(a, None | Some(Admission::Keep(_))))
        .collect();
    let groups = copies(&t, &unique, &judgements, &written, &kept_headers);
    let mut stored: Vec<Option<(String, Result<String, DeliveryError>)>> =
        (0..unique.len()).map(|_| None).collect();
    for (head, copies) in groups {
        let shown: Vec<(usize, String)> =
            copies.iter().map(|c| (c.index, c.shown.clone())).collect();
        for ((index, shown), result) in shown
            .into_iter()
            .zip(store(service, &incoming, copies, head).await)
        {
            stored[index] = Some((shown, result));
        }
    }
    let envelope = verified.envelope.map(Arc::new);
    let mut by_mailbox: Vec<Outcome> = Vec::with_capacity(unique.len());
    for (i, ((recipient, judgement), stored)) in
        unique.iter().zip(&judgements).zip(stored).enumerate()
    {
        let step = Step {
            judgement,
            stored,
            admission: admissions[i].take(),
        };
        let (outcome, shown) = outcome_of(service, settings, recipient, step, &envelope).await;
        let reply = outcome.reply().for_recipient(&recipient.address);
        info!(
            "{} via={} size={size} folder={} reply=\"{}\"",
            judgement.log_line,
            t.via,
            shown.escape_default(),
            reply.to_string().escape_default()
        );
        crate::infra::metrics::global().lmtp_delivery(match reply.code / 100 {
            2 => "saved",
            5 => "rejected",
            _ => "deferred",
        });
        by_mailbox.push(outcome);
    }
    t.recipients
        .iter()
        .map(|r| by_mailbox[first_of[&r.mailbox]].clone())
        .collect()
}

/// Asks the device intake (`devices`) of each recipient that is a DID mailbox here and is
/// delivered a whole envelope: once per DID, in the DIDs' order (two transactions holding two
/// DIDs' places never wait for each other). `None`: the Maildir alone, as any mail.
async fn admit_devices(
    service: &Arc<LmtpService>,
    settings: &Arc<Settings>,
    verified: &crate::policy::judge::Verified,
    unique: &[&Recipient],
    judgements: &[judgement::Judgement],
) -> Vec<Option<Admission>> {
    let mut admissions: Vec<Option<Admission>> = unique.iter().map(|_| None).collect();
    let Some(envelope) = &verified.envelope else {
        return admissions;
    };
    let mut asked: Vec<(String, usize)> = Vec::new();
    for (index, (recipient, judgement)) in unique.iter().zip(judgements).enumerate() {
        if judgement.refuses() {
            continue;
        }
        if let Some(did) = settings.did_of_mailbox(&recipient.mailbox)
            && !asked.iter().any(|(d, _)| *d == did)
        {
            asked.push((did, index));
        }
    }
    asked.sort();
    for (did, index) in asked {
        admissions[index] = Some(service.devices.admit(settings, &did, envelope).await);
    }
    admissions
}

/// One recipient at the end: its judgement, its Maildir copy, what the device intake said.
struct Step<'a> {
    judgement: &'a judgement::Judgement,
    stored: Option<(String, Result<String, DeliveryError>)>,
    admission: Option<Admission>,
}

/// A recipient's outcome and the folder shown in the log: the device copies are kept once
/// its Maildir copy is written (`devices`), then what is accepted is remembered.
async fn outcome_of(
    service: &Arc<LmtpService>,
    settings: &Arc<Settings>,
    recipient: &Recipient,
    step: Step<'_>,
    envelope: &Option<Arc<Vec<u8>>>,
) -> (Outcome, String) {
    let none = || "-".to_string();
    if let Some(refusal) = step.judgement.refusal() {
        return (Outcome::Refused(refusal.clone()), none());
    }
    let pending = match step.admission {
        Some(Admission::Keep(pending)) => Some(pending),
        Some(Admission::Duplicate(hash)) => return (Outcome::Duplicate(hash), none()),
        Some(Admission::OverQuota) => return (Outcome::OverQuota, none()),
        Some(Admission::Refused(refusal)) => return (Outcome::Refused(refusal), none()),
        Some(Admission::Failed) => return (Outcome::Failed, none()),
        None => None,
    };
    let Some((shown, result)) = step.stored else {
        return (Outcome::Failed, none());
    };
    let id = match result {
        Ok(id) => id,
        Err(e) => {
            error!("lmtp: delivery to <{}> failed: {e}", recipient.address);
            let outcome = match e {
                DeliveryError::Full(_) => Outcome::Full,
                DeliveryError::Io(_) => Outcome::Failed,
            };
            return (outcome, shown);
        }
    };
    if let (Some(pending), Some(envelope)) = (pending, envelope) {
        let hash = pending.hash();
        if !service.devices.keep(pending, envelope.clone()).await {
            // The Maildir copy is written; the retry this asks for writes it again.
            error!(
                "lmtp: {hash} for <{}>: no device copy written",
                recipient.address
            );
            return (Outcome::Failed, shown);
        }
    }
    judgement::accepted(settings, step.judgement).await;
    (Outcome::Saved(id), shown)
}

/// The copies to write, grouped by their head: copies that end up byte-identical (the
/// judge's header value the same, no Delivered-To naming one recipient) are written once and
/// linked (issue: many recipients, one write); each group is one blocking task. Refused
/// recipients get none, nor those `written` says not to write (an envelope stored before, its
/// devices over quota: `devices`).
fn copies(
    t: &Transaction,
    unique: &[&Recipient],
    judgements: &[judgement::Judgement],
    written: &[bool],
    kept_headers: &[u8],
) -> Vec<(Vec<u8>, Vec<Copy>)> {
    let single = t.recipients.len() == 1;
    let mut groups: Vec<(Vec<u8>, Vec<Copy>)> = Vec::new();
    for (index, (recipient, judgement)) in unique.iter().zip(judgements).enumerate() {
        if judgement.refuses() || !written[index] {
            continue;
        }
        let (folder, subfolder) =
            folder_for(recipient, &judgement.disposition, judgement.atsms_envelope);
        let mut head = format!("Return-Path: <{}>\n", t.sender);
        if single {
            head.push_str(&format!("Delivered-To: {}\n", recipient.address));
        }
        head.push_str(&format!(
            "{}:{}\n",
            auth_results::FIELD_NAME,
            judgement.header_value
        ));
        let mut head = head.into_bytes();
        head.extend_from_slice(kept_headers);
        head.push(b'\n');
        let copy = Copy {
            index,
            base: recipient.base.clone(),
            relative: recipient.relative(&folder),
            subfolder,
            shown: folder.display().to_string(),
        };
        match groups.iter_mut().find(|(h, _)| *h == head) {
            Some((_, copies)) => copies.push(copy),
            None => groups.push((head, vec![copy])),
        }
    }
    groups
}

/// One recipient's copy: where it goes.
struct Copy {
    /// The recipient's place among the mailboxes judged.
    index: usize,
    base: PathBuf,
    relative: PathBuf,
    subfolder: bool,
    shown: String,
}

/// Writes one message into the folders of `copies` on the blocking pool (file I/O and
/// fsyncs never stall the runtime): once, hard-linked into the others (`maildir::
/// deliver_linked`). A folder that cannot be opened fails alone. Results in `copies` order.
async fn store(
    service: &Arc<LmtpService>,
    incoming: &Arc<Mutex<Incoming>>,
    copies: Vec<Copy>,
    head: Vec<u8>,
) -> Vec<Result<String, DeliveryError>> {
    let count = copies.len();
    let service = service.clone();
    let incoming = incoming.clone();
    let task = tokio::task::spawn_blocking(move || {
        let opened: Vec<Result<maildir::Folder, DeliveryError>> = copies
            .iter()
            .map(|c| {
                let folder = maildir::open_folder(&c.base, &c.relative, c.subfolder)?;
                service.clean_once(folder.path());
                Ok(folder)
            })
            .collect();
        let folders: Vec<&maildir::Folder> =
            opened.iter().filter_map(|f| f.as_ref().ok()).collect();
        let mut delivered = if folders.is_empty() {
            Vec::new()
        } else {
            match incoming.lock() {
                Ok(mut incoming) => match incoming.body_source() {
                    Ok(body) => maildir::deliver_linked(
                        &folders,
                        &service.host,
                        &head,
                        body,
                        &service.syncer,
                    ),
                    Err(e) => folders
                        .iter()
                        .map(|_| Err(DeliveryError::from(io::Error::new(e.kind(), e.to_string()))))
                        .collect(),
                },
                Err(_) => folders
                    .iter()
                    .map(|_| Err(DeliveryError::Io(io::Error::other("spool lock poisoned"))))
                    .collect(),
            }
        }
        .into_iter();
        opened
            .into_iter()
            .map(|f| match f {
                Ok(_) => delivered
                    .next()
                    .unwrap_or_else(|| Err(DeliveryError::Io(io::Error::other("not delivered"))))
                    .map(|d| d.id),
                Err(e) => Err(e),
            })
            .collect::<Vec<_>>()
    });
    match task.await {
        Ok(results) => results,
        Err(e) => (0..count)
            .map(|_| {
                Err(DeliveryError::Io(io::Error::other(format!(
                    "delivery task failed: {e}"
                ))))
            })
            .collect(),
    }
}

/// A whole message handed over at once (the HTTPS inbox, `xrpc::inbox`): `address` resolved
/// as RCPT resolves it, then the same delivery as DATA — verified, judged, written once —
/// and its outcome.
pub async fn deliver_message(
    service: &Arc<LmtpService>,
    sender: &str,
    address: &str,
    message: &[u8],
) -> Outcome {
    use super::incoming::Incoming;
    let settings = service.settings.get();
    let Ok(recipient) = service.mailboxes().resolve(address) else {
        return Outcome::Refused(crate::policy::judge::Refusal::NoMailbox);
    };
    let mut t = Transaction::new(sender.to_string());
    t.recipients.push(recipient);
    t.incoming = Some(Incoming::new(service.max_message_size, &settings));
    t.push(message);
    deliver_outcomes(service, &settings, t)
        .await
        .into_iter()
        .next()
        .unwrap_or(Outcome::Failed)
}

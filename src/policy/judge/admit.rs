//! The judge at recipient time: whether a recipient is taken, before any of the message is
//! seen — LMTP's RCPT, the milter's, the HTTPS inbox's path. What it says is a `Refusal` or
//! the recipient's inbox rule; every transport only says it in its own words (`Refusal::
//! reply` for SMTP, LMTP and the milter; an HTTP status for the inbox).
//!
//! Two questions, asked where they apply:
//! - **consent** (LMTP, the HTTPS inbox): a DID mailbox at one of `inbox.hosts` exists only
//!   while its DID consents to it here, asked of the mailbox the address folds into (the one
//!   delivery writes to). The milter leaves it to the MTA's `atsms_mailbox` map and to the
//!   judge at end of message, which asks again (an envelope's devices are known only then);
//! - **one rule a transaction** (the milter, and Exim's RCPT ACL through the socketmap): a
//!   transaction is judged under the inbox rule of its first recipient, so a recipient under
//!   another is sent again in a transaction of its own;
//! - **how many envelopes a DID is sent** (LMTP and the HTTPS inbox, before one is stored):
//!   `reputation.rate_limit` an hour, counted per recipient since an envelope names no sender.
//!
//! Never dry-run: a mailbox that does not exist here is refused as an unknown user is, and the
//! anonymous inbox's limits hold, whatever `policy.dry_run` says (docs/configuration.md).

use super::Settings;
use super::judgement::Target;
use super::refusal::Refusal;
use crate::policy::routing::{Consent, DidAddress};

/// Where a recipient comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// LMTP's RCPT: each recipient is judged on its own; consent asked.
    Lmtp,
    /// The HTTPS inbox's `POST /inbox/{did}`: consent asked.
    Inbox,
}

impl Settings {
    /// Whether `address` is taken at `gate` (consent of a DID mailbox here; see the top of
    /// this file).
    pub async fn admit(&self, gate: Gate, address: &str) -> Result<(), Refusal> {
        match gate {
            Gate::Lmtp | Gate::Inbox => self.consents(address).await,
        }
    }

    /// The consent of the mailbox `address` folds into, when it is a DID mailbox (at a
    /// domain not of `inbox.hosts`, none: this host keeps no DID mailbox there).
    async fn consents(&self, address: &str) -> Result<(), Refusal> {
        let mailbox = Target::new(address, self).mailbox;
        let Some(did_address) = DidAddress::parse(&mailbox) else {
            return Ok(());
        };
        match self.router.consent(&did_address).await {
            Consent::Given => Ok(()),
            Consent::Refused => Err(Refusal::NoMailbox),
            Consent::Unknown(why) => Err(Refusal::Unavailable(why)),
        }
    }

    /// The milter's RCPT (its callbacks are not async): whether a recipient may join a
    /// transaction whose first recipient is under the inbox rule `first` (`None`: it is the
    /// first). `Ok` gives the transaction's rule. RFC 5321 §4.5.3.1.10: the client sends a
    /// recipient refused `452` again in a transaction of its own.
    pub fn admit_to_transaction(
        &self,
        first: Option<Option<usize>>,
        address: &str,
    ) -> Result<Option<usize>, Refusal> {
        let mailbox = Target::new(address, self).mailbox;
        let rule = self.inbox.rule_for(&mailbox);
        match first {
            Some(first) if first != rule => Err(Refusal::OtherRule),
            _ => Ok(rule),
        }
    }

    /// Before an envelope to `recipient` (a DID) is stored, by either carrier: within
    /// `reputation.rate_limit` envelopes an hour, each counted once by its SHA-256 `hash`
    /// (a repeat of one stored is not counted again). Counted when it is taken.
    pub async fn admit_envelope(&self, recipient: &str, hash: &str) -> Result<(), Refusal> {
        match &self.reputation {
            Some(reputation) if !reputation.inbox_allows(recipient, hash, self.now()).await => {
                Err(Refusal::TooMany)
            }
            _ => Ok(()),
        }
    }

    /// The DID whose mailbox here `mailbox` (folded, as `Target::mailbox`) is: a DID mailbox
    /// at one of `inbox.hosts`. Its envelopes are kept for its devices too.
    pub fn did_of_mailbox(&self, mailbox: &str) -> Option<String> {
        DidAddress::parse(mailbox)
            .filter(|a| self.router.is_ours(&a.domain))
            .map(|a| a.did)
    }

    /// The devices of `did` an envelope for it is kept for, one copy each (the HTTPS inbox,
    /// once consent is given): none when the DID publishes no current device.
    pub async fn devices_of(&self, did: &str) -> Result<Vec<String>, Refusal> {
        self.router
            .devices_of(did, self.now())
            .await
            .map_err(Refusal::Unavailable)
    }
}

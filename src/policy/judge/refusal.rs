//! Why a recipient, or a message for it, is not taken: the judge's answer every transport
//! says in its own words (`Refusal::reply` for SMTP, LMTP and the milter; an HTTP status for
//! the HTTPS inbox).

use crate::format::reply::{Enhanced, Reply};

/// Why a recipient, or a message for it, is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A DID mailbox whose DID does not consent to it here (no document or `at.atsms.inbox`
    /// record naming it, or no device of its own an envelope is encrypted to): no mailbox,
    /// as for an unknown user. Never dry-run.
    NoMailbox,
    /// Whether the DID consents cannot be known now (its document or PDS unavailable).
    /// Never dry-run.
    Unavailable(String),
    /// Under another inbox rule than the transaction's first recipient.
    OtherRule,
    /// More envelopes to this DID than `reputation.rate_limit` an hour (the HTTPS inbox).
    /// Never dry-run.
    TooMany,
    /// What policy asks — a verification result's action, an inbox rule, reputation —
    /// `reject` or `tempfail`, in its words. The only refusal a dry run does not carry out.
    Policy(Reply),
}

impl Refusal {
    /// As SMTP, LMTP and the milter say it.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::NoMailbox => Reply::new(
                550,
                Enhanced(5, 1, 1),
                "no mailbox here: the DID names no mailbox at this host (DID document or \
                 at.atsms.inbox record), or no device of its own this message is encrypted to",
            ),
            Refusal::Unavailable(why) => Reply::new(
                451,
                Enhanced(4, 4, 3),
                format!("DID document or PDS unavailable ({why}), try again later"),
            ),
            Refusal::OtherRule => Reply::new(
                452,
                Enhanced(4, 5, 3),
                "recipient under another inbox rule, send it separately",
            ),
            Refusal::TooMany => Reply::new(
                450,
                Enhanced(4, 7, 1),
                "too many envelopes for this DID, try again later",
            ),
            Refusal::Policy(reply) => reply.clone(),
        }
    }
}

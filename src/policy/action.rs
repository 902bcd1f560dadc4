//! What is done with a message (docs/configuration.md, "Actions"), and which action is the
//! stricter: the judge takes the strictest of all that ask. A leaf.

use serde::{Deserialize, Serialize};

/// What to do with a message, by result (docs/configuration.md, "Actions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Add the header field and deliver.
    Accept,
    /// Milter: 550 5.7.1. LMTP: 550 5.7.1 for that recipient.
    Reject,
    /// 451 4.7.1.
    Tempfail,
    /// Milter: Postfix's hold queue. LMTP: as `junk`.
    Quarantine,
    /// LMTP: into the `.Junk` folder. Milter: as `accept` (the delivery agent files it).
    Junk,
    /// Milter: accept and drop. LMTP: as `junk`, never dropped.
    Discard,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Tempfail => "tempfail",
            Action::Quarantine => "quarantine",
            Action::Junk => "junk",
            Action::Discard => "discard",
        }
    }

    /// How strict an action is, for "the strictest action wins": accept < junk < quarantine
    /// < discard < tempfail < reject.
    pub fn strictness(self) -> u8 {
        match self {
            Action::Accept => 0,
            Action::Junk => 1,
            Action::Quarantine => 2,
            Action::Discard => 3,
            Action::Tempfail => 4,
            Action::Reject => 5,
        }
    }
}

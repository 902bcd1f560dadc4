//! The AT-SMS envelope v1 (docs/envelope-v1.md): the `AT-SMS-Signature` field, its JWS token,
//! relaxed canonicalization and signing. Pure: no network, no transport, no configuration.

pub mod canon;
pub mod fields;
pub mod sign;
pub mod tags;
pub mod token;

use std::fmt;

pub use canon::{BodyHasher, HeaderField, header_hash};
pub use fields::{FieldError, Mailbox, check_fields};
pub use token::{Claims, Kid, Token};

/// The header field this format lives in.
pub const FIELD_NAME: &str = "AT-SMS-Signature";

/// The results of section 8 (and RFC 8601's vocabulary for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    Permerror,
    Temperror,
    Policy,
    None,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::Permerror => "permerror",
            AuthResult::Temperror => "temperror",
            AuthResult::Policy => "policy",
            AuthResult::None => "none",
        }
    }
}

impl fmt::Display for AuthResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the `from` claim names `mailbox` (section 3.3): the local part exactly as written
/// (a quoted one with its quotes), the domain case-insensitively.
pub fn claim_names(claim: &str, mailbox: &Mailbox) -> bool {
    match claim.rsplit_once('@') {
        Some((local, domain)) => {
            local == mailbox.local && domain.eq_ignore_ascii_case(&mailbox.domain)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_comparison() {
        let m = fields::parse_mailbox(b" <alice@Example.com>").unwrap();
        assert!(claim_names("alice@example.COM", &m));
        assert!(!claim_names("Alice@example.com", &m));
        let quoted = fields::parse_mailbox(b" <\"a b\"@x.y>").unwrap();
        assert!(claim_names("\"a b\"@x.y", &quoted));
        assert!(!claim_names("a b@x.y", &quoted));
    }
}

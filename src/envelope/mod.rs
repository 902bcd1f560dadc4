//! The AT-SMS envelope v1 (docs/envelope-v1.md): the `AT-SMS-Signature` field, its JWS token,
//! relaxed canonicalization and signing. Pure: no network, no transport, no configuration.

pub mod canon;
pub mod sign;
pub mod tags;
pub mod token;

use std::fmt;

pub use canon::{BodyHasher, HeaderField, header_hash};
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

/// The addr-spec of the message's single `From:` mailbox (step 10 of section 8), or why
/// there is not exactly one.
pub fn single_from_address(headers: &[HeaderField]) -> Result<String, &'static str> {
    let mut from_fields = headers.iter().filter(|f| f.is("from"));
    let (Some(field), None) = (from_fields.next(), from_fields.next()) else {
        return Err("message does not have exactly one From field");
    };
    let mut raw = Vec::with_capacity(field.value.len() + 10);
    raw.extend_from_slice(b"From:");
    raw.extend_from_slice(&field.value);
    raw.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::new().parse_headers(&raw);
    let address = match parsed.as_ref().and_then(|m| m.from()) {
        Some(mail_parser::Address::List(list)) if list.len() == 1 => list[0].address.as_deref(),
        _ => None,
    };
    match address {
        Some(address) if address.contains('@') => Ok(address.to_string()),
        _ => Err("From field does not hold exactly one mailbox"),
    }
}

/// Compares two addr-specs as section 3.3 does: exact local part, case-insensitive domain.
pub fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((local_a, domain_a)), Some((local_b, domain_b))) => {
            local_a == local_b
                && domain_a
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(domain_b.trim_end_matches('.'))
        }
        _ => false,
    }
}

/// An addr-spec with its domain lower-cased, as the `from` claim carries it.
pub fn normalize_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_address_rules() {
        let one = [HeaderField::new("From", " Alice <alice@Example.COM>")];
        assert_eq!(single_from_address(&one).unwrap(), "alice@Example.COM");
        let folded = [HeaderField::new(
            "From",
            " \"Alice\"\n\t<alice@example.com>",
        )];
        assert_eq!(single_from_address(&folded).unwrap(), "alice@example.com");
        let two = [
            HeaderField::new("From", " a@b.c"),
            HeaderField::new("FROM", " a@b.c"),
        ];
        assert!(single_from_address(&two).is_err());
        let list = [HeaderField::new("From", " a@b.c, d@e.f")];
        assert!(single_from_address(&list).is_err());
        assert!(single_from_address(&[HeaderField::new("From", " nobody")]).is_err());
        assert!(single_from_address(&[]).is_err());
    }

    #[test]
    fn address_comparison() {
        assert!(same_address("alice@Example.com", "alice@example.COM"));
        assert!(!same_address("Alice@example.com", "alice@example.com"));
    }
}

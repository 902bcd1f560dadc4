//! Envelope addresses as mailboxes: how a recipient address is folded into the mailbox it
//! names (one rule for Maildir paths, replay detection and routing), and DID mailbox local
//! parts (spec section 9). Pure; a leaf beside `syntax`.
//!
//! Folding is ASCII only: `K` and `k` are one mailbox, but the Kelvin sign (U+212A) is not
//! `k` — Unicode case folding would let one address reach another's mailbox.

use crate::format::syntax;

/// An envelope address read as a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    /// The local part without detail, ASCII lower-case, `did!…` written `did.…`.
    pub user: String,
    /// What followed the recipient delimiter, as given (`Folder` of `user+Folder`).
    pub detail: Option<String>,
    /// The domain, ASCII lower-case, without a trailing dot.
    pub domain: String,
}

impl Folded {
    /// `user@domain`: the key a mailbox is known by.
    pub fn mailbox(&self) -> String {
        format!("{}@{}", self.user, self.domain)
    }

    /// The DID whose mailbox this is, if the local part is a DID mailbox local part.
    pub fn did(&self) -> Option<String> {
        did_of_local_part(&self.user)
    }
}

/// Characters a DID mailbox local part may hold (the DID's, with `:` written `.`).
fn is_did_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '-' | '!')
}

/// Folds `address` (`local@domain`, as given in RCPT) into its mailbox; `delimiter` is the
/// recipient delimiter (`lmtp.recipient_delimiter`; empty: no details). None when it is not
/// `local@domain` with both parts non-empty and free of control characters.
pub fn fold(address: &str, delimiter: &str) -> Option<Folded> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || address.chars().any(char::is_control) {
        return None;
    }
    // Bytes, never `&local[..4]`: a local part off the wire may hold a multi-byte character
    // across that boundary (`abcé@host`), and slicing a str there panics.
    let is_did = local.len() > 4
        && matches!(local.as_bytes().get(..4), Some(p)
            if p.eq_ignore_ascii_case(b"did!") || p.eq_ignore_ascii_case(b"did."));
    let (user, detail) = match delimiter.chars().next() {
        // A DID mailbox is split only at a delimiter no DID can contain.
        Some(d) if is_did && is_did_char(d) => (local, None),
        Some(d) => match local.split_once(d) {
            Some((user, detail)) if !user.is_empty() => (user, Some(detail.to_string())),
            _ => (local, None),
        },
        None => (local, None),
    };
    let mut user = user.to_ascii_lowercase();
    if is_did {
        user = user.replace('!', ".");
    }
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    Some(Folded {
        user,
        detail,
        domain,
    })
}

/// The DID a mailbox local part names (`did.plc.<id>`, `did.web.<host>`, or with `!`;
/// spec section 9): `did:` + method + `:` + the rest, where the method never contains a dot.
/// Only did:plc and did:web with a host (no port) have mailboxes.
pub fn did_of_local_part(local: &str) -> Option<String> {
    let local = local.to_ascii_lowercase().replace(['!', '#'], ".");
    let rest = local.strip_prefix("did.")?;
    let (method, id) = rest.split_once('.')?;
    let did = format!("did:{method}:{id}");
    match syntax::supported_did_method(&did)? {
        syntax::DidMethod::Plc => Some(did),
        // did:web:localhost%3APORT has no mailbox (interfaces: a port gives none).
        syntax::DidMethod::Web if !id.contains('%') => Some(did),
        syntax::DidMethod::Web => None,
    }
}

/// The mailbox local part of a DID: `:` written `.`, lower-case (spec section 9).
pub fn local_part_of_did(did: &str) -> String {
    did.replace(':', ".").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_is_ascii_and_strips_details() {
        let f = fold("Bob+Lists@MX.Example.net.", "+").unwrap();
        assert_eq!(f.mailbox(), "bob@mx.example.net");
        assert_eq!(f.detail.as_deref(), Some("Lists"));
        assert_eq!(
            fold("bob+x+y@x", "+").unwrap().detail.as_deref(),
            Some("x+y")
        );
        assert_eq!(fold("+x@y", "+").unwrap().user, "+x");
        assert_eq!(fold("bob+x@y", "").unwrap().user, "bob+x");
        // The Kelvin sign is not k: no Unicode folding onto another mailbox.
        assert_eq!(fold("\u{212A}evin@x", "+").unwrap().user, "\u{212A}evin");
        assert_ne!(fold("\u{212A}evin@x", "+"), fold("kevin@x", "+"));
        for bad in ["nodomain", "@x", "a@", "a\r@x", "a@x\0"] {
            assert_eq!(fold(bad, "+"), None, "{bad:?}");
        }
    }

    #[test]
    fn a_multi_byte_character_anywhere_never_panics() {
        // A character across the fourth byte once panicked the whole LMTP session.
        for address in [
            "abc\u{e9}@host",
            "did\u{e9}x@host",
            "\u{e9}\u{e9}\u{e9}@h",
            "d\u{1F600}@h",
            "did.\u{e9}@h",
        ] {
            let folded = fold(address, "+").unwrap();
            assert_eq!(folded.did(), None, "{address}");
        }
        assert_eq!(fold("DID!plc!\u{e9}x@h", "\u{e9}").unwrap().did(), None);
    }

    #[test]
    fn did_mailboxes_fold_to_the_dotted_form() {
        let bang = fold("did!plc!OFURDHFYHJHGOMVFYGXERGEP+x@mx.example.net", "+").unwrap();
        assert_eq!(bang.user, "did.plc.ofurdhfyhjhgomvfygxergep");
        assert_eq!(bang.detail.as_deref(), Some("x"));
        assert_eq!(
            bang.did().as_deref(),
            Some("did:plc:ofurdhfyhjhgomvfygxergep")
        );
        // A delimiter a DID may contain does not split a DID mailbox.
        let web = fold("did.web.my-host.example@mx", "-").unwrap();
        assert_eq!(web.did().as_deref(), Some("did:web:my-host.example"));
        assert_eq!(fold("a-b@mx", "-").unwrap().user, "a");
    }

    #[test]
    fn did_local_parts() {
        assert_eq!(
            did_of_local_part("did.plc.ofurdhfyhjhgomvfygxergep").as_deref(),
            Some("did:plc:ofurdhfyhjhgomvfygxergep")
        );
        assert_eq!(
            did_of_local_part("DID!web!Example.COM").as_deref(),
            Some("did:web:example.com")
        );
        for bad in [
            "did.plc.short",
            "did.web.localhost%3a8080",
            "did.key.zq3sh",
            "alice",
            "did.plc",
        ] {
            assert_eq!(did_of_local_part(bad), None, "{bad}");
        }
        assert_eq!(
            local_part_of_did("did:plc:ofurdhfyhjhgomvfygxergep"),
            "did.plc.ofurdhfyhjhgomvfygxergep"
        );
    }
}

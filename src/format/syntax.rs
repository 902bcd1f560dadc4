//! atproto identifier syntax: DIDs and handles.
//!
//! The rules follow the atproto DID and handle specifications (atproto.com/specs/did,
//! atproto.com/specs/handle). They are checked before anything touches the network, so a
//! malformed identifier never turns into a lookup.

/// Longest DID the atproto DID spec allows.
const MAX_DID_LEN: usize = 2048;
/// Longest handle: a DNS name, less room for the `_atproto.` prefix of the TXT lookup.
const MAX_HANDLE_LEN: usize = 253;

/// Generic atproto DID syntax: `did:<method>:<identifier>`, ASCII only, case-sensitive.
pub fn is_valid_did(did: &str) -> bool {
    if did.len() > MAX_DID_LEN || !did.is_ascii() {
        return false;
    }
    let Some(rest) = did.strip_prefix("did:") else {
        return false;
    };
    let Some((method, identifier)) = rest.split_once(':') else {
        return false;
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return false;
    }
    if identifier.is_empty() || identifier.ends_with(':') || identifier.ends_with('%') {
        return false;
    }
    identifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
}

/// The two DID methods atproto (and so AT-SMS) accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DidMethod {
    Plc,
    Web,
}

/// A DID that AT-SMS can use as `iss`: valid syntax, and either `did:plc` with its 24-character
/// base32 identifier or `did:web` naming a host (a port only for `localhost`, spec section 6).
pub fn supported_did_method(did: &str) -> Option<DidMethod> {
    if !is_valid_did(did) {
        return None;
    }
    if let Some(id) = did.strip_prefix("did:plc:") {
        let base32 = id.len() == 24 && id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'));
        return base32.then_some(DidMethod::Plc);
    }
    if let Some(id) = did.strip_prefix("did:web:") {
        return web_did_host(id).map(|_| DidMethod::Web);
    }
    None
}

/// The host (and optional port) a `did:web` identifier names: `example.com`, or
/// `localhost:PORT` from `localhost%3APORT`. Path-based did:web (`host:path`) is not atproto.
pub fn web_did_host(identifier: &str) -> Option<(String, Option<u16>)> {
    if identifier.contains(':') {
        return None;
    }
    if let Some((host, port)) = identifier
        .split_once("%3A")
        .or_else(|| identifier.split_once("%3a"))
    {
        if host != "localhost" || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        return Some((host.to_string(), Some(port)));
    }
    if identifier.contains('%') || !is_valid_handle(identifier) {
        return None;
    }
    Some((identifier.to_ascii_lowercase(), None))
}

/// Handle syntax: a DNS name of at least two labels, the last not starting with a digit.
pub fn is_valid_handle(handle: &str) -> bool {
    is_domain_name(handle)
        && handle.contains('.')
        && handle
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.as_bytes()[0].is_ascii_alphabetic())
}

/// An ASCII host name (RFC 1123 §2.1 LDH labels of 1 to 63 characters, at most 253 in all);
/// one label is enough (`localhost`, in test setups).
pub fn is_domain_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    !name.is_empty() && name.len() <= MAX_HANDLE_LEN && name.split('.').all(label_ok)
}

/// A domain in the form AT-SMS compares domains (spec section 7): A-label (UTS #46),
/// lower-case, without a trailing dot; none when it is not a host name.
pub fn ascii_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let ascii = idna::domain_to_ascii(domain).ok()?;
    is_domain_name(&ascii).then_some(ascii)
}

/// A domain mail may be routed to on a DID document's word: a host name of at least two
/// labels whose last label is not all digits (RFC 3696 §2: `127.0.0.1` is no domain), not
/// `localhost` nor below it (RFC 6761 §6.3; `localhost.localdomain` and Postfix's
/// `localhost.$mydomain` included). A-label, lower-case, no trailing dot. None for single
/// labels, address literals and everything else: an MTA treats those as its own.
pub fn routable_domain(domain: &str) -> Option<String> {
    let domain = ascii_domain(domain)?;
    let (first, last) = (domain.split('.').next()?, domain.rsplit('.').next()?);
    let local = first == "localhost" || last == "localhost";
    (domain.contains('.') && !last.bytes().all(|b| b.is_ascii_digit()) && !local).then_some(domain)
}

/// RFC 5321 `atext` (§4.1.2, RFC 5322 §3.2.3) without the characters MTAs give a meaning of
/// their own in a local part: `!` and `%` (source routes), `/` and `|` (files and pipes).
fn is_plain_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"#$&'*+-=?^_`{}~".contains(&b)
}

/// One RFC 5321 mailbox (§4.1.2 `Local-part "@" Domain`) of the plainest kind: a dot-string
/// local part of at most 64 octets (§4.5.3.1.1) and a routable domain. No quoted local part,
/// no address literal, no list, display name, comment or space: a `mailto:` value a DID
/// document gives is handed to an MTA as an address, and anything it could read as several
/// addresses, a file, a pipe or a route is refused. The domain comes back as an A-label.
pub fn plain_mailbox(text: &str) -> Option<String> {
    let (local, domain) = text.rsplit_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_plain_atext));
    let domain = routable_domain(domain)?;
    (local_ok && local.len() + 1 + domain.len() <= 254).then(|| format!("{local}@{domain}"))
}

/// Top-level domains that pass handle syntax but must never resolve (atproto handle spec):
/// they name nothing on the public Internet.
const RESERVED_TLDS: &[&str] = &[
    "alt",
    "arpa",
    "example",
    "internal",
    "invalid",
    "local",
    "localhost",
    "onion",
];

/// Whether a syntactically valid handle may be resolved. `.test` only in test setups.
pub fn handle_may_resolve(handle: &str, test_setup: bool) -> bool {
    let tld = handle
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if tld == "test" {
        return test_setup;
    }
    !RESERVED_TLDS.contains(&tld.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plc_and_web_methods() {
        assert_eq!(
            supported_did_method("did:plc:ofurdhfyhjhgomvfygxergep"),
            Some(DidMethod::Plc)
        );
        assert_eq!(
            supported_did_method("did:plc:ofurdhfyhjhgomvfygxerge"),
            None
        );
        assert_eq!(
            supported_did_method("did:plc:OFURDHFYHJHGOMVFYGXERGEP"),
            None
        );
        assert_eq!(
            supported_did_method("did:web:example.com"),
            Some(DidMethod::Web)
        );
        assert_eq!(
            supported_did_method("did:web:localhost%3A8080"),
            Some(DidMethod::Web)
        );
        assert_eq!(supported_did_method("did:web:example.com%3A8080"), None);
        assert_eq!(supported_did_method("did:web:example.com:u:alice"), None);
        assert_eq!(supported_did_method("did:key:zQ3sh"), None);
    }

    #[test]
    fn routable_domains_are_never_an_mta_s_own() {
        assert_eq!(
            routable_domain("MX.Example.NET.").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            routable_domain("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        for local in [
            "localhost",
            "LOCALHOST.",
            "localhost.localdomain",
            "localhost.example.net",
            "a.localhost",
            "mailhost",
            "127.0.0.1",
            "[127.0.0.1]",
            "[ipv6:::1]",
            "",
            "a..b",
        ] {
            assert_eq!(routable_domain(local), None, "{local}");
        }
    }

    #[test]
    fn a_mailto_value_is_one_plain_mailbox() {
        assert_eq!(
            plain_mailbox("Alice.Smith+tag@Example.ORG").as_deref(),
            Some("Alice.Smith+tag@example.org")
        );
        for bad in [
            "a@b.example, c@d.example",
            "a@b.example c@d.example",
            "Alice <a@b.example>",
            "a@b.example (comment)",
            "\"a b\"@b.example",
            ":include:/etc/passwd",
            "|/bin/sh@b.example",
            "/tmp/x@b.example",
            "a!b@c.example",
            "a%b@c.example",
            "a@b@c.example",
            "root@localhost",
            "root@mailhost",
            "root@[127.0.0.1]",
            "root@127.0.0.1",
            ".a@b.example",
            "a.@b.example",
            "a..b@c.example",
            "@b.example",
            "nobody",
            "a\r\nb@c.example",
            "\u{e9}@b.example",
        ] {
            assert_eq!(plain_mailbox(bad), None, "{bad:?}");
        }
        assert_eq!(
            plain_mailbox(&format!("{}@b.example", "a".repeat(65))),
            None
        );
    }

    #[test]
    fn reserved_tlds_do_not_resolve() {
        assert!(handle_may_resolve("alice.example.com", false));
        assert!(!handle_may_resolve("alice.onion", false));
        assert!(!handle_may_resolve("alice.test", false));
        assert!(handle_may_resolve("alice.test", true));
    }
}

//! Our `Authentication-Results` field (RFC 8601), written here and nowhere else, and the
//! reading of incoming ones' authserv-ids.
//!
//! Written so that the common independent parsers read every property (spec section 8, as
//! amended): `reason` right after the result; `header.d`, the one quoted property, last;
//! `header.from` the address only when its local part is a dot-atom, else the domain alone;
//! reasons without `"` or `\`.

use crate::format::envelope::{AuthResult, Mailbox};
use crate::format::syntax::ascii_domain;
use crate::verification::verify::{SignatureVerdict, Verdict};

pub const FIELD_NAME: &str = "Authentication-Results";
/// The method name registered by the spec (section 8).
pub const METHOD: &str = "atsms";

/// A `policy.*` property our rules add (inbox rules, reputation, AT-SMS client messages):
/// `policy.<name>=<value>`, both tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    pub value: String,
}

impl Property {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Property {
        Property {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// RFC 2045 `token` characters: what a property value may hold unquoted.
fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

/// A reason as a quoted-string holding no `"`, `\` or control character (spec section 8):
/// everything else of printable ASCII is kept, at most 120 characters.
fn reason(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .filter(|c| *c != '"' && *c != '\\')
        .take(120)
        .collect();
    format!("\"{kept}\"")
}

/// `header.from`: the address when its local part is an ASCII dot-atom, else the domain alone
/// (as DMARC writes it; spec section 8: no common parser reads a quoted local part). The
/// domain as written when it is ASCII (`MX.example.net` stays so: a reader comparing with
/// the From field finds it), else in A-label form. None when even the domain cannot be
/// written.
fn header_from(from: &Mailbox) -> Option<String> {
    let checked = ascii_domain(&from.domain)?;
    let written = from.domain.strip_suffix('.').unwrap_or(&from.domain);
    let domain = if written.eq_ignore_ascii_case(&checked) {
        written.to_string()
    } else {
        checked
    };
    let dot_atom = !from.local.is_empty()
        && from.local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
        });
    Some(if dot_atom {
        format!("{}@{domain}", from.local)
    } else {
        domain
    })
}

/// One resinfo's parts, in the order RFC 8601 and the common parsers want them.
fn resinfo(sig: &SignatureVerdict, extra: &[Property]) -> Vec<String> {
    let mut parts = vec![format!("{METHOD}={}", sig.result)];
    if sig.result != AuthResult::Pass
        && let Some(why) = &sig.reason
    {
        parts.push(format!("reason={}", reason(&why.to_string())));
    }
    if let Some(passed) = &sig.passed {
        if let Some(from) = header_from(&passed.from) {
            parts.push(format!("header.from={from}"));
        }
        if let Some(handle) = passed
            .handle
            .as_deref()
            .filter(|h| h.chars().all(is_token_char))
        {
            parts.push(format!("header.handle={handle}"));
        }
        parts.push(format!(
            "policy.aligned={}",
            if passed.aligned { "yes" } else { "no" }
        ));
    }
    push_extra(&mut parts, extra);
    // A DID never holds '"' or '\' (syntax::is_valid_did): quoting needs no escapes.
    if let Some(did) = &sig.did {
        parts.push(format!("header.d=\"{did}\""));
    }
    parts
}

/// The resinfo of the X.509 floor (an AT-SMS client's CMS SignedData, `floor`): our method
/// with its result, the reason when it did not pass, `policy.atsms-envelope=cms-signed`, and the
/// DID of the device certificate as `header.d`, last.
pub fn floor_resinfo(floor: &crate::verification::atsms_parts::FloorVerdict) -> String {
    let mut parts = vec![format!("{METHOD}={}", floor.result)];
    if floor.result != AuthResult::Pass
        && let Some(why) = &floor.reason
    {
        parts.push(format!("reason={}", reason(why)));
    }
    parts.push("policy.atsms-envelope=cms-signed".into());
    if let Some(did) = floor
        .did
        .as_deref()
        .filter(|d| crate::format::syntax::is_valid_did(d))
    {
        parts.push(format!("header.d=\"{did}\""));
    }
    parts.join(" ")
}

fn push_extra(parts: &mut Vec<String>, extra: &[Property]) {
    for p in extra {
        if p.name.chars().all(is_token_char) && p.value.chars().all(is_token_char) {
            parts.push(format!("policy.{}={}", p.name, p.value));
        }
    }
}

/// The field's value (without the name), one resinfo per signature on its own folded line.
/// `extra` properties go on the reported signature's resinfo (the best pass, else the
/// first; or the `none` result). `newline` is what folds: `"\n"` for milter and files,
/// `"\r\n"` on the wire.
pub fn format_value(
    authserv_id: &str,
    verdict: &Verdict,
    extra: &[Property],
    newline: &str,
) -> String {
    let mut out = format!(" {authserv_id};");
    if verdict.signatures.is_empty() {
        let mut parts = vec![format!("{METHOD}={}", AuthResult::None)];
        push_extra(&mut parts, extra);
        out.push(' ');
        out.push_str(&parts.join(" "));
        return out;
    }
    let reported = verdict.reported_index();
    for (index, sig) in verdict.signatures.iter().enumerate() {
        if index > 0 {
            out.push(';');
        }
        let here: &[Property] = if index == reported { extra } else { &[] };
        let parts = resinfo(sig, here);
        // Fold before a part that would take the line past 78 columns (RFC 5322 §2.1.1).
        let mut column = 8;
        out.push_str(newline);
        out.push('\t');
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                if column + 1 + part.len() > 78 {
                    out.push_str(newline);
                    out.push('\t');
                    column = 8;
                } else {
                    out.push(' ');
                    column += 1;
                }
            }
            out.push_str(part);
            column += part.len();
        }
    }
    out
}

/// Is `authserv_id` one we may write (RFC 8601 §2.2 `value`, as we write it: a token)?
pub fn valid_authserv_id(authserv_id: &str) -> bool {
    !authserv_id.is_empty() && authserv_id.len() <= 255 && authserv_id.chars().all(is_token_char)
}

/// A reader of RFC 5322 CFWS and RFC 2045 values over a field value.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// Skips whitespace, folds and comments (nested, with quoted-pairs: `(a\)b)` is one
    /// comment). False when a comment does not end.
    fn cfws(&mut self) -> bool {
        loop {
            match self.bytes.get(self.pos) {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'(') => {
                    let mut depth = 0usize;
                    loop {
                        match self.bytes.get(self.pos) {
                            None => return false,
                            Some(b'\\') => self.pos += 2,
                            Some(b'(') => {
                                depth += 1;
                                self.pos += 1;
                            }
                            Some(b')') => {
                                depth -= 1;
                                self.pos += 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                }
                _ => return true,
            }
        }
    }

    /// A quoted-string, decoded (quoted-pairs unescaped, folds removed).
    fn quoted(&mut self) -> Option<Vec<u8>> {
        self.pos += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match *self.bytes.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push(*self.bytes.get(self.pos + 1)?);
                    self.pos += 2;
                }
                b'\r' | b'\n' => self.pos += 1,
                b => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// An RFC 2045 token.
    fn token(&mut self) -> Vec<u8> {
        let start = self.pos;
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(b))
        {
            self.pos += 1;
        }
        self.bytes[start..self.pos].to_vec()
    }
}

/// The authserv-id an incoming `Authentication-Results` value names (RFC 8601 §2.2:
/// `[CFWS] authserv-id`, `authserv-id = value`), read by the grammar: comments skipped, a
/// quoted string decoded, a final dot dropped (`mx.example.net.` is `mx.example.net`).
/// None when it cannot be read; such a field is treated as claiming to be ours.
pub fn authserv_id(value: &[u8]) -> Option<String> {
    read_authserv_id(value).map(|(id, _)| id)
}

/// The authserv-id, and whether what follows it is what RFC 8601 §2.2 allows there:
/// `[CFWS authres-version]`, then `[CFWS] ";"`.
fn read_authserv_id(value: &[u8]) -> Option<(String, bool)> {
    let mut r = Reader {
        bytes: value,
        pos: 0,
    };
    if !r.cfws() {
        return None;
    }
    let id = match r.bytes.get(r.pos)? {
        b'"' => r.quoted()?,
        _ => r.token(),
    };
    let id = String::from_utf8(id).ok()?;
    let id = id.strip_suffix('.').unwrap_or(&id).trim().to_string();
    if id.is_empty() {
        return None;
    }
    let mut well_formed = r.cfws();
    if well_formed && r.bytes.get(r.pos).is_some_and(u8::is_ascii_digit) {
        while r.bytes.get(r.pos).is_some_and(u8::is_ascii_digit) {
            r.pos += 1;
        }
        well_formed = r.cfws();
    }
    Some((id, well_formed && r.bytes.get(r.pos) == Some(&b';')))
}

/// Whether an incoming field value claims our authserv-id — or cannot be read, or holds
/// anything but CFWS and a version between the id and its `;` (`mx.(c)test`, `mx"."test`,
/// `"mx".test`, `mx\.test`: readers disagree on what id those name, and one of them may
/// read ours). Such fields are removed (RFC 8601 §5) on every path.
pub fn claims_ours(value: &[u8], ours: &str) -> bool {
    match read_authserv_id(value) {
        Some((id, true)) => id.eq_ignore_ascii_case(ours),
        _ => true,
    }
}

/// Whether a field's value hides an `Authentication-Results` field claiming `ours` after a
/// line break that is not a fold (a bare CR, or CR/LF not followed by WSP): readers that
/// split lines there see a field of its own, which must go like any forged one.
pub fn hides_ours(value: &[u8], ours: &str) -> bool {
    let mut i = 0;
    while i < value.len() {
        if matches!(value[i], b'\r' | b'\n') {
            let mut next = i + 1;
            if value[i] == b'\r' && value.get(next) == Some(&b'\n') {
                next += 1;
            }
            let fold = matches!(value.get(next), Some(b' ' | b'\t'));
            if !fold {
                let rest = &value[next..];
                let name = FIELD_NAME.len();
                if rest.len() > name && rest[..name].eq_ignore_ascii_case(FIELD_NAME.as_bytes()) {
                    let after = rest[name..]
                        .iter()
                        .position(|b| *b != b' ' && *b != b'\t')
                        .map(|p| &rest[name + p..]);
                    if let Some(after) = after.and_then(|a| a.strip_prefix(b":"))
                        && claims_ours(after, ours)
                    {
                        return true;
                    }
                }
            }
            i = next;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verification::verify::Reason;

    fn pass(from: &str, handle: Option<&str>, aligned: bool) -> SignatureVerdict {
        crate::verification::verify::testing::passing(from, handle, aligned, None)
    }

    #[test]
    fn formats_pass_and_fail_with_header_d_last() {
        let fail = SignatureVerdict {
            result: AuthResult::Fail,
            did: Some("did:plc:hxdv4c2etoo2mbhg4alzhnno".into()),
            kid: None,
            reason: Some(Reason::HeaderHash),
            stale: false,
            passed: None,
        };
        let verdict = Verdict {
            signatures: vec![
                fail,
                pass("alice@alice.example.com", Some("alice.example.com"), true),
            ],
        };
        let value = format_value("mx.example.net", &verdict, &[], "\n");
        assert_eq!(
            value,
            " mx.example.net;\n\tatsms=fail reason=\"header hash mismatch\"\n\theader.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\";\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\""
        );
        assert_eq!(
            format_value("mx", &Verdict::default(), &[], "\n"),
            " mx; atsms=none"
        );
        assert_eq!(
            format_value(
                "mx",
                &Verdict::default(),
                &[Property::new("atsms-envelope", "yes")],
                "\n"
            ),
            " mx; atsms=none policy.atsms-envelope=yes"
        );
    }

    #[test]
    fn at_most_one_quoted_value_and_clean_reasons() {
        let quoted_local = pass("\"alice smith\"@Alice.Example.com", None, false);
        let value = format_value(
            "mx",
            &Verdict {
                signatures: vec![quoted_local],
            },
            &[Property::new("atsms-label", "spam")],
            "\n",
        );
        assert!(
            value.contains("header.from=Alice.Example.com policy.aligned=no"),
            "{value}"
        );
        assert!(
            value.contains("policy.atsms-label=spam header.d="),
            "{value}"
        );
        assert_eq!(value.matches('"').count(), 2, "{value}");
        let weird = SignatureVerdict {
            result: AuthResult::Permerror,
            did: None,
            kid: None,
            reason: Some(Reason::Token(
                crate::format::envelope::token::TokenError::AlgUnsupported("\"no\\ne\"".into()),
            )),
            stale: false,
            passed: None,
        };
        let value = format_value(
            "mx",
            &Verdict {
                signatures: vec![weird],
            },
            &[],
            "\n",
        );
        assert!(
            value.ends_with("atsms=permerror reason=\"unsupported alg none\""),
            "{value}"
        );
    }

    #[test]
    fn reads_authserv_id_by_the_grammar() {
        for (value, id) in [
            (
                &b" mx.example.net (comment); atsms=pass"[..],
                "mx.example.net",
            ),
            (b" mx.example.net 1; none", "mx.example.net"),
            (b" (a\\)b) mx.example.net; atsms=pass", "mx.example.net"),
            (b" \"mx\\.example.net\"; atsms=pass", "mx.example.net"),
            (b" mx.example.net.; atsms=pass", "mx.example.net"),
            (b"\n\t(x (nested) y)\n\tMX.example.net;", "MX.example.net"),
            (b"mx.example.net;", "mx.example.net"),
        ] {
            assert_eq!(authserv_id(value).as_deref(), Some(id), "{value:?}");
        }
        for value in [
            &b"  "[..],
            b" (unterminated mx.example.net;",
            b" ; x",
            b" \xff;",
        ] {
            assert_eq!(authserv_id(value), None, "{value:?}");
        }
        assert!(claims_ours(b" (a\\)b) MX.example.net; x", "mx.example.net"));
        assert!(claims_ours(b" \"mx\\.example.net\"", "mx.example.net"));
        assert!(!claims_ours(b" other.example; x", "mx.example.net"));
        assert!(!claims_ours(
            b" other.example 1 (c); none",
            "mx.example.net"
        ));
        // Anything but CFWS and a version between the id and its `;` is taken for ours.
        for odd in [
            &b" mx.(c)test; atsms=pass"[..],
            b" mx\".\"test; atsms=pass",
            b" \"mx\".test; atsms=pass",
            b" mx\\.test; atsms=pass",
            b" other.example x; atsms=pass",
            b" other.example",
            b" other.example 1 2; none",
        ] {
            assert!(claims_ours(odd, "mx.test"), "{odd:?}");
        }
    }

    #[test]
    fn finds_fields_hidden_after_bare_line_breaks() {
        let ours = "mx.example.net";
        assert!(hides_ours(
            b" x\rAuthentication-Results: mx.example.net; atsms=pass",
            ours
        ));
        assert!(hides_ours(
            b" x\nauthentication-results : (c) mx.example.net.;",
            ours
        ));
        assert!(!hides_ours(
            b" x\n\tAuthentication-Results: mx.example.net;",
            ours
        ));
        assert!(!hides_ours(
            b" x\rAuthentication-Results: other.example;",
            ours
        ));
        assert!(!hides_ours(b" plain value", ours));
    }

    #[test]
    fn authserv_ids_we_may_write() {
        assert!(valid_authserv_id("mx.example.net"));
        for bad in ["", "a b", "mx;x", "a\"b", "mx\n", "(c)"] {
            assert!(!valid_authserv_id(bad), "{bad:?}");
        }
    }
}

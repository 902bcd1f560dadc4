//! Step 10 of section 8: the fields every reader of the message must agree on.
//!
//! A signature covers bytes; what a person sees is what their mail reader makes of the `From:`
//! field. If our reading and a reader's differ (a parser differential), a valid signature could
//! vouch for an address the reader never saw. So the field must be exactly one RFC 5322 §3.4
//! `mailbox`, read by the grammar and nothing more lenient, and none of the fields that RFC 5322
//! §3.6 and RFC 2045 allow once may occur twice (a reader shows one of the two; which one is
//! up to the reader).
//!
//! The grammar accepted (spec section 8, step 10):
//! ```text
//! mailbox      = name-addr / addr-spec
//! name-addr    = [display-name] [FWS] "<" addr-spec ">" [FWS]
//! display-name = word *(word / "." / FWS)        ; obs-phrase: only "." of the obsolete syntax
//! word         = [FWS] (1*atext / quoted-string) [FWS]
//! addr-spec    = [FWS] local-part "@" domain [FWS]
//! local-part   = dot-atom-text / quoted-string
//! domain       = dot-atom-text                   ; no domain literals
//! ```
//! No comments (CFWS is read as FWS), no domain literals, no groups, no lists. UTF-8 beyond
//! ASCII is accepted in atoms and quoted strings (RFC 6532 §3.2).

use std::fmt;

use super::HeaderField;

/// The fields a message may carry at most once (RFC 5322 §3.6, RFC 2045 §§4–6).
pub const SINGLETON_FIELDS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
    "date",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Why step 10 does not hold. Each is a `fail` (spec section 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// No `From:` field at all.
    NoFrom,
    /// The `From:` field is not exactly one strict RFC 5322 mailbox.
    NotOneMailbox,
    /// A field allowed once occurs twice (its lower-case name).
    Duplicate(&'static str),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::NoFrom => f.write_str("no From field"),
            FieldError::NotOneMailbox => f.write_str("From is not one mailbox"),
            FieldError::Duplicate(name) => write!(f, "duplicate {name}"),
        }
    }
}

impl std::error::Error for FieldError {}

/// The From address as a signer writes it in the `from` claim and a verifier compares it:
/// the local part exactly as written (quotes and quoted-pairs included), the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    /// A quoted local part (`"x y"@…`): never anybody's DID mailbox (spec section 7).
    pub fn local_is_quoted(&self) -> bool {
        self.local.starts_with('"')
    }

    /// `local@domain` with the domain lower-cased (ASCII), as the `from` claim carries it.
    pub fn claim_form(&self) -> String {
        format!("{}@{}", self.local, self.domain.to_ascii_lowercase())
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Step 10 without the claim comparison: the single strict From mailbox, and no duplicated
/// singleton field. Duplicates are reported before a bad From, by the order of
/// `SINGLETON_FIELDS` (so two From fields are "duplicate from").
pub fn check_fields(headers: &[HeaderField]) -> Result<Mailbox, FieldError> {
    for name in SINGLETON_FIELDS {
        if headers.iter().filter(|f| f.is(name)).nth(1).is_some() {
            return Err(FieldError::Duplicate(name));
        }
    }
    let from = headers
        .iter()
        .find(|f| f.is("from"))
        .ok_or(FieldError::NoFrom)?;
    parse_mailbox(&from.value).ok_or(FieldError::NotOneMailbox)
}

/// RFC 5322 §3.2.3 `atext`, with UTF-8 beyond ASCII (RFC 6532 §3.2).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// A cursor over a field value. FWS may be folded with CRLF or a bare LF (a milter receives
/// LF); a CR or LF not followed by WSP, and any other control character, is not FWS.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Skips FWS; false if a line break is not followed by WSP (a broken fold).
    fn fws(&mut self) -> bool {
        loop {
            let rest = &self.text.as_bytes()[self.pos..];
            match rest {
                [b' ' | b'\t', ..] => self.pos += 1,
                [b'\r', b'\n', b' ' | b'\t', ..] => self.pos += 3,
                [b'\n', b' ' | b'\t', ..] => self.pos += 2,
                [b'\r' | b'\n', ..] => return false,
                _ => return true,
            }
        }
    }

    /// `1*atext`, returned as written.
    fn atom(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_atext) {
            self.bump();
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    /// `dot-atom-text`: atoms joined by single dots, returned as written.
    fn dot_atom(&mut self) -> Option<&'a str> {
        let start = self.pos;
        self.atom()?;
        while self.peek() == Some('.') {
            self.bump();
            self.atom()?;
        }
        Some(&self.text[start..self.pos])
    }

    /// A quoted-string (RFC 5322 §3.2.4), returned as written, quotes included. Folds inside
    /// are allowed; a quoted-pair escapes any visible character or WSP.
    fn quoted_string(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if !self.eat('"') {
            return None;
        }
        loop {
            match self.peek()? {
                '"' => {
                    self.bump();
                    return Some(&self.text[start..self.pos]);
                }
                '\\' => {
                    self.bump();
                    match self.bump()? {
                        c if c == ' ' || c == '\t' || (!c.is_control() && c != '\u{7f}') => {}
                        _ => return None,
                    }
                }
                ' ' | '\t' | '\r' | '\n' => {
                    if !self.fws() {
                        return None;
                    }
                }
                c if c.is_control() => return None,
                _ => {
                    self.bump();
                }
            }
        }
    }

    /// `local-part "@" domain`.
    fn addr_spec(&mut self) -> Option<Mailbox> {
        let local = if self.peek() == Some('"') {
            self.quoted_string()?
        } else {
            self.dot_atom()?
        };
        if !self.eat('@') {
            return None;
        }
        let domain = self.dot_atom()?;
        Some(Mailbox {
            local: local.to_string(),
            domain: domain.to_string(),
        })
    }
}

/// Reads a `From:` value as exactly one mailbox, or none.
pub fn parse_mailbox(value: &[u8]) -> Option<Mailbox> {
    let text = std::str::from_utf8(value).ok()?;
    // A bare addr-spec first: it is the common case and the display-name reading of it
    // fails at '@' anyway.
    let mut r = Reader { text, pos: 0 };
    if r.fws()
        && let Some(mailbox) = r.addr_spec()
        && r.fws()
        && r.pos == text.len()
    {
        return Some(mailbox);
    }
    // name-addr: [display-name] "<" addr-spec ">".
    let mut r = Reader { text, pos: 0 };
    let mut words = 0;
    loop {
        if !r.fws() {
            return None;
        }
        match r.peek()? {
            '<' => break,
            '"' => {
                r.quoted_string()?;
                words += 1;
            }
            // obs-phrase (RFC 5322 §4.1): "." after the first word, as in `Alice Q. Smith`.
            '.' if words > 0 => {
                r.bump();
            }
            _ => {
                r.atom()?;
                words += 1;
            }
        }
    }
    r.bump(); // '<'
    let mailbox = r.addr_spec()?;
    if !r.eat('>') || !r.fws() || r.pos != text.len() {
        return None;
    }
    Some(mailbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(value: &str) -> Option<String> {
        parse_mailbox(value.as_bytes()).map(|m| m.to_string())
    }

    #[test]
    fn one_mailbox_in_every_allowed_spelling() {
        for (value, address) in [
            (" alice@example.com", "alice@example.com"),
            (" Alice <alice@example.com>", "alice@example.com"),
            (" <alice@example.com>", "alice@example.com"),
            (" \"Alice\"\n\t<alice@example.com>", "alice@example.com"),
            (" \"Alice\"\r\n <alice@example.com>  ", "alice@example.com"),
            (" Alice Q. Smith <a.b@Example.COM>", "a.b@Example.COM"),
            (
                " \"ceo@bank.example\" <alice@alice.example.com>",
                "alice@alice.example.com",
            ),
            (
                " Alice <\"alice smith\"@alice.example.com>",
                "\"alice smith\"@alice.example.com",
            ),
            (" \"a\\\"b\" <x@y.z>", "x@y.z"),
            (" Jörg <jörg@bücher.example>", "jörg@bücher.example"),
            (" did!plc!abc@mx.example.net", "did!plc!abc@mx.example.net"),
        ] {
            assert_eq!(mailbox(value).as_deref(), Some(address), "{value:?}");
        }
    }

    #[test]
    fn everything_else_is_not_one_mailbox() {
        for value in [
            " victim@bank.example <attacker@evil.example>",
            " <victim@bank.example><alice@alice.example.com>",
            " <a@x> <b@y>",
            " a@b.c, d@e.f",
            " group: a@b.c;",
            " alice@example.com (Alice)",
            " (comment) alice@example.com",
            " Alice <alice@[192.0.2.1]>",
            " alice@example.com.",
            " .alice@example.com",
            " al..ice@example.com",
            " alice@",
            " @example.com",
            " nobody",
            " Alice <alice@example.com",
            " Alice alice@example.com>",
            " Alice <alice@example.com> trailing",
            " . Alice <a@b.c>",
            " Alice <a@b.c>\n",
            " Alice\r<a@b.c>",
            " \"unterminated <a@b.c>",
            " \"bad\u{1}ctl\" <a@b.c>",
            "",
            "  ",
        ] {
            assert_eq!(mailbox(value), None, "{value:?}");
        }
        assert_eq!(parse_mailbox(b" \xff@example.com"), None);
    }

    #[test]
    fn duplicates_and_missing_from() {
        let f = |name: &str, value: &str| HeaderField::new(name, value);
        let ok = [f("From", " a@b.c"), f("To", " x@y.z"), f("Received", " 1")];
        assert_eq!(check_fields(&ok).unwrap().to_string(), "a@b.c");
        let two_from = [f("From", " a@b.c"), f("FROM", " a@b.c")];
        assert_eq!(check_fields(&two_from), Err(FieldError::Duplicate("from")));
        let two_reply_to = [
            f("Reply-To", " a@b.c"),
            f("From", " a@b.c"),
            f("reply-to", " x"),
        ];
        assert_eq!(
            check_fields(&two_reply_to).unwrap_err().to_string(),
            "duplicate reply-to"
        );
        let mime = [
            f("From", " a@b.c"),
            f("Content-Type", " a"),
            f("Content-Type ", " b"),
        ];
        assert_eq!(
            check_fields(&mime),
            Err(FieldError::Duplicate("content-type"))
        );
        let received = [
            f("From", " a@b.c"),
            f("Received", " 1"),
            f("Received", " 2"),
        ];
        assert!(check_fields(&received).is_ok());
        assert_eq!(check_fields(&[]), Err(FieldError::NoFrom));
        assert_eq!(
            check_fields(&[f("From", " x")]).unwrap_err().to_string(),
            "From is not one mailbox"
        );
    }

    #[test]
    fn claim_form_lowers_the_domain_only() {
        let m = parse_mailbox(b" <Alice@Example.COM>").unwrap();
        assert_eq!(m.claim_form(), "Alice@example.com");
        assert!(!m.local_is_quoted());
        assert!(parse_mailbox(b" \"a b\"@c.d").unwrap().local_is_quoted());
    }
}

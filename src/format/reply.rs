//! An SMTP-family reply, typed: basic code, enhanced status code (RFC 3463) and text. The
//! judge decides replies in these terms; each transport writes them in its own protocol
//! (LMTP lines, milter `set_error_reply`, the Exim scanner's action).

use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One reply: `code [enhanced] text`, possibly over several lines (LHLO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    /// One entry per line; never empty. Control characters never reach here (see `new`).
    pub lines: Vec<String>,
}

/// Replaces control characters (CR, LF, NUL, …) so that text taken from the client can never
/// end a reply line early or smuggle a second reply (RFC 5321 §4.2: text is printable).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Reply {
    pub fn new(code: u16, enhanced: Enhanced, text: impl AsRef<str>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![printable(text.as_ref())],
        }
    }

    /// A reply without an enhanced status code (greetings, LHLO).
    pub fn plain(code: u16, lines: impl IntoIterator<Item = impl AsRef<str>>) -> Reply {
        let mut lines: Vec<String> = lines.into_iter().map(|l| printable(l.as_ref())).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The first line's text without code or status (for logs).
    pub fn text(&self) -> &str {
        &self.lines[0]
    }

    /// The same reply with `<address> ` put before its text, as LMTP's per-recipient replies
    /// name the recipient (RFC 2033 §4.2 examples).
    pub fn for_recipient(&self, address: &str) -> Reply {
        let mut reply = self.clone();
        reply.lines[0] = printable(&format!("<{address}> {}", reply.lines[0]));
        reply
    }

    /// The reply as it goes on the wire: each line `code-` or `code `, CRLF-terminated.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if let Some(e) = self.enhanced {
                out.push_str(&e.to_string());
                if !line.is_empty() {
                    out.push(' ');
                }
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }
}

impl fmt::Display for Reply {
    /// The first line, `code enhanced text`, without line end (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.lines[0])
    }
}

/// The words for a header section over `limits` (too many or too long fields), the same on
/// every path: `552 5.3.4` (RFC 3463: message too big for system).
pub const HEADER_TOO_LARGE: &str = "header section too large (too many or too long fields)";

/// The refusal of a header section over `limits`.
pub fn header_section_too_large() -> Reply {
    Reply::new(552, Enhanced(5, 3, 4), HEADER_TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let r = Reply::new(550, Enhanced(5, 7, 1), "AT-SMS signature fail");
        assert_eq!(r.to_wire(), "550 5.7.1 AT-SMS signature fail\r\n");
        assert_eq!(
            r.for_recipient("bob@x").to_wire(),
            "550 5.7.1 <bob@x> AT-SMS signature fail\r\n"
        );
        let lhlo = Reply::plain(250, ["mx", "PIPELINING"]);
        assert_eq!(lhlo.to_wire(), "250-mx\r\n250 PIPELINING\r\n");
        assert_eq!(r.to_string(), "550 5.7.1 AT-SMS signature fail");
    }

    #[test]
    fn client_text_cannot_break_the_line() {
        let r = Reply::new(250, Enhanced(2, 1, 5), "ok").for_recipient("a\r\n250 b@c\0");
        assert_eq!(r.to_wire(), "250 2.1.5 <a??250 b@c?> ok\r\n");
    }
}

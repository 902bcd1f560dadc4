//! The scanner protocol of Exim's `spam` ACL condition with `variant=rspamd` (Exim 4.96,
//! `src/src/spam.c` and `spool_mbox.c`), as a pure decoder and encoder: no sockets, no clock,
//! so that any split of the input gives the same result (the tests feed it byte by byte).
//!
//! Hand-written: rspamd's own protocol (HTTP) is not what Exim speaks; Exim's `RSPAMC/1.3`
//! dialect is a few lines of head, an mbox copy of the message and a three-line answer, and
//! no crate speaks it.
//!
//! The request: `CHECK RSPAMC/1.3`, then `Name: value` lines (CRLF) — `Content-length`,
//! `Queue-Id`, `From`, `Recipient-Number`, `Rcpt` (one per recipient), `Helo`, `Hostname`,
//! `IP`, `User` — a blank line, and exactly `Content-length` bytes: Exim's mbox copy of the
//! message (a `From ` line, `X-Envelope-From:` and `X-Envelope-To:` lines, then the message
//! with Exim's own `Received:` field, LF line ends). Exim does not half-close; it reads the
//! answer until the connection closes.

use std::net::IpAddr;

/// The request line of the rspamd variant.
const REQUEST_LINE: &str = "CHECK RSPAMC/1.3";
/// The longest request head: a thousand recipients of 320 bytes and the rest.
pub const MAX_HEAD: usize = 512 * 1024;
/// The most recipients one request may name.
pub const MAX_RECIPIENTS: usize = 1000;

/// What Exim says about the message before sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The size of the mbox copy that follows.
    pub content_length: u64,
    /// Exim's message id, for the log line.
    pub queue_id: Option<String>,
    /// The envelope sender, without angle brackets (empty for `<>`).
    pub sender: String,
    /// The envelope recipients, without angle brackets.
    pub recipients: Vec<String>,
    pub helo: Option<String>,
    /// The client's address; absent for local submissions (`exim -bs`, pipes).
    pub ip: Option<IpAddr>,
    /// The SMTP AUTH id (`$authenticated_id`), when the client authenticated.
    pub user: Option<String>,
}

/// A request the scanner cannot serve: the connection is closed without an answer, and Exim
/// defers the message (never accepts it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("not an rspamd-variant request (first line {0:?})")]
    NotRspamc(String),
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("no Content-length")]
    NoLength,
    #[error("bad {0} line")]
    BadLine(&'static str),
    #[error("more than {MAX_RECIPIENTS} recipients")]
    TooManyRecipients,
}

/// The angle-bracketed address of a `From:` or `Rcpt:` line, without the brackets.
fn bracketed(value: &str, what: &'static str) -> Result<String, ProtocolError> {
    value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .map(str::to_string)
        .ok_or(ProtocolError::BadLine(what))
}

/// Reads the request head; `feed` it bytes until it returns the request and how many of the
/// bytes fed last belonged to the head (the rest is the message).
#[derive(Debug, Default)]
pub struct HeadDecoder {
    buf: Vec<u8>,
}

impl HeadDecoder {
    pub fn new() -> HeadDecoder {
        HeadDecoder::default()
    }

    /// Feeds bytes: `Some((request, used))` once the blank line ending the head has come,
    /// `used` being how many of `bytes` were head.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
        let before = self.buf.len();
        self.buf.extend_from_slice(bytes);
        // The head ends at its first empty line: a line end (LF, CR optional before it)
        // followed by CRLF or a bare LF (Exim writes CRLF; a bare-LF client is read too). The
        // end may straddle the previous chunk: look from a little before it. Whatever
        // follows is the message, however the head arrived (split-invariance).
        let from = before.saturating_sub(2);
        let end = (from..self.buf.len()).find_map(|i| match &self.buf[i..] {
            [b'\n', b'\n', ..] => Some(i + 2),
            [b'\n', b'\r', b'\n', ..] => Some(i + 3),
            _ => None,
        });
        let Some(end) = end else {
            if self.buf.len() > MAX_HEAD {
                return Err(ProtocolError::HeadTooLong);
            }
            return Ok(None);
        };
        if end > MAX_HEAD {
            return Err(ProtocolError::HeadTooLong);
        }
        let request = parse_head(&self.buf[..end])?;
        Ok(Some((request, end - before)))
    }
}

/// Parses a whole head (request line, header lines, blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, ProtocolError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    if first != REQUEST_LINE {
        return Err(ProtocolError::NotRspamc(first.chars().take(40).collect()));
    }
    let mut request = Request::default();
    let mut length = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(ProtocolError::BadLine("header"))?;
        let value = value.trim();
        // Names as spam.c writes them; compared without case, as HTTP-like heads are.
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| ProtocolError::BadLine("Content-length"))?,
                );
            }
            // Logged with every line of the scan: whoever reaches the port writes it.
            "queue-id" => request.queue_id = Some(crate::infra::logging::escaped(value)),
            "from" => request.sender = bracketed(value, "From")?,
            "rcpt" => {
                if request.recipients.len() == MAX_RECIPIENTS {
                    return Err(ProtocolError::TooManyRecipients);
                }
                request.recipients.push(bracketed(value, "Rcpt")?);
            }
            "helo" => request.helo = Some(value.to_string()),
            "ip" => {
                request.ip = Some(value.parse().map_err(|_| ProtocolError::BadLine("IP"))?);
            }
            "user" if !value.is_empty() => request.user = Some(value.to_string()),
            // Recipient-Number, Hostname, and whatever a later Exim adds.
            _ => {}
        }
    }
    request.content_length = length.ok_or(ProtocolError::NoLength)?;
    Ok(request)
}

/// Which of Exim's three additions to the message the stripper is past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strip {
    /// The mbox `From ` line (always first; opaque).
    FromLine,
    /// An `X-Envelope-From: <…>` line, if it is next.
    EnvelopeFrom,
    /// An `X-Envelope-To: …` line, if it is next.
    EnvelopeTo,
    /// The message itself.
    Message,
}

/// Removes what Exim's mbox copy adds before the message — the first line, then an
/// `X-Envelope-From: <` line and an `X-Envelope-To: ` line if they come next, in that place
/// only (the message may carry fields of those names further down, which stay).
///
/// Holds at most the length of the longer prefix: a line known to be dropped is skipped as
/// it arrives, however long (a client sending an endless first line holds nothing).
#[derive(Debug)]
pub struct MboxStripper {
    state: Strip,
    /// Dropping the rest of a line; then `state` is the one after it.
    skipping: bool,
    /// The start of a line being decided, held until it can be (shorter than the prefixes).
    line: Vec<u8>,
}

impl Default for MboxStripper {
    fn default() -> Self {
        MboxStripper {
            state: Strip::FromLine,
            skipping: false,
            line: Vec::new(),
        }
    }
}

/// The prefixes Exim writes (spool_mbox.c).
const ENVELOPE_FROM: &[u8] = b"X-Envelope-From: <";
const ENVELOPE_TO: &[u8] = b"X-Envelope-To: ";

impl MboxStripper {
    pub fn new() -> MboxStripper {
        MboxStripper::default()
    }

    /// The lines that may come next in `state`, and the state after each once dropped (an
    /// `X-Envelope-To:` without `X-Envelope-From:` before it is Exim's too: a null sender).
    fn expected(state: Strip) -> &'static [(&'static [u8], Strip)] {
        match state {
            Strip::EnvelopeFrom => &[
                (ENVELOPE_FROM, Strip::EnvelopeTo),
                (ENVELOPE_TO, Strip::Message),
            ],
            Strip::EnvelopeTo => &[(ENVELOPE_TO, Strip::Message)],
            Strip::FromLine | Strip::Message => &[],
        }
    }

    /// Feeds mbox bytes; returns the message bytes among them.
    pub fn feed<'a>(&mut self, mut bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        let mut out: Option<Vec<u8>> = None;
        while self.state != Strip::Message || self.skipping {
            if bytes.is_empty() {
                return Cow::Owned(out.unwrap_or_default());
            }
            if self.skipping {
                let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
                    return Cow::Owned(out.unwrap_or_default());
                };
                bytes = &bytes[end + 1..];
                self.skipping = false;
                continue;
            }
            if self.state == Strip::FromLine {
                (self.skipping, self.state) = (true, Strip::EnvelopeFrom);
                continue;
            }
            let expected = Self::expected(self.state);
            let longest = expected.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
            // Enough to decide, never past the line's end.
            let line_end = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |e| e + 1);
            let take = longest.saturating_sub(self.line.len()).min(line_end);
            self.line.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if let Some((_, after)) = expected.iter().find(|(p, _)| self.line.starts_with(p)) {
                self.line.clear();
                (self.skipping, self.state) = (true, *after);
            } else if !expected.iter().any(|(p, _)| p.starts_with(&self.line)) {
                // Not Exim's: the message starts with this line.
                self.state = Strip::Message;
                out.get_or_insert_with(Vec::new).append(&mut self.line);
            }
            // Otherwise still undecided, and `bytes` is spent: wait for more.
        }
        match out {
            None => Cow::Borrowed(bytes),
            Some(mut held) => {
                held.extend_from_slice(bytes);
                Cow::Owned(held)
            }
        }
    }

    /// Whatever is still held once the copy has ended (a message of one unfinished line).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.state == Strip::FromLine || self.skipping {
            return Vec::new();
        }
        std::mem::take(&mut self.line)
    }
}

/// The answer Exim parses (spam.c: `"RSPAMD/%7s 0 EX_OK\r\nMetric: default; %7s %lf / %lf /
/// %lf\r\n%n"`, then an `Action: ` line copied up to the first CR, at most 31 bytes, and
/// everything after the Metric line as `$spam_report`, each LF followed by a space).
///
/// `score` ≥ `threshold` makes `spam = …` true; the ACL reads the action and the report.
/// `lines` become the report after the `Action:` line; they hold no CR or LF of their own.
pub fn answer(action: &str, score: f64, threshold: f64, lines: &[String]) -> Vec<u8> {
    let action: String = action
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(31 - "Action: ".len())
        .collect();
    let spam = if score >= threshold {
        "True;"
    } else {
        "False;"
    };
    let mut out = format!(
        "RSPAMD/1.3 0 EX_OK\r\nMetric: default; {spam} {score:.2} / {threshold:.2} / 0.00\r\nAction: {action}\r\n"
    );
    for line in lines {
        let clean: String = line.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        out.push_str(&clean);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"CHECK RSPAMC/1.3\r\nContent-length: 123\r\nQueue-Id: 1pXyZa-000AbC-De\r\nFrom: <alice@alice.example.com>\r\nRecipient-Number: 2\r\nRcpt: <bob@mx.example.net>\r\nRcpt: <carol@mx.example.net>\r\nHelo: client.example\r\nHostname: client.example\r\nIP: 127.0.0.2\r\nUser: alice\r\n\r\n";

    fn decode_split(bytes: &[u8], at: &[usize]) -> (Request, usize) {
        let mut decoder = HeadDecoder::new();
        let mut fed = 0;
        for window in at.iter().chain(std::iter::once(&bytes.len())) {
            let chunk = &bytes[fed..*window.max(&fed)];
            if let Some((request, used)) = decoder.feed(chunk).unwrap() {
                return (request, fed + used);
            }
            fed = *window.max(&fed);
        }
        panic!("no head in {bytes:?}");
    }

    #[test]
    fn the_head_is_read_whatever_the_split() {
        let bytes = [HEAD, b"From MAILER-DAEMON Wed Dec  2 09:00:00 2026\n"].concat();
        let (whole, used) = decode_split(&bytes, &[]);
        assert_eq!(used, HEAD.len());
        assert_eq!(whole.content_length, 123);
        assert_eq!(whole.queue_id.as_deref(), Some("1pXyZa-000AbC-De"));
        assert_eq!(whole.sender, "alice@alice.example.com");
        assert_eq!(
            whole.recipients,
            ["bob@mx.example.net", "carol@mx.example.net"]
        );
        assert_eq!(whole.ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(whole.user.as_deref(), Some("alice"));
        for i in 0..bytes.len() {
            assert_eq!(
                decode_split(&bytes, &[i]),
                (whole.clone(), HEAD.len()),
                "split at {i}"
            );
        }
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(
            decode_split(&bytes, &every),
            (whole, HEAD.len()),
            "byte by byte"
        );
    }

    #[test]
    fn the_first_empty_line_ends_the_head_whichever_line_ends_it_has() {
        // Found by the fuzz target: a bare-LF empty line before a CRLF one ended the head
        // at the first when fed in pieces and at the second when fed whole.
        let bytes =
            b"CHECK RSPAMC/1.3\r\nContent-length: 4\r\nX: a\n\nFrom x\r\nRcpt: <c@d>\r\n\r\nbody";
        let end = bytes.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        let whole = decode_split(bytes, &[]);
        assert_eq!(whole.1, end);
        assert!(
            whole.0.recipients.is_empty(),
            "after the head: the message's"
        );
        for i in 0..bytes.len() {
            assert_eq!(decode_split(bytes, &[i]), whole, "split at {i}");
        }
    }

    #[test]
    fn bad_heads_are_refused() {
        let feed = |b: &[u8]| HeadDecoder::new().feed(b);
        assert_eq!(
            feed(b"PROCESS SPAMC/1.2\r\n\r\n"),
            Err(ProtocolError::NotRspamc("PROCESS SPAMC/1.2".into()))
        );
        assert_eq!(
            feed(b"CHECK RSPAMC/1.3\r\n\r\n"),
            Err(ProtocolError::NoLength)
        );
        assert_eq!(
            feed(b"CHECK RSPAMC/1.3\r\nContent-length: -1\r\n\r\n"),
            Err(ProtocolError::BadLine("Content-length"))
        );
        assert_eq!(
            feed(b"CHECK RSPAMC/1.3\r\nContent-length: 1\r\nFrom: alice@x\r\n\r\n"),
            Err(ProtocolError::BadLine("From"))
        );
        assert_eq!(
            feed(b"CHECK RSPAMC/1.3\r\nContent-length: 1\r\nIP: nowhere\r\n\r\n"),
            Err(ProtocolError::BadLine("IP"))
        );
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(feed(&endless), Err(ProtocolError::HeadTooLong));
        let mut many = b"CHECK RSPAMC/1.3\r\nContent-length: 1\r\n".to_vec();
        for _ in 0..=MAX_RECIPIENTS {
            many.extend_from_slice(b"Rcpt: <a@b.example>\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(feed(&many), Err(ProtocolError::TooManyRecipients));
        // A null sender, no IP (a local submission), an empty User.
        let (request, _) = HeadDecoder::new()
            .feed(b"CHECK RSPAMC/1.3\r\nContent-length: 0\r\nFrom: <>\r\nUser: \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(request.sender, "");
        assert_eq!(request.ip, None);
        assert_eq!(request.user, None);
    }

    fn strip_split(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut s = MboxStripper::new();
        let mut out = s.feed(&bytes[..at]).into_owned();
        out.extend_from_slice(&s.feed(&bytes[at..]));
        out.extend_from_slice(&s.finish());
        out
    }

    #[test]
    fn exims_additions_go_and_only_they() {
        let message = b"Received: from client.example\n\tby mx.test\nX-Envelope-To: kept\nFrom: <alice@alice.example.com>\n\nbody\nFrom the body\n";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                [b"From alice@alice.example.com Wed Dec  2 09:00:00 2026\nX-Envelope-From: <alice@alice.example.com>\nX-Envelope-To: bob@mx.example.net, carol@mx.example.net\n".as_slice(), message].concat(),
                "all three",
            ),
            (
                [b"From MAILER-DAEMON Wed Dec  2 09:00:00 2026\nX-Envelope-To: bob@mx.example.net\n".as_slice(), message].concat(),
                "null sender: no X-Envelope-From",
            ),
            (
                [b"From MAILER-DAEMON Wed Dec  2 09:00:00 2026\n".as_slice(), message].concat(),
                "neither",
            ),
        ];
        for (bytes, case) in cases {
            for at in 0..=bytes.len() {
                assert_eq!(strip_split(&bytes, at), message, "{case}, split at {at}");
            }
        }
        // The message's own first field named like Exim's is kept when Exim's is absent.
        let own = b"From MAILER-DAEMON x\nX-Envelope-Fromage: <x>\nSubject: s\n\nb\n";
        assert_eq!(
            strip_split(own, 5),
            b"X-Envelope-Fromage: <x>\nSubject: s\n\nb\n"
        );
    }

    #[test]
    fn a_line_that_is_dropped_is_never_held() {
        // An endless mbox line, or an endless X-Envelope-From: line, costs nothing held.
        for head in [&b""[..], b"From x\nX-Envelope-From: <"] {
            let mut s = MboxStripper::new();
            assert!(s.feed(head).is_empty());
            for _ in 0..1024 {
                assert!(s.feed(&[b'a'; 1024]).is_empty());
                assert!(s.line.capacity() <= ENVELOPE_FROM.len(), "{}", s.line.len());
            }
            assert_eq!(&*s.feed(b"a\nSubject: s\n"), b"Subject: s\n");
        }
    }

    #[test]
    fn the_answer_is_what_exims_sscanf_takes() {
        let a = answer(
            "reject",
            15.0,
            10.0,
            &["Reply: 550 5.7.1 forged".into(), "x\r\ny".into()],
        );
        let text = String::from_utf8(a).unwrap();
        assert_eq!(
            text,
            "RSPAMD/1.3 0 EX_OK\r\nMetric: default; True; 15.00 / 10.00 / 0.00\r\nAction: reject\r\nReply: 550 5.7.1 forged\r\nxy\r\n"
        );
        // $spam_action holds at most 31 bytes: the action is cut to fit the line.
        let long = String::from_utf8(answer(&"a".repeat(40), 0.0, 10.0, &[])).unwrap();
        let line = long.lines().find(|l| l.starts_with("Action: ")).unwrap();
        assert_eq!(line.len(), 31);
        assert!(long.contains("False; 0.00 / 10.00"));
    }
}

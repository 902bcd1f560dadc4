//! The LMTP protocol (RFC 2033, with RFC 5321's commands, RFC 3030 CHUNKING and RFC 1870
//! SIZE) as a pure decoder: bytes in, events out. No I/O and no policy: the server loop
//! (`server.rs`) reads, feeds, and answers.
//!
//! Hand-written because no maintained crate decodes the server side of LMTP/SMTP with
//! BDAT and the smuggling-safe end of DATA; it is small and is tested below with every split
//! of its input (split-invariance, as `envelope::canon` is).

use crate::format::reply::{Enhanced, Reply};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; parameters make it longer).
pub const MAX_COMMAND_LINE: usize = 4096;

/// One command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lhlo(String),
    /// HELO or EHLO: this is LMTP (RFC 2033 §4.1).
    NotLmtp,
    Mail(Path, MailParams),
    Rcpt(Path),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Vrfy,
    Quit,
    Unknown(String),
    /// A command whose arguments do not parse; the reply says why.
    Invalid(Reply),
}

/// A reverse- or forward-path without its angle brackets; the source route of
/// `<@a,@b:user@c>` (RFC 5321 §4.1.2, obsolete) dropped. Never holds a control character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub String);

/// `BODY=` (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// MAIL parameters this server knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
}

/// What the decoder found in the bytes fed to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Command(Command),
    /// A command line longer than `MAX_COMMAND_LINE`; the rest of it was discarded.
    LineTooLong,
    /// Message bytes: DATA content already dot-unstuffed, or BDAT chunk content as sent.
    Data(&'a [u8]),
    /// The `CRLF.CRLF` that ends DATA.
    DataEnd,
    /// A BDAT chunk's last byte was read.
    ChunkEnd {
        last: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Command,
    /// The rest of an overlong command line is skipped.
    Discarding,
    /// DATA content. `line_start`: the previous bytes ended with CRLF (only then may a `.`
    /// line end the message: a bare LF never does, RFC 5321 §4.1.1.4, SMTP smuggling).
    /// `cr`: the last byte was CR.
    Data {
        line_start: bool,
        cr: bool,
    },
    Chunk {
        remaining: u64,
        last: bool,
    },
}

/// The decoder. Feed it the bytes received so far with `next`; it says how many it used and
/// what they meant. It never holds input itself: the caller keeps what is not yet used and
/// offers it again with more.
#[derive(Debug, Clone)]
pub struct Decoder {
    mode: Mode,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            mode: Mode::Command,
        }
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// After answering DATA with 354: what follows is message content.
    pub fn start_data(&mut self) {
        // The CRLF that ended the DATA command line counts as the first one.
        self.mode = Mode::Data {
            line_start: true,
            cr: false,
        };
    }

    /// Whether the decoder is inside message content (DATA or a BDAT chunk).
    pub fn in_message(&self) -> bool {
        matches!(self.mode, Mode::Data { .. } | Mode::Chunk { .. })
    }

    /// Decodes from the start of `input`: `(bytes used, event)`. `(0, None)` means more
    /// input is needed; `(n, None)` with `n > 0` means bytes were used without an event.
    pub fn next<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        match self.mode {
            Mode::Command => {
                let window = &input[..input.len().min(MAX_COMMAND_LINE + 1)];
                match window.iter().position(|b| *b == b'\n') {
                    Some(lf) => {
                        let mut line = &input[..lf];
                        if let Some(stripped) = line.strip_suffix(b"\r") {
                            line = stripped;
                        }
                        let command = parse_command(line);
                        if let Command::Bdat { size, last } = command {
                            self.mode = Mode::Chunk {
                                remaining: size,
                                last,
                            };
                        }
                        (lf + 1, Some(Event::Command(command)))
                    }
                    None if input.len() > MAX_COMMAND_LINE => {
                        self.mode = Mode::Discarding;
                        (window.len(), Some(Event::LineTooLong))
                    }
                    None => (0, None),
                }
            }
            Mode::Discarding => match input.iter().position(|b| *b == b'\n') {
                Some(lf) => {
                    self.mode = Mode::Command;
                    (lf + 1, None)
                }
                None => (input.len(), None),
            },
            Mode::Chunk { remaining, last } => {
                if remaining == 0 {
                    self.mode = Mode::Command;
                    return (0, Some(Event::ChunkEnd { last }));
                }
                if input.is_empty() {
                    return (0, None);
                }
                let take = input
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                self.mode = Mode::Chunk {
                    remaining: remaining - take as u64,
                    last,
                };
                (take, Some(Event::Data(&input[..take])))
            }
            Mode::Data { line_start, cr } => {
                if input.is_empty() {
                    return (0, None);
                }
                if line_start && input[0] == b'.' {
                    // ".\r\n" ends the message; a prefix of it needs more input to tell.
                    let end = b".\r\n";
                    let n = input.len().min(3);
                    if input[..n] == end[..n] {
                        if n < 3 {
                            return (0, None);
                        }
                        self.mode = Mode::Command;
                        return (3, Some(Event::DataEnd));
                    }
                    // Dot-unstuffing (RFC 5321 §4.5.2): the leading dot goes.
                    self.mode = Mode::Data {
                        line_start: false,
                        cr: false,
                    };
                    return (1, None);
                }
                let len = input
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(input.len(), |lf| lf + 1);
                let segment = &input[..len];
                let last = segment[len - 1];
                let before_last = if len >= 2 {
                    segment[len - 2] == b'\r'
                } else {
                    cr
                };
                self.mode = Mode::Data {
                    line_start: last == b'\n' && before_last,
                    cr: last == b'\r',
                };
                (len, Some(Event::Data(segment)))
            }
        }
    }
}

fn syntax(enhanced: Enhanced, text: &str) -> Command {
    Command::Invalid(Reply::new(501, enhanced, text))
}

/// Parses one command line (without its line end).
pub fn parse_command(line: &[u8]) -> Command {
    let Ok(line) = std::str::from_utf8(line) else {
        return syntax(Enhanced(5, 5, 2), "command line is not UTF-8");
    };
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, rest),
        None => (line, ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" if rest.trim().is_empty() => syntax(Enhanced(5, 5, 4), "LHLO needs a domain"),
        "LHLO" => Command::Lhlo(rest.trim().to_string()),
        "HELO" | "EHLO" => Command::NotLmtp,
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" if !rest.trim().is_empty() => syntax(Enhanced(5, 5, 4), "DATA takes no parameters"),
        "DATA" => Command::Data,
        "BDAT" => parse_bdat(rest),
        "RSET" => Command::Rset,
        "NOOP" => Command::Noop,
        "VRFY" => Command::Vrfy,
        "QUIT" => Command::Quit,
        _ => Command::Unknown(verb.to_string()),
    }
}

/// `size [LAST]` (RFC 3030 §2).
fn parse_bdat(rest: &str) -> Command {
    let mut words = rest.split_whitespace();
    let size = words
        .next()
        .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok());
    let last = match words.next() {
        None => Some(false),
        Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
        Some(_) => None,
    };
    match (size, last, words.next()) {
        (Some(size), Some(last), None) => Command::Bdat { size, last },
        _ => syntax(Enhanced(5, 5, 4), "syntax: BDAT size [LAST]"),
    }
}

/// `prefix` (`FROM:` or `TO:`, any case) and what follows it.
fn after_prefix<'a>(rest: &'a str, prefix: &str) -> Option<&'a str> {
    rest.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &rest[prefix.len()..])
}

/// `<path> params`: the path and the parameter words. Quoted local parts may hold `>`.
fn parse_path(rest: &str) -> Option<(Path, Vec<&str>)> {
    let inner = rest.trim_start().strip_prefix('<')?;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let mut path = &inner[..end];
    // Control characters (CR, LF, NUL, …) never belong in an address; letting them through
    // would carry them into replies, Return-Path and directory names.
    if path.chars().any(|c| c.is_control()) {
        return None;
    }
    if path.starts_with('@') {
        path = path.split_once(':')?.1;
    }
    let params = inner[end + 1..].split_whitespace().collect();
    Some((Path(path.to_string()), params))
}

fn param_name(param: &str) -> String {
    param
        .split('=')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

fn parse_mail(rest: &str) -> Command {
    let Some(rest) = after_prefix(rest, "FROM:") else {
        return syntax(Enhanced(5, 5, 4), "syntax: MAIL FROM:<address>");
    };
    let Some((path, words)) = parse_path(rest) else {
        return syntax(Enhanced(5, 1, 7), "bad sender address syntax");
    };
    let mut params = MailParams::default();
    for param in words {
        let value = param.split_once('=').map(|(_, v)| v);
        match param_name(param).as_str() {
            "SIZE" => match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(size) => params.size = Some(size),
                None => return syntax(Enhanced(5, 5, 4), "bad SIZE parameter"),
            },
            "BODY" => match value.map(str::to_ascii_uppercase).as_deref() {
                Some("7BIT") => params.body = Body::SevenBit,
                Some("8BITMIME") => params.body = Body::EightBitMime,
                _ => {
                    return Command::Invalid(Reply::new(
                        555,
                        Enhanced(5, 5, 4),
                        "unsupported BODY type",
                    ));
                }
            },
            "SMTPUTF8" if value.is_none() => params.smtputf8 = true,
            other => {
                return Command::Invalid(Reply::new(
                    555,
                    Enhanced(5, 5, 4),
                    format!("unsupported parameter {other}"),
                ));
            }
        }
    }
    Command::Mail(path, params)
}

fn parse_rcpt(rest: &str) -> Command {
    let Some(rest) = after_prefix(rest, "TO:") else {
        return syntax(Enhanced(5, 5, 4), "syntax: RCPT TO:<address>");
    };
    let Some((path, words)) = parse_path(rest) else {
        return syntax(Enhanced(5, 1, 3), "bad recipient address syntax");
    };
    // ORCPT and NOTIFY (RFC 3461) are accepted and ignored: delivery status is ours to give.
    if let Some(bad) = words
        .iter()
        .find(|p| !matches!(param_name(p).as_str(), "ORCPT" | "NOTIFY"))
    {
        return Command::Invalid(Reply::new(
            555,
            Enhanced(5, 5, 4),
            format!("unsupported parameter {}", param_name(bad)),
        ));
    }
    Command::Rcpt(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events with owned data, consecutive data merged: what a server makes of the input.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Command(Command),
        LineTooLong,
        Data(Vec<u8>),
        DataEnd,
        ChunkEnd(bool),
    }

    /// Feeds `input` cut at `cuts`, as a server would: unused bytes are kept and offered again
    /// with the next piece. DATA is answered with 354 (data mode) whenever it comes.
    fn decode(input: &[u8], cuts: &[usize]) -> Vec<Seen> {
        let mut decoder = Decoder::new();
        let mut seen = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut bounds = cuts.to_vec();
        bounds.push(input.len());
        let mut from = 0;
        for to in bounds {
            pending.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                let (used, event) = decoder.next(&pending);
                match event {
                    Some(Event::Command(c)) => {
                        if c == Command::Data {
                            decoder.start_data();
                        }
                        seen.push(Seen::Command(c));
                    }
                    Some(Event::LineTooLong) => seen.push(Seen::LineTooLong),
                    Some(Event::Data(d)) => match seen.last_mut() {
                        Some(Seen::Data(all)) => all.extend_from_slice(d),
                        _ => seen.push(Seen::Data(d.to_vec())),
                    },
                    Some(Event::DataEnd) => seen.push(Seen::DataEnd),
                    Some(Event::ChunkEnd { last }) => seen.push(Seen::ChunkEnd(last)),
                    None if used == 0 => break,
                    None => {}
                }
                pending.drain(..used);
            }
        }
        seen
    }

    fn every_split_agrees(input: &[u8]) -> Vec<Seen> {
        let whole = decode(input, &[]);
        for cut in 0..=input.len() {
            assert_eq!(decode(input, &[cut]), whole, "one cut at {cut}");
        }
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(decode(input, &bytewise), whole, "byte by byte");
        whole
    }

    #[test]
    fn data_unstuffing_and_the_end_of_data() {
        let input = b"LHLO x\r\nDATA\r\n.hidden\r\n..\r\nline\nbare\n.\nstill\r\n.\r\nQUIT\r\n";
        let seen = every_split_agrees(input);
        assert_eq!(
            seen,
            vec![
                Seen::Command(Command::Lhlo("x".into())),
                Seen::Command(Command::Data),
                // The bare-LF dot is content, not the end (SMTP smuggling).
                Seen::Data(b"hidden\r\n.\r\nline\nbare\n.\nstill\r\n".to_vec()),
                Seen::DataEnd,
                Seen::Command(Command::Quit),
            ]
        );
    }

    #[test]
    fn empty_message_and_dot_first_line() {
        assert_eq!(
            every_split_agrees(b"DATA\r\n.\r\n"),
            vec![Seen::Command(Command::Data), Seen::DataEnd]
        );
        assert_eq!(
            every_split_agrees(b"DATA\r\n.x\r\n.\r\n")[1],
            Seen::Data(b"x\r\n".to_vec())
        );
        // A lone CR before the CRLF: the line still ends in CRLF, so the dot line ends DATA.
        assert_eq!(
            every_split_agrees(b"DATA\r\na\r\r\n.\r\n")[1],
            Seen::Data(b"a\r\r\n".to_vec())
        );
    }

    #[test]
    fn bdat_chunks_are_taken_by_size() {
        let input = b"BDAT 5\r\nA\r\n.\rBDAT 0 LAST\r\nBDAT 3 LAST\r\nQUIT\r\nNOOP\r\n";
        let seen = every_split_agrees(input);
        assert_eq!(
            seen,
            vec![
                Seen::Command(Command::Bdat {
                    size: 5,
                    last: false
                }),
                Seen::Data(b"A\r\n.\r".to_vec()),
                Seen::ChunkEnd(false),
                Seen::Command(Command::Bdat {
                    size: 0,
                    last: true
                }),
                Seen::ChunkEnd(true),
                Seen::Command(Command::Bdat {
                    size: 3,
                    last: true
                }),
                // The chunk's bytes are taken whatever they look like.
                Seen::Data(b"QUI".to_vec()),
                Seen::ChunkEnd(true),
                Seen::Command(Command::Unknown("T".into())),
                Seen::Command(Command::Noop),
            ]
        );
    }

    #[test]
    fn overlong_lines_are_skipped_whole() {
        let mut input = b"NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_COMMAND_LINE + 10));
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let seen = decode(&input, &[]);
        assert_eq!(
            seen,
            vec![
                Seen::Command(Command::Noop),
                Seen::LineTooLong,
                Seen::Command(Command::Quit)
            ]
        );
        for cut in [
            1,
            100,
            MAX_COMMAND_LINE,
            MAX_COMMAND_LINE + 7,
            input.len() - 3,
        ] {
            assert_eq!(decode(&input, &[cut]), seen, "cut {cut}");
        }
    }

    #[test]
    fn commands_paths_and_parameters() {
        let c = |line: &str| parse_command(line.as_bytes());
        assert_eq!(
            c("mail from:<a@b.c> SIZE=10 BODY=8bitmime SMTPUTF8"),
            Command::Mail(
                Path("a@b.c".into()),
                MailParams {
                    size: Some(10),
                    body: Body::EightBitMime,
                    smtputf8: true
                }
            )
        );
        assert_eq!(
            c("MAIL FROM:<>"),
            Command::Mail(Path(String::new()), MailParams::default())
        );
        assert_eq!(
            c("RCPT TO:<@a,@b:u@c> NOTIFY=NEVER"),
            Command::Rcpt(Path("u@c".into()))
        );
        assert_eq!(
            c("RCPT TO:<\"x>y\"@c>"),
            Command::Rcpt(Path("\"x>y\"@c".into()))
        );
        for (line, code, text) in [
            (
                "MAIL FROM:<a@b\r\n250 x@y>",
                501,
                "bad sender address syntax",
            ),
            ("RCPT TO:<a\0b@c>", 501, "bad recipient address syntax"),
            ("RCPT TO:<a@b> FOO=1", 555, "unsupported parameter FOO"),
            (
                "MAIL FROM:<a@b> BODY=BINARYMIME",
                555,
                "unsupported BODY type",
            ),
            ("MAIL TO:<a@b>", 501, "syntax: MAIL FROM:<address>"),
            ("BDAT x", 501, "syntax: BDAT size [LAST]"),
            ("BDAT 1 LAST extra", 501, "syntax: BDAT size [LAST]"),
            ("DATA now", 501, "DATA takes no parameters"),
            ("LHLO", 501, "LHLO needs a domain"),
        ] {
            match c(line) {
                Command::Invalid(reply) => {
                    assert_eq!((reply.code, reply.text()), (code, text), "{line:?}")
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
        assert_eq!(c("ehlo x"), Command::NotLmtp);
        assert_eq!(c("HELP"), Command::Unknown("HELP".into()));
        assert!(matches!(parse_command(b"NOOP \xff"), Command::Invalid(_)));
    }
}

//! Recognising AT-SMS's own messages (issue: "AT-SMS's own messages are recognised"): mail
//! carrying an AT-SMS client message — a part of type `application/atsms-envelope`, or
//! `application/pkcs7-mime` / `application/x-pkcs7-mime` named `message.p7m` (`name=` of
//! Content-Type or `filename=` of Content-Disposition) — whatever its signature's result;
//! and a detached S/MIME signature (`multipart/signed`, RFC 1847 §2.1, RFC 8551 §3.5) by a
//! device certificate: its first part kept as signed, its `pkcs7-signature` part read.
//!
//! The body streams past in chunks and is never held: a small scanner follows the MIME
//! structure (RFC 2046 §5.1: boundaries, nested multiparts) and reads only part headers, each
//! bounded — and the first AT-SMS part itself, up to `MAX_CAPTURE`, so that `floor` can say
//! what it carries and verify a SignedData. Hand-written because the MIME parsers at hand
//! (mail-parser) want the whole message in memory.

mod detached;
mod write;

use crate::verification::atsms_parts::CmsInput;
use detached::{Detached, Stage};
pub use write::envelope_mail;

/// Longest line kept for matching a boundary (RFC 2046 boundaries are at most 70 characters;
/// longer lines are body text and are not looked at beyond this).
const MAX_LINE: usize = 1000;
/// Longest part header section read; a longer one is not looked into.
const MAX_PART_HEADER: usize = 16 * 1024;
/// Deepest nesting of multiparts followed.
const MAX_DEPTH: usize = 16;
/// Most of an AT-SMS part kept (transfer-encoded): a sealed envelope is at most 64 KiB
/// (88 KiB in base64), a CMS structure 1 MiB (the HTTPS inbox's `MAX_CMS`: 1.37 MiB in
/// base64 lines of 76 and their line ends); a longer part is reported malformed rather than
/// held.
pub const MAX_CAPTURE: usize = 1536 * 1024;

/// Whether a Content-Type (and the part's Content-Disposition) names an AT-SMS client message.
pub fn is_atsms_part(content_type: &str, disposition: Option<&str>) -> bool {
    let content_type = split_type(content_type);
    if content_type.is("application/atsms-envelope") {
        return true;
    }
    if !content_type.is("application/pkcs7-mime") && !content_type.is("application/x-pkcs7-mime") {
        return false;
    }
    let named = |value: TypeValue<'_>, key: &str| {
        value
            .params()
            .any(|(k, v)| k.eq_ignore_ascii_case(key) && v.eq_ignore_ascii_case("message.p7m"))
    };
    named(content_type, "name") || disposition.is_some_and(|d| named(split_type(d), "filename"))
}

/// A Content-Type or Content-Disposition value read in place (RFC 2045 §5.1, RFC 2183 §2):
/// the `type/subtype` (or disposition type) and the parameters, names and types compared
/// without regard to case (RFC 2045 §5.1: "matching of media type and subtype is ALWAYS
/// case-insensitive"), values unquoted. Nothing is copied: it is read once per part header.
#[derive(Clone, Copy)]
struct TypeValue<'a> {
    kind: &'a str,
    params: &'a str,
}

impl<'a> TypeValue<'a> {
    fn is(&self, kind: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind)
    }

    /// The parameters in order: (name, value), trimmed, a quoted value without its quotes.
    fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        self.params.split(';').filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim(), v))
        })
    }
}

fn split_type(value: &str) -> TypeValue<'_> {
    let (kind, params) = value.split_once(';').unwrap_or((value, ""));
    TypeValue {
        kind: kind.trim(),
        params,
    }
}

/// S/MIME's detached signature types (RFC 8551 §3.5; the `x-` form of older agents).
const SIGNATURE_TYPES: [&str; 2] = [
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
];

/// Whether a Content-Type is a `multipart/signed` whose protocol is S/MIME's (RFC 8551 §3.5).
fn is_signed_multipart(content_type: &str) -> bool {
    let content_type = split_type(content_type);
    content_type.is("multipart/signed")
        && content_type.params().any(|(k, v)| {
            k.eq_ignore_ascii_case("protocol")
                && SIGNATURE_TYPES.iter().any(|t| v.eq_ignore_ascii_case(t))
        })
}

/// The boundary of a multipart Content-Type, if it is one.
fn boundary(content_type: &str) -> Option<Vec<u8>> {
    let content_type = split_type(content_type);
    let kind = content_type.kind.as_bytes();
    if kind.len() < 10 || !kind[..10].eq_ignore_ascii_case(b"multipart/") {
        return None;
    }
    content_type
        .params()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.as_bytes().to_vec())
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Body text: only boundary lines matter.
    Body,
    /// A part's header section, until its empty line.
    PartHeader,
}

/// Follows a body's MIME structure as it streams past.
#[derive(Debug, Clone)]
pub struct PartScanner {
    boundaries: Vec<Vec<u8>>,
    state: State,
    /// The current line (its first `MAX_LINE` bytes).
    line: Vec<u8>,
    line_too_long: bool,
    /// The current part's header section.
    header: Vec<u8>,
    found: bool,
    /// The AT-SMS part's body, once found, until its closing boundary.
    capture: Option<Capture>,
    /// The first `multipart/signed` being read, until its signature part is found.
    signed: Option<Box<Detached>>,
}

/// The body of the AT-SMS part, as transferred.
#[derive(Debug, Clone, Default)]
struct Capture {
    base64: bool,
    data: Vec<u8>,
    /// Longer than `MAX_CAPTURE`, or a line too long to be base64: not kept.
    overflow: bool,
    /// Its closing boundary was seen.
    done: bool,
}

impl Capture {
    fn new(encoding: Option<&str>) -> Capture {
        Capture {
            base64: encoding.is_some_and(|e| e.trim().eq_ignore_ascii_case("base64")),
            ..Capture::default()
        }
    }

    fn line(&mut self, line: &[u8], too_long: bool) {
        if too_long || self.data.len() + line.len() + 2 > MAX_CAPTURE {
            self.overflow = true;
            self.data = Vec::new();
        }
        if !self.overflow {
            self.data.extend_from_slice(line);
            self.data.extend_from_slice(b"\r\n");
        }
    }

    /// The part's content: base64 decoded (RFC 2045 §6.8), or as sent without the line end
    /// that belongs to the boundary.
    fn content(&self) -> Option<Vec<u8>> {
        if self.overflow {
            return None;
        }
        if self.base64 {
            use base64::Engine;
            let text: Vec<u8> = self
                .data
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            return base64::engine::general_purpose::STANDARD.decode(text).ok();
        }
        let mut data = self.data.clone();
        if data.ends_with(b"\r\n") {
            data.truncate(data.len() - 2);
        }
        Some(data)
    }
}

impl PartScanner {
    /// A scanner for a body whose top-level Content-Type is `content_type` (none: text).
    /// Returns none when the body need not be read: the top level already tells.
    pub fn new(
        content_type: Option<&str>,
        disposition: Option<&str>,
        encoding: Option<&str>,
    ) -> (bool, Option<PartScanner>) {
        let Some(content_type) = content_type else {
            return (false, None);
        };
        let scanner = |boundaries, found, capture| PartScanner {
            boundaries,
            state: State::Body,
            line: Vec::new(),
            line_too_long: false,
            header: Vec::new(),
            found,
            capture,
            signed: None,
        };
        if is_atsms_part(content_type, disposition) {
            // The whole body is the part.
            return (
                true,
                Some(scanner(Vec::new(), true, Some(Capture::new(encoding)))),
            );
        }
        match boundary(content_type) {
            Some(b) => {
                let mut scanner = scanner(vec![b], false, None);
                if is_signed_multipart(content_type) {
                    scanner.signed = Some(Box::default());
                }
                (false, Some(scanner))
            }
            None => (false, None),
        }
    }

    /// Whether nothing more of the body matters: no AT-SMS part is being read.
    pub fn finished(&self) -> bool {
        self.found && self.capture.as_ref().is_none_or(|c| c.done || c.overflow)
    }

    /// What the AT-SMS part carries (none: no AT-SMS part), and its content when it is a
    /// whole envelope: a CMS structure (a SignedData for the X.509 floor, with the content a
    /// detached one signs; an EnvelopedData for its recipients) or a sealed envelope (its
    /// CBOR bytes in `der`). Asked once the body has ended.
    pub fn envelope(
        &self,
    ) -> Option<(
        crate::verification::atsms_parts::EnvelopeKind,
        Option<CmsInput>,
    )> {
        use crate::verification::atsms_parts::EnvelopeKind;
        if !self.found {
            return None;
        }
        let content = self.capture.as_ref().and_then(|capture| {
            let mut capture = capture.clone();
            if !capture.done && !self.line.is_empty() {
                // The body ended without a line end.
                capture.line(&self.line, self.line_too_long);
            }
            capture.content()
        });
        if let Some(signed) = &self.signed {
            // A detached signature: AT-SMS's only when a device certificate made it.
            let der = content.filter(|der| crate::verification::atsms_parts::device_signed(der))?;
            let detached = Some(signed.content.clone());
            return Some((EnvelopeKind::CmsSigned, Some(CmsInput { der, detached })));
        }
        let Some(content) = content else {
            return Some((EnvelopeKind::Malformed, None));
        };
        match crate::verification::atsms_parts::classify(&content) {
            // A whole envelope: its bytes (a device's copy keeps them, `lmtp::devices`).
            kind
            @ (EnvelopeKind::CmsSigned | EnvelopeKind::CmsEnveloped | EnvelopeKind::Sealed) => {
                Some((
                    kind,
                    Some(CmsInput {
                        der: content,
                        detached: None,
                    }),
                ))
            }
            kind => Some((kind, None)),
        }
    }

    /// Whether an AT-SMS client message was seen so far.
    pub fn found(&self) -> bool {
        self.found
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if self.finished() {
            return;
        }
        let mut rest = chunk;
        // Nothing after the part that answers matters (a chunk may hold more).
        while !rest.is_empty() && !self.finished() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(lf) => {
                    self.push_line_bytes(&rest[..lf]);
                    self.end_line();
                    rest = &rest[lf + 1..];
                }
                None => {
                    self.push_line_bytes(rest);
                    rest = &[];
                }
            }
        }
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if let Some(signed) = self.signed.as_mut()
            && !signed.push(bytes)
        {
            // Longer than `MAX_CAPTURE`: not held, so not judged (never a pass).
            self.signed = None;
        }
        let room = MAX_LINE.saturating_sub(self.line.len());
        if bytes.len() > room {
            self.line_too_long = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let too_long = std::mem::take(&mut self.line_too_long);
        if let Some(signed) = self.signed.as_mut() {
            signed.end_line();
        }
        match self.state {
            State::PartHeader => {
                if line.is_empty() {
                    self.end_part_header();
                } else if self.header.len() + line.len() < MAX_PART_HEADER {
                    self.header.extend_from_slice(&line);
                    self.header.push(b'\n');
                }
            }
            State::Body if !too_long => self.body_line(&line),
            State::Body => {
                if let Some(capture) = self.capture.as_mut().filter(|c| !c.done) {
                    capture.line(&line, true);
                }
            }
        }
        if let Some(signed) = self.signed.as_mut() {
            signed.line_start = signed.content.len();
        }
    }

    /// A body line: a boundary of an enclosing multipart starts a part or ends the multipart.
    fn body_line(&mut self, line: &[u8]) {
        let boundary = self.is_boundary(line);
        if let Some(capture) = self.capture.as_mut().filter(|c| !c.done) {
            if boundary {
                capture.done = true;
            } else {
                capture.line(line, false);
            }
            return;
        }
        let Some(rest) = line.strip_prefix(b"--") else {
            return;
        };
        let trimmed = trim_end_wsp(rest);
        for depth in (0..self.boundaries.len()).rev() {
            let b = &self.boundaries[depth];
            if let Some(after) = trimmed.strip_prefix(b.as_slice()) {
                if after.is_empty() {
                    self.boundaries.truncate(depth + 1);
                    self.state = State::PartHeader;
                    self.header.clear();
                    self.signed_delimiter(depth, false);
                    return;
                }
                if after == b"--" {
                    self.boundaries.truncate(depth);
                    self.signed_delimiter(depth, true);
                    return;
                }
            }
        }
    }

    /// A delimiter of the multipart at `depth` (`close`: its close-delimiter): the first
    /// delimiter of the `multipart/signed` starts its content, the second ends it; one of an
    /// enclosing multipart, or a close-delimiter before the signature, ends it unread.
    fn signed_delimiter(&mut self, depth: usize, close: bool) {
        let Some(signed) = self.signed.as_mut() else {
            return;
        };
        if depth > signed.depth {
            return;
        }
        match signed.stage {
            Stage::Preamble if depth == signed.depth && !close => {
                signed.stage = Stage::Content;
                signed.line_start = 0;
                signed.content.clear();
            }
            Stage::Content if depth == signed.depth && !close => signed.end_content(),
            _ => self.signed = None,
        }
    }

    /// Whether `line` is a delimiter of an enclosing multipart.
    fn is_boundary(&self, line: &[u8]) -> bool {
        let Some(rest) = line.strip_prefix(b"--") else {
            return false;
        };
        let trimmed = trim_end_wsp(rest);
        self.boundaries.iter().any(|b| {
            trimmed
                .strip_prefix(b.as_slice())
                .is_some_and(|after| after.is_empty() || after == b"--")
        })
    }

    fn end_part_header(&mut self) {
        self.state = State::Body;
        let header = String::from_utf8_lossy(&std::mem::take(&mut self.header)).into_owned();
        let field = |name: &str| -> Option<String> {
            let mut value: Option<String> = None;
            for line in header.lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some(v) = value.as_mut() {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                    continue;
                }
                if value.is_some() {
                    break;
                }
                if let Some((n, v)) = line.split_once(':')
                    && n.trim().eq_ignore_ascii_case(name)
                {
                    value = Some(v.trim().to_string());
                }
            }
            value
        };
        let content_type = field("content-type");
        let disposition = field("content-disposition");
        if let Some(signed) = &self.signed
            && signed.stage == Stage::SignatureHeader
        {
            // The second part of the multipart/signed: its signature, or not S/MIME.
            let kind = split_type(content_type.as_deref().unwrap_or_default());
            if SIGNATURE_TYPES.iter().any(|t| kind.is(t)) {
                self.found = true;
                let encoding = field("content-transfer-encoding");
                self.capture = Some(Capture::new(encoding.as_deref()));
            } else {
                self.signed = None;
            }
            return;
        }
        if let Some(ct) = &content_type {
            if is_atsms_part(ct, disposition.as_deref()) {
                // An AT-SMS part inside a multipart/signed's content: the part is what counts.
                self.signed = None;
                self.found = true;
                let encoding = field("content-transfer-encoding");
                self.capture = Some(Capture::new(encoding.as_deref()));
                return;
            }
            if let Some(b) = boundary(ct)
                && self.boundaries.len() < MAX_DEPTH
            {
                self.boundaries.push(b);
                if self.signed.is_none() && !self.found && is_signed_multipart(ct) {
                    self.signed = Some(Box::new(Detached {
                        depth: self.boundaries.len() - 1,
                        ..Detached::default()
                    }));
                }
            }
        }
    }
}

fn trim_end_wsp(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(0, |e| e + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests;

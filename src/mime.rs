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

use crate::floor::CmsInput;

/// Longest line kept for matching a boundary (RFC 2046 boundaries are at most 70 characters;
/// longer lines are body text and are not looked at beyond this).
const MAX_LINE: usize = 1000;
/// Longest part header section read; a longer one is not looked into.
const MAX_PART_HEADER: usize = 16 * 1024;
/// Deepest nesting of multiparts followed.
const MAX_DEPTH: usize = 16;
/// Most of an AT-SMS part kept (transfer-encoded): a sealed envelope is at most 64 KiB
/// (88 KiB in base64); a longer part is reported malformed rather than held.
pub const MAX_CAPTURE: usize = 1024 * 1024;

/// Whether a Content-Type (and the part's Content-Disposition) names an AT-SMS client message.
pub fn is_atsms_part(content_type: &str, disposition: Option<&str>) -> bool {
    let (kind, params) = split_type(content_type);
    if kind == "application/atsms-envelope" {
        return true;
    }
    if kind != "application/pkcs7-mime" && kind != "application/x-pkcs7-mime" {
        return false;
    }
    let named = |params: &[(String, String)], key: &str| {
        params
            .iter()
            .any(|(k, v)| k == key && v.eq_ignore_ascii_case("message.p7m"))
    };
    named(&params, "name") || disposition.is_some_and(|d| named(&split_type(d).1, "filename"))
}

/// `type/subtype` lower-cased, and the parameters (names lower-cased, values unquoted).
fn split_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    (kind, params)
}

/// Whether a Content-Type is a `multipart/signed` whose protocol is S/MIME's (RFC 8551 §3.5).
fn is_signed_multipart(content_type: &str) -> bool {
    let (kind, params) = split_type(content_type);
    kind == "multipart/signed"
        && params.iter().any(|(k, v)| {
            k == "protocol"
                && (v.eq_ignore_ascii_case("application/pkcs7-signature")
                    || v.eq_ignore_ascii_case("application/x-pkcs7-signature"))
        })
}

/// The boundary of a multipart Content-Type, if it is one.
fn boundary(content_type: &str) -> Option<Vec<u8>> {
    let (kind, params) = split_type(content_type);
    if !kind.starts_with("multipart/") {
        return None;
    }
    params
        .into_iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v.into_bytes())
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

/// A `multipart/signed` as it streams past (RFC 1847 §2.1): its first part kept exactly as
/// signed, in canonical form (RFC 8551 §3.1.1: every line end CRLF), headers included.
#[derive(Debug, Clone, Default)]
struct Detached {
    /// Where its boundary is in `PartScanner::boundaries`.
    depth: usize,
    stage: Stage,
    content: Vec<u8>,
    /// Where the current line starts in `content`.
    line_start: usize,
    /// Longer than `MAX_CAPTURE`: not kept.
    overflow: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Stage {
    /// Before its first delimiter (the preamble).
    #[default]
    Preamble,
    /// Its first part, kept.
    Content,
    /// Its second part's header section: a `pkcs7-signature` or not S/MIME.
    SignatureHeader,
}

impl Detached {
    fn push(&mut self, bytes: &[u8]) {
        if self.stage != Stage::Content || self.overflow {
            return;
        }
        if self.content.len() + bytes.len() + 2 > MAX_CAPTURE {
            self.overflow = true;
            self.content = Vec::new();
            return;
        }
        self.content.extend_from_slice(bytes);
    }

    /// The current line ended: its line end is made CRLF.
    fn end_line(&mut self) {
        if self.stage != Stage::Content || self.overflow {
            return;
        }
        if self.content.len() > self.line_start && self.content.last() == Some(&b'\r') {
            self.content.pop();
        }
        self.content.extend_from_slice(b"\r\n");
    }

    /// The delimiter that ends the first part was the line just ended: it and the CRLF
    /// before it (which belongs to the delimiter, RFC 2046 §5.1.1) are not content.
    fn end_content(&mut self) {
        self.content.truncate(self.line_start);
        if self.content.ends_with(b"\r\n") {
            self.content.truncate(self.content.len() - 2);
        }
        self.stage = Stage::SignatureHeader;
    }
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
    /// CMS structure (a SignedData for the X.509 floor, with the content a detached one
    /// signs; an EnvelopedData for its recipients). Asked once the body has ended.
    pub fn envelope(&self) -> Option<(crate::floor::EnvelopeKind, Option<CmsInput>)> {
        use crate::floor::EnvelopeKind;
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
            // A detached signature: AT-SMS's only when a device certificate signed it (an
            // ordinary S/MIME signature is not ours to judge, as a message without a
            // DKIM-Signature gets no dkim result).
            let der = content.filter(|der| {
                !signed.overflow
                    && crate::floor::classify(der) == EnvelopeKind::CmsSigned
                    && crate::floor::claimed_device(der).is_some()
            })?;
            let detached = Some(signed.content.clone());
            return Some((EnvelopeKind::CmsSigned, Some(CmsInput { der, detached })));
        }
        let Some(content) = content else {
            return Some((EnvelopeKind::Malformed, None));
        };
        match crate::floor::classify(&content) {
            kind @ (EnvelopeKind::CmsSigned | EnvelopeKind::CmsEnveloped) => Some((
                kind,
                Some(CmsInput {
                    der: content,
                    detached: None,
                }),
            )),
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
        if let Some(signed) = self.signed.as_mut() {
            signed.push(bytes);
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
            let (kind, _) = split_type(content_type.as_deref().unwrap_or_default());
            if kind == "application/pkcs7-signature" || kind == "application/x-pkcs7-signature" {
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
mod tests {
    use super::*;

    fn scan(content_type: &str, body: &[u8], cuts: &[usize]) -> bool {
        let (top, scanner) = PartScanner::new(Some(content_type), None, None);
        let Some(mut scanner) = scanner else {
            return top;
        };
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&body.len())) {
            scanner.update(&body[from..to]);
            from = to;
        }
        scanner.found()
    }

    const CLIENT_MESSAGE: &[u8] = b"preamble\r\n--outer\r\nContent-Type: text/plain\r\n\r\nAn AT-SMS message.\r\n--outer\r\nContent-Type: application/pkcs7-mime;\r\n name=\"message.p7m\"\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQIxggE=\r\n--outer--\r\n";

    #[test]
    fn a_named_p7m_part_is_found_however_the_body_is_cut() {
        let ct = "multipart/mixed; boundary=\"outer\"";
        assert!(scan(ct, CLIENT_MESSAGE, &[]));
        for cut in 0..CLIENT_MESSAGE.len() {
            assert!(scan(ct, CLIENT_MESSAGE, &[cut]), "cut {cut}");
        }
    }

    #[test]
    fn what_counts_and_what_does_not() {
        assert!(is_atsms_part("Application/ATSMS-Envelope", None));
        assert!(is_atsms_part(
            "application/x-pkcs7-mime; name=message.p7m",
            None
        ));
        assert!(is_atsms_part(
            "application/pkcs7-mime",
            Some("attachment; filename=\"message.p7m\"")
        ));
        assert!(!is_atsms_part(
            "application/pkcs7-mime; name=smime.p7m",
            None
        ));
        assert!(!is_atsms_part("text/plain; name=message.p7m", None));
        // The top level decides without reading the body.
        assert!(PartScanner::new(Some("application/atsms-envelope"), None, None).0);
        assert!(PartScanner::new(Some("text/plain"), None, None).1.is_none());
        // A p7m named otherwise, or a name only in the text, is not one.
        let other = b"--b\r\nContent-Type: application/pkcs7-mime; name=smime.p7m\r\n\r\nx\r\n--b\r\nContent-Type: text/plain\r\n\r\nname=\"message.p7m\" application/atsms-envelope\r\n--b--\r\n";
        assert!(!scan("multipart/mixed; boundary=b", other, &[]));
    }

    fn envelope(
        content_type: &str,
        encoding: Option<&str>,
        body: &[u8],
        cut: usize,
    ) -> Option<crate::floor::EnvelopeKind> {
        let (_, scanner) = PartScanner::new(Some(content_type), None, encoding);
        let mut scanner = scanner?;
        scanner.update(&body[..cut]);
        scanner.update(&body[cut..]);
        scanner.envelope().map(|(kind, _)| kind)
    }

    #[test]
    fn the_atsms_part_is_read_to_say_what_it_carries_however_the_body_is_cut() {
        use crate::floor::EnvelopeKind;
        use base64::Engine;
        let mut sealed = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
        sealed.extend([7u8; 32]);
        sealed.extend([0x58, 0x40]);
        sealed.extend([9u8; 64]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&sealed);
        let (a, b) = b64.split_at(40);
        let body = format!(
            "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/atsms-envelope\r\nContent-Transfer-Encoding: base64\r\n\r\n{a}\r\n{b}\r\n--b--\r\n"
        );
        let broken = body.replace(&b64[10..20], "!!!!!!!!!!");
        for cut in 0..body.len() {
            assert_eq!(
                envelope("multipart/mixed; boundary=b", None, body.as_bytes(), cut),
                Some(EnvelopeKind::Sealed),
                "cut {cut}"
            );
            assert_eq!(
                envelope("multipart/mixed; boundary=b", None, broken.as_bytes(), cut),
                Some(EnvelopeKind::Malformed),
                "cut {cut}"
            );
        }
        // The whole body is the part, with or without a last line end.
        let top = format!("{a}\r\n{b}");
        for cut in 0..top.len() {
            assert_eq!(
                envelope(
                    "application/atsms-envelope",
                    Some("base64"),
                    top.as_bytes(),
                    cut
                ),
                Some(EnvelopeKind::Sealed)
            );
        }
        // Past MAX_CAPTURE: not held, malformed.
        let line = "A".repeat(76) + "\r\n";
        let huge = line.repeat(MAX_CAPTURE / line.len() + 2);
        assert_eq!(
            envelope(
                "application/atsms-envelope",
                Some("base64"),
                huge.as_bytes(),
                0
            ),
            Some(EnvelopeKind::Malformed)
        );
        assert_eq!(
            envelope(
                "multipart/mixed; boundary=b",
                None,
                b"--b\r\n\r\nx\r\n--b--\r\n",
                3
            ),
            None
        );
    }

    #[test]
    fn nested_multiparts_are_followed() {
        let nested = b"--a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: application/atsms-envelope\r\n\r\n{}\r\n--b--\r\n--a--\r\n";
        assert!(scan("multipart/mixed; boundary=a", nested, &[]));
        // After the inner multipart ended, its boundary no longer counts.
        let closed = b"--a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b--\r\n--b\r\nContent-Type: application/atsms-envelope\r\n\r\n--a--\r\n";
        assert!(!scan("multipart/mixed; boundary=a", closed, &[]));
    }

    const SMIME: &[u8] = include_bytes!("../tests/data/atsms-client/smime-signed.eml");

    /// The body and top-level Content-Type of a whole message.
    fn body_of(message: &[u8]) -> (String, Vec<u8>) {
        let at = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&message[..at]).replace("\r\n\t", " ");
        let ct = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type:"))
            .unwrap()
            .trim()
            .to_string();
        (ct, message[at + 4..].to_vec())
    }

    fn detached(content_type: &str, body: &[u8], cuts: &[usize]) -> Option<CmsInput> {
        let (_, scanner) = PartScanner::new(Some(content_type), None, None);
        let mut scanner = scanner.unwrap();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&body.len())) {
            scanner.update(&body[from..to]);
            from = to;
        }
        match scanner.envelope()? {
            (crate::floor::EnvelopeKind::CmsSigned, input) => input,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_detached_signature_keeps_its_content_as_signed_however_the_body_is_cut() {
        // What mail-parser reads from the whole message (`verify-cms`) is the reference.
        let whole = crate::floor::read_input(SMIME).unwrap();
        assert!(whole.detached.is_some());
        let (ct, body) = body_of(SMIME);
        for cut in 0..body.len() {
            assert_eq!(
                detached(&ct, &body, &[cut]).as_ref(),
                Some(&whole),
                "cut {cut}"
            );
        }
        // It verifies over what was kept.
        let kept = detached(&ct, &body, &[]).unwrap();
        let signed = crate::floor::check_signed(&kept.der, kept.detached.as_deref()).unwrap();
        assert_eq!(signed.did, "did:plc:smimesmimesmimesmimesmim");
        // Line ends made LF in transit are read back as the CRLF that was signed.
        let lf: Vec<u8> = body.iter().copied().filter(|b| *b != b'\r').collect();
        assert_eq!(detached(&ct, &lf, &[7]), Some(whole.clone()));
        // Nested as the first part of a multipart/mixed, it is found alike.
        let nested = [
            format!("--outer\r\nContent-Type: {ct}\r\n\r\n").into_bytes(),
            body.clone(),
            b"\r\n--outer--\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(
            detached("multipart/mixed; boundary=outer", &nested, &[100]),
            Some(whole)
        );
    }

    #[test]
    fn a_signature_not_by_a_device_or_not_s_mime_is_not_ours() {
        use cms::content_info::ContentInfo;
        use cms::signed_data::SignedData;
        use der::{Decode, Encode};
        let (ct, body) = body_of(SMIME);
        let whole = crate::floor::read_input(SMIME).unwrap();
        // The same signature without the certificate its SignerIdentifier names.
        let info = ContentInfo::from_der(&whole.der).unwrap();
        let mut signed: SignedData = info.content.decode_as().unwrap();
        signed.certificates = None;
        let anonymous = ContentInfo {
            content_type: info.content_type,
            content: der::Any::encode_from(&signed).unwrap(),
        }
        .to_der()
        .unwrap();
        use base64::Engine;
        let text = String::from_utf8(body.clone()).unwrap();
        let b64_start = text.find("MII").unwrap();
        let b64_end = b64_start + text[b64_start..].find("\r\n\r\n").unwrap();
        let swapped = format!(
            "{}{}{}",
            &text[..b64_start],
            base64::engine::general_purpose::STANDARD.encode(&anonymous),
            &text[b64_end..]
        );
        assert_eq!(detached(&ct, swapped.as_bytes(), &[]), None);
        // A second part that is not a pkcs7-signature; a protocol that is not S/MIME.
        let plain = text.replace(
            "Content-Type: application/pkcs7-signature",
            "Content-Type: text/plain",
        );
        assert_eq!(detached(&ct, plain.as_bytes(), &[]), None);
        let pgp = ct.replace("application/pkcs7-signature", "application/pgp-signature");
        assert_eq!(detached(&pgp, &body, &[]), None);
        // Broken base64 in the signature part.
        let broken = text.replacen("MII", "!!!", 1);
        assert_eq!(detached(&ct, broken.as_bytes(), &[]), None);
    }
}

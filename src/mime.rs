//! Recognising AT-SMS's own messages (issue: "AT-SMS's own messages are recognised"): mail
//! carrying an AT-SMS client message — a part of type `application/atsms-envelope`, or
//! `application/pkcs7-mime` / `application/x-pkcs7-mime` named `message.p7m` (`name=` of
//! Content-Type or `filename=` of Content-Disposition) — whatever its signature's result.
//!
//! The body streams past in chunks and is never held: a small scanner follows the MIME
//! structure (RFC 2046 §5.1: boundaries, nested multiparts) and reads only part headers, each
//! bounded. Hand-written because the MIME parsers at hand (mail-parser) want the whole
//! message in memory.

/// Longest line kept for matching a boundary (RFC 2046 boundaries are at most 70 characters;
/// longer lines are body text and are not looked at beyond this).
const MAX_LINE: usize = 1000;
/// Longest part header section read; a longer one is not looked into.
const MAX_PART_HEADER: usize = 16 * 1024;
/// Deepest nesting of multiparts followed.
const MAX_DEPTH: usize = 16;

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
}

impl PartScanner {
    /// A scanner for a body whose top-level Content-Type is `content_type` (none: text).
    /// Returns none when the body need not be read: the top level already tells.
    pub fn new(
        content_type: Option<&str>,
        disposition: Option<&str>,
    ) -> (bool, Option<PartScanner>) {
        let Some(content_type) = content_type else {
            return (false, None);
        };
        if is_atsms_part(content_type, disposition) {
            return (true, None);
        }
        match boundary(content_type) {
            Some(b) => (
                false,
                Some(PartScanner {
                    boundaries: vec![b],
                    state: State::Body,
                    line: Vec::new(),
                    line_too_long: false,
                    header: Vec::new(),
                    found: false,
                }),
            ),
            None => (false, None),
        }
    }

    /// Whether an AT-SMS client message was seen so far.
    pub fn found(&self) -> bool {
        self.found
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if self.found {
            return;
        }
        let mut rest = chunk;
        while !rest.is_empty() {
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
            State::Body => {}
        }
    }

    /// A body line: a boundary of an enclosing multipart starts a part or ends the multipart.
    fn body_line(&mut self, line: &[u8]) {
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
                    return;
                }
                if after == b"--" {
                    self.boundaries.truncate(depth);
                    return;
                }
            }
        }
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
        if let Some(ct) = &content_type {
            if is_atsms_part(ct, disposition.as_deref()) {
                self.found = true;
                return;
            }
            if let Some(b) = boundary(ct)
                && self.boundaries.len() < MAX_DEPTH
            {
                self.boundaries.push(b);
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
        let (top, scanner) = PartScanner::new(Some(content_type), None);
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
        assert!(PartScanner::new(Some("application/atsms-envelope"), None).0);
        assert!(PartScanner::new(Some("text/plain"), None).1.is_none());
        // A p7m named otherwise, or a name only in the text, is not one.
        let other = b"--b\r\nContent-Type: application/pkcs7-mime; name=smime.p7m\r\n\r\nx\r\n--b\r\nContent-Type: text/plain\r\n\r\nname=\"message.p7m\" application/atsms-envelope\r\n--b--\r\n";
        assert!(!scan("multipart/mixed; boundary=b", other, &[]));
    }

    #[test]
    fn nested_multiparts_are_followed() {
        let nested = b"--a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: application/atsms-envelope\r\n\r\n{}\r\n--b--\r\n--a--\r\n";
        assert!(scan("multipart/mixed; boundary=a", nested, &[]));
        // After the inner multipart ended, its boundary no longer counts.
        let closed = b"--a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b--\r\n--b\r\nContent-Type: application/atsms-envelope\r\n\r\n--a--\r\n";
        assert!(!scan("multipart/mixed; boundary=a", closed, &[]));
    }
}

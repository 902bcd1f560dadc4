//! A `multipart/signed`'s first part, kept as it was signed while the body streams past.

use super::MAX_CAPTURE;

/// A `multipart/signed` as it streams past (RFC 1847 §2.1): its first part kept exactly as
/// signed, in canonical form (RFC 8551 §3.1.1: every line end CRLF), headers included.
#[derive(Debug, Clone, Default)]
pub(super) struct Detached {
    /// Where its boundary is in `PartScanner::boundaries`.
    pub(super) depth: usize,
    pub(super) stage: Stage,
    pub(super) content: Vec<u8>,
    /// Where the current line starts in `content`.
    pub(super) line_start: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Stage {
    /// Before its first delimiter (the preamble).
    #[default]
    Preamble,
    /// Its first part, kept.
    Content,
    /// Its second part's header section: a `pkcs7-signature` or not S/MIME.
    SignatureHeader,
}

impl Detached {
    /// Keeps `bytes` of the first part; false when that would pass `MAX_CAPTURE` (room is
    /// left for the line end).
    pub(super) fn push(&mut self, bytes: &[u8]) -> bool {
        if self.stage != Stage::Content {
            return true;
        }
        if self.content.len() + bytes.len() + 2 > MAX_CAPTURE {
            return false;
        }
        self.content.extend_from_slice(bytes);
        true
    }

    /// The current line ended: its line end is made CRLF.
    pub(super) fn end_line(&mut self) {
        if self.stage != Stage::Content {
            return;
        }
        if self.content.len() > self.line_start && self.content.last() == Some(&b'\r') {
            self.content.pop();
        }
        self.content.extend_from_slice(b"\r\n");
    }

    /// The delimiter that ends the first part was the line just ended: it and the CRLF
    /// before it (which belongs to the delimiter, RFC 2046 §5.1.1) are not content.
    pub(super) fn end_content(&mut self) {
        self.content.truncate(self.line_start);
        if self.content.ends_with(b"\r\n") {
            self.content.truncate(self.content.len() - 2);
        }
        self.stage = Stage::SignatureHeader;
    }
}

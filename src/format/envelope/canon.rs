//! DKIM "relaxed" canonicalization (RFC 6376 §3.4.2, §3.4.4), as AT-SMS section 4 uses it.

use sha2::{Digest, Sha256};

/// One header field as received: the name, and the raw value after the colon (leading space
/// and folding included; folds may be CRLF or a bare LF, as a milter receives them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: String,
    pub value: Vec<u8>,
}

impl HeaderField {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> HeaderField {
        HeaderField {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The name without the WSP that may stand before the colon (RFC 5322 obsolete syntax).
    pub fn bare_name(&self) -> &str {
        self.name.trim_end_matches([' ', '\t'])
    }

    pub fn is(&self, name: &str) -> bool {
        self.bare_name().eq_ignore_ascii_case(name)
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Appends `name:value` + CRLF in relaxed form (RFC 6376 §3.4.2).
pub fn relaxed_header(field: &HeaderField, out: &mut Vec<u8>) {
    out.extend(field.bare_name().bytes().map(|b| b.to_ascii_lowercase()));
    out.push(b':');
    let mut pending_space = false;
    let mut started = false;
    let value = &field.value;
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        // Unfold: a line break (CRLF, or LF alone) is removed; the WSP after it stays.
        if b == b'\r' && value.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        if b == b'\n' {
            i += 1;
            continue;
        }
        if is_wsp(b) {
            pending_space = started;
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
            started = true;
        }
        i += 1;
    }
    out.extend_from_slice(b"\r\n");
}

/// Names ordered by length first, so most comparisons end there, then by their bytes with
/// ASCII case folded.
fn cmp_names(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| {
        a.iter()
            .map(u8::to_ascii_lowercase)
            .cmp(b.iter().map(u8::to_ascii_lowercase))
    })
}

/// `hh`: SHA-256 over the fields named in `h`, each the last instance not yet used,
/// bottom-up (RFC 6376 §5.4.2); a name with no instance left contributes nothing.
///
/// The fields are sorted once by name (then position), so each name of `h` is a binary
/// search and its instances a run taken from the end: O((|h| + n) log n) however hostile
/// `h` and the header section are, and three allocations in all (it was one per field).
pub fn header_hash(h: &[String], headers: &[HeaderField]) -> [u8; 32] {
    use std::cmp::Ordering;
    // A field's name loses its trailing WSP (`HeaderField::is`); a name in `h` is taken as
    // written: "subject " names no field.
    let field = |i: usize| headers[i].bare_name().as_bytes();
    let mut order: Vec<usize> = (0..headers.len()).collect();
    order.sort_by(|&a, &b| cmp_names(field(a), field(b)).then(a.cmp(&b)));
    // How many instances of the run starting at each position are used.
    let mut used = vec![0usize; order.len()];
    let mut canonical = Vec::with_capacity(1024);
    for name in h {
        let name = name.as_bytes();
        let start = order.partition_point(|&i| cmp_names(field(i), name) == Ordering::Less);
        let end = start
            + order[start..].partition_point(|&i| cmp_names(field(i), name) == Ordering::Equal);
        let Some(slot) = used.get_mut(start) else {
            continue;
        };
        if start + *slot < end {
            *slot += 1;
            relaxed_header(&headers[order[end - *slot]], &mut canonical);
        }
    }
    Sha256::digest(&canonical).into()
}

/// The relaxed body canonicalizer as a stream (RFC 6376 §3.4.4): fed chunks of any size,
/// it keeps a few flags, never the body. Bare LF counts as a line end (spec 4.2: a file
/// with LF line ends is read as if each LF were CRLF); a CR not followed by LF is content.
#[derive(Clone)]
pub struct BodyHasher {
    sha: Sha256,
    /// Canonical output waiting to be hashed in one larger `update`.
    buffer: Vec<u8>,
    /// WSP seen since the last content byte of this line.
    pending_space: bool,
    /// A CR whose meaning depends on the next byte.
    pending_cr: bool,
    /// Whether the current line has content yet.
    line_has_content: bool,
    /// Empty lines seen but not yet emitted: only emitted if content follows them.
    pending_empty_lines: usize,
    /// Raw body bytes fed, for logs and size checks.
    pub raw_len: u64,
}

impl Default for BodyHasher {
    fn default() -> Self {
        BodyHasher {
            sha: Sha256::new(),
            // Made on the first chunk: a hasher that is only moved or replaced (`mem::take`)
            // allocates nothing.
            buffer: Vec::new(),
            pending_space: false,
            pending_cr: false,
            line_has_content: false,
            pending_empty_lines: 0,
            raw_len: 0,
        }
    }
}

const BUFFER: usize = 16 * 1024;

impl BodyHasher {
    pub fn new() -> BodyHasher {
        BodyHasher::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.raw_len += chunk.len() as u64;
        if self.buffer.capacity() == 0 {
            self.buffer.reserve(BUFFER);
        }
        let mut i = 0;
        while i < chunk.len() {
            // Fast path, the common case in the middle of a line: copy a run of bytes that
            // canonicalization leaves alone in one go. A single SP followed by an ordinary byte
            // is left alone too (it stays one SP); anything else goes through `byte`.
            if !self.pending_cr && !self.pending_space && self.line_has_content {
                let rest = &chunk[i..];
                let mut run = 0;
                while run < rest.len() {
                    match rest[run] {
                        b'\t' | b'\r' | b'\n' => break,
                        b' ' => match rest.get(run + 1) {
                            Some(b' ' | b'\t' | b'\r' | b'\n') | None => break,
                            Some(_) => run += 2,
                        },
                        _ => run += 1,
                    }
                }
                if run > 0 {
                    self.buffer.extend_from_slice(&rest[..run]);
                    i += run;
                    continue;
                }
            }
            self.byte(chunk[i]);
            i += 1;
        }
        if self.buffer.len() >= BUFFER {
            self.sha.update(&self.buffer);
            self.buffer.clear();
        }
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' {
                self.end_line();
                return;
            }
            self.content(b'\r');
        }
        match b {
            b'\r' => self.pending_cr = true,
            b'\n' => self.end_line(),
            b' ' | b'\t' => self.pending_space = true,
            _ => self.content(b),
        }
    }

    #[inline]
    fn content(&mut self, b: u8) {
        if !self.line_has_content {
            self.line_has_content = true;
            for _ in 0..self.pending_empty_lines {
                self.buffer.extend_from_slice(b"\r\n");
            }
            self.pending_empty_lines = 0;
        }
        if self.pending_space {
            self.buffer.push(b' ');
            self.pending_space = false;
        }
        self.buffer.push(b);
    }

    #[inline]
    fn end_line(&mut self) {
        // Trailing WSP is dropped; an empty (or all-WSP) line waits to see if content follows.
        self.pending_space = false;
        if self.line_has_content {
            self.buffer.extend_from_slice(b"\r\n");
            self.line_has_content = false;
        } else {
            self.pending_empty_lines += 1;
        }
    }

    /// `bh`: empty lines at the end are dropped; a non-empty body ends in exactly one CRLF.
    pub fn finish(mut self) -> [u8; 32] {
        if self.pending_cr {
            self.pending_cr = false;
            self.content(b'\r');
        }
        if self.line_has_content {
            self.buffer.extend_from_slice(b"\r\n");
        }
        self.sha.update(&self.buffer);
        self.sha.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_body(chunks: &[&[u8]]) -> [u8; 32] {
        let mut hasher = BodyHasher::new();
        for chunk in chunks {
            hasher.update(chunk);
        }
        hasher.finish()
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn empty_body_stays_empty() {
        assert_eq!(canonical_body(&[]), sha(b""));
        assert_eq!(canonical_body(&[b"\r\n\r\n"]), sha(b""));
        assert_eq!(canonical_body(&[b" \t \r\n"]), sha(b""));
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(canonical_body(&[b"abc"]), sha(b"abc\r\n"));
        assert_eq!(canonical_body(&[b"abc  "]), sha(b"abc\r\n"));
    }

    #[test]
    fn whitespace_runs_and_trailing_lines() {
        let expect = sha(b" a b\r\n\r\nc\r\n");
        assert_eq!(
            canonical_body(&[b"  a \t b \t\r\n\r\nc\r\n\r\n\r\n"]),
            expect
        );
        assert_eq!(canonical_body(&[b"  a \t b \t\n\nc\n\n\n"]), expect);
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let body = b"line one  \r\n\r\n  line\ttwo\r\nlone\rcr\r\n\r\n".as_slice();
        let whole = canonical_body(&[body]);
        for split in 0..body.len() {
            assert_eq!(
                canonical_body(&[&body[..split], &body[split..]]),
                whole,
                "split {split}"
            );
        }
        assert_eq!(whole, sha(b"line one\r\n\r\n line two\r\nlone\rcr\r\n"));
    }

    #[test]
    fn eight_bit_bytes_are_content() {
        assert_eq!(
            canonical_body(&[b"gr\xc3\xbc\xc3\x9fe \xff\r\n"]),
            sha(b"gr\xc3\xbc\xc3\x9fe \xff\r\n")
        );
    }

    #[test]
    fn relaxed_header_unfolds_and_collapses() {
        let mut out = Vec::new();
        relaxed_header(
            &HeaderField::new("Subject ", &b" \t Hello \r\n\t  from\n atproto  "[..]),
            &mut out,
        );
        assert_eq!(out, b"subject:Hello from atproto\r\n");
    }

    /// The sorted search against the obvious quadratic one (RFC 6376 §5.4.2 as written):
    /// names in any case, with trailing WSP, repeated, missing, over many shuffles.
    #[test]
    fn header_hash_matches_the_plain_reading() {
        fn plain(h: &[String], headers: &[HeaderField]) -> [u8; 32] {
            let mut taken = vec![false; headers.len()];
            let mut out = Vec::new();
            for name in h {
                if let Some(i) = (0..headers.len())
                    .rev()
                    .find(|&i| !taken[i] && headers[i].is(name))
                {
                    taken[i] = true;
                    relaxed_header(&headers[i], &mut out);
                }
            }
            sha(&out)
        }
        let names = [
            "From", "to", "TO ", "Subject", "from\t", "x-a", "X-A", "date",
        ];
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for round in 0..500 {
            let headers: Vec<HeaderField> = (0..next(12))
                .map(|i| HeaderField::new(names[next(names.len())], format!(" v{round}.{i}")))
                .collect();
            let h: Vec<String> = (0..next(10))
                .map(|_| names[next(names.len())].to_lowercase())
                .chain(["nowhere".to_string()])
                .collect();
            assert_eq!(
                header_hash(&h, &headers),
                plain(&h, &headers),
                "{h:?} {headers:?}"
            );
        }
    }

    #[test]
    fn header_hash_takes_last_unused_instance() {
        let headers = vec![
            HeaderField::new("From", " first"),
            HeaderField::new("To", " x"),
            HeaderField::new("from", " second"),
        ];
        let h = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            header_hash(&h(&["from", "to", "from", "from"]), &headers),
            sha(b"from:second\r\nto:x\r\nfrom:first\r\n")
        );
        // A field's name loses its trailing WSP; a name in `h` is taken as written.
        let spaced = vec![HeaderField::new("To \t", " x")];
        assert_eq!(header_hash(&h(&["to"]), &spaced), sha(b"to:x\r\n"));
        assert_eq!(header_hash(&h(&["to "]), &headers), sha(b""));
    }
}

//! Reading a whole message from a stream: the header section into fields, the body through
//! the streaming hasher. Used where a message arrives as bytes (the command line, LMTP);
//! the milter receives fields and body chunks already split.

use std::io::{self, BufRead, Read};

use crate::format::envelope::{BodyHasher, HeaderField};

use crate::infra::config::LimitsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{}", crate::format::reply::HEADER_TOO_LARGE)]
    HeaderTooLarge,
}

/// A message as the verifier needs it: its fields in order and its relaxed body hash.
#[derive(Debug, Clone)]
pub struct ParsedMessage {
    pub headers: Vec<HeaderField>,
    pub body_hash: [u8; 32],
    pub body_len: u64,
    /// The line end the message uses (`"\r\n"` or `"\n"`), to write fields back in kind.
    pub newline: &'static str,
}

/// Splits header lines into fields. A line that is neither a field nor a continuation
/// ends the header section and is the first body line, as Postfix's cleanup treats it.
#[derive(Default)]
struct HeaderCollector {
    fields: Vec<HeaderField>,
}

enum LineKind {
    Field,
    EndOfHeaders,
    FirstBodyLine,
}

fn strip_line_end(value: &mut Vec<u8>) {
    if value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
}

impl HeaderCollector {
    fn push(&mut self, line: &[u8]) -> LineKind {
        if line == b"\r\n" || line == b"\n" {
            self.finish_last();
            return LineKind::EndOfHeaders;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(last) = self.fields.last_mut() {
                last.value.extend_from_slice(line);
                return LineKind::Field;
            }
            return LineKind::FirstBodyLine;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            self.finish_last();
            return LineKind::FirstBodyLine;
        };
        let name = &line[..colon];
        let trimmed = name.strip_suffix(b" ").unwrap_or(name);
        let name_ok = !trimmed.is_empty() && trimmed.iter().all(|b| (33..=126).contains(b));
        let Ok(name) = std::str::from_utf8(name) else {
            self.finish_last();
            return LineKind::FirstBodyLine;
        };
        if !name_ok {
            self.finish_last();
            return LineKind::FirstBodyLine;
        }
        self.finish_last();
        self.fields.push(HeaderField::new(name, &line[colon + 1..]));
        LineKind::Field
    }

    fn finish_last(&mut self) {
        if let Some(last) = self.fields.last_mut() {
            strip_line_end(&mut last.value);
        }
    }
}

/// Splits a header section arriving in pieces of any size (a pipe, LMTP's BDAT chunks) into
/// fields, and says where the body starts. Memory is bounded by `limits` (bytes and fields).
pub struct HeaderSplitter {
    collector: HeaderCollector,
    partial: Vec<u8>,
    used: u64,
    newline: Option<&'static str>,
    max_bytes: u64,
    max_fields: usize,
}

impl Default for HeaderSplitter {
    fn default() -> Self {
        HeaderSplitter::new(&LimitsConfig::default())
    }
}

/// Where the header section ended in the bytes just pushed.
pub enum Split {
    /// More header bytes are needed.
    More,
    /// The body starts at this offset of the pushed bytes; `prefix` holds body bytes that
    /// were buffered before (a line that was not a field), to be hashed first.
    Body { offset: usize, prefix: Vec<u8> },
}

impl HeaderSplitter {
    pub fn new(limits: &LimitsConfig) -> HeaderSplitter {
        HeaderSplitter {
            collector: HeaderCollector::default(),
            partial: Vec::new(),
            used: 0,
            newline: None,
            max_bytes: limits.max_header_bytes,
            max_fields: limits.max_header_fields,
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<Split, ReadError> {
        let mut start = 0;
        while let Some(pos) = data[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos + 1;
            self.used += (end - start) as u64;
            if self.used > self.max_bytes || self.collector.fields.len() > self.max_fields {
                return Err(ReadError::HeaderTooLarge);
            }
            let line: Vec<u8> = if self.partial.is_empty() {
                data[start..end].to_vec()
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&data[start..end]);
                line
            };
            if self.newline.is_none() {
                self.newline = Some(if line.ends_with(b"\r\n") {
                    "\r\n"
                } else {
                    "\n"
                });
            }
            match self.collector.push(&line) {
                LineKind::Field => {}
                LineKind::EndOfHeaders => {
                    return Ok(Split::Body {
                        offset: end,
                        prefix: Vec::new(),
                    });
                }
                LineKind::FirstBodyLine => {
                    return Ok(Split::Body {
                        offset: end,
                        prefix: line,
                    });
                }
            }
            start = end;
        }
        self.used += (data.len() - start) as u64;
        if self.used > self.max_bytes {
            return Err(ReadError::HeaderTooLarge);
        }
        self.partial.extend_from_slice(&data[start..]);
        Ok(Split::More)
    }

    /// The fields, once the header section ended or the input did (a message without body),
    /// and the body bytes the input ended in: a last line without a line end that is not a
    /// field is the body's (it is kept, never dropped).
    pub fn finish(mut self) -> Finished {
        let mut body = Vec::new();
        if !self.partial.is_empty() {
            let partial = std::mem::take(&mut self.partial);
            match self.collector.push(&partial) {
                LineKind::Field | LineKind::EndOfHeaders => {}
                LineKind::FirstBodyLine => body = partial,
            }
        }
        self.collector.finish_last();
        Finished {
            fields: self.collector.fields,
            newline: self.newline.unwrap_or("\r\n"),
            body,
        }
    }
}

/// What `HeaderSplitter::finish` found.
pub struct Finished {
    pub fields: Vec<HeaderField>,
    /// The line end the message uses.
    pub newline: &'static str,
    /// Body bytes still held (a last line without a line end).
    pub body: Vec<u8>,
}

/// Reads a message, hashing the body as it streams past: memory holds the header section
/// and one buffer, whatever the body's size.
pub fn read_message<R: Read>(input: R) -> Result<ParsedMessage, ReadError> {
    let mut reader = io::BufReader::with_capacity(64 * 1024, input);
    // A saved message is read whole by an operator's command: a generous bound.
    let mut splitter = HeaderSplitter::new(&LimitsConfig {
        max_header_bytes: 16 * 1024 * 1024,
        max_header_fields: 100_000,
    });
    let mut hasher = BodyHasher::new();
    let mut in_body = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        if in_body {
            hasher.update(chunk);
        } else if let Split::Body { offset, prefix } = splitter.push(chunk)? {
            in_body = true;
            hasher.update(&prefix);
            hasher.update(&chunk[offset..]);
        }
        reader.consume(n);
    }
    let finished = splitter.finish();
    hasher.update(&finished.body);
    let (headers, newline) = (finished.fields, finished.newline);
    Ok(ParsedMessage {
        headers,
        body_len: hasher.raw_len,
        body_hash: hasher.finish(),
        newline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_folds_and_body() {
        let raw = b"From: a@b.c\r\nSubject: one\r\n\ttwo\r\nX:\r\n\r\nbody\r\n";
        let m = read_message(&raw[..]).unwrap();
        assert_eq!(m.headers.len(), 3);
        assert_eq!(m.headers[1].value, b" one\r\n\ttwo");
        assert_eq!(m.headers[2].value, b"");
        assert_eq!(m.newline, "\r\n");
        let mut h = BodyHasher::new();
        h.update(b"body\r\n");
        assert_eq!(m.body_hash, h.finish());
    }

    #[test]
    fn lf_files_and_missing_body() {
        let m = read_message(&b"From: a@b.c\nSubject: x"[..]).unwrap();
        assert_eq!(m.newline, "\n");
        assert_eq!(m.headers[1].value, b" x");
        assert_eq!(m.body_len, 0);
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_fields_and_hash() {
        let raw =
            b"From: a@b.c\r\nSubject: one\r\n two\r\nX: y\r\n\r\nbody line\r\n\r\n".as_slice();
        let whole = read_message(raw).unwrap();
        for split in 0..raw.len() {
            let mut splitter = HeaderSplitter::default();
            let mut hasher = BodyHasher::new();
            let mut in_body = false;
            for part in [&raw[..split], &raw[split..]] {
                if in_body {
                    hasher.update(part);
                } else if let Split::Body { offset, prefix } = splitter.push(part).unwrap() {
                    in_body = true;
                    hasher.update(&prefix);
                    hasher.update(&part[offset..]);
                }
            }
            assert_eq!(splitter.finish().fields, whole.headers, "split {split}");
            assert_eq!(hasher.finish(), whole.body_hash, "split {split}");
        }
    }

    #[test]
    fn a_last_line_without_a_line_end_is_kept() {
        let m = read_message(&b"From: a@b.c\nno colon here, no newline"[..]).unwrap();
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.body_len, b"no colon here, no newline".len() as u64);
        let m = read_message(&b"From: a@b.c\n\nlast"[..]).unwrap();
        let mut h = BodyHasher::new();
        h.update(b"last\r\n");
        assert_eq!(m.body_hash, h.finish());
    }

    #[test]
    fn too_many_fields_is_an_error() {
        let limits = LimitsConfig {
            max_header_bytes: 1 << 20,
            max_header_fields: 10,
        };
        let mut splitter = HeaderSplitter::new(&limits);
        assert!(matches!(
            splitter.push(&b"a:\n".repeat(20)),
            Err(ReadError::HeaderTooLarge)
        ));
    }

    #[test]
    fn non_header_line_starts_the_body() {
        let m = read_message(&b"From: a@b.c\nthis is body\nmore\n"[..]).unwrap();
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.body_len, b"this is body\nmore\n".len() as u64);
    }
}

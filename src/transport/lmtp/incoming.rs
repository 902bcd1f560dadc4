//! One message arriving over LMTP: its header section and body fed to the message session,
//! the body spooled (in memory up to a limit, then to an unlinked temporary file) with LF line
//! ends for delivery. The message is never held whole in memory.

use std::io::{self, Seek, SeekFrom, Write};

use tempfile::SpooledTempFile;

use crate::policy::judge::{MessageBytes, MessageSession, Settings};

/// Bodies up to this size stay in memory; larger ones go to a temporary file.
const SPOOL_IN_MEMORY: usize = 256 * 1024;

pub struct Incoming {
    /// The header section and body, given to the message session.
    pub message: MessageBytes,
    spool: Spool,
    /// Bytes received, as on the wire.
    pub size: u64,
    max_size: u64,
    /// Over the size limit, or the header section too large: the rest is discarded.
    pub refused: Option<&'static str>,
}

/// The body as stored: LF line ends, in memory up to a limit, then in a temporary file.
struct Spool {
    file: SpooledTempFile,
    /// A CR at the end of the last chunk, not yet known to start a CRLF.
    pending_cr: bool,
    io_error: Option<io::Error>,
}

impl Spool {
    fn write(&mut self, data: &[u8]) {
        if data.is_empty() || self.io_error.is_some() {
            return;
        }
        // Stored with LF line ends: CRLF becomes LF, a lone CR stays.
        let mut out = Vec::with_capacity(data.len() + 1);
        let mut i = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if data[0] != b'\n' {
                out.push(b'\r');
            }
        }
        while i < data.len() {
            let b = data[i];
            if b == b'\r' {
                if i + 1 == data.len() {
                    self.pending_cr = true;
                } else if data[i + 1] != b'\n' {
                    out.push(b'\r');
                }
            } else {
                out.push(b);
            }
            i += 1;
        }
        if let Err(e) = self.file.write_all(&out) {
            self.io_error = Some(e);
        }
    }
}

impl Incoming {
    pub fn new(max_size: u64, settings: &Settings) -> Incoming {
        Incoming {
            message: MessageBytes::new(MessageSession::new(settings), &settings.limits),
            spool: Spool {
                file: SpooledTempFile::new(SPOOL_IN_MEMORY),
                pending_cr: false,
                io_error: None,
            },
            size: 0,
            max_size,
            refused: None,
        }
    }

    pub fn session(&mut self) -> &mut MessageSession {
        &mut self.message.session
    }

    /// A failure to store the body.
    pub fn io_error(&mut self) -> Option<io::Error> {
        self.spool.io_error.take()
    }

    /// Feeds message bytes (already dot-unstuffed), CRLF or not.
    pub fn push(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if self.refused.is_some() {
            return;
        }
        if self.size > self.max_size {
            self.refused = Some("message too large");
            return;
        }
        let spool = &mut self.spool;
        self.message.push(data, &mut |body| spool.write(body));
        if self.message.too_large {
            self.refused = Some(crate::format::reply::HEADER_TOO_LARGE);
        }
    }

    /// Ends the message: the header section is complete even without a body. Called once
    /// more is harmless.
    pub fn finish(&mut self) {
        if self.refused.is_some() {
            return;
        }
        let spool = &mut self.spool;
        self.message.finish(&mut |body| spool.write(body));
        if self.message.too_large {
            self.refused = Some(crate::format::reply::HEADER_TOO_LARGE);
            return;
        }
        if self.spool.pending_cr {
            self.spool.pending_cr = false;
            if let Err(e) = self.spool.file.write_all(b"\r") {
                self.spool.io_error = Some(e);
            }
        }
    }

    /// The spooled body, from its start.
    /// The spooled body (LF line ends), to be read from the start as often as needed.
    pub fn body_source(&mut self) -> io::Result<&mut SpooledTempFile> {
        self.spool.file.seek(SeekFrom::Start(0))?;
        Ok(&mut self.spool.file)
    }

    /// The header section as stored: every field but forged `Authentication-Results`, with LF
    /// line ends.
    pub fn kept_header_section(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let session = &self.message.session;
        for (i, field) in session.headers().iter().enumerate() {
            if session.is_forged(i) {
                continue;
            }
            out.extend_from_slice(field.name.as_bytes());
            out.push(b':');
            let mut j = 0;
            let v = &field.value;
            while j < v.len() {
                if !(v[j] == b'\r' && v.get(j + 1) == Some(&b'\n')) {
                    out.push(v[j]);
                }
                j += 1;
            }
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn settings() -> Settings {
        crate::policy::judge::test_settings(crate::infra::config::PolicyConfig::default())
    }

    fn stored(chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let s = settings();
        let mut incoming = Incoming::new(1 << 20, &s);
        for chunk in chunks {
            incoming.push(chunk);
        }
        incoming.finish();
        let head = incoming.kept_header_section();
        let mut body = Vec::new();
        incoming
            .body_source()
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        (head, body)
    }

    #[test]
    fn crlf_becomes_lf_across_every_chunk_boundary() {
        let message: &[u8] =
            b"Subject: a\r\n b\r\nFrom: x@y.z\r\n\r\nline\r\nlone\rcr\r\n\r\nend\r";
        let whole = stored(&[message]);
        assert_eq!(whole.0, b"Subject: a\n b\nFrom: x@y.z\n");
        assert_eq!(whole.1, b"line\nlone\rcr\n\nend\r");
        for cut in 0..=message.len() {
            assert_eq!(
                stored(&[&message[..cut], &message[cut..]]),
                whole,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = message.chunks(1).collect();
        assert_eq!(stored(&bytes), whole, "byte by byte");
    }

    #[test]
    fn a_last_line_without_a_line_end_is_stored() {
        assert_eq!(stored(&[b"From: x@y.z\r\n\r\nno end"]).1, b"no end");
        assert_eq!(stored(&[b"From: x@y.z\r\nnot a field"]).1, b"not a field");
    }

    #[test]
    fn a_header_section_over_the_limits_is_refused_and_not_kept() {
        let s = settings();
        let mut incoming = Incoming::new(1 << 30, &s);
        for _ in 0..2000 {
            incoming.push(b"a:\r\n");
        }
        incoming.push(b"\r\nbody\r\n");
        incoming.finish();
        assert_eq!(
            incoming.refused,
            Some(crate::format::reply::HEADER_TOO_LARGE)
        );
        assert!(incoming.message.session.headers().is_empty());
    }
}

//! Netstrings (<http://cr.yp.to/proto/netstrings.txt>), the framing of the Sendmail/Postfix
//! socketmap protocol: `<decimal length>:<bytes>,`.
//!
//! Hand-written: no maintained crate exists (the `netstring` crate is unmaintained and
//! synchronous), and the framing is small enough to read whole. Strict, because a request
//! comes from the network: the length has 1 to 6 digits and no leading zero (RFC-like
//! canonical form; Postfix writes it so), the payload is capped, and the `,` is checked.

use std::fmt;
use std::ops::Range;

/// At most this many length digits (999 999 bytes); Postfix's own replies are capped at
/// 100 000 bytes, requests are one map name and one address.
pub const MAX_DIGITS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetstringError {
    /// The length is not 1 to 6 digits without a leading zero, followed by `:`.
    BadLength,
    /// The length is larger than the cap for this kind of message.
    TooLong { len: usize, max: usize },
    /// The payload is not followed by `,`.
    MissingComma,
}

impl fmt::Display for NetstringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetstringError::BadLength => f.write_str("malformed netstring length"),
            NetstringError::TooLong { len, max } => {
                write!(f, "netstring of {len} bytes is longer than {max}")
            }
            NetstringError::MissingComma => f.write_str("netstring not terminated by ','"),
        }
    }
}

impl std::error::Error for NetstringError {}

/// A netstring found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the payload lies in the buffer.
    pub payload: Range<usize>,
    /// Bytes the whole netstring takes.
    pub len: usize,
}

/// Decodes the netstring at the start of `buf`: `Ok(None)` when more bytes are needed.
/// Errors are found as early as the bytes allow (a bad length before its payload arrives).
pub fn decode(buf: &[u8], max: usize) -> Result<Option<Frame>, NetstringError> {
    let digits = buf
        .iter()
        .take(MAX_DIGITS + 1)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits > MAX_DIGITS || (digits > 1 && buf[0] == b'0') {
        return Err(NetstringError::BadLength);
    }
    match buf.get(digits) {
        None => return Ok(None),
        Some(b':') if digits > 0 => {}
        Some(_) => return Err(NetstringError::BadLength),
    }
    let len: usize = std::str::from_utf8(&buf[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(NetstringError::BadLength)?;
    if len > max {
        return Err(NetstringError::TooLong { len, max });
    }
    let start = digits + 1;
    let end = start + len;
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some(Frame {
            payload: start..end,
            len: end + 1,
        })),
        Some(_) => Err(NetstringError::MissingComma),
    }
}

/// Appends `payload` as a netstring.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8], max: usize) -> Result<Vec<Vec<u8>>, NetstringError> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(frame) = decode(&buf[at..], max)? {
            out.push(buf[at..][frame.payload].to_vec());
            at += frame.len;
        }
        Ok(out)
    }

    #[test]
    fn round_trip_and_pipelining() {
        let mut buf = Vec::new();
        for p in [&b"atsms_alias did.plc.x@y"[..], b"", b"a,b:c"] {
            encode(p, &mut buf);
        }
        assert_eq!(&buf[..5], b"23:at");
        assert_eq!(
            all(&buf, 100).unwrap(),
            vec![
                b"atsms_alias did.plc.x@y".to_vec(),
                vec![],
                b"a,b:c".to_vec()
            ]
        );
    }

    #[test]
    fn incomplete_input_asks_for_more_at_every_cut() {
        let buf = b"12:hello world!,";
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], 100), Ok(None), "cut {cut}");
        }
        assert_eq!(decode(buf, 100).unwrap().unwrap().len, buf.len());
    }

    #[test]
    fn malformed_input_is_refused_early() {
        for bad in [
            &b"x:"[..],
            b":",
            b"01:a,",
            b"00:,",
            b"-1:",
            b"1 :a,",
            b"1234567:",
        ] {
            assert_eq!(
                decode(bad, 10_000_000),
                Err(NetstringError::BadLength),
                "{bad:?}"
            );
        }
        assert_eq!(decode(b"1234567", 100), Err(NetstringError::BadLength));
        assert_eq!(
            decode(b"999999:", 2048),
            Err(NetstringError::TooLong {
                len: 999_999,
                max: 2048
            })
        );
        assert_eq!(decode(b"1:ab", 100), Err(NetstringError::MissingComma));
        assert_eq!(decode(b"0:,", 100).unwrap().unwrap().len, 3);
    }
}

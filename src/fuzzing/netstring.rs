//! The socketmap netstring codec: any bytes decode to frames or a clear error, never a panic;
//! the frames found are the same however the input is cut (split-invariance), and encoding
//! what was decoded decodes to the same again.

use crate::transport::socketmap::netstring::{decode, encode};

/// Frames (payloads) decoded from `data` as a server would: whatever is complete, in order,
/// then whether it stopped at an error.
fn frames(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode(&buf, 4096) {
                Ok(Some(frame)) => {
                    out.push(buf[frame.payload.clone()].to_vec());
                    buf.drain(..frame.len);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let whole = frames(&[data]);
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    assert_eq!(frames(&[&data[..cut], &data[cut..]]), whole, "cut at {cut}");
    let mut again = Vec::new();
    for payload in &whole.0 {
        encode(payload, &mut again);
    }
    assert_eq!(frames(&[&again]).0, whole.0);
}

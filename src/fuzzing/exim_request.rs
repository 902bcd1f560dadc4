//! The Exim scanner's pure parts: any bytes give a request or a clear error, never a panic,
//! and the same however they are cut; the mbox stripper gives the same message bytes for any
//! cut of the same copy.

use crate::transport::exim::protocol::{HeadDecoder, MboxStripper};

fn head(pieces: &[&[u8]]) -> String {
    let mut decoder = HeadDecoder::new();
    let mut fed = 0;
    for piece in pieces {
        match decoder.feed(piece) {
            Ok(Some((request, used))) => return format!("{request:?} at {}", fed + used),
            Ok(None) => fed += piece.len(),
            Err(e) => return format!("error {e}"),
        }
    }
    "incomplete".into()
}

fn stripped(pieces: &[&[u8]]) -> Vec<u8> {
    let mut stripper = MboxStripper::new();
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&stripper.feed(piece));
    }
    out.extend_from_slice(&stripper.finish());
    out
}

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let cut = if data.is_empty() {
        0
    } else {
        data[0] as usize % (data.len() + 1)
    };
    let (a, b) = data.split_at(cut);
    assert_eq!(head(&[data]), head(&[a, b]));
    assert_eq!(stripped(&[data]), stripped(&[a, b]));
}

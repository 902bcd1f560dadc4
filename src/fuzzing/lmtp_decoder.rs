//! The LMTP decoder: any bytes, cut anywhere, give the same events (split-invariance), and
//! never a panic. DATA is entered whenever a DATA command comes, as a server answering 354
//! would.

use crate::transport::lmtp::protocol::{Command, Decoder, Event};

fn events(pieces: &[&[u8]]) -> Vec<String> {
    let mut decoder = Decoder::new();
    let mut seen: Vec<String> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        loop {
            let (used, event) = decoder.next(&pending);
            match event {
                Some(Event::Data(d)) => data.extend_from_slice(d),
                Some(other) => {
                    if !data.is_empty() {
                        seen.push(format!("data {:?}", std::mem::take(&mut data)));
                    }
                    if matches!(other, Event::Command(Command::Data)) {
                        decoder.start_data();
                    }
                    seen.push(format!("{other:?}"));
                }
                None if used == 0 => break,
                None => {}
            }
            pending.drain(..used);
        }
    }
    if !data.is_empty() {
        seen.push(format!("data {data:?}"));
    }
    seen
}

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let whole = events(&[data]);
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    assert_eq!(events(&[&data[..cut], &data[cut..]]), whole, "cut at {cut}");
}

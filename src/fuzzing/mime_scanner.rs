//! The streaming MIME part scanner (AT-SMS client messages): any body, cut anywhere, gives
//! the same answer, and never a panic.

use crate::mime::PartScanner;

fn found(content_type: &str, pieces: &[&[u8]]) -> bool {
    let (top, scanner) = PartScanner::new(Some(content_type), None);
    let Some(mut scanner) = scanner else {
        return top;
    };
    for piece in pieces {
        scanner.update(piece);
    }
    scanner.found()
}

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let ct = "multipart/mixed; boundary=\"b\"";
    let whole = found(ct, &[data]);
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    assert_eq!(
        found(ct, &[&data[..cut], &data[cut..]]),
        whole,
        "cut at {cut}"
    );
}

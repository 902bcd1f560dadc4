//! The streaming MIME part scanner (AT-SMS client messages): any body, cut anywhere, gives
//! the same answer — whether there is an AT-SMS part, what it carries, its content — and
//! never a panic.

use crate::format::mime::PartScanner;
use crate::verification::atsms_parts::EnvelopeKind;

type Answer = (
    bool,
    Option<(
        EnvelopeKind,
        Option<crate::verification::atsms_parts::CmsInput>,
    )>,
);

fn scan(content_type: &str, pieces: &[&[u8]]) -> Answer {
    let (top, scanner) = PartScanner::new(Some(content_type), None, Some("base64"));
    let Some(mut scanner) = scanner else {
        return (top, None);
    };
    for piece in pieces {
        scanner.update(piece);
    }
    (scanner.found(), scanner.envelope())
}

/// The target: any bytes, as the body of a multipart and as a top-level AT-SMS part.
pub fn run(data: &[u8]) {
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for ct in [
        "multipart/mixed; boundary=\"b\"",
        "application/atsms-envelope",
    ] {
        let whole = scan(ct, &[data]);
        assert_eq!(
            scan(ct, &[&data[..cut], &data[cut..]]),
            whole,
            "{ct}: cut at {cut}"
        );
    }
}

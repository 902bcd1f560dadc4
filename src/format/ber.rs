//! BER as CMS producers write it (RFC 5652 §1.1 takes BER; pkijs, the AT-SMS client's CMS
//! library, writes the outer layers with indefinite lengths): one tag and length at a time,
//! bounded, for the few structures read here (`der` reads DER only). Hand-written: the
//! RustCrypto stack has no BER reader.

#[derive(Debug, Clone, Copy)]
pub struct Tlv {
    pub tag: u8,
    /// Where the TLV starts (its tag).
    pub start: usize,
    pub content_start: usize,
    /// None: indefinite length (the content runs to an end-of-contents pair).
    pub content_end: Option<usize>,
}

/// Reads one tag and length at `at` (low tag numbers only, as CMS uses), moving `at` past
/// them (to the content; past the content is `content_end`, or `skip`).
pub fn tlv(bytes: &[u8], at: &mut usize) -> Option<Tlv> {
    let start = *at;
    let tag = *bytes.get(*at)?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *bytes.get(*at + 1)?;
    *at += 2;
    let content_end = match first {
        0x80 => {
            // Indefinite: constructed only.
            (tag & 0x20 != 0).then_some(())?;
            None
        }
        0..=0x7f => Some(*at + usize::from(first)),
        _ => {
            let n = usize::from(first & 0x7f);
            if n > 4 {
                return None;
            }
            let raw = bytes.get(*at..*at + n)?;
            *at += n;
            let len = raw.iter().fold(0usize, |v, b| (v << 8) | usize::from(*b));
            Some(at.checked_add(len)?)
        }
    };
    if content_end.is_some_and(|end| end > bytes.len()) {
        return None;
    }
    Some(Tlv {
        tag,
        start,
        content_start: *at,
        content_end,
    })
}

/// Where the element `tlv` ends (past its end-of-contents when indefinite), bounded in
/// depth.
pub fn skip(bytes: &[u8], element: Tlv) -> Option<usize> {
    fn end(bytes: &[u8], tlv: Tlv, depth: usize) -> Option<usize> {
        if let Some(end) = tlv.content_end {
            return Some(end);
        }
        if depth > 32 {
            return None;
        }
        let mut at = tlv.content_start;
        loop {
            if bytes.get(at..at + 2)? == [0, 0] {
                return Some(at + 2);
            }
            let inner = self::tlv(bytes, &mut at)?;
            at = end(bytes, inner, depth + 1)?;
        }
    }
    end(bytes, element, 0)
}

/// The bytes of an OCTET STRING `element` (or an implicitly tagged one), primitive or
/// constructed of primitive chunks (X.690 §8.7: pkijs writes CMS content in chunks of 1024
/// under an indefinite length), at most `max` bytes in all.
pub fn octets(bytes: &[u8], element: Tlv, max: usize) -> Option<Vec<u8>> {
    if element.tag & 0x20 == 0 {
        let content = bytes.get(element.content_start..element.content_end?)?;
        return (content.len() <= max).then(|| content.to_vec());
    }
    let mut out = Vec::new();
    let mut at = element.content_start;
    loop {
        match element.content_end {
            Some(end) if at >= end => return (at == end).then_some(out),
            None if bytes.get(at..at + 2)? == [0, 0] => return Some(out),
            _ => {}
        }
        let chunk = tlv(bytes, &mut at)?;
        // Chunks are primitive OCTET STRINGs (no nesting: one level, as CMS writers make it).
        (chunk.tag == 0x04).then_some(())?;
        let end = chunk.content_end?;
        let piece = bytes.get(chunk.content_start..end)?;
        (out.len() + piece.len() <= max).then_some(())?;
        out.extend_from_slice(piece);
        at = end;
    }
}

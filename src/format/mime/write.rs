//! The mail the AT-SMS client's SMTP form is (its inbound-delivery spec §4), made here for the
//! HTTPS inbox (what a POST becomes on its way to LMTP) and the sender (a `mailto:` delivery):
//! the caller's header fields, then one base64 `application/atsms-envelope` part in lines of
//! 76, CRLF. One buffer, sized first.

use base64::Engine;

/// `head` (header fields, each ending CRLF; not MIME-Version or Content-Type), then the
/// envelope's part between `boundary` lines.
pub fn envelope_mail(head: &str, boundary: &str, envelope: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(envelope);
    let mut out = Vec::with_capacity(head.len() + encoded.len() * 78 / 76 + 256);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: application/atsms-envelope\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n"
        )
        .as_bytes(),
    );
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

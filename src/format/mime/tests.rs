//! The scanner's tests: every answer the same however the body is cut.

use super::*;

fn scan(content_type: &str, body: &[u8], cuts: &[usize]) -> bool {
    let (top, scanner) = PartScanner::new(Some(content_type), None, None);
    let Some(mut scanner) = scanner else {
        return top;
    };
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&body.len())) {
        scanner.update(&body[from..to]);
        from = to;
    }
    scanner.found()
}

const CLIENT_MESSAGE: &[u8] = b"preamble\r\n--outer\r\nContent-Type: text/plain\r\n\r\nAn AT-SMS message.\r\n--outer\r\nContent-Type: application/pkcs7-mime;\r\n name=\"message.p7m\"\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQIxggE=\r\n--outer--\r\n";

#[test]
fn a_named_p7m_part_is_found_however_the_body_is_cut() {
    let ct = "multipart/mixed; boundary=\"outer\"";
    assert!(scan(ct, CLIENT_MESSAGE, &[]));
    for cut in 0..CLIENT_MESSAGE.len() {
        assert!(scan(ct, CLIENT_MESSAGE, &[cut]), "cut {cut}");
    }
}

#[test]
fn what_counts_and_what_does_not() {
    assert!(is_atsms_part("Application/ATSMS-Envelope", None));
    assert!(is_atsms_part(
        "application/x-pkcs7-mime; name=message.p7m",
        None
    ));
    assert!(is_atsms_part(
        "application/pkcs7-mime",
        Some("attachment; filename=\"message.p7m\"")
    ));
    assert!(!is_atsms_part(
        "application/pkcs7-mime; name=smime.p7m",
        None
    ));
    assert!(!is_atsms_part("text/plain; name=message.p7m", None));
    // RFC 2045 §5.1: types, subtypes and parameter names in any case; values as written
    // but for the quotes.
    assert!(is_atsms_part(
        " APPLICATION/X-PKCS7-MIME ; NAME = \"Message.P7M\" ",
        None
    ));
    assert!(is_atsms_part(
        "Application/Pkcs7-Mime",
        Some("Attachment; FileName=MESSAGE.p7m")
    ));
    assert!(!is_atsms_part(
        "application/pkcs7-mime",
        Some("attachment; name=message.p7m")
    ));
    assert!(is_signed_multipart(
        "MULTIPART/Signed; Protocol=\"Application/PKCS7-Signature\"; BOUNDARY=x"
    ));
    assert!(is_signed_multipart(
        "multipart/signed; micalg=sha-256; protocol=application/x-pkcs7-signature"
    ));
    assert!(!is_signed_multipart(
        "multipart/signed; protocol=\"application/pgp-signature\""
    ));
    assert!(!is_signed_multipart(
        "multipart/mixed; protocol=\"application/pkcs7-signature\""
    ));
    assert_eq!(
        boundary("MultiPart/Mixed; Boundary=\"Outer Bound\""),
        Some(b"Outer Bound".to_vec()),
        "the boundary keeps its case"
    );
    assert_eq!(
        boundary("multipart/mixed; charset=x; boundary=b2; boundary=b3"),
        Some(b"b2".to_vec())
    );
    assert_eq!(boundary("multipart"), None);
    assert_eq!(boundary("multipart/mixed"), None);
    assert_eq!(boundary("multipart/mixed; boundary=\"\""), None);
    assert_eq!(boundary("text/plain; boundary=b"), None);
    assert_eq!(
        boundary("multipárt/mixed; boundary=b"),
        None,
        "no panic on a multibyte type"
    );
    // The top level decides without reading the body.
    assert!(PartScanner::new(Some("application/atsms-envelope"), None, None).0);
    assert!(PartScanner::new(Some("text/plain"), None, None).1.is_none());
    // A p7m named otherwise, or a name only in the text, is not one.
    let other = b"--b\r\nContent-Type: application/pkcs7-mime; name=smime.p7m\r\n\r\nx\r\n--b\r\nContent-Type: text/plain\r\n\r\nname=\"message.p7m\" application/atsms-envelope\r\n--b--\r\n";
    assert!(!scan("multipart/mixed; boundary=b", other, &[]));
}

fn envelope(
    content_type: &str,
    encoding: Option<&str>,
    body: &[u8],
    cut: usize,
) -> Option<crate::verification::atsms_parts::EnvelopeKind> {
    let (_, scanner) = PartScanner::new(Some(content_type), None, encoding);
    let mut scanner = scanner?;
    scanner.update(&body[..cut]);
    scanner.update(&body[cut..]);
    scanner.envelope().map(|(kind, _)| kind)
}

#[test]
fn the_atsms_part_is_read_to_say_what_it_carries_however_the_body_is_cut() {
    use crate::verification::atsms_parts::EnvelopeKind;
    use base64::Engine;
    let mut sealed = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
    sealed.extend([7u8; 32]);
    sealed.extend([0x58, 0x40]);
    sealed.extend([9u8; 64]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&sealed);
    let (a, b) = b64.split_at(40);
    let body = format!(
        "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/atsms-envelope\r\nContent-Transfer-Encoding: base64\r\n\r\n{a}\r\n{b}\r\n--b--\r\n"
    );
    let broken = body.replace(&b64[10..20], "!!!!!!!!!!");
    for cut in 0..body.len() {
        assert_eq!(
            envelope("multipart/mixed; boundary=b", None, body.as_bytes(), cut),
            Some(EnvelopeKind::Sealed),
            "cut {cut}"
        );
        assert_eq!(
            envelope("multipart/mixed; boundary=b", None, broken.as_bytes(), cut),
            Some(EnvelopeKind::Malformed),
            "cut {cut}"
        );
    }
    // The whole body is the part, with or without a last line end.
    let top = format!("{a}\r\n{b}");
    for cut in 0..top.len() {
        assert_eq!(
            envelope(
                "application/atsms-envelope",
                Some("base64"),
                top.as_bytes(),
                cut
            ),
            Some(EnvelopeKind::Sealed)
        );
    }
    // Past MAX_CAPTURE: not held, malformed.
    let line = "A".repeat(76) + "\r\n";
    let huge = line.repeat(MAX_CAPTURE / line.len() + 2);
    assert_eq!(
        envelope(
            "application/atsms-envelope",
            Some("base64"),
            huge.as_bytes(),
            0
        ),
        Some(EnvelopeKind::Malformed)
    );
    assert_eq!(
        envelope(
            "multipart/mixed; boundary=b",
            None,
            b"--b\r\n\r\nx\r\n--b--\r\n",
            3
        ),
        None
    );
}

#[test]
fn nested_multiparts_are_followed() {
    let nested = b"--a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: application/atsms-envelope\r\n\r\n{}\r\n--b--\r\n--a--\r\n";
    assert!(scan("multipart/mixed; boundary=a", nested, &[]));
    // After the inner multipart ended, its boundary no longer counts.
    let closed = b"--a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b--\r\n--b\r\nContent-Type: application/atsms-envelope\r\n\r\n--a--\r\n";
    assert!(!scan("multipart/mixed; boundary=a", closed, &[]));
}

const SMIME: &[u8] = include_bytes!("../../../tests/data/atsms-client/smime-signed.eml");

/// The body and top-level Content-Type of a whole message.
fn body_of(message: &[u8]) -> (String, Vec<u8>) {
    let at = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&message[..at]).replace("\r\n\t", " ");
    let ct = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type:"))
        .unwrap()
        .trim()
        .to_string();
    (ct, message[at + 4..].to_vec())
}

fn detached(content_type: &str, body: &[u8], cuts: &[usize]) -> Option<CmsInput> {
    let (_, scanner) = PartScanner::new(Some(content_type), None, None);
    let mut scanner = scanner.unwrap();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&body.len())) {
        scanner.update(&body[from..to]);
        from = to;
    }
    match scanner.envelope()? {
        (crate::verification::atsms_parts::EnvelopeKind::CmsSigned, input) => input,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_detached_signature_keeps_its_content_as_signed_however_the_body_is_cut() {
    // What mail-parser reads from the whole message (`verify-cms`) is the reference.
    let whole = crate::verification::atsms_parts::read_input(SMIME).unwrap();
    assert!(whole.detached.is_some());
    let (ct, body) = body_of(SMIME);
    for cut in 0..body.len() {
        assert_eq!(
            detached(&ct, &body, &[cut]).as_ref(),
            Some(&whole),
            "cut {cut}"
        );
    }
    // It verifies over what was kept.
    let kept = detached(&ct, &body, &[]).unwrap();
    let signed =
        crate::verification::atsms_parts::check_signed(&kept.der, kept.detached.as_deref())
            .unwrap();
    assert_eq!(signed.did, "did:plc:smimesmimesmimesmimesmim");
    // Line ends made LF in transit are read back as the CRLF that was signed.
    let lf: Vec<u8> = body.iter().copied().filter(|b| *b != b'\r').collect();
    assert_eq!(detached(&ct, &lf, &[7]), Some(whole.clone()));
    // Nested as the first part of a multipart/mixed, it is found alike.
    let nested = [
        format!("--outer\r\nContent-Type: {ct}\r\n\r\n").into_bytes(),
        body.clone(),
        b"\r\n--outer--\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(
        detached("multipart/mixed; boundary=outer", &nested, &[100]),
        Some(whole)
    );
}

#[test]
fn a_signature_not_by_a_device_or_not_s_mime_is_not_ours() {
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use der::{Decode, Encode};
    let (ct, body) = body_of(SMIME);
    let whole = crate::verification::atsms_parts::read_input(SMIME).unwrap();
    // The same signature without the certificate its SignerIdentifier names.
    let info = ContentInfo::from_der(&whole.der).unwrap();
    let mut signed: SignedData = info.content.decode_as().unwrap();
    signed.certificates = None;
    let anonymous = ContentInfo {
        content_type: info.content_type,
        content: der::Any::encode_from(&signed).unwrap(),
    }
    .to_der()
    .unwrap();
    use base64::Engine;
    let text = String::from_utf8(body.clone()).unwrap();
    let b64_start = text.find("MII").unwrap();
    let b64_end = b64_start + text[b64_start..].find("\r\n\r\n").unwrap();
    let swapped = format!(
        "{}{}{}",
        &text[..b64_start],
        base64::engine::general_purpose::STANDARD.encode(&anonymous),
        &text[b64_end..]
    );
    assert_eq!(detached(&ct, swapped.as_bytes(), &[]), None);
    // A second part that is not a pkcs7-signature; a protocol that is not S/MIME.
    let plain = text.replace(
        "Content-Type: application/pkcs7-signature",
        "Content-Type: text/plain",
    );
    assert_eq!(detached(&ct, plain.as_bytes(), &[]), None);
    let pgp = ct.replace("application/pkcs7-signature", "application/pgp-signature");
    assert_eq!(detached(&pgp, &body, &[]), None);
    // A signed part larger than the scanner keeps: not held, not judged (never a pass).
    let line = "A".repeat(76) + "\r\n";
    let huge = text.replacen(
        "Signed by a device, detached.",
        &line.repeat(MAX_CAPTURE / line.len() + 2),
        1,
    );
    assert_eq!(detached(&ct, huge.as_bytes(), &[]), None);
    // Broken base64 in the signature part.
    let broken = text.replacen("MII", "!!!", 1);
    assert_eq!(detached(&ct, broken.as_bytes(), &[]), None);
}

#[test]
fn the_largest_envelope_taken_fits_the_capture_in_base64_lines() {
    // 1 MiB (the HTTPS inbox's largest CMS structure) as a client writes it: base64 in lines
    // of 76 and CRLF. Held whole, not reported malformed.
    use base64::Engine;
    let bytes = vec![0x5a; 1024 * 1024];
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let body = lines.join("\r\n") + "\r\n";
    let (_, scanner) = PartScanner::new(Some("application/atsms-envelope"), None, Some("base64"));
    let mut scanner = scanner.unwrap();
    scanner.update(body.as_bytes());
    let capture = scanner.capture.as_ref().unwrap();
    assert!(!capture.overflow);
    assert_eq!(capture.clone().content(), Some(bytes));
}

//! Recipient addresses as every path reads them — LMTP's RCPT (the decoder, then the
//! mailbox and its Maildir), the Exim scanner's `Rcpt:` lines, the socketmap's table keys,
//! a DID document's `mailto:` and `smtp://` values — from any bytes, valid UTF-8 or not:
//! never a panic, and what they agree on holds (a folded mailbox is folded, a DID mailbox
//! names its own DID, a plain mailbox is plain again).

use crate::atproto::identity::did_doc::MailEndpoint;
use crate::format::address::{did_of_local_part, fold, local_part_of_did};
use crate::format::syntax::{plain_mailbox, routable_domain};
use crate::policy::routing::DidAddress;

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let lossy = String::from_utf8_lossy(data);
    for delimiter in ["+", "-", "", "\u{e9}", "."] {
        if let Some(folded) = fold(&lossy, delimiter) {
            assert!(!folded.user.bytes().any(|b| b.is_ascii_uppercase()));
            if let Some(did) = folded.did() {
                assert_eq!(local_part_of_did(&did), folded.user, "{lossy:?}");
            }
        }
    }
    let _ = did_of_local_part(&lossy);
    if let Some(address) = DidAddress::parse(&lossy) {
        assert_eq!(
            did_of_local_part(&address.local).as_deref(),
            Some(&*address.did)
        );
    }
    if let Some(mailbox) = plain_mailbox(&lossy) {
        assert_eq!(plain_mailbox(&mailbox).as_deref(), Some(&*mailbox));
        assert!(
            !mailbox.contains([' ', ',', '<', '"', '\r', '\n']),
            "{mailbox:?}"
        );
    }
    if let Some(domain) = routable_domain(&lossy) {
        let first = domain.split('.').next().unwrap_or_default();
        assert!(domain.contains('.') && first != "localhost", "{domain:?}");
    }
    let _ = MailEndpoint::parse(&format!("mailto:{lossy}"));
    let _ = MailEndpoint::parse(&format!("smtp://{lossy}"));
    lmtp_rcpt(data);
    exim_rcpt(data);
}

/// `RCPT TO:<bytes>` through the LMTP decoder, and the address it gives through the mailbox
/// and Maildir rules.
fn lmtp_rcpt(data: &[u8]) {
    use crate::transport::lmtp::protocol::{Command, Decoder, Event};
    let line = [b"RCPT TO:<".as_slice(), data, b">\r\n"].concat();
    let mut decoder = Decoder::new();
    let (_, event) = decoder.next(&line);
    if let Some(Event::Command(Command::Rcpt(path))) = event {
        let mailboxes = crate::transport::lmtp::recipient::Mailboxes::new(&Default::default())
            .expect("the default template");
        if let Ok(recipient) = mailboxes.resolve(&path.0) {
            assert!(recipient.maildir.starts_with(&recipient.base));
        }
    }
}

/// A scanner request naming the bytes as its one recipient.
fn exim_rcpt(data: &[u8]) {
    let head = [
        b"CHECK RSPAMC/1.3\r\nContent-length: 0\r\nFrom: <a@b.example>\r\nRcpt: <".as_slice(),
        data,
        b">\r\n\r\n",
    ]
    .concat();
    let _ = crate::transport::exim::protocol::HeadDecoder::new().feed(&head);
}

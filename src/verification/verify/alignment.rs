//! Section 7 of the spec: whether From is aligned with the signing DID — by its checked
//! handle, or by a DID mailbox its mail host vouches for. Alignment never changes a `pass`.

use crate::atproto::identity::DidDocument;
use crate::atproto::identity::did_doc::{MailEndpoint, MailHost};
use crate::format::envelope::Mailbox;
use crate::format::syntax::ascii_domain;

use super::Verifier;

impl Verifier {
    /// Whether `from` is aligned with the DID of `document` (spec section 7), and its checked
    /// handle: by the handle, or by a DID mailbox its mail host vouches for.
    pub async fn alignment(
        &self,
        from: &Mailbox,
        document: &DidDocument,
    ) -> (Option<String>, bool) {
        let handle = self
            .identity
            .checked_handle(document)
            .await
            .map(|(handle, _)| handle);
        if aligned_by_handle(from, handle.as_deref()) {
            return (handle, true);
        }
        let aligned = match vouching_domain(from, document) {
            Some(domain) => self.identity.mail_host_vouches(&domain).await,
            None => false,
        };
        (handle, aligned)
    }
}

/// Section 7, rule 1: the From domain is the checked handle (compared in A-label form,
/// case-insensitively, exactly: a subdomain is not the handle).
pub fn aligned_by_handle(from: &Mailbox, handle: Option<&str>) -> bool {
    match (handle, ascii_domain(&from.domain)) {
        (Some(handle), Some(domain)) => domain.eq_ignore_ascii_case(handle),
        _ => false,
    }
}

/// Section 7, rule 2, the part the document decides: when From is the DID's own mailbox
/// address (`!` read as `.`, ASCII case folded, never a quoted local part) at the host of its
/// `smtp://` endpoint (not an IP literal), the domain that must vouch for it by publishing
/// `_atsms-mail` TXT `v=atsms1`. The `mailto:` address plays no part.
pub fn vouching_domain(from: &Mailbox, document: &DidDocument) -> Option<String> {
    if from.local_is_quoted() {
        return None;
    }
    let Some(MailEndpoint::Smtp {
        host: MailHost::Name(host),
        ..
    }) = document.mail_endpoint()
    else {
        return None;
    };
    let local = from.local.replace('!', ".").to_ascii_lowercase();
    let domain = ascii_domain(&from.domain)?;
    (local == document.mailbox_local_part() && domain == host).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::envelope::fields::parse_mailbox;

    const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

    fn document(endpoint: &str) -> DidDocument {
        let json = format!(
            r##"{{"id":"{DID}","service":[{{"id":"#atsms_mail","type":"AtsmsMailService","serviceEndpoint":"{endpoint}"}}]}}"##
        );
        DidDocument::parse(json.as_bytes(), DID).unwrap()
    }

    fn mailbox(address: &str) -> Mailbox {
        parse_mailbox(format!(" <{address}>").as_bytes()).unwrap()
    }

    #[test]
    fn alignment_by_handle_compares_domains_exactly() {
        let from = mailbox("alice@Alice.Example.COM");
        assert!(aligned_by_handle(&from, Some("alice.example.com")));
        assert!(!aligned_by_handle(&from, None));
        assert!(!aligned_by_handle(
            &mailbox("a@mail.alice.example.com"),
            Some("alice.example.com")
        ));
        assert!(aligned_by_handle(
            &mailbox("a@bücher.example"),
            Some("xn--bcher-kva.example")
        ));
    }

    #[test]
    fn the_mailbox_rule_needs_the_dids_own_address_at_its_smtp_host() {
        let doc = document("smtp://MX.example.net:25");
        let dotted = format!("{}@mx.example.net", DID.replace(':', "."));
        assert_eq!(
            vouching_domain(&mailbox(&dotted), &doc).as_deref(),
            Some("mx.example.net")
        );
        let bang = format!("{}@Mx.Example.Net", DID.replace(':', "!").to_uppercase());
        assert_eq!(
            vouching_domain(&mailbox(&bang), &doc).as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            vouching_domain(&mailbox("alice@mx.example.net"), &doc),
            None
        );
        let elsewhere = format!("{}@other.example", DID.replace(':', "."));
        assert_eq!(vouching_domain(&mailbox(&elsewhere), &doc), None);
        let quoted = format!("\"{}\"@mx.example.net", DID.replace(':', "."));
        assert_eq!(vouching_domain(&mailbox(&quoted), &doc), None);
        // A mailto: endpoint names an address whose domain never agreed.
        let mailto = document("mailto:ceo@bank.example");
        assert_eq!(vouching_domain(&mailbox("ceo@bank.example"), &mailto), None);
        // An IP literal gives no mailbox address.
        let ip = document("smtp://192.0.2.1:25");
        let at_ip = format!("{}@192.0.2.1", DID.replace(':', "."));
        assert_eq!(vouching_domain(&mailbox(&at_ip), &ip), None);
    }
}

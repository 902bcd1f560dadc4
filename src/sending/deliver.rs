//! Handing one device's envelope to its recipient's inbox (the client's inbound-delivery spec
//! §3–§5): `POST {"envelope": base64}` to the DID's first web endpoint through the untrusted
//! HTTP client (its address policy, timeouts, 307/308 only, no private addresses), else the
//! mail the client's SMTP form is (one base64 `application/atsms-envelope` part) handed to
//! the local MTA for the DID's `mailto:` — which must name the recipient's own DID mailbox: a
//! DID's record cannot make this host mail anyone else.

use std::net::SocketAddr;
use std::time::Duration;

use crate::atproto::identity::Upstream;
use crate::atproto::identity::inbox::AtsmsInbox;
use crate::atproto::identity::net::{FetchErrorKind, Net};

/// An inbox's answer to the JSON it is posted, read up to this many bytes.
const MAX_ANSWER: usize = 16 * 1024;
/// Redirects (307/308) followed for one POST.
const MAX_REDIRECTS: usize = 2;
/// How long the MTA may take for any one step of a transaction.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one device's envelope went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// The inbox said 2xx: stored for the device.
    Posted,
    /// The local MTA took it (250) for the `mailto:`.
    Mailed,
}

/// Why an envelope did not go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Said no for good (a 4xx answer, a 5xx reply, no endpoint this host may use).
    #[error("{0}")]
    Refused(String),
    /// Could not now (timeouts, 5xx answers, 4xx replies): try again later.
    #[error("{0}")]
    Temporary(String),
}

impl DeliveryError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, DeliveryError::Temporary(_))
    }
}

/// Where a recipient's envelopes go: the first web endpoint, then the first `mailto:` that
/// names the recipient's own DID mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub web: Option<String>,
    pub mailto: Option<String>,
}

impl Route {
    pub fn of(inbox: &AtsmsInbox, did: &str) -> Route {
        let mailto = inbox.mailto.iter().find(|address| {
            address.rsplit_once('@').is_some_and(|(local, domain)| {
                crate::format::address::did_of_local_part(local).as_deref() == Some(did)
                    && crate::format::syntax::routable_domain(domain).is_some()
                    && local
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#.-_".contains(&b))
            })
        });
        Route {
            web: inbox.https.first().cloned(),
            mailto: mailto.cloned(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.web.is_none() && self.mailto.is_none()
    }
}

/// What the sender needs to hand envelopes over.
pub struct Carrier<'a> {
    pub net: &'a Net,
    /// The local MTA (`send.smtp`).
    pub mta: SocketAddr,
    /// This host's name, for EHLO.
    pub helo: &'a str,
}

impl Carrier<'_> {
    /// Hands `envelope` over by `route`, the web endpoint first; the `mailto:` when the web
    /// one refused, could not now, or is absent. `from` is the sending DID's mailbox here.
    pub async fn deliver(
        &self,
        route: &Route,
        from: &str,
        envelope: &[u8],
    ) -> Result<Handed, DeliveryError> {
        let mut error = DeliveryError::Refused("no endpoint in its at.atsms.inbox record".into());
        if let Some(url) = &route.web {
            match self.post(url, envelope).await {
                Ok(()) => return Ok(Handed::Posted),
                Err(e) => error = e,
            }
        }
        if let Some(to) = &route.mailto {
            match self.mail(from, to, envelope).await {
                Ok(()) => return Ok(Handed::Mailed),
                // The web endpoint's "not now" outranks the MTA's "no": it is tried again.
                Err(e) if !error.is_temporary() || e.is_temporary() => error = e,
                Err(_) => {}
            }
        }
        Err(error)
    }

    async fn post(&self, url: &str, envelope: &[u8]) -> Result<(), DeliveryError> {
        use base64::Engine;
        let body = serde_json::json!({
            "envelope": base64::engine::general_purpose::STANDARD.encode(envelope)
        })
        .to_string();
        let answer = self
            .net
            .post_json(
                url,
                Upstream::Service,
                body.as_bytes(),
                MAX_ANSWER,
                MAX_REDIRECTS,
            )
            .await
            .map_err(|e| match e.kind {
                FetchErrorKind::Refused | FetchErrorKind::NotFound => {
                    DeliveryError::Refused(format!("{url}: {}", e.message))
                }
                _ => DeliveryError::Temporary(format!("{url}: {}", e.message)),
            })?;
        let said = || {
            let error: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            let name = error["error"].as_str().unwrap_or("");
            format!("{url}: {} {name}", answer.status)
                .trim_end()
                .to_string()
        };
        match answer.status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(DeliveryError::Temporary(said())),
            _ => Err(DeliveryError::Refused(said())),
        }
    }

    async fn mail(&self, from: &str, to: &str, envelope: &[u8]) -> Result<(), DeliveryError> {
        let host = match self.mta.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let at = format!("smtp {}", self.mta);
        let temporary = |e: mail_send::Error| DeliveryError::Temporary(format!("{at}: {e}"));
        let builder = mail_send::SmtpClientBuilder::new_with_tls_connector(
            host,
            self.mta.port(),
            plain_only(),
        )
        .implicit_tls(false)
        .helo_host(self.helo)
        .timeout(SMTP_TIMEOUT);
        let mut client = builder.connect_plain().await.map_err(temporary)?;
        let body = message(from, to, envelope);
        let sent = client
            .send(mail_send::smtp::message::Message::new(
                from,
                [to],
                body.as_slice(),
            ))
            .await;
        let _ = client.quit().await;
        sent.map(|_| ()).map_err(|e| match e {
            mail_send::Error::UnexpectedReply(reply) if reply.code >= 500 => {
                DeliveryError::Refused(format!("{at}: {} {}", reply.code, reply.message))
            }
            e => temporary(e),
        })
    }
}

/// A TLS connector that trusts nobody: the local MTA is spoken to in plain SMTP, and no
/// platform certificate store is read for a connector never used.
fn plain_only() -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// The mail the AT-SMS client's SMTP form is (inbound-delivery spec §4): one base64
/// `application/atsms-envelope` part in lines of 76, CRLF.
pub fn message(from: &str, to: &str, envelope: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(envelope);
    let mut lines = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        lines.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        lines.push_str("\r\n");
    }
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let mut unique = [0u8; 12];
    let _ = getrandom::fill(&mut unique);
    let unique: String = unique.iter().map(|b| format!("{b:02x}")).collect();
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nDate: {date}\r\nMessage-ID: <{unique}@{domain}>\r\n\
         Subject: ATSMS\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"atsms-{unique}\"\r\n\r\n\
         --atsms-{unique}\r\nContent-Type: application/atsms-envelope\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{lines}--atsms-{unique}--\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn a_mailto_is_used_only_when_it_names_the_recipients_own_mailbox() {
        let inbox = |mailto: &[&str], https: &[&str]| AtsmsInbox {
            mailto: mailto.iter().map(|s| s.to_string()).collect(),
            https: https.iter().map(|s| s.to_string()).collect(),
            devices: Vec::new(),
        };
        let route = Route::of(
            &inbox(
                &[
                    "victim@example.com",
                    "did!plc!bbbbbbbbbbbbbbbbbbbbbbbb@example.com",
                    "did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@localhost",
                    "did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@mx.example.net",
                ],
                &["https://a.example/inbox/x", "https://b.example/inbox/x"],
            ),
            DID,
        );
        assert_eq!(
            route.mailto.as_deref(),
            Some("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@mx.example.net")
        );
        assert_eq!(route.web.as_deref(), Some("https://a.example/inbox/x"));
        assert!(Route::of(&inbox(&["victim@example.com"], &[]), DID).is_empty());
    }

    #[test]
    fn the_mail_carries_the_envelope_as_the_clients_smtp_form_does() {
        use mail_parser::MimeHeaders;
        let envelope: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mail = message(
            "did.plc.ssssssssssssssssssssssss@mx.example.net",
            "did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@example.com",
            &envelope,
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(&mail)
            .expect("a message");
        let part = parsed.attachment(0).expect("one part");
        assert_eq!(
            part.content_type().map(|c| (c.ctype(), c.subtype())),
            Some(("application", Some("atsms-envelope")))
        );
        assert_eq!(part.contents(), envelope.as_slice());
        assert!(
            mail.split(|b| *b == b'\n')
                .all(|l| l.len() <= 78 && l.last().is_none_or(|b| *b == b'\r'))
        );
    }
}

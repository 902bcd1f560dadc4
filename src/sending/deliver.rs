//! Handing one device's envelope to its recipient's inbox (the client's inbound-delivery spec
//! §3–§5): `POST {"envelope": base64}` to the DID's first web endpoint through the untrusted
//! HTTP client (its address policy, timeouts, 307/308 only, no private addresses), else the
//! mail the client's SMTP form is (one base64 `application/atsms-envelope` part) handed to
//! the local MTA for the DID's `mailto:` — which must name the recipient's own DID mailbox at a
//! domain whose mail goes to public addresses: a DID's record cannot make this host mail anyone
//! else, nor steer the MTA at an internal host. The address is handed over as the record spells
//! it (`did!plc!…` is RFC 5321 atext; Postfix takes it as it is when it has a domain).

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

/// Why an envelope did not go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Said no for good (a 4xx answer, a 5xx reply, no endpoint this host may use).
    #[error("{0}")]
    Refused(String),
    /// Could not now (timeouts, 5xx answers, 4xx replies): try again later.
    #[error("{0}")]
    Temporary(String),
    /// Could not now, and said when to ask again (`Retry-After`, seconds; RFC 9110 §10.2.3).
    #[error("{0}")]
    Later(String, u64),
}

impl DeliveryError {
    pub fn is_temporary(&self) -> bool {
        !matches!(self, DeliveryError::Refused(_))
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
    /// `allow_http`: an `http:` endpoint may be used (`resolver.allow_private_addresses`, as
    /// for every fetch); else the first `https:` one.
    pub fn of(inbox: &AtsmsInbox, did: &str, allow_http: bool) -> Route {
        let mailto = inbox.mailto.iter().find(|address| {
            address.rsplit_once('@').is_some_and(|(local, domain)| {
                crate::format::address::did_of_local_part(local).as_deref() == Some(did)
                    && crate::format::syntax::routable_domain(domain).is_some()
                    && local
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#.-_".contains(&b))
            })
        });
        let web = inbox
            .https
            .iter()
            .find(|u| u.starts_with("https://") || (allow_http && u.starts_with("http://")));
        Route {
            web: web.cloned(),
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
    /// This host's mail domains (`inbox.hosts`): mail to them stays here, nothing to vet.
    pub own: &'a [String],
    /// Sessions with the MTA at once, all calls and retries together: its smtpd processes
    /// are inbound mail's too.
    pub sessions: &'a tokio::sync::Semaphore,
}

impl Carrier<'_> {
    /// POSTs `envelope` to the web inbox `url`.
    pub async fn post(&self, url: &str, envelope: &[u8]) -> Result<(), DeliveryError> {
        use base64::Engine;
        let body = serde_json::json!({
            "envelope": base64::engine::general_purpose::STANDARD.encode(envelope)
        })
        .to_string();
        let answer = self
            .net
            .post_json(
                url,
                Upstream::Inbox,
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
            408 | 429 | 500..=599 => Err(match answer.retry_after {
                Some(after) => DeliveryError::Later(said(), after),
                None => DeliveryError::Temporary(said()),
            }),
            _ => Err(DeliveryError::Refused(said())),
        }
    }

    /// Mails each of `envelopes` to `to` (the recipient's own DID mailbox) from `from` through
    /// the local MTA, one transaction each in one session: an answer each, in order, and
    /// `taken(i)` the moment the MTA took the i-th (a cut session keeps what it did). A domain
    /// not this host's must send its mail to public addresses (`Net::vetted_mail_exchange`),
    /// so a record cannot steer the MTA at an internal host.
    pub async fn mail_all(
        &self,
        from: &str,
        to: &str,
        envelopes: &[&[u8]],
        taken: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<(), DeliveryError>> {
        let all = |e: DeliveryError| envelopes.iter().map(|_| Err(e.clone())).collect();
        let domain = to.rsplit_once('@').map_or("", |(_, d)| d);
        if !self.own.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            match self.net.vetted_mail_exchange(domain).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return all(DeliveryError::Refused(format!(
                        "mail for {domain} would go to an address this host may not reach"
                    )));
                }
                Err(e) if e.kind == FetchErrorKind::Transient => {
                    return all(DeliveryError::Temporary(e.message));
                }
                Err(e) => return all(DeliveryError::Refused(e.message)),
            }
        }
        let Ok(_session) = self.sessions.acquire().await else {
            return all(DeliveryError::Temporary("shutting down".into()));
        };
        let at = format!("smtp {}", self.mta);
        let temporary = |e: mail_send::Error| DeliveryError::Temporary(format!("{at}: {e}"));
        let host = match self.mta.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let builder = mail_send::SmtpClientBuilder::new_with_tls_connector(
            host,
            self.mta.port(),
            plain_only(),
        )
        .implicit_tls(false)
        .helo_host(self.helo)
        .timeout(SMTP_TIMEOUT);
        let mut client = match builder.connect_plain().await {
            Ok(client) => client,
            Err(e) => return all(temporary(e)),
        };
        let mut answers = Vec::with_capacity(envelopes.len());
        let mut broken = None;
        for (i, envelope) in envelopes.iter().enumerate() {
            if let Some(e) = &broken {
                answers.push(Err(DeliveryError::Temporary(format!("{at}: {e}"))));
                continue;
            }
            let body = message(from, to, envelope);
            let sent = client
                .send(mail_send::smtp::message::Message::new(
                    from,
                    [to],
                    body.as_slice(),
                ))
                .await;
            answers.push(match sent {
                Ok(_) => {
                    taken(i);
                    Ok(())
                }
                Err(mail_send::Error::UnexpectedReply(reply)) => {
                    // A refused transaction: the session goes on after RSET.
                    if client.rset().await.is_err() {
                        broken = Some("the session ended".to_string());
                    }
                    let said = format!("{at}: {} {}", reply.code, reply.message);
                    Err(if reply.code >= 500 {
                        DeliveryError::Refused(said)
                    } else {
                        DeliveryError::Temporary(said)
                    })
                }
                Err(e) => {
                    broken = Some(e.to_string());
                    Err(temporary(e))
                }
            });
        }
        let _ = client.quit().await;
        answers
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
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let mut unique = [0u8; 12];
    let _ = getrandom::fill(&mut unique);
    let unique: String = crate::format::hex::hex(&unique);
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let head = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nDate: {date}\r\nMessage-ID: <{unique}@{domain}>\r\n\
         Subject: ATSMS\r\n"
    );
    crate::format::mime::envelope_mail(&head, &format!("atsms-{unique}"), envelope)
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
                &[
                    "http://127.0.0.1/inbox/x",
                    "https://a.example/inbox/x",
                    "https://b.example/inbox/x",
                ],
            ),
            DID,
            false,
        );
        assert_eq!(
            route.mailto.as_deref(),
            Some("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@mx.example.net")
        );
        assert_eq!(route.web.as_deref(), Some("https://a.example/inbox/x"));
        assert!(Route::of(&inbox(&["victim@example.com"], &[]), DID, false).is_empty());
        // Plain http only where every fetch may use it (allow_private_addresses).
        let http = inbox(&[], &["http://127.0.0.1/inbox/x"]);
        assert!(Route::of(&http, DID, false).is_empty());
        assert_eq!(
            Route::of(&http, DID, true).web.as_deref(),
            Some("http://127.0.0.1/inbox/x")
        );
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

//! Names: handles (DNS TXT `_atproto.<handle>`, else HTTPS `/.well-known/atproto-did`,
//! checked in both directions: spec section 7), and mail hosts (`_atsms-mail.<domain>`, spec
//! section 9; the address policy for mail hosts DID documents name).

use std::sync::Arc;

use super::*;

impl IdentityResolver {
    /// The DID a handle names: DNS TXT `_atproto.<handle>`, else HTTPS
    /// `/.well-known/atproto-did` (atproto handle spec).
    pub async fn resolve_handle(self: &Arc<Self>, handle: &str) -> Cached<(String, HandleSource)> {
        let handle = handle.to_ascii_lowercase();
        self.cached(
            |r| &r.handles,
            &handle,
            |this, handle| async move { this.fetch_handle_shared(&handle).await },
        )
        .await
        .map(|found| found.value)
    }

    /// A handle's DID: one another instance resolved recently (shared store), else the
    /// network, whose answer is then shared. Failures are not shared: each instance asks.
    async fn fetch_handle_shared(&self, handle: &str) -> Cached<(String, HandleSource)> {
        use crate::infra::store::Kind;
        if let Some(shared) = &self.shared
            && let Some(entry) = shared
                .entry(Kind::Handle, handle, self.lifetimes.fresh)
                .await
            && syntax::is_valid_did(&entry.body)
        {
            let source = match entry.source.as_str() {
                "dns" => HandleSource::Dns,
                _ => HandleSource::Https,
            };
            return Ok(Arc::new((entry.body, source)));
        }
        let found = self.fetch_handle(handle).await?;
        if let Some(shared) = &self.shared {
            let source = match found.1 {
                HandleSource::Dns => "dns",
                HandleSource::Https => "https",
            };
            let keep = self.lifetimes.max_age + self.lifetimes.stale_if_error;
            shared
                .put_entry(Kind::Handle, handle, source, found.0.as_bytes(), keep)
                .await;
        }
        Ok(found)
    }

    async fn fetch_handle(&self, handle: &str) -> Cached<(String, HandleSource)> {
        if !syntax::is_valid_handle(handle)
            || !syntax::handle_may_resolve(handle, self.net.allow_private())
        {
            return Err(IdentityError::HandleInvalid);
        }
        let upstream = Upstream::Handle;
        let dns_error = match self.net.txt(&format!("_atproto.{handle}")).await {
            Ok(records) => {
                let mut dids: Vec<&str> = records
                    .iter()
                    .filter_map(|r| r.strip_prefix("did="))
                    .collect();
                dids.sort_unstable();
                dids.dedup();
                match dids.as_slice() {
                    [did] if syntax::is_valid_did(did) => {
                        return Ok(Arc::new((did.to_string(), HandleSource::Dns)));
                    }
                    [] => IdentityError::HandleNoRecord,
                    _ => return Err(IdentityError::HandleConflict),
                }
            }
            Err(e) => fetch_error(upstream, e),
        };
        let url = format!("https://{handle}/.well-known/atproto-did");
        let response = match self
            .net
            .get(
                &url,
                upstream,
                "text/plain",
                MAX_HANDLE_BODY,
                HANDLE_REDIRECTS,
            )
            .await
        {
            Ok(r) => r,
            // Report the DNS failure when it was transient and HTTPS failed too.
            Err(_) if dns_error.is_transient() => return Err(dns_error),
            Err(e) => return Err(fetch_error(upstream, e)),
        };
        if !(200..300).contains(&response.status) {
            tracing::debug!("{url}: HTTP {}", response.status);
            return Err(IdentityError::HandleNoDid);
        }
        let text = String::from_utf8_lossy(&response.body);
        let did = text.lines().next().unwrap_or_default().trim();
        if !syntax::is_valid_did(did) {
            return Err(IdentityError::HandleNoDid);
        }
        Ok(Arc::new((did.to_string(), HandleSource::Https)))
    }

    /// Whether `domain` publishes TXT `_atsms-mail.<domain>` = `v=atsms1` (spec section 9):
    /// the host declares that it keeps DID mailboxes. Cached like handles; NXDOMAIN or no
    /// such record is a definite no, SERVFAIL or a timeout a brief one (`cache.error`).
    pub async fn mail_host_vouches(self: &Arc<Self>, domain: &str) -> bool {
        let Some(domain) = syntax::ascii_domain(domain) else {
            return false;
        };
        self.cached(
            |r| &r.mail_hosts,
            &domain,
            |this, domain| async move { this.fetch_mail_host(&domain).await },
        )
        .await
        .is_ok()
    }

    /// The address mail for `host` may be sent to under the address policy, `None` when it
    /// may not (routing's guard against SSRF by mail: a document naming a host on this
    /// site's networks).
    pub async fn vetted_mail_address(
        &self,
        host: &str,
    ) -> Result<Option<std::net::IpAddr>, IdentityError> {
        self.net
            .vetted_address(host)
            .await
            .map_err(|e| fetch_error(Upstream::MailHost, e))
    }

    /// Where mail for `domain` goes by MX routing, if the address policy lets mail go there
    /// (`Net::vetted_mail_exchange`): a `mailto:` target's domain, pinned like a host.
    pub async fn vetted_mail_exchange(
        &self,
        domain: &str,
    ) -> Result<Option<std::net::IpAddr>, IdentityError> {
        self.net
            .vetted_mail_exchange(domain)
            .await
            .map_err(|e| fetch_error(Upstream::MailHost, e))
    }

    async fn fetch_mail_host(&self, domain: &str) -> Cached<()> {
        match self.net.txt(&format!("_atsms-mail.{domain}")).await {
            Ok(records) if records.iter().any(|r| r == "v=atsms1") => Ok(Arc::new(())),
            Ok(_) => Err(IdentityError::NotAMailHost),
            Err(e) if e.kind == FetchErrorKind::Transient => {
                Err(IdentityError::Unavailable(Upstream::MailHost))
            }
            Err(_) => Err(IdentityError::NotAMailHost),
        }
    }

    /// The document's handle if it resolves back to the same DID (spec section 7), else none.
    pub async fn checked_handle(
        self: &Arc<Self>,
        document: &DidDocument,
    ) -> Option<(String, HandleSource)> {
        let handle = document.handle_claim()?;
        let resolved = self.resolve_handle(&handle).await.ok()?;
        (resolved.0 == document.id).then(|| (handle, resolved.1))
    }
}

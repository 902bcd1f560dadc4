//! Why an identity could not be had, typed. Each error has a kind: transient ones make a
//! `temperror` (and are cached for `cache.error`), permanent ones a `permerror` (cached for
//! `cache.negative`).
//!
//! Reasons name no HTTP status or host of a URL a DID document, handle or message chose: a
//! reason ends up in an `Authentication-Results` field that the sender may read, and must not
//! become an oracle for what answers where (the status is logged at debug level instead).

use super::device_cert::CertError;
use super::did_doc::DocumentError;

/// Whether an error may pass by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Definite: the DID does not exist, its document or certificate is unusable, the target
    /// is refused by policy. `permerror`.
    Permanent,
    /// A fetch failed for now (timeouts, connection errors, 5xx, SERVFAIL). `temperror`.
    Transient,
}

/// Where a fetch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// A configured PLC directory (the operator's choice).
    Plc,
    /// A did:web host.
    DidWeb,
    /// The PDS named by a DID document (device certificate records).
    Pds,
    /// A handle's DNS or HTTPS.
    Handle,
    /// A mail host's `_atsms-mail` TXT record.
    MailHost,
    /// A labeler, or another service a DID document names.
    Service,
    /// A recipient's AT-SMS web inbox, posted envelopes by the sender (`sending`): its own
    /// permits, so a slow inbox cannot take those verification's lookups need.
    Inbox,
}

impl Upstream {
    fn as_str(self) -> &'static str {
        match self {
            Upstream::Plc => "PLC directory",
            Upstream::DidWeb => "did:web host",
            Upstream::Pds => "PDS",
            Upstream::Handle => "handle",
            Upstream::MailHost => "mail host",
            Upstream::Service => "service",
            Upstream::Inbox => "AT-SMS inbox",
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// 404/410 from every PLC directory, or from the did:web host, or NXDOMAIN.
    #[error("{}", not_found(*.0))]
    NotFound(Upstream),
    /// The upstream could not answer for now.
    #[error("{0} unavailable")]
    Unavailable(Upstream),
    /// The upstream answered something other than success or not-found.
    #[error("{0} refused the request")]
    Rejected(Upstream),
    /// A did:web answer redirected (section 6: redirects are not followed).
    #[error("did:web document redirects; redirects are not followed")]
    Redirected,
    /// Address policy: a non-public address, plain http, a port where none may be.
    #[error("refused by address policy ({0})")]
    Refused(Upstream),
    /// The answer is larger than `resolver.max_document_size`.
    #[error("{0} answer too large")]
    TooLarge(Upstream),
    #[error("{0}")]
    Document(#[from] DocumentError),
    #[error("{0}")]
    Certificate(#[from] CertError),
    #[error("revoked or unknown device")]
    UnknownDevice,
    #[error("DID document names no PDS")]
    NoPds,
    #[error("device record is not usable")]
    BadRecord,
    #[error("not a did:plc or did:web DID")]
    UnsupportedDid,
    #[error("did:web with a port (test setups only)")]
    WebPort,
    /// The name is not a valid handle, or one that can never resolve (reserved TLDs).
    #[error("handle cannot resolve")]
    HandleInvalid,
    #[error("no did= TXT record")]
    HandleNoRecord,
    #[error("conflicting did= TXT records")]
    HandleConflict,
    #[error("handle does not name a DID")]
    HandleNoDid,
    /// A domain that does not publish `_atsms-mail` = `v=atsms1` (spec section 9).
    #[error("no _atsms-mail record")]
    NotAMailHost,
    /// The identity lookup took longer than `resolver.timeout`.
    #[error("identity lookup timed out")]
    TimedOut,
    /// Not asked: the upstream's request budget (`resolver.max_requests_per_second`) had no
    /// slot in time. Transient, but unlike an upstream that is down it is not a reason to
    /// serve a stale answer: anyone can spend the budget by sending mail from new DIDs.
    #[error("{0} request budget spent")]
    Busy(Upstream),
}

fn not_found(upstream: Upstream) -> &'static str {
    match upstream {
        Upstream::Plc => "DID not found in the PLC directory",
        Upstream::DidWeb => "did:web document not found",
        Upstream::Pds => "PDS host does not exist",
        Upstream::Handle => "handle does not exist",
        Upstream::MailHost => "mail host does not exist",
        Upstream::Service => "service host does not exist",
        Upstream::Inbox => "inbox host does not exist",
    }
}

impl IdentityError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            IdentityError::Unavailable(_) | IdentityError::TimedOut | IdentityError::Busy(_) => {
                ErrorKind::Transient
            }
            _ => ErrorKind::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

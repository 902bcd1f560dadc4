//! The sections that decide what is done with mail: `[policy]`, `[[inbox.rule]]` and
//! `[inbox]`, `[[signing.key]]` and `[signing]`, `[reputation]`, `[limits]`.

use std::num::NonZeroU64;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Action, AuthservId, Network, TcpAddress};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Unset: this host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authserv_id: Option<AuthservId>,
    pub on_pass: Action,
    pub on_fail: Action,
    pub on_permerror: Action,
    pub on_temperror: Action,
    pub on_policy: Action,
    pub on_none: Action,
    /// Applies when the message passes but no passing signature is aligned.
    pub on_unaligned: Action,
    /// Networks whose mail is not judged (milter).
    pub trusted_networks: Vec<Network>,
    /// SMTP-authenticated mail is not judged (milter).
    pub skip_authenticated: bool,
    pub dry_run: bool,
    pub replay: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            authserv_id: None,
            on_pass: Action::Accept,
            on_fail: Action::Accept,
            on_permerror: Action::Accept,
            // Enabling the milter never loses mail: only a lookup failure defers it.
            on_temperror: Action::Tempfail,
            on_policy: Action::Accept,
            on_none: Action::Accept,
            on_unaligned: Action::Accept,
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("a network"),
                "::1/128".parse().expect("a network"),
            ],
            skip_authenticated: true,
            dry_run: false,
            replay: true,
        }
    }
}

impl PolicyConfig {
    /// The authserv-id of our Authentication-Results fields.
    pub fn authserv_id(&self) -> String {
        match &self.authserv_id {
            Some(id) => id.to_string(),
            None => crate::infra::host::name(),
        }
    }
}

/// What an inbox rule requires of a message (`[[inbox.rule]] require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// No requirement (an `allow` list may still apply).
    #[default]
    Any,
    /// A passing signature.
    Pass,
    /// A passing signature aligned with From.
    Aligned,
}

fn reject() -> Action {
    Action::Reject
}

/// One `[[inbox.rule]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboxRuleConfig {
    /// Address patterns: `user@domain`, `*@domain`, `did.*@domain`.
    pub recipients: Vec<String>,
    #[serde(default)]
    pub require: Require,
    /// When present, only these senders: DIDs, handles, `*.domain` handle patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// For mail that does not meet the rule.
    #[serde(default = "reject")]
    pub action: Action,
}

/// DID-verified inboxes: the host names DID documents point at, and the inbox rules.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// The names by which DID documents' `smtp://` endpoints point at this host. Unset: this
    /// host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// A DID mailbox is also consented when the DID's `at.atsms.inbox` record lists
    /// `mailto:` for exactly that mailbox and the DID publishes a device certificate
    /// (`at.atsms.x509`): consent as the AT-SMS client gives it.
    pub atsms_records: bool,
    #[serde(rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<InboxRuleConfig>,
    /// The HTTPS inbox (anonymous): POSTs a client network (IPv4 /24, IPv6 /48) may make,
    /// whatever they carry.
    pub post_rate_per_network: crate::infra::limit::Rate,
    /// The HTTPS inbox: POSTs to one DID with an inbox here.
    pub post_rate_per_did: crate::infra::limit::Rate,
    /// The HTTPS inbox: POSTs served at once (its own share, apart from the signing
    /// service's `xrpc.max_concurrent`); more get 503 at once.
    pub max_concurrent_posts: std::num::NonZeroUsize,
    /// The HTTPS inbox: seconds a client may take to send a POST's body (slow uploads).
    pub upload_timeout: NonZeroU64,
    /// Where each device's copies of AT-SMS envelopes are kept (a Maildir per device).
    pub store: std::path::PathBuf,
    /// Copies a device may hold; beyond, POST 429 and SMTP/LMTP 452 4.2.2.
    pub max_envelopes_per_device: std::num::NonZeroUsize,
    /// Bytes of copies a device may hold; same answers.
    pub max_bytes_per_device: NonZeroU64,
}

impl Default for InboxConfig {
    fn default() -> InboxConfig {
        InboxConfig {
            hosts: None,
            atsms_records: true,
            rules: Vec::new(),
            post_rate_per_network: crate::infra::limit::Rate {
                count: 300,
                per: std::time::Duration::from_secs(60),
            },
            post_rate_per_did: crate::infra::limit::Rate {
                count: 60,
                per: std::time::Duration::from_secs(60),
            },
            max_concurrent_posts: std::num::NonZeroUsize::new(32).expect("non-zero"),
            upload_timeout: NonZeroU64::new(10).expect("non-zero"),
            store: std::path::PathBuf::from("/var/lib/atsms-milter/inbox"),
            max_envelopes_per_device: std::num::NonZeroUsize::new(1000).expect("non-zero"),
            max_bytes_per_device: NonZeroU64::new(64 << 20).expect("non-zero"),
        }
    }
}

impl InboxConfig {
    pub fn hosts(&self) -> Vec<String> {
        self.hosts
            .clone()
            .unwrap_or_else(|| vec![crate::infra::host::name()])
    }
}

/// One `[[signing.key]]`: a signing identity.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// From addresses this key signs for: `user@domain` or `*@domain`.
    #[serde(default)]
    pub senders: Vec<String>,
    /// The signing DID (`d=`).
    pub did: String,
    /// The full key id, `DID#fragment`; the DID document must list it.
    pub kid: String,
    /// PKCS#8 PEM, P-256 or secp256k1; refused if others may read it.
    pub key_file: PathBuf,
    /// SASL logins allowed to use this key (required): `["*"]` is any authenticated client
    /// or a client in `signing.networks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logins: Option<Vec<String>>,
}

/// What a signing failure does (`signing.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSignError {
    /// `451 4.3.0`: the client tries again; mail is never silently unsigned.
    #[default]
    Tempfail,
    /// Pass the message on unsigned (logged).
    Accept,
}

/// Signing outbound mail (milter) and the signing service's keys.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    #[serde(rename = "key", skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SigningKeyConfig>,
    /// Seconds a signature is valid (at most 604800).
    pub ttl: NonZeroU64,
    /// The token carries the envelope recipients (`rcpt`).
    pub rcpt_claim: bool,
    /// Clients whose mail is signed without SASL (not `policy.trusted_networks`: mail a local
    /// content filter re-injects must not be signed by accident).
    pub networks: Vec<Network>,
    pub on_error: OnSignError,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            keys: Vec::new(),
            ttl: NonZeroU64::new(86_400).expect("non-zero"),
            rcpt_claim: false,
            networks: Vec::new(),
            on_error: OnSignError::Tempfail,
        }
    }
}

/// One `[[device]]`: a device this service holds for a sending identity (`device new`): the
/// key and certificate `sendMessage` signs with for that DID.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub did: String,
    /// `device.key` (PKCS#8 P-256, refused if others may read it) and `device.crt`.
    pub dir: PathBuf,
}

/// `org.atsms-milter.mail.sendMessage`: the PDS-side sender's bounds and where it delivers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SendConfig {
    /// Recipient DIDs a call may name (at most 100).
    pub max_recipients: std::num::NonZeroUsize,
    /// Calls a sending DID may make.
    pub rate_limit: crate::infra::limit::Rate,
    /// Deliveries to try again (`queued`), one file each, kept across restarts.
    pub queue: PathBuf,
    /// The local MTA `mailto:` deliveries are handed to (SMTP, no TLS, no AUTH: the MTA must
    /// relay for this host, as for any local submission).
    pub smtp: TcpAddress,
}

impl Default for SendConfig {
    fn default() -> SendConfig {
        SendConfig {
            max_recipients: std::num::NonZeroUsize::new(100).expect("non-zero"),
            rate_limit: crate::infra::limit::Rate {
                count: 60,
                per: std::time::Duration::from_secs(60),
            },
            queue: PathBuf::from("/var/lib/atsms-milter/outbox"),
            smtp: TcpAddress(std::net::SocketAddr::from(([127, 0, 0, 1], 25))),
        }
    }
}

/// Sender reputation: rules on the identity of passing signatures (docs/reputation.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// DIDs, handles and `*.domain` handle patterns, one a line; reloaded on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<PathBuf>,
    /// The same; listed senders skip every rule below (never verification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<PathBuf>,
    pub on_denied: Action,
    /// Labeler DIDs asked about each passing sender.
    pub labelers: Vec<String>,
    /// Label value → action (`accept` shows the label and does nothing else).
    pub label_actions: std::collections::BTreeMap<String, Action>,
    /// Seconds a labeler's answer is served before it is asked again (in the background).
    pub label_ttl: NonZeroU64,
    /// Seconds; a did:plc younger than this (first operation of its audit log) is young.
    pub min_did_age: u64,
    pub on_young: Action,
    /// When `min_did_age` > 0 and the identity's age cannot be learnt now (the directory
    /// down or its budget spent): never "not young" by default, or an outage — which anyone
    /// can cause by spending the budget — would let a new identity through.
    pub on_age_unknown: Action,
    /// Messages per DID per hour; 0 = off. Counted across hosts through `store.redis`.
    pub rate_limit: u64,
    pub on_rate_limited: Action,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            deny: None,
            allow: None,
            on_denied: Action::Reject,
            labelers: Vec::new(),
            label_actions: std::collections::BTreeMap::new(),
            label_ttl: NonZeroU64::new(300).expect("non-zero"),
            min_did_age: 0,
            on_young: Action::Accept,
            on_age_unknown: Action::Tempfail,
            rate_limit: 0,
            on_rate_limited: Action::Tempfail,
        }
    }
}

impl ReputationConfig {
    /// Whether any rule is configured (else nothing is looked up for reputation).
    pub fn is_active(&self) -> bool {
        self.deny.is_some()
            || self.allow.is_some()
            || !self.labelers.is_empty()
            || self.min_did_age > 0
            || self.rate_limit > 0
    }
}

/// Bounds on what a message may make us hold (a header section is kept in memory).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_header_bytes: u64,
    pub max_header_fields: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 1_048_576,
            max_header_fields: 1000,
        }
    }
}

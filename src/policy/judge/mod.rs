//! The judge: the room every transport feeds and asks. Header fields and body chunks in
//! (`MessageSession`), a verdict out; at recipient time `admit` (consent, one inbox rule a
//! transaction); at end of message `judge` (`judgement.rs`), which turns a verdict and the
//! recipients into per-recipient decisions, header values, replies and log lines, weighing the
//! verdict by the site's policy (`decision.rs`), inbox rules and reputation. Transports only
//! translate.

pub mod admit;
pub mod decision;
pub mod judgement;
pub mod refusal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::format::auth_results;
use crate::format::envelope::{BodyHasher, FIELD_NAME, HeaderField};
use crate::format::mime::PartScanner;
use crate::format::reply::Reply;
use crate::infra::config::{Config, LimitsConfig, Network, PolicyConfig};
use crate::policy::action::Action;
use crate::policy::inbox::InboxRules;
use crate::policy::replay::ReplaySet;
use crate::policy::reputation::Assessment;
use crate::policy::routing::Router;
use crate::verification::atsms_parts::EnvelopeKind;
use crate::verification::verify::{Context, Verdict, Verifier};

pub use admit::Gate;
pub use judgement::{Judgement, Origin, Scope, Target, judge};
pub use refusal::Refusal;

/// What a running daemon judges with. Built once per configuration (re)load; a connection
/// keeps the one it started with.
pub struct Settings {
    pub verifier: Verifier,
    pub policy: PolicyConfig,
    pub authserv_id: String,
    pub trusted_networks: Vec<Network>,
    pub limits: LimitsConfig,
    /// `lmtp.recipient_delimiter`: how recipients fold into mailboxes (replay detection).
    pub recipient_delimiter: String,
    /// `[[inbox.rule]]`: an input of the judge.
    pub inbox: Arc<InboxRules>,
    /// Routing and consent by DID documents (`inbox.hosts`), sharing the identity cache.
    pub router: Router,
    /// A fixed verification time (Unix seconds) instead of the clock: for tests against the
    /// time-stamped vectors. Never set from configuration.
    pub fixed_now: Option<i64>,
    /// Replay detection (`policy.replay`).
    pub replay: Option<Arc<ReplaySet>>,
    /// `[[signing.key]]`: outbound mail from authenticated clients is signed, not judged.
    pub signer: Option<Arc<crate::policy::signer::Signer>>,
    /// `[reputation]`: rules on the sender's identity, when any is configured.
    pub reputation: Option<Arc<crate::policy::reputation::Reputation>>,
    /// The milter (and the Exim scanner) check replays only when LMTP does not run in the same
    /// process (LMTP sees each recipient's delivery; the milter would record mail LMTP then
    /// refuses).
    pub replay_in_milter: bool,
}

impl Settings {
    /// The verification time.
    pub fn now(&self) -> i64 {
        self.fixed_now.unwrap_or_else(crate::infra::clock::unix_now)
    }

    /// Settings with `policy` and defaults for the rest (tests, the command line).
    pub fn new(verifier: Verifier, policy: PolicyConfig) -> Settings {
        let router = Router::new(
            verifier.identity().clone(),
            &[crate::infra::host::name()],
            Duration::from_secs(2),
        );
        Settings {
            verifier,
            authserv_id: policy.authserv_id(),
            trusted_networks: policy.trusted_networks.clone(),
            policy,
            limits: LimitsConfig::default(),
            recipient_delimiter: "+".into(),
            inbox: Arc::new(InboxRules::default()),
            router,
            fixed_now: None,
            replay: None,
            signer: None,
            reputation: None,
            replay_in_milter: false,
        }
    }

    /// Settings from a configuration file's sections.
    pub fn from_config(verifier: Verifier, config: &Config) -> Settings {
        let router = Router::new(
            verifier.identity().clone(),
            &config.inbox.hosts(),
            config.socketmap.timeout(),
        )
        .with_atsms_records(config.inbox.atsms_records)
        .with_public_url(config.xrpc.public_url.as_ref())
        .with_alias_domains(&config.routing.alias_domains);
        let mut settings = Settings::new(verifier, config.policy.clone());
        settings.limits = config.limits.clone();
        settings.inbox = Arc::new(InboxRules::new(&config.inbox.rules));
        settings.router = router;
        if let Some(lmtp) = &config.lmtp {
            settings.recipient_delimiter = lmtp.recipient_delimiter.clone();
        }
        settings
    }

    /// What is done with mail from `client` (its address, when it connected over IP) and
    /// `login` (its SASL login, when it authenticated), decided once per message: signed
    /// when a signing key is for such clients, passed on unjudged from `trusted_networks` or
    /// (with `skip_authenticated`) an authenticated client, judged otherwise. Forged results
    /// are removed in every mode.
    pub fn mode_for(&self, client: Option<std::net::IpAddr>, login: Option<&str>) -> Mode {
        if self
            .signer
            .as_ref()
            .is_some_and(|s| s.signs_for_client(client, login))
        {
            return Mode::Sign {
                login: login.map(str::to_string),
            };
        }
        let trusted =
            client.is_some_and(|ip| crate::infra::config::in_networks(ip, &self.trusted_networks));
        if trusted || (login.is_some() && self.policy.skip_authenticated) {
            Mode::Pass
        } else {
            Mode::Judge
        }
    }

    /// Every action the judge may carry out with these settings: the results' (`policy.on_*`),
    /// the inbox rules' and reputation's (the milter asks the MTA for what it may need, such
    /// as the hold queue for `quarantine`). A dry run carries out none but `accept`.
    pub fn possible_actions(&self) -> Vec<Action> {
        if self.policy.dry_run {
            return vec![Action::Accept];
        }
        let p = &self.policy;
        let mut actions = vec![
            Action::Accept,
            p.on_pass,
            p.on_fail,
            p.on_permerror,
            p.on_temperror,
            p.on_policy,
            p.on_none,
            p.on_unaligned,
        ];
        actions.extend(self.inbox.actions());
        if let Some(reputation) = &self.reputation {
            actions.extend(reputation.actions());
        }
        actions.sort_by_key(|a| a.strictness());
        actions.dedup();
        actions
    }
}

/// What is done with a message (`Settings::mode_for`): it is never both judged and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Inbound: verified and judged.
    Judge,
    /// Outbound, from a client a signing key is for: signed, never judged.
    Sign { login: Option<String> },
    /// Trusted or authenticated mail without a signing key: passed on (forged results still
    /// removed).
    Pass,
}

/// The settings in force; replaced on reload, read once per connection by every transport.
pub type SharedSettings = crate::infra::live::Live<Settings>;

/// One message being received.
pub struct MessageSession {
    headers: Vec<HeaderField>,
    /// For each header field: an incoming `Authentication-Results` claiming our authserv-id
    /// (or unreadable), or a field hiding one after a bare line break, which must go
    /// (RFC 8601 §5).
    forged: Vec<bool>,
    body: BodyHasher,
    signed: bool,
    authserv_id: String,
    header_bytes: u64,
    limits: LimitsConfig,
    /// The header section went past `limits`: the message is refused, nothing is kept.
    too_large: bool,
    /// Looks for an AT-SMS client message in the body; set up at the first body chunk, from
    /// the top-level Content-Type (`Pending` until then).
    parts: Parts,
    /// The body is hashed whatever the fields say (the message is being signed).
    for_signing: bool,
}

/// Whether the message carries an AT-SMS client message (`mime`).
enum Parts {
    /// The header section is not complete yet.
    Pending,
    /// Known without reading (more of) the body.
    Known(bool),
    Scanning(Box<PartScanner>),
}

/// The verification of a whole message, before any recipient is judged.
pub struct Verified {
    pub verdict: Verdict,
    pub resolve_time: Duration,
    /// What AT-SMS client content the message carries (`policy.atsms-envelope=<kind>`).
    pub atsms_envelope: Option<EnvelopeKind>,
    /// The device certificates a CMS EnvelopedData is encrypted to (consent: a DID mailbox
    /// takes one only when it names a device that DID publishes).
    pub enveloped_to: Option<Vec<crate::verification::atsms_parts::Recipient>>,
    /// The envelope's bytes when the AT-SMS part is a whole one (sealed, EnvelopedData, a
    /// SignedData with its content): what each of a DID's devices is kept a copy of.
    pub envelope: Option<Vec<u8>>,
    /// What reputation says of the sender of a passing signature.
    pub reputation: Assessment,
}

impl MessageSession {
    pub fn new(settings: &Settings) -> MessageSession {
        MessageSession {
            headers: Vec::new(),
            forged: Vec::new(),
            body: BodyHasher::new(),
            signed: false,
            authserv_id: settings.authserv_id.clone(),
            header_bytes: 0,
            limits: settings.limits.clone(),
            too_large: false,
            parts: Parts::Pending,
            for_signing: false,
        }
    }

    /// A message to sign, not to judge: its body is hashed, whatever its fields say.
    pub fn to_sign(settings: &Settings) -> MessageSession {
        let mut session = MessageSession::new(settings);
        session.for_signing = true;
        session
    }

    /// The relaxed body hash (spec section 4.2), once the body ended.
    pub fn body_hash(&mut self) -> [u8; 32] {
        std::mem::take(&mut self.body).finish()
    }

    /// The header section is complete: decide what the body must be read for.
    fn start_body(&mut self) {
        if !matches!(self.parts, Parts::Pending) {
            return;
        }
        let field = |name: &str| {
            self.headers
                .iter()
                .find(|f| f.is(name))
                .map(|f| String::from_utf8_lossy(&f.value).replace(['\r', '\n'], ""))
        };
        let (content_type, disposition, encoding) = (
            field("content-type"),
            field("content-disposition"),
            field("content-transfer-encoding"),
        );
        self.parts = match PartScanner::new(
            content_type.as_deref(),
            disposition.as_deref(),
            encoding.as_deref(),
        ) {
            (found, None) => Parts::Known(found),
            (_, Some(scanner)) => Parts::Scanning(Box::new(scanner)),
        };
    }

    /// A header field as received: `value` is everything after the colon, folds included.
    /// Past `limits.max_header_fields` or `max_header_bytes` nothing more is kept and the
    /// message is to be refused (`refusal`).
    /// Owned strings are kept as they are (the milter's and the LMTP splitter's): no copy.
    pub fn header(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        let (name, value) = (name.into(), value.into());
        self.header_bytes += (name.len() + value.len() + 3) as u64;
        if self.too_large
            || self.headers.len() >= self.limits.max_header_fields
            || self.header_bytes > self.limits.max_header_bytes
        {
            self.too_large = true;
            self.headers = Vec::new();
            self.forged = Vec::new();
            return;
        }
        let field = HeaderField { name, value };
        let forged = (field.is(auth_results::FIELD_NAME)
            && auth_results::claims_ours(&field.value, &self.authserv_id))
            || auth_results::hides_ours(&field.value, &self.authserv_id);
        self.signed |= field.is(FIELD_NAME);
        self.headers.push(field);
        self.forged.push(forged);
    }

    /// The reply for a message whose header section is over the limits, if it is.
    pub fn refusal(&self) -> Option<Reply> {
        self.too_large
            .then(crate::format::reply::header_section_too_large)
    }

    /// Whether the body matters: for a signature's hash, or for an AT-SMS client message
    /// inside a multipart.
    pub fn wants_body(&mut self) -> bool {
        self.start_body();
        !self.too_large
            && (self.signed
                || self.for_signing
                || matches!(&self.parts, Parts::Scanning(s) if !s.finished()))
    }

    pub fn body(&mut self, chunk: &[u8]) {
        self.start_body();
        if self.too_large {
            return;
        }
        if self.signed || self.for_signing {
            self.body.update(chunk);
        }
        if let Parts::Scanning(scanner) = &mut self.parts
            && !scanner.finished()
        {
            scanner.update(chunk);
        }
    }

    /// What AT-SMS client content the message carries (all of it, once the body ended), and
    /// the SignedData when it is one.
    pub fn atsms_envelope(
        &self,
    ) -> Option<(
        EnvelopeKind,
        Option<crate::verification::atsms_parts::CmsInput>,
    )> {
        match &self.parts {
            Parts::Known(true) => Some((EnvelopeKind::Malformed, None)),
            Parts::Scanning(scanner) => scanner.envelope(),
            Parts::Known(false) | Parts::Pending => None,
        }
    }

    pub fn headers(&self) -> &[HeaderField] {
        &self.headers
    }

    /// The fields to delete, as (name, index among fields of that name counted from 1: the
    /// milter's `change_header` index), last first: deleting one never shifts the index of
    /// one still to delete.
    pub fn forged_fields(&self) -> Vec<(&str, i32)> {
        // Forged fields are rare: a message without any costs no allocation.
        if !self.forged.contains(&true) {
            return Vec::new();
        }
        let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for (field, forged) in self.headers.iter().zip(&self.forged) {
            let index = seen.entry(field.name.to_ascii_lowercase()).or_default();
            *index += 1;
            if *forged {
                out.push((field.name.as_str(), *index));
            }
        }
        out.reverse();
        out
    }

    /// Whether header field `i` is to be dropped (for transports that write the message).
    pub fn is_forged(&self, i: usize) -> bool {
        self.forged.get(i).copied().unwrap_or(false)
    }

    /// Verifies the message (no recipient is judged yet: that is `judge`'s). Its lookups
    /// use mail's own share of the PLC budget (`resolver.mail_share`).
    pub async fn finish(&mut self, settings: &Settings, now: i64) -> Verified {
        crate::atproto::identity::budget::for_mail(self.verify(settings, now)).await
    }

    async fn verify(&mut self, settings: &Settings, now: i64) -> Verified {
        self.start_body();
        let body_hash = self.body_hash();
        let started = Instant::now();
        let mut verdict = settings
            .verifier
            .verify(
                &self.headers,
                &body_hash,
                &Context {
                    now,
                    recipients: &[],
                },
            )
            .await;
        // An AT-SMS client's SignedData: the X.509 floor, one more signature.
        let envelope = self.atsms_envelope();
        if let Some((EnvelopeKind::CmsSigned, Some(input))) = &envelope {
            let detached = input.detached.as_deref();
            // Boxed, as the reputation below: rare, large futures (certificate fetches,
            // labelers) kept out of the state every message's future carries and moves.
            let floor = Box::pin(
                settings
                    .verifier
                    .floor(&self.headers, &input.der, detached, now),
            )
            .await;
            verdict.signatures.push(floor);
        }
        // Reputation speaks of the sender a passing signature names.
        let reputation = match (&settings.reputation, verdict.best_pass()) {
            (Some(reputation), Some(best)) => match (&best.did, &best.passed) {
                (Some(did), Some(passed)) => {
                    Box::pin(reputation.assess(did, &passed.jti, best.handle(), now)).await
                }
                _ => Assessment::default(),
            },
            _ => Assessment::default(),
        };
        let enveloped_to = match &envelope {
            Some((EnvelopeKind::CmsEnveloped, Some(input))) => {
                crate::verification::atsms_parts::enveloped_recipients(&input.der)
            }
            _ => None,
        };
        let (atsms_envelope, envelope_bytes) = match envelope {
            Some((kind, Some(input))) if input.detached.is_none() => (Some(kind), Some(input.der)),
            Some((kind, _)) => (Some(kind), None),
            None => (None, None),
        };
        Verified {
            verdict,
            resolve_time: started.elapsed(),
            enveloped_to,
            atsms_envelope,
            envelope: envelope_bytes,
            reputation,
        }
    }
}

/// A message arriving as bytes (LMTP's DATA, the Exim scanner's mbox copy): its header
/// section split into fields (bounded by `limits`) and given to the session, its body
/// streamed to it. A transport that keeps the body gets each body piece too, in order.
pub struct MessageBytes {
    pub session: MessageSession,
    splitter: Option<crate::format::message::HeaderSplitter>,
    /// The header section is too large (`limits`): nothing more is read.
    pub too_large: bool,
}

impl MessageBytes {
    pub fn new(session: MessageSession, limits: &LimitsConfig) -> MessageBytes {
        MessageBytes {
            session,
            splitter: Some(crate::format::message::HeaderSplitter::new(limits)),
            too_large: false,
        }
    }

    /// Feeds message bytes; `body` gets the body bytes among them.
    pub fn push(&mut self, data: &[u8], body: &mut dyn FnMut(&[u8])) {
        use crate::format::message::Split;
        if self.too_large {
            return;
        }
        let rest = match self.splitter.as_mut() {
            None => data,
            Some(splitter) => match splitter.push(data) {
                Ok(Split::More) => return,
                Ok(Split::Body { offset, prefix }) => {
                    self.end_headers(body);
                    self.body(&prefix, body);
                    &data[offset..]
                }
                Err(_) => {
                    self.too_large = true;
                    self.splitter = None;
                    return;
                }
            },
        };
        self.body(rest, body);
    }

    /// The input ended: a message without a body has its header section complete now.
    pub fn finish(&mut self, body: &mut dyn FnMut(&[u8])) {
        if !self.too_large {
            self.end_headers(body);
        }
    }

    fn end_headers(&mut self, body: &mut dyn FnMut(&[u8])) {
        if let Some(splitter) = self.splitter.take() {
            let finished = splitter.finish();
            for field in finished.fields {
                self.session.header(field.name, field.value);
            }
            if self.session.refusal().is_some() {
                self.too_large = true;
                return;
            }
            // A last line without a line end that is no field is the body's (kept).
            self.body(&finished.body, body);
        }
    }

    fn body(&mut self, data: &[u8], body: &mut dyn FnMut(&[u8])) {
        if data.is_empty() || self.too_large {
            return;
        }
        self.session.body(data);
        body(data);
    }
}

/// Settings for unit tests: built-in defaults and `policy`, a resolver that is never asked.
#[cfg(test)]
pub(crate) fn test_settings(policy: PolicyConfig) -> Settings {
    let identity = Arc::new(
        crate::atproto::identity::IdentityResolver::new(
            &crate::infra::config::ResolverConfig::default(),
            &crate::infra::config::CacheConfig::default(),
        )
        .expect("a resolver"),
    );
    Settings::new(Verifier::new(identity, Duration::from_secs(1)), policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut s = test_settings(PolicyConfig {
            authserv_id: Some("MX.example.net".parse().unwrap()),
            ..PolicyConfig::default()
        });
        s.limits.max_header_fields = 6;
        s
    }

    #[tokio::test]
    async fn forged_fields_are_found_and_indexed_per_name() {
        let s = settings();
        let mut m = MessageSession::new(&s);
        m.header("Authentication-Results", b" mx.example.net; atsms=pass");
        m.header("Received", b" from x");
        m.header("Authentication-Results", b" other.example; dkim=pass");
        m.header("authentication-results", b" \xff\xfe");
        m.header(
            "Authentication-Results",
            b" (comment) mx.example.net; spf=pass",
        );
        m.header(
            "X-Hidden",
            b" a\rAuthentication-Results: mx.example.net; atsms=pass",
        );
        assert_eq!(
            m.forged_fields(),
            vec![
                ("X-Hidden", 1),
                ("Authentication-Results", 4),
                ("authentication-results", 3),
                ("Authentication-Results", 1)
            ]
        );
        assert!(m.is_forged(0) && !m.is_forged(1) && !m.is_forged(2));
        assert!(!m.wants_body());
        assert!(m.refusal().is_none());
    }

    #[tokio::test]
    async fn the_header_section_is_bounded() {
        let s = settings();
        let mut m = MessageSession::new(&s);
        for _ in 0..7 {
            m.header("a", b"");
        }
        assert_eq!(
            m.refusal().unwrap().to_string(),
            "552 5.3.4 header section too large (too many or too long fields)"
        );
        assert!(m.headers().is_empty(), "nothing kept once refused");
        let mut m = MessageSession::new(&s);
        m.header("Subject", vec![b'x'; 2 * 1024 * 1024]);
        assert!(m.refusal().is_some());
    }

    #[test]
    fn who_is_judged() {
        let s = settings();
        let ip = |a: &str| Some(a.parse().unwrap());
        assert_eq!(s.mode_for(ip("127.0.0.1"), None), Mode::Pass);
        assert_eq!(s.mode_for(ip("192.0.2.1"), Some("alice")), Mode::Pass);
        assert_eq!(s.mode_for(ip("192.0.2.1"), None), Mode::Judge);
        assert_eq!(s.mode_for(None, None), Mode::Judge);
    }

    #[test]
    fn the_actions_a_milter_may_need_include_every_rule_s() {
        use crate::infra::config::InboxRuleConfig;
        let mut s = settings();
        assert!(!s.possible_actions().contains(&Action::Quarantine));
        s.inbox = Arc::new(InboxRules::new(&[InboxRuleConfig {
            recipients: vec!["*@mx.example.net".into()],
            require: crate::infra::config::Require::Pass,
            allow: None,
            action: Action::Quarantine,
        }]));
        assert!(s.possible_actions().contains(&Action::Quarantine));
        s.policy.dry_run = true;
        assert_eq!(s.possible_actions(), [Action::Accept]);
    }

    #[test]
    fn one_transaction_one_inbox_rule() {
        use crate::infra::config::InboxRuleConfig;
        let mut s = settings();
        s.inbox = Arc::new(InboxRules::new(&[InboxRuleConfig {
            recipients: vec!["strict@mx.example.net".into()],
            require: crate::infra::config::Require::Aligned,
            allow: None,
            action: Action::Reject,
        }]));
        let first = s
            .admit_to_transaction(None, "Strict+x@MX.example.net")
            .unwrap();
        assert_eq!(first, Some(0));
        assert_eq!(
            s.admit_to_transaction(Some(first), "strict@mx.example.net"),
            Ok(Some(0))
        );
        assert_eq!(
            s.admit_to_transaction(Some(first), "open@mx.example.net")
                .unwrap_err()
                .reply()
                .to_string(),
            "452 4.5.3 recipient under another inbox rule, send it separately"
        );
        assert_eq!(
            s.admit_to_transaction(Some(None), "open@mx.example.net"),
            Ok(None)
        );
    }
}

//! The message session both transports feed: header fields and body chunks in, a verdict,
//! a decision and our header field out. Transports only translate to their protocol.

use std::time::{Duration, Instant};

use crate::auth_results;
use crate::config::PolicyConfig;
use crate::envelope::{BodyHasher, FIELD_NAME, HeaderField};
use crate::policy::{self, Decision, IpNet};
use crate::replay::ReplaySet;
use crate::verify::{Context, Verdict, Verifier};
use std::sync::Arc;

/// What a running daemon judges with. Built once per configuration (re)load; a connection
/// keeps the one it started with.
pub struct Settings {
    pub verifier: Verifier,
    pub policy: PolicyConfig,
    pub authserv_id: String,
    pub trusted_networks: Vec<IpNet>,
    /// A fixed verification time (Unix seconds) instead of the clock: for tests against the
    /// time-stamped vectors. Never set from configuration.
    pub fixed_now: Option<i64>,
    /// Replay detection (`policy.replay`).
    pub replay: Option<Arc<ReplaySet>>,
    /// The milter checks replays only when LMTP does not run in the same process (LMTP sees
    /// each recipient's delivery; the milter would record mail LMTP then refuses).
    pub replay_in_milter: bool,
}

impl Settings {
    /// The verification time.
    pub fn now(&self) -> i64 {
        self.fixed_now.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default()
        })
    }

    pub fn new(verifier: Verifier, policy: PolicyConfig) -> Result<Settings, String> {
        Ok(Settings {
            verifier,
            authserv_id: policy.authserv_id(),
            trusted_networks: policy::parse_networks(&policy.trusted_networks)?,
            policy,
            fixed_now: None,
            replay: None,
            replay_in_milter: false,
        })
    }
}

/// The settings in force; replaced on reload, read once per connection by both transports.
pub type SharedSettings = Arc<std::sync::RwLock<Arc<Settings>>>;

/// One message being received.
pub struct MessageSession {
    headers: Vec<HeaderField>,
    /// For each header field: an incoming `Authentication-Results` claiming our authserv-id
    /// (or unreadable), which must go (RFC 8601 §5).
    forged: Vec<bool>,
    body: BodyHasher,
    signed: bool,
}

/// The end of a message, decided.
pub struct Outcome {
    pub verdict: Verdict,
    pub decision: Decision,
    /// Our field's value (leading space included, folded with `\n\t`).
    pub header_value: String,
    pub resolve_time: Duration,
}

impl MessageSession {
    pub fn new() -> MessageSession {
        MessageSession {
            headers: Vec::new(),
            forged: Vec::new(),
            body: BodyHasher::new(),
            signed: false,
        }
    }

    /// A header field as received: `value` is everything after the colon, folds included.
    pub fn header(&mut self, name: &str, value: &[u8], authserv_id: &str) {
        let field = HeaderField::new(name, value);
        let forged = field.is(auth_results::FIELD_NAME)
            && auth_results::authserv_id(value)
                .is_none_or(|id| id.eq_ignore_ascii_case(authserv_id));
        self.signed |= field.is(FIELD_NAME);
        self.headers.push(field);
        self.forged.push(forged);
    }

    /// Whether the body matters: without a signature nothing reads its hash.
    pub fn wants_body(&self) -> bool {
        self.signed
    }

    pub fn body(&mut self, chunk: &[u8]) {
        if self.signed {
            self.body.update(chunk);
        }
    }

    pub fn headers(&self) -> &[HeaderField] {
        &self.headers
    }

    /// Indices of forged `Authentication-Results` fields, counted from 1 among fields of that
    /// name (the milter's `change_header` index), in reverse order: deleting one shifts the
    /// indices of those after it.
    pub fn forged_indices(&self) -> Vec<i32> {
        let mut indices = Vec::new();
        let mut index = 0;
        for (field, forged) in self.headers.iter().zip(&self.forged) {
            if field.is(auth_results::FIELD_NAME) {
                index += 1;
                if *forged {
                    indices.push(index);
                }
            }
        }
        indices.reverse();
        indices
    }

    /// Whether header field `i` is to be dropped (for transports that write the message).
    pub fn is_forged(&self, i: usize) -> bool {
        self.forged.get(i).copied().unwrap_or(false)
    }

    pub async fn finish(
        &mut self,
        settings: &Settings,
        now: i64,
        recipients: &[String],
    ) -> Outcome {
        let body_hash = std::mem::take(&mut self.body).finish();
        let started = Instant::now();
        let verdict = settings
            .verifier
            .verify(&self.headers, &body_hash, &Context { now, recipients })
            .await;
        let resolve_time = started.elapsed();
        let decision = policy::decide(&verdict, &settings.policy);
        let header_value = auth_results::format_value(&settings.authserv_id, &verdict, "\n");
        Outcome {
            verdict,
            decision,
            header_value,
            resolve_time,
        }
    }
}

impl Default for MessageSession {
    fn default() -> Self {
        MessageSession::new()
    }
}

impl Outcome {
    /// Decides and formats again after the verdict changed (replays found).
    pub fn redecide(&mut self, settings: &Settings) {
        self.decision = policy::decide(&self.verdict, &settings.policy);
        self.header_value = auth_results::format_value(&settings.authserv_id, &self.verdict, "\n");
    }

    /// The one log line per message: queue id, result, DID, checked handle, action and time
    /// spent resolving. No secrets, no message content.
    pub fn log_line(&self, queue_id: &str, dry_run: bool) -> String {
        let best = self
            .verdict
            .best_pass()
            .or_else(|| self.verdict.signatures.first());
        let did = best.and_then(|s| s.did.as_deref()).unwrap_or("-");
        let handle = best.and_then(|s| s.handle.as_deref()).unwrap_or("-");
        let mut line = format!(
            "{queue_id}: atsms={} did={did} handle={handle} signatures={} action={}",
            self.decision.result,
            self.verdict.signatures.len(),
            self.decision.action.as_str()
        );
        if self.decision.unaligned {
            line.push_str(" unaligned=yes");
        }
        if let Some(reason) = best.and_then(|s| s.reason.as_deref()) {
            line.push_str(&format!(" reason=\"{}\"", reason.escape_default()));
        }
        if best.is_some_and(|s| s.stale) {
            line.push_str(" stale=yes");
        }
        line.push_str(&format!(" resolve_ms={}", self.resolve_time.as_millis()));
        if dry_run {
            line.push_str(" [dry run, nothing changed]");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_authentication_results() {
        let mut s = MessageSession::new();
        s.header(
            "Authentication-Results",
            b" mx.example.net; atsms=pass",
            "MX.example.net",
        );
        s.header("Received", b" from x", "mx.example.net");
        s.header(
            "Authentication-Results",
            b" other.example; dkim=pass",
            "mx.example.net",
        );
        s.header("authentication-results", b" \xff\xfe", "mx.example.net");
        s.header(
            "Authentication-Results",
            b" (comment) mx.example.net; spf=pass",
            "mx.example.net",
        );
        assert_eq!(s.forged_indices(), vec![4, 3, 1]);
        assert!(s.is_forged(0) && !s.is_forged(1) && !s.is_forged(2));
        assert!(!s.wants_body());
    }
}

//! The one judge: a verified message and its recipients in; per recipient (or for the whole
//! transaction, where a transport cannot answer per recipient) the decision, our header
//! value, the refusal reply and the log line out. The milter, LMTP and the Exim scanner call
//! it and only translate what it returns; inbox rules and reputation plug in here.

use super::decision::{self, Decision};
use crate::format::auth_results::{self, Property};
use crate::format::reply::{Enhanced, Reply};
use crate::policy::action::Action;
use crate::policy::inbox::Unmet;
use crate::policy::replay::ReplaySet;
use crate::policy::reputation::Assessment;
use crate::policy::routing::Consent;
use crate::verification::verify::Verdict;

use super::refusal::Refusal;
use super::{Settings, Verified};

/// The transaction being judged, for logs and metrics.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The queue id (milter), or a name for the transport (`lmtp`).
    pub id: &'a str,
    /// The transport, as metrics name it: `milter`, `lmtp`, `exim`.
    pub transport: &'static str,
    pub sender: &'a str,
}

/// One envelope recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given in RCPT (replies and logs name it).
    pub address: String,
    /// The mailbox it folds into (`address::fold`): replay detection keys on it.
    pub mailbox: String,
}

impl Target {
    /// A recipient folded with the settings' recipient delimiter.
    pub fn new(address: &str, settings: &Settings) -> Target {
        let mailbox = crate::format::address::fold(address, &settings.recipient_delimiter)
            .map(|f| f.mailbox())
            .unwrap_or_else(|| address.to_ascii_lowercase());
        Target {
            address: address.to_string(),
            mailbox,
        }
    }
}

/// How recipients are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each recipient on its own (LMTP answers per recipient).
    EachRecipient,
    /// All recipients together, one judgement (the milter and the Exim scanner answer once
    /// per message: a signature whose `rcpt` claim leaves out any recipient is `policy`).
    Together,
}

/// What happens to the message, for the recipients of one judgement: the transport carries
/// it out as its protocol can (interfaces.md, "Actions").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered as usual.
    Deliver,
    /// Filed as spam: LMTP into `.Junk`, Exim adds `X-Spam-Flag: YES`, the milter delivers.
    Junk,
    /// Held, with the reason the hold says (the rule that asked for it): the milter's hold
    /// queue, Exim freezes, LMTP files into `.Junk`.
    Quarantine(String),
    /// Accepted and dropped (LMTP never drops: `.Junk`).
    Discard,
    /// Refused: no mailbox here, consent unknown now, or what policy asks (`reject` 550,
    /// `tempfail` 451); `Refusal::reply` says it.
    Refuse(Refusal),
}

/// What the judge decided for one recipient, or for all of them together: every effect the
/// message is to have, dry run applied, for the transport to carry out — our
/// `Authentication-Results` field written (`header_value`, in every mode, dry run too) and
/// forged ones removed (always: RFC 8601 §5), the `disposition`, and, once the message is
/// accepted, what is remembered of it (`accepted`: replays and the rate count).
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Indices into the targets judged.
    pub recipients: Vec<usize>,
    /// The verdict for these recipients (`rcpt` claim and replays applied).
    pub verdict: Verdict,
    /// What the result asked for.
    pub decision: Decision,
    /// The inbox rule these recipients are under that the message does not meet, if any.
    pub inbox: Option<Unmet>,
    /// The strictest of the decision's, the inbox rule's and reputation's actions: what is
    /// logged (a dry run logs it and does not carry it out).
    pub action: Action,
    /// What the transport does: `action` carried out (`Deliver` in a dry run).
    pub disposition: Disposition,
    /// The message carries an AT-SMS client message (LMTP files it into `.AT-SMS`).
    pub atsms_envelope: bool,
    /// Our `Authentication-Results` value (leading space included, folded with `\n\t`).
    pub header_value: String,
    /// The one log line (no secrets, no message content).
    pub log_line: String,
    /// What to remember once the message is accepted for these recipients.
    remember: Remember,
}

/// What an accepted message leaves behind.
#[derive(Debug, Clone, Default)]
struct Remember {
    /// Mailboxes the passing signatures are recorded for (replay detection), when this
    /// transport records replays.
    replay_mailboxes: Vec<String>,
    /// The sender and token the per-DID rate counts: once per message, whatever the number
    /// of recipients, transports or retries.
    rate: Option<(String, String)>,
}

impl Judgement {
    /// The refusal, when the message is refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.disposition {
            Disposition::Refuse(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// The refusal's reply, when the message is refused.
    pub fn reply(&self) -> Option<Reply> {
        self.refusal().map(Refusal::reply)
    }

    pub fn refuses(&self) -> bool {
        self.refusal().is_some()
    }
}

/// Why the message gets `action`, in the words of whatever asked for it — a reputation or an
/// inbox rule whose action is stricter than the verification's, else the verification's
/// result — the same in every transport, for a refusal and for a hold alike.
fn reason(
    decision: &Decision,
    inbox: Option<&Unmet>,
    reputation: &Assessment,
    action: Action,
) -> String {
    if let Some(applied) = reputation
        .strictest()
        .filter(|a| a.action == action && a.action != decision.action)
        .filter(|_| inbox.is_none_or(|u| u.action != action))
    {
        return applied.rule.why();
    }
    if let Some(unmet) = inbox.filter(|u| u.action == action && u.action != decision.action) {
        return unmet.why.to_string();
    }
    if decision.unaligned && decision.action == action {
        return "AT-SMS signer is not aligned with From".into();
    }
    format!("AT-SMS signature {}", decision.result)
}

/// The disposition of `action`, for the reason `why`.
fn disposition(action: Action, why: String) -> Disposition {
    match action {
        Action::Accept => Disposition::Deliver,
        Action::Junk => Disposition::Junk,
        Action::Quarantine => Disposition::Quarantine(why),
        Action::Discard => Disposition::Discard,
        Action::Reject => {
            Disposition::Refuse(Refusal::Policy(Reply::new(550, Enhanced(5, 7, 1), why)))
        }
        Action::Tempfail => Disposition::Refuse(Refusal::Policy(Reply::new(
            451,
            Enhanced(4, 7, 1),
            format!("{why}, try again later"),
        ))),
    }
}

/// Judges `verified` for `targets`: one judgement per recipient, or one for all.
pub async fn judge(
    settings: &Settings,
    origin: &Origin<'_>,
    verified: &Verified,
    targets: &[Target],
    scope: Scope,
) -> Vec<Judgement> {
    let groups: Vec<Vec<usize>> = match scope {
        Scope::EachRecipient => (0..targets.len()).map(|i| vec![i]).collect(),
        Scope::Together => vec![(0..targets.len()).collect()],
    };
    let replay = settings
        .replay
        .as_ref()
        .filter(|_| scope == Scope::EachRecipient || settings.replay_in_milter);
    let mut judgements = Vec::with_capacity(groups.len());
    for group in groups {
        let message = Message {
            origin,
            verified,
            targets,
        };
        judgements.push(judge_group(settings, &message, group, replay.map(|r| &**r)).await);
    }
    judgements
}

/// What every group of one message's recipients is judged on.
struct Message<'a> {
    origin: &'a Origin<'a>,
    verified: &'a Verified,
    targets: &'a [Target],
}

/// The judgement for the recipients `group` (indexes into `message.targets`).
async fn judge_group(
    settings: &Settings,
    message: &Message<'_>,
    group: Vec<usize>,
    replay: Option<&ReplaySet>,
) -> Judgement {
    let (verified, targets) = (message.verified, message.targets);
    let mailboxes: Vec<String> = group.iter().map(|&i| targets[i].mailbox.clone()).collect();
    let mut verdict = verified.verdict.restricted_to(&mailboxes);
    if let Some(replay) = replay {
        for mailbox in &mailboxes {
            replay.check(&mut verdict, mailbox).await;
        }
    }
    let decision = decision::decide(&verdict, &settings.policy);
    // One transaction is judged under one rule: the first recipient's (the milter keeps
    // recipients under other rules out of it). A request naming no recipient (an Exim
    // scanner client may send none) is under none.
    let rule = group
        .first()
        .and_then(|&i| settings.inbox.rule_for(&targets[i].mailbox));
    let inbox = settings.inbox.check(rule, &verdict);
    let consent = consent_of(settings, message, &group).await;
    // What policy asks: the strictest of the result's, the inbox rule's and reputation's
    // actions (the only ones a dry run does not carry out).
    let reputation = &verified.reputation;
    let policy_action = strictest(&[
        Some(decision.action),
        inbox.as_ref().map(|u| u.action),
        reputation.strictest().map(|a| a.action),
    ]);
    // What is logged: consent's too (no mailbox is a refusal, an unknown one a deferral).
    let consent_action = match &consent {
        Some(Consent::Refused) => Some(Action::Reject),
        Some(Consent::Unknown(_)) => Some(Action::Tempfail),
        _ => None,
    };
    let action = strictest(&[consent_action, Some(policy_action)]);
    let why = || reason(&decision, inbox.as_ref(), reputation, policy_action);
    let disposition = match &consent {
        // A mailbox that does not exist here, whatever a dry run says.
        Some(Consent::Refused) => Disposition::Refuse(Refusal::NoMailbox),
        _ if !settings.policy.dry_run && policy_action == Action::Reject => {
            disposition(policy_action, why())
        }
        Some(Consent::Unknown(why)) => Disposition::Refuse(Refusal::Unavailable(why.clone())),
        _ if settings.policy.dry_run => Disposition::Deliver,
        _ => disposition(policy_action, why()),
    };
    let remember = Remember {
        replay_mailboxes: if replay.is_some() {
            mailboxes
        } else {
            Vec::new()
        },
        rate: verdict
            .best_pass()
            .and_then(|best| Some((best.did.clone()?, best.passed.as_ref()?.jti.clone()))),
    };
    let properties = properties(consent, verified);
    let header_value =
        auth_results::format_value(&settings.authserv_id, &verdict, &properties, "\n");
    let facts = Facts {
        verified,
        targets,
        group: &group,
        verdict: &verdict,
        decision: &decision,
        inbox: inbox.as_ref(),
        action,
    };
    let log_line = log_line(settings, message.origin, &facts);
    crate::infra::metrics::global().message(
        message.origin.transport,
        decision.result.as_str(),
        action.as_str(),
    );
    Judgement {
        recipients: group,
        verdict,
        decision,
        inbox,
        action,
        disposition,
        atsms_envelope: verified.atsms_envelope.is_some(),
        header_value,
        log_line,
        remember,
    }
}

/// The consent of the DID mailboxes among `group`'s recipients (and, for an EnvelopedData,
/// that it is encrypted to a device the DID publishes): refused if any refuses, unknown if
/// any is unknown; `None` with no DID mailbox among them. The milter's RCPT went through
/// Postfix's atsms_mailbox map and LMTP asked at RCPT, so this is cached; it is asked again
/// here because an envelope's recipients are known only now.
async fn consent_of(
    settings: &Settings,
    message: &Message<'_>,
    group: &[usize],
) -> Option<Consent> {
    let mut consent: Option<Consent> = None;
    for &i in group {
        let Some(here) = settings
            .router
            .consent_of(
                &message.targets[i].mailbox,
                message.verified.enveloped_to.as_deref(),
            )
            .await
        else {
            continue;
        };
        consent = Some(match (consent, here) {
            (Some(Consent::Refused), _) | (_, Consent::Refused) => Consent::Refused,
            (Some(Consent::Unknown(why)), _) | (_, Consent::Unknown(why)) => Consent::Unknown(why),
            _ => Consent::Given,
        });
    }
    consent
}

/// The strictest of `actions` (`accept` when none).
fn strictest(actions: &[Option<Action>]) -> Action {
    actions.iter().flatten().fold(Action::Accept, |a, &b| {
        if b.strictness() > a.strictness() {
            b
        } else {
            a
        }
    })
}

/// The properties our `Authentication-Results` field adds to the verdict's: consent, what an
/// AT-SMS part carries, each reputation rule applied.
fn properties(consent: Option<Consent>, verified: &Verified) -> Vec<Property> {
    let mut properties = Vec::new();
    if let Some(consent) = consent {
        let given = if consent == Consent::Given {
            "yes"
        } else {
            "no"
        };
        properties.push(Property::new("atsms-consent", given));
    }
    if let Some(kind) = verified.atsms_envelope {
        properties.push(Property::new("atsms-envelope", kind.as_str()));
    }
    for applied in &verified.reputation.applied {
        let (name, value) = applied.rule.property();
        properties.push(Property::new(name, value));
    }
    properties
}

/// The message was accepted for `judgement`'s recipients (delivered, held or dropped — not
/// refused): the same signature to the same mailbox again is a replay, and the sender's
/// message counts once towards its rate limit.
pub async fn accepted(settings: &Settings, judgement: &Judgement) {
    if let Some(replay) = &settings.replay {
        for mailbox in &judgement.remember.replay_mailboxes {
            replay
                .record(&judgement.verdict, mailbox, settings.now())
                .await;
        }
    }
    if let (Some(reputation), Some((did, jti))) = (&settings.reputation, &judgement.remember.rate) {
        reputation.count(did, jti, settings.now()).await;
    }
}

/// What one judgement decided, for its log line.
struct Facts<'a> {
    verified: &'a Verified,
    targets: &'a [Target],
    group: &'a [usize],
    verdict: &'a Verdict,
    decision: &'a Decision,
    inbox: Option<&'a Unmet>,
    /// The strictest action (before a dry run turns it into `accept`).
    action: Action,
}

fn log_line(settings: &Settings, origin: &Origin<'_>, facts: &Facts<'_>) -> String {
    let Facts {
        verified,
        targets,
        group,
        verdict,
        decision,
        ..
    } = facts;
    let best = verdict.best_pass().or_else(|| verdict.signatures.first());
    let did = best.and_then(|s| s.did.as_deref()).unwrap_or("-");
    let handle = best.and_then(|s| s.handle()).unwrap_or("-");
    let mut line = format!(
        "{}: atsms={} did={did} handle={handle} signatures={} action={}",
        origin.id,
        decision.result,
        verdict.signatures.len(),
        facts.action.as_str()
    );
    if decision.unaligned {
        line.push_str(" unaligned=yes");
    }
    if let Some(unmet) = facts.inbox {
        line.push_str(&format!(" inbox=rule{}:unmet", unmet.rule));
    }
    if let Some(kind) = verified.atsms_envelope {
        line.push_str(&format!(" atsms-envelope={}", kind.as_str()));
    }
    line.push_str(&verified.reputation.log_fields());
    if let Some(reason) = best.and_then(|s| s.reason.as_ref()) {
        line.push_str(&format!(
            " reason=\"{}\"",
            reason.to_string().escape_default()
        ));
    }
    if best.is_some_and(|s| s.stale) {
        line.push_str(" stale=yes");
    }
    let to: Vec<String> = group
        .iter()
        .map(|&i| format!("<{}>", targets[i].address.escape_default()))
        .collect();
    line.push_str(&format!(
        " from=<{}> to={} resolve_ms={}",
        origin.sender.escape_default(),
        to.join(","),
        verified.resolve_time.as_millis()
    ));
    if settings.policy.dry_run {
        line.push_str(" [dry run: action not carried out]");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::envelope::AuthResult;
    use crate::infra::config::PolicyConfig;
    use crate::verification::verify::testing::passing;
    use crate::verification::verify::{Reason, SignatureVerdict};
    use std::sync::Arc;
    use std::time::Duration;

    fn settings(policy: PolicyConfig) -> Settings {
        let mut s = crate::policy::judge::test_settings(policy);
        s.authserv_id = "mx.test".into();
        s.fixed_now = Some(100);
        s.replay = Some(Arc::new(crate::policy::replay::ReplaySet::new(100, None)));
        s
    }

    fn pass(rcpt: Option<Vec<String>>, aligned: bool) -> SignatureVerdict {
        passing("a@b.example", None, aligned, rcpt)
    }

    fn verified(signatures: Vec<SignatureVerdict>) -> Verified {
        Verified {
            verdict: Verdict { signatures },
            resolve_time: Duration::from_millis(3),
            atsms_envelope: None,
            envelope: None,
            enveloped_to: None,
            reputation: Assessment::default(),
        }
    }

    const TX: Origin<'static> = Origin {
        id: "Q1",
        transport: "lmtp",
        sender: "a@b.example",
    };

    #[tokio::test]
    async fn each_recipient_is_judged_on_its_own() {
        let s = settings(PolicyConfig {
            on_policy: Action::Reject,
            ..PolicyConfig::default()
        });
        let targets = vec![
            Target::new("Bob+x@MX.test", &s),
            Target::new("carol@mx.test", &s),
        ];
        assert_eq!(targets[0].mailbox, "bob@mx.test");
        let v = verified(vec![pass(Some(vec!["bob@mx.test".into()]), true)]);
        let each = judge(&s, &TX, &v, &targets, Scope::EachRecipient).await;
        assert_eq!(each.len(), 2);
        assert_eq!(each[0].decision.result, AuthResult::Pass);
        assert!(each[0].reply().is_none());
        assert!(each[0].header_value.contains("atsms=pass"));
        assert_eq!(each[1].decision.result, AuthResult::Policy);
        assert_eq!(
            each[1].reply().unwrap().to_string(),
            "550 5.7.1 AT-SMS signature policy"
        );
        assert!(
            each[1].log_line.starts_with("Q1: atsms=policy"),
            "{}",
            each[1].log_line
        );
        assert!(each[1].log_line.contains("to=<carol@mx.test>"));
        let together = judge(&s, &TX, &v, &targets, Scope::Together).await;
        assert_eq!(together.len(), 1);
        assert_eq!(together[0].recipients, vec![0, 1]);
        assert_eq!(together[0].decision.result, AuthResult::Policy);
    }

    #[tokio::test]
    async fn a_transaction_without_recipients_is_judged() {
        // The Exim scanner's request may name no `Rcpt:` (any local client can send one).
        let s = settings(PolicyConfig::default());
        let v = verified(vec![pass(None, true)]);
        let together = judge(&s, &TX, &v, &[], Scope::Together).await;
        assert_eq!(together.len(), 1);
        assert_eq!(together[0].decision.result, AuthResult::Pass);
        assert!(
            together[0].log_line.contains(" to= "),
            "{}",
            together[0].log_line
        );
        assert!(
            judge(&s, &TX, &v, &[], Scope::EachRecipient)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn replays_key_on_the_mailbox_and_are_recorded_only_when_accepted() {
        let s = settings(PolicyConfig::default());
        let first = vec![Target::new("bob@mx.test", &s)];
        let v = verified(vec![pass(None, true)]);
        let j = judge(&s, &TX, &v, &first, Scope::EachRecipient).await;
        assert_eq!(j[0].decision.result, AuthResult::Pass);
        // Judged but not accepted (say, the delivery failed): not a replay next time.
        let again = judge(&s, &TX, &v, &first, Scope::EachRecipient).await;
        assert_eq!(again[0].decision.result, AuthResult::Pass);
        accepted(&s, &again[0]).await;
        // The same mailbox spelled otherwise is the same mailbox.
        let other_spelling = vec![Target::new("BOB+anything@MX.test", &s)];
        let replayed = judge(&s, &TX, &v, &other_spelling, Scope::EachRecipient).await;
        assert_eq!(replayed[0].decision.result, AuthResult::Policy);
        assert_eq!(
            replayed[0].verdict.signatures[0].reason,
            Some(Reason::Replayed)
        );
    }

    #[tokio::test]
    async fn unaligned_refusal_dry_run_and_tempfail() {
        let s = settings(PolicyConfig {
            on_unaligned: Action::Reject,
            ..PolicyConfig::default()
        });
        let targets = vec![Target::new("bob@mx.test", &s)];
        let j = judge(
            &s,
            &TX,
            &verified(vec![pass(None, false)]),
            &targets,
            Scope::Together,
        )
        .await;
        assert_eq!(
            j[0].reply().unwrap().to_string(),
            "550 5.7.1 AT-SMS signer is not aligned with From"
        );
        assert!(j[0].log_line.contains("unaligned=yes"));
        let mut dry = settings(PolicyConfig {
            on_unaligned: Action::Reject,
            dry_run: true,
            ..PolicyConfig::default()
        });
        dry.replay = None;
        let j = judge(
            &dry,
            &TX,
            &verified(vec![pass(None, false)]),
            &targets,
            Scope::Together,
        )
        .await;
        // A dry run logs the action and carries none out; the field is written all the same.
        assert_eq!(j[0].action, Action::Reject);
        assert_eq!(j[0].disposition, Disposition::Deliver);
        assert!(j[0].reply().is_none());
        assert!(j[0].header_value.contains("policy.aligned=no"));
        assert!(j[0].log_line.contains("action=reject"));
        assert!(j[0].log_line.ends_with("[dry run: action not carried out]"));
        let temp = SignatureVerdict {
            result: AuthResult::Temperror,
            did: None,
            kid: None,
            reason: Some(Reason::Identity(
                crate::atproto::identity::IdentityError::TimedOut,
            )),
            stale: false,
            passed: None,
        };
        let j = judge(&s, &TX, &verified(vec![temp]), &targets, Scope::Together).await;
        assert_eq!(
            j[0].reply().unwrap().to_string(),
            "451 4.7.1 AT-SMS signature temperror, try again later"
        );
        assert!(
            j[0].log_line
                .contains("reason=\"identity lookup timed out\"")
        );
    }

    #[tokio::test]
    async fn inbox_rules_plug_into_the_judge() {
        use crate::infra::config::{InboxRuleConfig, Require};
        let mut s = settings(PolicyConfig::default());
        s.inbox = Arc::new(crate::policy::inbox::InboxRules::new(&[
            InboxRuleConfig {
                recipients: vec!["strict@mx.test".into()],
                require: Require::Aligned,
                allow: None,
                action: Action::Reject,
            },
            InboxRuleConfig {
                recipients: vec!["soft@mx.test".into()],
                require: Require::Pass,
                allow: None,
                action: Action::Junk,
            },
        ]));
        let targets = vec![
            Target::new("strict@mx.test", &s),
            Target::new("soft@mx.test", &s),
            Target::new("open@mx.test", &s),
        ];
        // Unsigned mail: each recipient gets its own answer in one transaction.
        let mut unsigned = verified(vec![]);
        unsigned.atsms_envelope = Some(crate::verification::atsms_parts::EnvelopeKind::Sealed);
        let j = judge(&s, &TX, &unsigned, &targets, Scope::EachRecipient).await;
        assert_eq!(
            j[0].reply().unwrap().to_string(),
            "550 5.7.1 this inbox takes verified, aligned senders only"
        );
        assert_eq!(j[0].inbox.as_ref().unwrap().rule, 1);
        assert!(
            j[0].log_line.contains("inbox=rule1:unmet"),
            "{}",
            j[0].log_line
        );
        assert_eq!((j[1].action, j[1].reply().is_none()), (Action::Junk, true));
        assert_eq!((j[2].action, j[2].inbox.is_none()), (Action::Accept, true));
        assert_eq!(
            j[2].header_value,
            " mx.test; atsms=none policy.atsms-envelope=sealed"
        );
        assert!(j[2].atsms_envelope);
        // The verification's own refusal stays its own when it is the stricter.
        let strict_fail = settings(PolicyConfig {
            on_none: Action::Tempfail,
            ..PolicyConfig::default()
        });
        let mut with_rules = strict_fail;
        with_rules.inbox = s.inbox.clone();
        let j = judge(
            &with_rules,
            &TX,
            &verified(vec![]),
            &targets[1..2],
            Scope::Together,
        )
        .await;
        assert_eq!(
            j[0].reply().unwrap().to_string(),
            "451 4.7.1 AT-SMS signature none, try again later"
        );
    }
}

//! Inbox rules (`[[inbox.rule]]`): per recipient, "this inbox takes verified senders only".
//! First match wins; a recipient no rule names takes any mail. An input of the judge: pure,
//! a recipient's mailbox and a verdict in, a refusal (or none) out.

use crate::infra::config::{InboxRuleConfig, Require};
use crate::policy::action::Action;
use crate::policy::senders::SenderList;
use crate::verification::verify::Verdict;

/// `*` matches any run of characters (none included); ASCII case is folded.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[derive(Debug, Clone)]
struct Rule {
    recipients: Vec<String>,
    require: Require,
    allow: Option<SenderList>,
    action: Action,
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct InboxRules {
    rules: Vec<Rule>,
}

/// A rule a message does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The rule's number, from 1 as in the file.
    pub rule: usize,
    pub action: Action,
    /// Why, for the reply and the log.
    pub why: &'static str,
}

impl InboxRules {
    /// Every action a rule may ask for (the milter negotiates what it may need).
    pub fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        self.rules.iter().map(|r| r.action)
    }

    pub fn new(config: &[InboxRuleConfig]) -> InboxRules {
        InboxRules {
            rules: config
                .iter()
                .map(|r| Rule {
                    recipients: r
                        .recipients
                        .iter()
                        .map(|p| p.to_ascii_lowercase())
                        .collect(),
                    require: r.require,
                    // Validated when the configuration was read (`Config::validate`); an
                    // entry that somehow is not valid admits nobody.
                    allow: r.allow.as_ref().map(|list| {
                        SenderList::from_entries(list.iter().map(String::as_str))
                            .unwrap_or_default()
                    }),
                    action: r.action,
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule (its index) governing `mailbox` (`user@domain`, folded), if any.
    pub fn rule_for(&self, mailbox: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.recipients.iter().any(|p| glob(p, mailbox)))
    }

    /// Whether `verdict` meets rule `rule` (none: no rule, always met).
    pub fn check(&self, rule: Option<usize>, verdict: &Verdict) -> Option<Unmet> {
        let index = rule?;
        let rule = &self.rules[index];
        let unmet = |why| {
            Some(Unmet {
                rule: index + 1,
                action: rule.action,
                why,
            })
        };
        let passing = || verdict.signatures.iter().filter(|s| s.passed.is_some());
        match rule.require {
            Require::Any => {}
            Require::Pass if passing().next().is_none() => {
                return unmet("this inbox takes verified senders only");
            }
            Require::Aligned if !passing().any(|s| s.aligned() == Some(true)) => {
                return unmet("this inbox takes verified, aligned senders only");
            }
            Require::Pass | Require::Aligned => {}
        }
        if let Some(allow) = &rule.allow {
            let admitted = passing().any(|s| {
                let did = s.did.as_deref().unwrap_or_default();
                allow.matches(did, s.handle())
            });
            if !admitted {
                return unmet("this inbox does not take mail from this sender");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::envelope::AuthResult;
    use crate::verification::verify::Reason;
    use crate::verification::verify::testing::{failing, passing};

    #[test]
    fn glob_patterns() {
        assert!(glob("*@mx.example.net", "bob@MX.example.net"));
        assert!(glob("did.*@mx.example.net", "did.plc.abc@mx.example.net"));
        assert!(!glob("did.*@mx.example.net", "bob@mx.example.net"));
        assert!(glob("bob@mx.example.net", "bob@mx.example.net"));
        assert!(!glob("bob@mx.example.net", "bobby@mx.example.net"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    fn rules() -> InboxRules {
        let rule = |recipients: &[&str], require, allow: Option<&[&str]>| InboxRuleConfig {
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            require,
            allow: allow.map(|a| a.iter().map(|s| s.to_string()).collect()),
            action: Action::Reject,
        };
        InboxRules::new(&[
            rule(&["strict@mx.test"], Require::Aligned, None),
            rule(
                &["friends@mx.test"],
                Require::Any,
                Some(&["*.example.com", "did:plc:hxdv4c2etoo2mbhg4alzhnno"]),
            ),
            rule(&["did.*@mx.test", "*@mx.test"], Require::Pass, None),
        ])
    }

    #[test]
    fn first_match_wins_and_each_requirement_holds() {
        let r = rules();
        assert_eq!(r.rule_for("strict@mx.test"), Some(0));
        assert_eq!(r.rule_for("anyone@mx.test"), Some(2));
        assert_eq!(r.rule_for("bob@elsewhere.test"), None);
        let unsigned = Verdict::default();
        let forged = Verdict {
            signatures: vec![failing(AuthResult::Fail, Reason::BodyHash)],
        };
        let unaligned = Verdict {
            signatures: vec![passing("a@b.example", None, false, None)],
        };
        let aligned = Verdict {
            signatures: vec![passing(
                "a@alice.example.com",
                Some("alice.example.com"),
                true,
                None,
            )],
        };
        assert_eq!(r.check(None, &forged), None);
        assert_eq!(
            r.check(Some(2), &unsigned).unwrap().why,
            "this inbox takes verified senders only"
        );
        assert_eq!(r.check(Some(2), &forged).unwrap().rule, 3);
        assert_eq!(r.check(Some(2), &unaligned), None);
        assert!(r.check(Some(0), &unaligned).is_some());
        assert_eq!(r.check(Some(0), &aligned), None);
        // The allow list: a *.domain handle pattern, or a DID.
        assert_eq!(r.check(Some(1), &aligned), None);
        assert!(
            r.check(Some(1), &unaligned).is_some(),
            "alice's DID, no handle"
        );
        assert!(r.check(Some(1), &unsigned).is_some());
    }
}

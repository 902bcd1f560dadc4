//! `Verdict` + policy settings → `Decision`: the action the verification result asks for.
//! Pure: no I/O. The judge (`session::judge`) combines it with inbox rules and reputation.

use crate::format::envelope::AuthResult;
use crate::infra::config::PolicyConfig;
use crate::policy::action::Action;
use crate::verification::verify::Verdict;

/// What the verification result asks the transport to do, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The message's result (interfaces: pass if any signature passes, …).
    pub result: AuthResult,
    /// True when the message passes but no passing signature is aligned with From.
    pub unaligned: bool,
    pub action: Action,
}

pub fn decide(verdict: &Verdict, policy: &PolicyConfig) -> Decision {
    let result = verdict.message_result();
    let unaligned =
        result == AuthResult::Pass && verdict.best_pass().and_then(|s| s.aligned()) != Some(true);
    let action = match result {
        AuthResult::Pass if unaligned => policy.on_unaligned,
        AuthResult::Pass => policy.on_pass,
        AuthResult::Fail => policy.on_fail,
        AuthResult::Permerror => policy.on_permerror,
        AuthResult::Temperror => policy.on_temperror,
        AuthResult::Policy => policy.on_policy,
        AuthResult::None => policy.on_none,
    };
    Decision {
        result,
        unaligned,
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verification::verify::testing::{failing, passing};
    use crate::verification::verify::{Reason, SignatureVerdict};

    fn sig(result: AuthResult, aligned: Option<bool>) -> SignatureVerdict {
        match aligned {
            Some(aligned) => passing("a@b.c", None, aligned, None),
            None => failing(result, Reason::Expired),
        }
    }

    #[test]
    fn message_result_and_actions() {
        let policy = PolicyConfig {
            on_fail: Action::Reject,
            on_unaligned: Action::Junk,
            on_policy: Action::Quarantine,
            ..PolicyConfig::default()
        };
        let d = |sigs: Vec<SignatureVerdict>| decide(&Verdict { signatures: sigs }, &policy);
        assert_eq!(d(vec![]).action, Action::Accept);
        assert_eq!(d(vec![]).result, AuthResult::None);
        assert_eq!(
            d(vec![
                sig(AuthResult::Fail, None),
                sig(AuthResult::Pass, Some(true))
            ])
            .action,
            Action::Accept
        );
        let unaligned = d(vec![sig(AuthResult::Pass, Some(false))]);
        assert!(unaligned.unaligned);
        assert_eq!(unaligned.action, Action::Junk);
        assert!(
            !d(vec![
                sig(AuthResult::Pass, Some(false)),
                sig(AuthResult::Pass, Some(true))
            ])
            .unaligned
        );
        assert_eq!(
            d(vec![
                sig(AuthResult::Fail, None),
                sig(AuthResult::Temperror, None)
            ])
            .action,
            Action::Tempfail
        );
        assert_eq!(
            d(vec![
                sig(AuthResult::Permerror, None),
                sig(AuthResult::Fail, None)
            ])
            .action,
            Action::Reject
        );
        assert_eq!(
            d(vec![sig(AuthResult::Policy, None)]).action,
            Action::Quarantine
        );
    }
}

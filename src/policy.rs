//! `Verdict` + policy settings → `Action`. Pure: no I/O.

use std::net::IpAddr;

pub use ipnet::IpNet;

use crate::config::{Action, PolicyConfig};
use crate::envelope::AuthResult;
use crate::verify::Verdict;

/// What the transport is told to do with a message, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The message's result (docs/configuration.md: pass if any signature passes, …).
    pub result: AuthResult,
    /// True when the message passes but no passing signature is aligned with From.
    pub unaligned: bool,
    pub action: Action,
}

pub fn decide(verdict: &Verdict, policy: &PolicyConfig) -> Decision {
    let result = verdict.message_result();
    let unaligned = result == AuthResult::Pass
        && !verdict
            .signatures
            .iter()
            .any(|s| s.result == AuthResult::Pass && s.aligned == Some(true));
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

/// Whether `ip` is inside one of `networks` (an IPv4-mapped IPv6 peer counts as IPv4).
pub fn is_trusted(ip: IpAddr, networks: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|net| net.contains(&ip))
}

/// Parses `trusted_networks`; a bare address is a host route.
pub fn parse_networks(networks: &[String]) -> Result<Vec<IpNet>, String> {
    networks
        .iter()
        .map(|n| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("\"{n}\" is not a network (CIDR) or address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::SignatureVerdict;

    fn sig(result: AuthResult, aligned: Option<bool>) -> SignatureVerdict {
        SignatureVerdict {
            result,
            did: None,
            kid: None,
            reason: None,
            handle: None,
            aligned,
            stale: false,
            from: None,
            rcpt: None,
            jti: None,
            exp: None,
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
            d(vec![
                sig(AuthResult::Policy, None),
                sig(AuthResult::Permerror, None)
            ])
            .result,
            AuthResult::Permerror
        );
        assert_eq!(
            d(vec![sig(AuthResult::Policy, None)]).action,
            Action::Quarantine
        );
    }

    #[test]
    fn trusted_networks() {
        let nets =
            parse_networks(&["127.0.0.0/8".into(), "::1/128".into(), "192.0.2.7".into()]).unwrap();
        assert!(is_trusted("127.0.0.1".parse().unwrap(), &nets));
        assert!(is_trusted("::ffff:127.0.0.1".parse().unwrap(), &nets));
        assert!(is_trusted("192.0.2.7".parse().unwrap(), &nets));
        assert!(!is_trusted("192.0.2.8".parse().unwrap(), &nets));
        assert!(parse_networks(&["10.0.0.0/33".into()]).is_err());
    }
}

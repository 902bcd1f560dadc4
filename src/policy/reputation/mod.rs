//! Sender reputation (interfaces.md, "Sender reputation"; docs/reputation.md): rules on the
//! identity behind a passing signature — deny and allow lists, atproto labelers, identity
//! age, per-DID rate limits. An input of the judge: `assess` says which rules apply, each
//! with its action; the judge takes the strictest action of all it weighs, and writes every
//! applied rule into our `Authentication-Results` and the log line.
//!
//! A labeler that does not answer within `resolver.timeout` contributes nothing (its lookup
//! goes on in the background and fills the cache for the next message). An identity age
//! that cannot be learnt now is not taken for "old": anyone can spend the PLC budget, and
//! an outage must not let a new identity through. It gets `on_age_unknown` (by default a
//! tempfail: the MTA retries once the directory answers).

pub mod age;
pub mod labels;
pub mod rate;

use std::sync::Arc;
use std::time::Duration;

use crate::atproto::identity::IdentityResolver;
use crate::atproto::identity::cache::TimedCache;
use crate::atproto::identity::error::IdentityError;
use crate::infra::config::{CacheConfig, Config, ReputationConfig};
use crate::policy::action::Action;

use crate::policy::senders::SenderList;
use age::Created;
use labels::LabelSet;

/// A rule that applied to a sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// On the deny list.
    Denied,
    /// A label a configured labeler applies, with an action in `label_actions`.
    Label(String),
    /// Younger than `min_did_age` (or a did:web, which has no creation time).
    Young,
    /// `min_did_age` is set and the identity's age cannot be learnt now.
    AgeUnknown,
    /// Over `rate_limit` messages this hour.
    RateExceeded,
}

impl Rule {
    /// Its property in our `Authentication-Results` (`policy.` + name = value).
    pub fn property(&self) -> (&'static str, String) {
        match self {
            Rule::Denied => ("atsms-denied", "yes".into()),
            Rule::Label(value) => ("atsms-label", value.clone()),
            Rule::Young => ("atsms-age", "young".into()),
            Rule::AgeUnknown => ("atsms-age", "unknown".into()),
            Rule::RateExceeded => ("atsms-rate", "exceeded".into()),
        }
    }

    /// What a refusal says.
    pub fn why(&self) -> String {
        match self {
            Rule::Denied => "AT-SMS sender is on this host's deny list".into(),
            Rule::Label(value) => format!("AT-SMS sender is labelled {value:?}"),
            Rule::Young => "AT-SMS sender identity is too new".into(),
            Rule::AgeUnknown => "AT-SMS sender identity's age cannot be learnt now".into(),
            Rule::RateExceeded => "too much mail from this AT-SMS sender".into(),
        }
    }
}

/// A rule that applied, and the action it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub rule: Rule,
    pub action: Action,
}

/// What reputation says about a message's sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// On the allow list: no rule was looked at.
    pub allowed: bool,
    pub applied: Vec<Applied>,
}

impl Assessment {
    /// The applied rule asking for the strictest action (the first such).
    pub fn strictest(&self) -> Option<&Applied> {
        self.applied.iter().reduce(|a, b| {
            if b.action.strictness() > a.action.strictness() {
                b
            } else {
                a
            }
        })
    }

    /// ` allowed=yes`, ` denied=yes label=spam age=young rate=exceeded`: for the log line.
    pub fn log_fields(&self) -> String {
        if self.allowed {
            return " allowed=yes".into();
        }
        self.applied
            .iter()
            .map(|a| {
                let (name, value) = a.rule.property();
                format!(
                    " {}={}",
                    name.trim_start_matches("atsms-"),
                    value.escape_default()
                )
            })
            .collect()
    }
}

/// How a sender stands against `min_did_age`.
enum Age {
    Old,
    Young,
    Unknown,
}

/// What survives a reload (SIGHUP): the caches and the counters.
struct Caches {
    labels: TimedCache<LabelSet>,
    ages: TimedCache<Created>,
    rate: rate::RateCounter,
}

/// The rules in force.
pub struct Reputation {
    identity: Arc<IdentityResolver>,
    config: ReputationConfig,
    deny: SenderList,
    allow: SenderList,
    caches: Arc<Caches>,
    timeout: Duration,
}

impl std::fmt::Debug for Reputation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reputation")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Reputation {
    /// The rules of `config` (`None` when none is configured), reading the list files; the
    /// caches and counters of `previous` are kept.
    pub fn load(
        config: &Config,
        identity: Arc<IdentityResolver>,
        previous: Option<&Reputation>,
    ) -> Result<Option<Reputation>, String> {
        let rep = &config.reputation;
        if !rep.is_active() {
            return Ok(None);
        }
        for labeler in &rep.labelers {
            if crate::format::syntax::supported_did_method(labeler).is_none() {
                return Err(format!(
                    "reputation.labelers: {labeler:?} is not a did:plc or did:web DID"
                ));
            }
        }
        let list = |path: &Option<std::path::PathBuf>| match path {
            Some(path) => SenderList::load(path).map_err(|e| format!("reputation: {e}")),
            None => Ok(SenderList::default()),
        };
        let caches = match previous {
            Some(p) => p.caches.clone(),
            None => {
                let labels = CacheConfig {
                    fresh: rep.label_ttl.get(),
                    max_age: rep.label_ttl.get().saturating_mul(12),
                    ..config.cache.clone()
                };
                Arc::new(Caches {
                    labels: TimedCache::new(&labels, 1, 16),
                    ages: TimedCache::new(&config.cache, 1, 32),
                    rate: rate::RateCounter::new(identity.shared_store()),
                })
            }
        };
        Ok(Some(Reputation {
            deny: list(&rep.deny)?,
            allow: list(&rep.allow)?,
            config: rep.clone(),
            identity,
            caches,
            timeout: config.resolver.timeout(),
        }))
    }

    /// The rules that apply to the sender `did` (its handle when checked) of the message its
    /// signature's `jti` names, as of `now`.
    pub async fn assess(
        self: &Arc<Self>,
        did: &str,
        jti: &str,
        handle: Option<&str>,
        now: i64,
    ) -> Assessment {
        if self.allow.matches(did, handle) {
            return Assessment {
                allowed: true,
                applied: Vec::new(),
            };
        }
        let mut applied = Vec::new();
        if self.deny.matches(did, handle) {
            applied.push(Applied {
                rule: Rule::Denied,
                action: self.config.on_denied,
            });
        }
        // Labels and age look things up: at once, bounded together, never an error.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let labels = self.labels(did, now, deadline);
        let age = self.age(did, now, deadline);
        let (labels, age) = tokio::join!(labels, age);
        for value in labels {
            if let Some(&action) = self.config.label_actions.get(&value) {
                applied.push(Applied {
                    rule: Rule::Label(value),
                    action,
                });
            }
        }
        match age {
            Age::Old => {}
            Age::Young => applied.push(Applied {
                rule: Rule::Young,
                action: self.config.on_young,
            }),
            Age::Unknown => applied.push(Applied {
                rule: Rule::AgeUnknown,
                action: self.config.on_age_unknown,
            }),
        }
        // This message would be more than the limit allows (it is counted only once it is
        // accepted: `count`).
        if self.config.rate_limit > 0
            && self
                .caches
                .rate
                .would_exceed(did, jti, self.config.rate_limit, now)
                .await
        {
            applied.push(Applied {
                rule: Rule::RateExceeded,
                action: self.config.on_rate_limited,
            });
        }
        Assessment {
            allowed: false,
            applied,
        }
    }

    /// Every action a rule here may ask for.
    pub fn actions(&self) -> Vec<Action> {
        let c = &self.config;
        let mut actions = vec![c.on_denied, c.on_young, c.on_age_unknown, c.on_rate_limited];
        actions.extend(c.label_actions.values().copied());
        actions
    }

    /// Counts an accepted message from `did` (its signature's `jti`) towards the rate limit.
    /// The HTTPS inbox's rate limit: envelopes carry no sender, so the per-DID limit
    /// (`rate_limit` an hour) counts what is posted **to** `recipient` (keyed `inbox:<did>`,
    /// each envelope once by its SHA-256 `hash`). Counts the envelope when it is allowed.
    pub async fn inbox_allows(&self, recipient: &str, hash: &str, now: i64) -> bool {
        let limit = self.config.rate_limit;
        if limit == 0 {
            return true;
        }
        let key = format!("inbox:{recipient}");
        if self.caches.rate.would_exceed(&key, hash, limit, now).await {
            return false;
        }
        self.caches.rate.count(&key, hash, now).await;
        true
    }

    pub async fn count(&self, did: &str, jti: &str, now: i64) {
        if self.config.rate_limit > 0 {
            self.caches.rate.count(did, jti, now).await;
        }
    }

    /// The label values the configured labelers apply to `did` now, each once.
    async fn labels(
        self: &Arc<Self>,
        did: &str,
        now: i64,
        deadline: tokio::time::Instant,
    ) -> Vec<String> {
        let lookups: Vec<_> = self
            .config
            .labelers
            .iter()
            .map(|labeler| {
                // Each lookup runs on its own: one that outlives the deadline still fills the
                // cache for the next message.
                let (this, labeler, did) = (self.clone(), labeler.clone(), did.to_string());
                tokio::spawn(async move { (this.label_set(&labeler, &did).await, labeler) })
            })
            .collect();
        let mut values = std::collections::BTreeSet::new();
        for lookup in lookups {
            match tokio::time::timeout_at(deadline, lookup).await {
                Ok(Ok((Ok(set), _))) => values.extend(set.active(now)),
                Ok(Ok((Err(e), labeler))) => {
                    tracing::info!("labeler {labeler}: no labels for {did} now: {e}");
                }
                Ok(Err(_)) => {}
                Err(_) => tracing::info!("a labeler did not answer in time about {did}"),
            }
        }
        values.into_iter().collect()
    }

    async fn label_set(
        self: &Arc<Self>,
        labeler: &str,
        did: &str,
    ) -> Result<Arc<LabelSet>, IdentityError> {
        let key = format!("{labeler} {did}");
        let fetch = {
            let (identity, labeler, did) =
                (self.identity.clone(), labeler.to_string(), did.to_string());
            move || {
                let (identity, labeler, did) = (identity.clone(), labeler.clone(), did.clone());
                async move { labels::query(&identity, &labeler, &did).await }
            }
        };
        let refresh = {
            let (caches, key, fetch) = (self.caches.clone(), key.clone(), fetch.clone());
            move || {
                tokio::spawn(async move {
                    let _ = caches.labels.fetch(&key, fetch, true).await;
                });
            }
        };
        self.caches
            .labels
            .get(&key, fetch, refresh)
            .await
            .map(|f| f.value)
    }

    /// How `did` stands against `min_did_age` (`Old` when no minimum is set).
    async fn age(self: &Arc<Self>, did: &str, now: i64, deadline: tokio::time::Instant) -> Age {
        let min_age = self.config.min_did_age;
        if min_age == 0 {
            return Age::Old;
        }
        if !did.starts_with("did:plc:") {
            // A did:web has no creation time: young, or spammers would all use did:web.
            return Age::Young;
        }
        let lookup = {
            let (this, did) = (self.clone(), did.to_string());
            // On its own task, for the same purpose (the PLC budget's mail share) and client.
            tokio::spawn(crate::atproto::identity::budget::carried(async move {
                let fetch = {
                    let (identity, did) = (this.identity.clone(), did.clone());
                    move || {
                        let (identity, did) = (identity.clone(), did.clone());
                        async move { age::query(&identity, &did).await }
                    }
                };
                this.caches.ages.get(&did, fetch, || {}).await
            }))
        };
        match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(Ok(created))) if now - created.value.0 < min_age as i64 => Age::Young,
            Ok(Ok(Ok(_))) => Age::Old,
            Ok(Ok(Err(e))) => {
                tracing::info!("{did}: creation time unknown now ({e})");
                Age::Unknown
            }
            _ => {
                tracing::info!("{did}: creation time did not come in time");
                Age::Unknown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strictest_rule_and_the_log_fields() {
        let assessment = Assessment {
            allowed: false,
            applied: vec![
                Applied {
                    rule: Rule::Label("porn".into()),
                    action: Action::Junk,
                },
                Applied {
                    rule: Rule::Denied,
                    action: Action::Reject,
                },
                Applied {
                    rule: Rule::RateExceeded,
                    action: Action::Tempfail,
                },
            ],
        };
        assert_eq!(assessment.strictest().unwrap().rule, Rule::Denied);
        assert_eq!(
            assessment.log_fields(),
            " label=porn denied=yes rate=exceeded"
        );
        assert_eq!(Assessment::default().strictest(), None);
        assert_eq!(
            Assessment {
                allowed: true,
                applied: vec![]
            }
            .log_fields(),
            " allowed=yes"
        );
    }

    #[tokio::test]
    async fn a_did_web_counts_as_young_without_asking_anyone() {
        let mut config = Config::default();
        config.reputation.min_did_age = 86_400;
        config.reputation.on_young = Action::Junk;
        let identity =
            Arc::new(IdentityResolver::new(&config.resolver, &config.cache).expect("resolver"));
        let reputation = Arc::new(Reputation::load(&config, identity, None).unwrap().unwrap());
        let assessment = reputation
            .assess("did:web:example.com", "jti", None, 1_000)
            .await;
        assert_eq!(
            assessment.applied,
            [Applied {
                rule: Rule::Young,
                action: Action::Junk
            }]
        );
        config.reputation.min_did_age = 0;
        assert!(!config.reputation.is_active());
    }
}

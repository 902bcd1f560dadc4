//! Rate limits by key (a client network, a recipient DID): a GCRA per key — the token
//! bucket written as one timestamp — allowing `count` events per `per`, `count` of them at
//! once after a quiet spell. Keys live in a bounded cache and are forgotten once quiet for
//! `per` (a forgotten key is indistinguishable from a quiet one). A leaf.

use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `count` events per `per`, written `60/1m` (`s`, `m`, `h`; `60/m` is `60/1m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "\"{}\" is not a rate (COUNT/PERIOD: 60/1m, 1000/1h, 5/10s)",
                text.escape_default()
            )
        };
        let (count, period) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(bad)?;
        let period = period.trim();
        let unit_at = period.len().checked_sub(1).ok_or_else(bad)?;
        let (number, unit) = period.split_at(unit_at);
        let number: u64 = if number.is_empty() {
            1
        } else {
            number.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?
        };
        let unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(number.checked_mul(unit).ok_or_else(bad)?),
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.per.as_secs();
        match secs {
            s if s % 3600 == 0 => write!(f, "{}/{}h", self.count, s / 3600),
            s if s % 60 == 0 => write!(f, "{}/{}m", self.count, s / 60),
            s => write!(f, "{}/{s}s", self.count),
        }
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(text: String) -> Result<Rate, String> {
        text.parse()
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        rate.to_string()
    }
}

impl Rate {
    /// The time between two events at the steady rate.
    fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

/// Events above the rate: when the next would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

pub struct RateLimit<K> {
    rate: Rate,
    /// Each key's theoretical arrival time.
    keys: moka::sync::Cache<K, Arc<Mutex<Instant>>>,
}

impl<K: Hash + Eq + Send + Sync + Clone + 'static> RateLimit<K> {
    /// At most `max_keys` keys remembered (the least used forgotten first).
    pub fn new(rate: Rate, max_keys: u64) -> RateLimit<K> {
        RateLimit {
            rate,
            keys: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(rate.per)
                .build(),
        }
    }

    /// The rate it allows.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Counts one event of `key` at `now`, unless it is above the rate.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Limited> {
        let interval = self.rate.interval();
        // Up to `count` at once: the bucket's depth, as the time it takes to refill.
        let tolerance = self.rate.per.saturating_sub(interval);
        let entry = self.keys.get_with(key, || Arc::new(Mutex::new(now)));
        let mut tat = entry.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*tat).max(now);
        if start > now + tolerance {
            return Err(Limited {
                retry_after: start - tolerance - now,
            });
        }
        *tat = start + interval;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_as_written() {
        let rate = |s: &str| s.parse::<Rate>().map(|r| r.to_string());
        assert_eq!(rate("60/1m").unwrap(), "60/1m");
        assert_eq!(rate("60/m").unwrap(), "60/1m");
        assert_eq!(rate("5/10s").unwrap(), "5/10s");
        assert_eq!(rate("1000/1h").unwrap(), "1000/1h");
        assert_eq!(rate("30/90s").unwrap(), "30/90s");
        assert_eq!(rate("120/120m").unwrap(), "120/2h");
        for bad in [
            "",
            "60",
            "0/1m",
            "60/0m",
            "60/1d",
            "x/1m",
            "60/",
            "-1/1m",
            "60/99999999999999999h",
        ] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_of_count_then_the_steady_rate_per_key() {
        let limit = RateLimit::new(
            Rate {
                count: 3,
                per: Duration::from_secs(60),
            },
            100,
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            limit.check("a", t0).unwrap();
        }
        let refused = limit.check("a", t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        limit.check("b", t0).unwrap();
        assert!(limit.check("a", t0 + Duration::from_secs(19)).is_err());
        limit.check("a", t0 + Duration::from_secs(20)).unwrap();
        assert!(limit.check("a", t0 + Duration::from_secs(21)).is_err());
        // Quiet for a whole period: a whole burst again.
        let later = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            limit.check("a", later).unwrap();
        }
        assert!(limit.check("a", later).is_err());
    }
}

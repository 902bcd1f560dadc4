//! Identity age: when a did:plc was created, from the first operation of its PLC audit log
//! (`GET <plc>/<did>/log/audit`, a JSON array oldest first). Only the start of the log is
//! read — an old identity's log can be long — and only its first entry parsed. A did:web has
//! no creation time.

use std::sync::Arc;

use crate::atproto::identity::IdentityResolver;
use crate::atproto::identity::error::{IdentityError, Upstream};

/// How much of an audit log is read: the first entry is a few hundred bytes.
const PREFIX: usize = 16 * 1024;

/// A creation time (Unix seconds), as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created(pub i64);

impl crate::atproto::identity::cache::Weigh for Created {
    fn weight(&self) -> usize {
        8
    }
}

/// The `createdAt` of the first entry of an audit log, from the log's first bytes.
pub fn first_created_at(prefix: &[u8]) -> Option<i64> {
    let start = prefix.iter().position(|b| !b.is_ascii_whitespace())?;
    if prefix[start] != b'[' {
        return None;
    }
    // One value, whatever follows it (`,` and the rest of the log, cut anywhere).
    let mut values =
        serde_json::Deserializer::from_slice(&prefix[start + 1..]).into_iter::<serde_json::Value>();
    let first = values.next()?.ok()?;
    crate::policy::reputation::labels::unix_seconds(first.get("createdAt")?.as_str()?)
}

/// Asks the configured PLC directories, in order, when `did` was created.
pub async fn query(
    identity: &Arc<IdentityResolver>,
    did: &str,
) -> Result<Arc<Created>, IdentityError> {
    let mut last = IdentityError::Unavailable(Upstream::Plc);
    for plc in identity.plc_urls() {
        // The same request budget as the directory's documents (`resolver.
        // max_requests_per_second`): an identity's age is asked once and cached.
        if identity.plc_budget(plc).await.is_err() {
            last = IdentityError::Busy(Upstream::Plc);
            continue;
        }
        let url = format!("{plc}/{did}/log/audit");
        match identity
            .net()
            .get_prefix(&url, Upstream::Plc, "application/json", PREFIX)
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => {
                return first_created_at(&r.body)
                    .map(|t| Arc::new(Created(t)))
                    .ok_or(IdentityError::Rejected(Upstream::Plc));
            }
            Ok(r) if r.status == 404 || r.status == 410 => {
                last = IdentityError::NotFound(Upstream::Plc);
            }
            Ok(_) => last = IdentityError::Unavailable(Upstream::Plc),
            Err(e) => last = crate::atproto::identity::fetch_error(Upstream::Plc, e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_entry_is_read_from_a_cut_log() {
        let log = br#"[{"did":"did:plc:x","operation":{"type":"plc_operation"},"cid":"bafy","nullified":false,"createdAt":"2024-03-01T12:00:00.000Z"},{"did":"did:plc:x","createdAt":"2025-01-01T00:00:00.000Z"}]"#;
        let expected = Some(1_709_294_400);
        assert_eq!(first_created_at(log), expected);
        // Cut in the second entry, as a prefix read leaves it.
        assert_eq!(first_created_at(&log[..log.len() - 40]), expected);
        assert_eq!(
            first_created_at(b"  \n[ {\"createdAt\":\"2024-03-01T12:00:00Z\"}"),
            expected
        );
        assert_eq!(
            first_created_at(&log[..50]),
            None,
            "the first entry itself cut"
        );
        assert_eq!(first_created_at(b"[]"), None);
        assert_eq!(
            first_created_at(b"{\"createdAt\":\"2024-03-01T12:00:00Z\"}"),
            None
        );
    }
}

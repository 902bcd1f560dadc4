//! Deliveries to try again (`send.queue`): one file per recipient of a message that could not
//! be delivered now, kept across restarts as Postfix keeps its deferred queue — the signed
//! message (sealed afresh at each try, to the prekeys published then), the devices it already
//! reached, the tries and the next one. Written whole or not at all (a temporary file synced,
//! renamed, the folder synced); a file that cannot be read is set aside (`.bad`), never lost.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How long a message is tried before it is given up (Postfix's `maximal_queue_lifetime` is
/// five days; a chat message two days late is worth less).
pub const MAX_AGE: i64 = 2 * 86_400;
/// The first try again, in seconds; each next waits twice as long, at most an hour.
const FIRST_RETRY: i64 = 10;
const LONGEST_WAIT: i64 = 3600;
/// Files read per scan.
const MAX_SCAN: usize = 10_000;

/// One recipient's pending delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub message_id: String,
    /// The sending DID.
    pub from: String,
    /// The recipient DID.
    pub to: String,
    /// The SignedData, base64.
    pub signed: String,
    /// Fingerprints of the recipient's devices already handed their copy.
    pub done: Vec<String>,
    pub attempts: u32,
    /// Unix seconds.
    pub first_at: i64,
    pub next_at: i64,
    /// Why the last try did not finish.
    pub last_error: String,
}

impl Pending {
    /// After one more try that could not finish: when to try again, or `None` when it is too
    /// old to try any more.
    pub fn after_try(mut self, now: i64, why: String) -> Option<Pending> {
        self.attempts += 1;
        self.last_error = why;
        let shift = self.attempts.saturating_sub(1).min(20);
        let wait = FIRST_RETRY.saturating_mul(1 << shift).min(LONGEST_WAIT);
        self.next_at = now + wait;
        (self.next_at - self.first_at <= MAX_AGE).then_some(self)
    }

    fn file_name(&self) -> String {
        let to: String = self
            .to
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{}-{to}.json", self.message_id)
    }
}

/// The folder of pending deliveries.
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The folder `dir`, made (0700) when missing.
    pub fn open(dir: &Path) -> Result<Outbox, String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("send.queue {}: {e}", dir.display()))?;
        Ok(Outbox {
            dir: dir.to_path_buf(),
        })
    }

    /// Keeps `pending` (replacing its earlier state) durably.
    pub fn put(&self, pending: &Pending) -> std::io::Result<()> {
        use std::io::Write;
        let name = pending.file_name();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(pending).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(&name))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets `pending` (delivered, refused, or given up).
    pub fn remove(&self, pending: &Pending) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(pending.file_name())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The pending deliveries due at `now`; every one when `now` is `None`.
    pub fn due(&self, now: Option<i64>) -> Vec<Pending> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for entry in entries.flatten().take(MAX_SCAN) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let read = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
                .filter(|p| p.file_name() == name);
            match read {
                Some(pending) if now.is_none_or(|now| pending.next_at <= now) => due.push(pending),
                Some(_) => {}
                None => {
                    tracing::error!(
                        "send.queue: {} cannot be read; set aside as .bad",
                        path.display()
                    );
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        due.sort_by_key(|p| p.next_at);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        Pending {
            message_id: "ab".repeat(32),
            from: "did:plc:ssssssssssssssssssssssss".into(),
            to: "did:web:example.com%3A8443".into(),
            signed: "AAAA".into(),
            done: vec!["f1".into()],
            attempts: 0,
            first_at: 1000,
            next_at: 1000,
            last_error: String::new(),
        }
    }

    #[test]
    fn a_pending_delivery_survives_waits_longer_each_try_and_is_given_up_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("q")).unwrap();
        let p = pending().after_try(1000, "503".into()).unwrap();
        assert_eq!(p.next_at, 1010);
        outbox.put(&p).unwrap();
        assert!(outbox.due(Some(1009)).is_empty());
        assert_eq!(outbox.due(Some(1010)), vec![p.clone()]);
        // Another reading of the folder (a restart) finds it.
        assert_eq!(
            Outbox::open(&dir.path().join("q")).unwrap().due(None),
            vec![p.clone()]
        );
        let p2 = p.clone().after_try(1010, "503".into()).unwrap();
        assert_eq!(p2.next_at, 1030);
        outbox.put(&p2).unwrap();
        assert_eq!(outbox.due(None), vec![p2.clone()], "replaced, not added");
        let mut late = p2.clone();
        late.attempts = 40;
        assert_eq!(late.after_try(1000 + MAX_AGE, "503".into()), None);
        outbox.remove(&p2).unwrap();
        assert!(outbox.due(None).is_empty());
        // A damaged file is set aside, not lost and not retried.
        std::fs::write(dir.path().join("q").join("x.json"), b"{").unwrap();
        assert!(outbox.due(None).is_empty());
        assert!(dir.path().join("q").join("x.bad").exists());
    }
}

//! Deliveries to try again (`send.queue`): one file per recipient of a message that could not
//! be delivered now, kept across restarts as Postfix keeps its deferred queue — the signed
//! message (sealed afresh at each try, to the prekeys published then), the devices it already
//! reached, the tries and the next one. Written whole or not at all (a temporary file synced,
//! renamed, the folder synced once a batch); a file that cannot be read is set aside (`.bad`),
//! never lost. The folder is read once, at start; from then on an index in memory says what is
//! due (no scan of the folder every round), and bounds it: at most `MAX_PENDING` deliveries,
//! `MAX_PENDING_PER_SENDER` of one sending DID (beyond, a delivery that cannot go now fails).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a message is tried before it is given up (Postfix's `maximal_queue_lifetime` is
/// five days; a chat message two days late is worth less).
pub const MAX_AGE: i64 = 2 * 86_400;
/// The first try again, in seconds; each next waits twice as long, at most an hour.
const FIRST_RETRY: i64 = 10;
const LONGEST_WAIT: i64 = 3600;
/// Deliveries kept at most, in all and of one sending DID.
pub const MAX_PENDING: usize = 10_000;
pub const MAX_PENDING_PER_SENDER: usize = 1_000;

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
    /// After one more try that could not finish: when to try again — the backoff, or later
    /// when the destination asked (`retry_after` seconds, at most the longest wait) — or
    /// `None` when it is too old to try any more.
    pub fn after_try(mut self, now: i64, why: String, retry_after: Option<u64>) -> Option<Pending> {
        self.attempts += 1;
        self.last_error = why;
        let shift = self.attempts.saturating_sub(1).min(20);
        let backoff = FIRST_RETRY.saturating_mul(1 << shift);
        let asked = retry_after.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        self.next_at = now + backoff.max(asked).min(LONGEST_WAIT);
        (self.next_at - self.first_at <= MAX_AGE).then_some(self)
    }

    /// `<message id>-<SHA-256 of the recipient DID, 32 hex>.json`: unique per recipient, of
    /// a fixed length whatever the DID (a did:web may be long, and any two spellings differ).
    fn file_name(&self) -> String {
        let to = crate::format::hex::hex(&Sha256::digest(self.to.as_bytes())[..16]);
        let id: String = self
            .message_id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(64)
            .collect();
        format!("{id}-{to}.json")
    }
}

/// Why a delivery was not kept.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("send.queue holds {0} deliveries already (its limit)")]
    Full(usize),
    #[error("send.queue holds {0} deliveries of this sender already (its limit)")]
    SenderFull(usize),
    #[error("send.queue: {0}")]
    Io(#[from] std::io::Error),
}

/// The folder of pending deliveries, and its index.
pub struct Outbox {
    dir: PathBuf,
    /// File name → (when due, sending DID).
    index: Mutex<BTreeMap<String, (i64, String)>>,
}

impl Outbox {
    /// The folder `dir`, made (0700) when missing, read once.
    pub fn open(dir: &Path) -> Result<Outbox, String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("send.queue {}: {e}", dir.display()))?;
        let outbox = Outbox {
            dir: dir.to_path_buf(),
            index: Mutex::new(BTreeMap::new()),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| format!("send.queue: {e}"))?;
        let mut index = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".json")
                && !name.starts_with('.')
                && let Some(pending) = outbox.read(&name)
            {
                index.insert(name, (pending.next_at, pending.from));
            }
        }
        *outbox.lock() = index;
        outbox.counted();
        Ok(outbox)
    }

    /// The `atsms_send_queue` gauge, set to the deliveries kept.
    fn counted(&self) {
        crate::infra::metrics::global().set_send_queue(self.len());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (i64, String)>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deliveries kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps each of `pending` (replacing its earlier state) durably, within the bounds: one
    /// answer each, in order. Blocking (files synced): call it off the runtime's threads.
    pub fn put_all(&self, pending: &[Pending]) -> Vec<Result<(), KeepError>> {
        let answers: Vec<Result<(), KeepError>> = pending.iter().map(|p| self.write(p)).collect();
        // One sync of the folder makes every rename of the batch durable. Should it fail, the
        // files are there and indexed all the same: they are tried (said, not undone).
        if answers.iter().any(Result::is_ok)
            && let Err(e) = std::fs::File::open(&self.dir).and_then(|d| d.sync_all())
        {
            tracing::error!("send.queue: cannot sync {}: {e}", self.dir.display());
        }
        answers
    }

    fn write(&self, pending: &Pending) -> Result<(), KeepError> {
        use std::io::Write;
        let name = pending.file_name();
        // The slot is taken under the lock (concurrent batches cannot all pass the bounds), and
        // given back when the file cannot be written.
        let earlier = {
            let mut index = self.lock();
            if !index.contains_key(&name) {
                if index.len() >= MAX_PENDING {
                    return Err(KeepError::Full(index.len()));
                }
                let of_sender = index.values().filter(|(_, f)| *f == pending.from).count();
                if of_sender >= MAX_PENDING_PER_SENDER {
                    return Err(KeepError::SenderFull(of_sender));
                }
            }
            index.insert(name.clone(), (pending.next_at, pending.from.clone()))
        };
        let written = (|| {
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(pending).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(&name))
        })();
        if written.is_err() {
            let mut index = self.lock();
            match earlier {
                Some(earlier) => index.insert(name, earlier),
                None => index.remove(&name),
            };
        }
        self.counted();
        Ok(written?)
    }

    /// Puts off `pending` until `at` in memory only (its file could not be rewritten): not
    /// tried again at once; a restart reads the file's time again.
    pub fn postpone(&self, pending: &Pending, at: i64) {
        if let Some(entry) = self.lock().get_mut(&pending.file_name()) {
            entry.0 = at;
        }
    }

    /// Forgets `pending` (delivered, refused, or given up).
    pub fn remove(&self, pending: &Pending) -> std::io::Result<()> {
        let name = pending.file_name();
        match std::fs::remove_file(self.dir.join(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => {
                self.lock().remove(&name);
                self.counted();
                Ok(())
            }
        }
    }

    /// Up to `max` deliveries due at `now`, the longest due first. Blocking (files read).
    pub fn due(&self, now: i64, max: usize) -> Vec<Pending> {
        let mut names: Vec<(i64, String)> = self
            .lock()
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(name, (at, _))| (*at, name.clone()))
            .collect();
        names.sort();
        names
            .into_iter()
            .take(max)
            .filter_map(|(_, name)| {
                let read = self.read(&name);
                // Gone, or set aside as `.bad`: out of the index; unreadable now: kept.
                if read.is_none() && !self.dir.join(&name).exists() {
                    self.lock().remove(&name);
                    self.counted();
                }
                read
            })
            .collect()
    }

    /// The delivery in the file `name`; one that cannot be read is set aside as `.bad`.
    fn read(&self, name: &str) -> Option<Pending> {
        let path = self.dir.join(name);
        // A file that cannot be read now (no descriptor left, say) stays for a later round.
        let bytes = std::fs::read(&path).ok()?;
        let read = serde_json::from_slice::<Pending>(&bytes)
            .ok()
            .filter(|p| p.file_name() == name);
        if read.is_none() {
            tracing::error!(
                "send.queue: {} cannot be read; set aside as .bad",
                path.display()
            );
            let _ = std::fs::rename(&path, path.with_extension("bad"));
        }
        read
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
        let p = pending().after_try(1000, "503".into(), None).unwrap();
        assert_eq!(p.next_at, 1010);
        assert!(outbox.put_all(std::slice::from_ref(&p))[0].is_ok());
        assert!(outbox.due(1009, 10).is_empty());
        assert_eq!(outbox.due(1010, 10), vec![p.clone()]);
        // Another reading of the folder (a restart) finds it.
        let again = Outbox::open(&dir.path().join("q")).unwrap();
        assert_eq!(again.due(i64::MAX, 10), vec![p.clone()]);
        let p2 = p.clone().after_try(1010, "503".into(), None).unwrap();
        assert_eq!(p2.next_at, 1030);
        // A destination's Retry-After is honoured, up to the longest wait.
        assert_eq!(
            p.clone()
                .after_try(1010, "429".into(), Some(600))
                .unwrap()
                .next_at,
            1610
        );
        assert_eq!(
            p.clone()
                .after_try(1010, "429".into(), Some(u64::MAX))
                .unwrap()
                .next_at,
            1010 + LONGEST_WAIT
        );
        assert!(outbox.put_all(std::slice::from_ref(&p2))[0].is_ok());
        assert_eq!(
            outbox.due(i64::MAX, 10),
            vec![p2.clone()],
            "replaced, not added"
        );
        let mut late = p2.clone();
        late.attempts = 40;
        assert_eq!(late.after_try(1000 + MAX_AGE, "503".into(), None), None);
        outbox.remove(&p2).unwrap();
        assert!(outbox.is_empty());
        // A damaged file is set aside at start, not lost and not retried.
        std::fs::write(dir.path().join("q").join("x.json"), b"{").unwrap();
        assert!(Outbox::open(&dir.path().join("q")).unwrap().is_empty());
        assert!(dir.path().join("q").join("x.bad").exists());
    }

    #[test]
    fn two_did_webs_that_differ_only_in_punctuation_are_two_files_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let mut a = pending();
        a.to = "did:web:a-b.example".into();
        let mut b = pending();
        b.to = "did:web:a.b.example".into();
        let mut long = pending();
        long.to = format!("did:web:{}", "x".repeat(250));
        for answer in outbox.put_all(&[a, b, long]) {
            answer.unwrap();
        }
        assert_eq!(outbox.len(), 3);
        let mut many = Vec::new();
        for n in 0..MAX_PENDING_PER_SENDER {
            let mut p = pending();
            p.to = format!("did:plc:{n:0>24}");
            many.push(p);
        }
        let answers = outbox.put_all(&many);
        assert!(
            answers[..MAX_PENDING_PER_SENDER - 3]
                .iter()
                .all(Result::is_ok)
        );
        assert!(matches!(
            answers.last(),
            Some(Err(KeepError::SenderFull(_)))
        ));
        assert_eq!(outbox.len(), MAX_PENDING_PER_SENDER);
    }
}

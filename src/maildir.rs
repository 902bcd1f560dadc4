//! Durable Maildir delivery (cr.yp.to/proto/maildir.html, Courier's Maildir++ folders).
//!
//! A message becomes visible in `new/` only once it is on disk: write into `tmp/` with
//! O_EXCL, fdatasync, rename into `new/`, fsync `new/`. Only then may LMTP say 250
//! (RFC 2033 §4.2: the receiver has no queue). Concurrent deliveries into one folder share the
//! directory fsync (group commit). Files are stored with LF line ends, as Postfix's virtual(8)
//! and Dovecot store them; `S=` is the file's size.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files in `tmp/` older than this are debris of an interrupted delivery (maildir spec).
pub const STALE_TMP_AGE: Duration = Duration::from_secs(36 * 3600);

/// Why a delivery failed, as LMTP reports it.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No space (ENOSPC, EDQUOT, or EFBIG from a file size limit): 452 4.3.1.
    #[error("insufficient storage: {0}")]
    Full(io::Error),
    /// Any other I/O error: 451 4.3.0.
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for DeliveryError {
    fn from(e: io::Error) -> DeliveryError {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => DeliveryError::Full(e),
            _ => DeliveryError::Io(e),
        }
    }
}

/// Counts deliveries by this process: the `Q` part of unique names.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// The host part of unique names, with `/` and `:` escaped as the maildir spec says.
pub fn escaped_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// `time.M<usec>P<pid>Q<n>.<host>`: unique within a host (pid, per-process counter), and
/// O_EXCL makes a collision an error rather than an overwrite.
pub fn unique_name(host: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        n,
        escaped_host(host)
    )
}

fn mkdir(path: &Path) -> io::Result<bool> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Makes `folder` a maildir (its parents too), durably: each new directory entry is synced.
/// `is_subfolder` adds the Maildir++ `maildirfolder` marker.
pub fn ensure_folder(folder: &Path, is_subfolder: bool) -> io::Result<()> {
    if folder.join("new").is_dir() && folder.join("tmp").is_dir() && folder.join("cur").is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut p = folder;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        if mkdir(dir)?
            && let Some(parent) = dir.parent()
        {
            fsync_dir(parent)?;
        }
    }
    for sub in ["tmp", "new", "cur"] {
        mkdir(&folder.join(sub))?;
    }
    if is_subfolder {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(folder.join("maildirfolder"))?;
    }
    fsync_dir(folder)
}

/// Group commit of `new/` directory fsyncs: a rename counts as durable once a sync that
/// started after it has finished; concurrent deliveries share one sync.
#[derive(Default)]
pub struct DirSyncer {
    dirs: Mutex<HashMap<PathBuf, Arc<SyncState>>>,
}

#[derive(Default)]
struct SyncState {
    inner: Mutex<SyncCounters>,
    done: Condvar,
}

#[derive(Default)]
struct SyncCounters {
    /// Renames completed into this directory.
    renamed: u64,
    /// Renames known to be covered by a finished fsync.
    synced: u64,
    /// A sync is running.
    syncing: bool,
}

impl DirSyncer {
    /// Records a completed rename into `dir` and returns once an fsync of `dir` covers it.
    pub fn sync_after_rename(&self, dir: &Path) -> io::Result<()> {
        let state = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            dirs.entry(dir.to_path_buf()).or_default().clone()
        };
        let mut counters = state.inner.lock().unwrap_or_else(|e| e.into_inner());
        counters.renamed += 1;
        let mine = counters.renamed;
        loop {
            if counters.synced >= mine {
                return Ok(());
            }
            if !counters.syncing {
                // Sync everything renamed so far, ours included.
                counters.syncing = true;
                let target = counters.renamed;
                drop(counters);
                let result = fsync_dir(dir);
                counters = state.inner.lock().unwrap_or_else(|e| e.into_inner());
                counters.syncing = false;
                if result.is_ok() {
                    counters.synced = counters.synced.max(target);
                }
                state.done.notify_all();
                result?;
                continue;
            }
            counters = state.done.wait(counters).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A delivered file.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The unique name, without the `,S=` suffix: the id in the LMTP reply.
    pub id: String,
    pub path: PathBuf,
}

/// Writes `head` then the rest of `body` into `folder` (a maildir that exists) durably.
/// Line ends are written as they come: the caller passes LF text. On any error the tmp file
/// is removed and nothing appears in `new/`.
pub fn deliver(
    folder: &Path,
    host: &str,
    head: &[u8],
    body: &mut dyn Read,
    syncer: &DirSyncer,
) -> Result<Delivered, DeliveryError> {
    let id = unique_name(host);
    let tmp_path = folder.join("tmp").join(&id);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp_path)?;
    let written = (|| -> io::Result<u64> {
        file.write_all(head)?;
        let copied = io::copy(body, &mut file)?;
        file.sync_data()?;
        Ok(head.len() as u64 + copied)
    })();
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&tmp_path);
            return Err(e.into());
        }
    };
    drop(file);
    let new_path = folder.join("new").join(format!("{id},S={size}"));
    if let Err(e) = fs::rename(&tmp_path, &new_path) {
        let _ = fs::remove_file(&tmp_path);
        return Err(e.into());
    }
    syncer.sync_after_rename(&folder.join("new"))?;
    Ok(Delivered { id, path: new_path })
}

/// Removes files older than 36 hours from `folder/tmp` (left by a crash mid-delivery).
/// Returns how many were removed.
pub fn clean_tmp(folder: &Path, now: SystemTime) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(folder.join("tmp")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if meta.is_file() && old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_creates_a_complete_file_in_new() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a/b/Maildir");
        ensure_folder(&folder, false).unwrap();
        let junk = folder.join(".Junk");
        ensure_folder(&junk, true).unwrap();
        assert!(junk.join("maildirfolder").exists());
        let syncer = DirSyncer::default();
        let d = deliver(
            &folder,
            "mx:1/x",
            b"Subject: x\n\n",
            &mut &b"body\n"[..],
            &syncer,
        )
        .unwrap();
        assert!(d.id.ends_with(".mx\\0721\\057x"), "{}", d.id);
        assert_eq!(fs::read(&d.path).unwrap(), b"Subject: x\n\nbody\n");
        assert!(
            d.path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(",S=17")
        );
        assert_eq!(fs::read_dir(folder.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_deliveries_share_directory_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("Maildir");
        ensure_folder(&folder, false).unwrap();
        let syncer = Arc::new(DirSyncer::default());
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (folder, syncer) = (folder.clone(), syncer.clone());
                std::thread::spawn(move || {
                    deliver(
                        &folder,
                        "h",
                        format!("N: {i}\n\n").as_bytes(),
                        &mut &b""[..],
                        &syncer,
                    )
                    .unwrap()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(fs::read_dir(folder.join("new")).unwrap().count(), 16);
    }

    #[test]
    fn stale_tmp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        ensure_folder(dir.path(), false).unwrap();
        let old = dir.path().join("tmp/old");
        let fresh = dir.path().join("tmp/fresh");
        fs::write(&old, b"x").unwrap();
        fs::write(&fresh, b"x").unwrap();
        let two_days_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        assert_eq!(clean_tmp(dir.path(), SystemTime::now()).unwrap(), 1);
        assert!(!old.exists() && fresh.exists());
    }
}

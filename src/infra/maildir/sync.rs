//! Group commit of a Maildir folder's `new/` directory fsyncs (the durability of a rename).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// fsync(2) of a descriptor we own: a file, or a directory after a rename into it.
pub(super) fn fsync_fd(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor we own.
    if unsafe { libc::fsync(fd.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    /// Deliveries waiting for a sync to finish: nobody to wake, no wake-up (a system call).
    waiting: usize,
}

impl DirSyncer {
    /// Records a completed rename into `dir` (open as `fd`) and returns once an fsync of
    /// `dir` covers it.
    pub fn sync_after_rename(&self, dir: &Path, fd: &OwnedFd) -> io::Result<()> {
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
                let result = fsync_fd(fd);
                counters = state.inner.lock().unwrap_or_else(|e| e.into_inner());
                counters.syncing = false;
                if result.is_ok() {
                    counters.synced = counters.synced.max(target);
                }
                if counters.waiting > 0 {
                    state.done.notify_all();
                }
                result?;
                continue;
            }
            counters.waiting += 1;
            counters = state.done.wait(counters).unwrap_or_else(|e| e.into_inner());
            counters.waiting -= 1;
        }
    }
}

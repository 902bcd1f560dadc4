//! Sets of keys kept in a file, for what must outlive a process without Redis.

/// A set of keys, each until it expires, kept in a file: the replay set of `serve --stdio`
/// runs without Redis (`store.replay_file`: every run is a process of its own, Exim's pipe
/// transport, so memory forgets; this file is shared by all of them) and the signing
/// service's used `jti`s (`store.jti_file`: they outlive a restart). Lines `<expiry>
/// <SHA-256 of the key>`; read under a shared `flock`, appended under an exclusive one;
/// rewritten without expired lines once it passes `COMPACT_AT`.
pub struct SeenFile {
    path: std::path::PathBuf,
    /// Said once: the file cannot be used (this run then has memory only).
    warned: std::sync::atomic::AtomicBool,
}

/// The size past which the file is compacted.
const COMPACT_AT: u64 = 4 * 1024 * 1024;

impl SeenFile {
    pub fn new(path: std::path::PathBuf) -> SeenFile {
        SeenFile {
            path,
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn hashed(key: &str) -> String {
        use sha2::Digest;
        crate::format::hex::hex(&sha2::Sha256::digest(key.as_bytes()))
    }

    pub fn warn(&self, e: &std::io::Error) {
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "store.replay_file {}: {e}; replays are detected within this run only",
                self.path.display()
            );
        }
    }

    fn open(&self, write: bool) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .append(write)
            .create(write)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
    }

    fn lock(file: &std::fs::File, how: libc::c_int) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), how) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn contains(&self, key: &str, now: i64) -> std::io::Result<bool> {
        use std::io::BufRead;
        let file = match self.open(false) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        Self::lock(&file, libc::LOCK_SH)?;
        let wanted = Self::hashed(key);
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if let Some((expiry, hash)) = line.split_once(' ')
                && hash == wanted
                && expiry.parse::<i64>().is_ok_and(|e| e >= now)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The unexpired entries (expiry, SHA-256), for a process that keeps them in memory
    /// (the XRPC service's `jti` set at start). A file that cannot be read gives none (and
    /// is said once).
    pub fn unexpired(&self, now: i64) -> Vec<(i64, [u8; 32])> {
        use std::io::BufRead;
        let read = || -> std::io::Result<Vec<(i64, [u8; 32])>> {
            let file = match self.open(false) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            Self::lock(&file, libc::LOCK_SH)?;
            let mut out = Vec::new();
            for line in std::io::BufReader::new(file).lines() {
                let line = line?;
                let Some((expiry, hex)) = line.split_once(' ') else {
                    continue;
                };
                let (Ok(expiry), Some(hash)) = (expiry.parse::<i64>(), unhex(hex)) else {
                    continue;
                };
                if expiry >= now {
                    out.push((expiry, hash));
                }
            }
            Ok(out)
        };
        read().unwrap_or_else(|e| {
            self.warn(&e);
            Vec::new()
        })
    }

    /// Appends an entry already hashed, without waiting for the disk: it outlives the
    /// process (a restart), not a crash of the machine.
    pub fn append(&self, hash: &[u8; 32], expiry: i64, now: i64) -> std::io::Result<()> {
        let hex: String = crate::format::hex::hex(hash);
        self.add_line(&format!("{expiry} {hex}\n"), now).map(drop)
    }

    pub fn insert(&self, key: &str, expiry: i64, now: i64) -> std::io::Result<()> {
        let file = self.add_line(&format!("{expiry} {}\n", Self::hashed(key)), now)?;
        file.sync_data()
    }

    /// Appends `line` under an exclusive lock (one write: never interleaved with another
    /// process's); past `COMPACT_AT` the file is rewritten in place without what expired.
    fn add_line(&self, line: &str, now: i64) -> std::io::Result<std::fs::File> {
        use std::io::{BufRead, Write};
        let mut file = self.open(true)?;
        Self::lock(&file, libc::LOCK_EX)?;
        file.write_all(line.as_bytes())?;
        if file.metadata()?.len() > COMPACT_AT {
            let kept: Vec<String> = std::io::BufReader::new(self.open(false)?)
                .lines()
                .map_while(Result::ok)
                .filter(|l| {
                    l.split_once(' ')
                        .and_then(|(e, _)| e.parse::<i64>().ok())
                        .is_some_and(|e| e >= now)
                })
                .collect();
            let mut rewritten = String::with_capacity(kept.len() * 80);
            for line in kept {
                rewritten.push_str(&line);
                rewritten.push('\n');
            }
            file.set_len(0)?;
            file.write_all(rewritten.as_bytes())?;
        }
        Ok(file)
    }
}

/// A set of keys kept as files of a directory, one empty file per key, named by its SHA-256
/// in hex: whether a key is there is one `stat`, adding it one `open`, at any size — the
/// HTTPS inbox's envelopes already stored (a `SeenFile` is read whole per question). A key
/// counts until its file is older than the `keep` asked with; `sweep` removes those. The
/// caller runs these off the async runtime (`spawn_blocking`): they touch the disk.
pub struct SeenDir {
    dir: std::path::PathBuf,
}

impl SeenDir {
    pub fn new(dir: std::path::PathBuf) -> SeenDir {
        SeenDir { dir }
    }

    fn path(&self, hash: &[u8; 32]) -> std::path::PathBuf {
        let name: String = crate::format::hex::hex(hash);
        self.dir.join(name)
    }

    /// Whether `hash` was added less than `keep` ago.
    pub fn contains(&self, hash: &[u8; 32], keep: std::time::Duration) -> std::io::Result<bool> {
        match std::fs::symlink_metadata(self.path(hash)) {
            Ok(meta) => Ok(meta.modified()?.elapsed().map_or(true, |age| age < keep)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `hash` (again: its time is now). Durable with the directory's next sync, not
    /// before: a crash may forget it, and the key is then stored twice, never lost.
    pub fn insert(&self, hash: &[u8; 32]) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.path(hash))
            .map(drop)
    }

    /// Removes the keys older than `keep`; the count removed.
    pub fn sweep(&self, keep: std::time::Duration) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= keep));
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// 64 hex digits as 32 bytes.
fn unhex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_answers_each_key_alone_until_it_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let seen = SeenDir::new(dir.path().join("seen"));
        let day = std::time::Duration::from_secs(86_400);
        assert!(!seen.contains(&[1; 32], day).unwrap(), "no directory yet");
        seen.insert(&[1; 32]).unwrap();
        assert!(seen.contains(&[1; 32], day).unwrap());
        assert!(!seen.contains(&[2; 32], day).unwrap());
        assert!(
            !seen.contains(&[1; 32], std::time::Duration::ZERO).unwrap(),
            "too old"
        );
        assert_eq!(seen.sweep(day).unwrap(), 0);
        assert_eq!(seen.sweep(std::time::Duration::ZERO).unwrap(), 1);
        assert!(!seen.contains(&[1; 32], day).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("seen"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_file_remembers_across_instances_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay");
        let first = SeenFile::new(path.clone());
        assert!(!first.contains("k", 100).unwrap(), "no file yet");
        first.insert("k", 200, 100).unwrap();
        let second = SeenFile::new(path.clone());
        assert!(second.contains("k", 150).unwrap());
        assert!(!second.contains("other", 150).unwrap());
        assert!(!second.contains("k", 201).unwrap(), "expired");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

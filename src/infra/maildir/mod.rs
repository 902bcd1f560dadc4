//! Durable Maildir delivery (cr.yp.to/proto/maildir.html, Courier's Maildir++ folders).
//!
//! A message becomes visible in `new/` only once it is on disk: write into `tmp/` with
//! O_EXCL, fdatasync, rename into `new/`, fsync `new/`. Only then may LMTP say 250
//! (RFC 2033 §4.2: the receiver has no queue). Concurrent deliveries into one folder share the
//! directory fsync (group commit). Files are stored with LF line ends, as Postfix's virtual(8)
//! and Dovecot store them; `S=` is the file's size.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod sync;
pub use sync::DirSyncer;
use sync::fsync_fd;

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

fn cstring(name: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the directory `name` inside `parent` without following a symlink (openat with
/// O_NOFOLLOW): a symlink there is refused (ELOOP), whatever it points at.
fn open_dir_at(parent: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let name = cstring(name)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is checked.
    let fd = check(unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
    .map_err(|e| {
        // A symlink gives ELOOP, or ENOTDIR together with O_DIRECTORY.
        if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link or not a directory; refused",
                    name.to_string_lossy()
                ),
            )
        } else {
            e
        }
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// As `open_dir_at`, making the directory (mode 0700, the parent synced) when it is missing.
fn open_or_make_dir_at(parent: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    match open_dir_at(parent, name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let c = cstring(name)?;
            // SAFETY: a valid directory descriptor and a NUL-terminated name.
            match check(unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) }) {
                Ok(_) => fsync_fd(parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            open_dir_at(parent, name)
        }
        other => other,
    }
}

/// A maildir folder, opened. Below the operator's `base` every directory was opened without
/// following symlinks, and files are made relative to these descriptors: a symlink planted
/// in a mailbox (`Maildir`, `.Junk`, `.Folder`, `tmp`, `new`) cannot send mail elsewhere.
pub struct Folder {
    path: PathBuf,
    tmp: OwnedFd,
    new: OwnedFd,
}

impl Folder {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the maildir `base/relative`, making what is missing (durably: each new directory
/// entry is synced). `base` is the operator's (it may be or hold symlinks); each component of
/// `relative`, and `tmp`/`new`/`cur`, must be a real directory. `is_subfolder` adds the
/// Maildir++ `maildirfolder` marker.
pub fn open_folder(base: &Path, relative: &Path, is_subfolder: bool) -> io::Result<Folder> {
    // The base exists but for the first delivery: made only when missing (no `mkdir` and
    // `stat` per delivery).
    let mut dir: OwnedFd = File::open(base)
        .or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => fs::create_dir_all(base).and_then(|()| File::open(base)),
            _ => Err(e),
        })?
        .into();
    for component in relative.components() {
        match component {
            std::path::Component::Normal(name) => dir = open_or_make_dir_at(&dir, name)?,
            std::path::Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a maildir below the base must be a plain relative path",
                ));
            }
        }
    }
    let tmp = open_or_make_dir_at(&dir, "tmp".as_ref())?;
    let new = open_or_make_dir_at(&dir, "new".as_ref())?;
    open_or_make_dir_at(&dir, "cur".as_ref())?;
    if is_subfolder {
        let name = cstring("maildirfolder".as_ref())?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name; closed at once.
        let fd = check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        })?;
        // SAFETY: a descriptor we own, closed once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(Folder {
        path: base.join(relative),
        tmp,
        new,
    })
}

/// `open_folder` for a whole path, checked below `/` (tests and tools).
pub fn ensure_folder(folder: &Path, is_subfolder: bool) -> io::Result<Folder> {
    let relative = folder.strip_prefix("/").unwrap_or(folder);
    open_folder(Path::new("/"), relative, is_subfolder)
}

/// Whether `path` is a real directory (not a symlink to one).
pub fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A delivered file.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The unique name, without the `,S=` suffix: the id in the LMTP reply.
    pub id: String,
    pub path: PathBuf,
}

/// A file written and synced into a folder's `tmp/`, not yet visible.
struct Written {
    id: String,
    tmp_name: std::ffi::CString,
    size: u64,
}

/// Writes `head` then the rest of `body` into a new file in `folder`'s `tmp/` and syncs its
/// data. On any error the file is removed.
fn write_tmp(
    folder: &Folder,
    host: &str,
    head: &[u8],
    body: &mut dyn Read,
) -> Result<Written, DeliveryError> {
    let id = unique_name(host);
    let tmp_name = cstring(id.as_ref())?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is checked.
    let fd = check(unsafe {
        libc::openat(
            folder.tmp.as_raw_fd(),
            tmp_name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let written = (|| -> io::Result<u64> {
        file.write_all(head)?;
        let copied = io::copy(body, &mut file)?;
        file.sync_data()?;
        Ok(head.len() as u64 + copied)
    })();
    drop(file);
    match written {
        Ok(size) => Ok(Written { id, tmp_name, size }),
        Err(e) => {
            remove_tmp(folder, &tmp_name);
            Err(e.into())
        }
    }
}

fn remove_tmp(folder: &Folder, name: &std::ffi::CStr) {
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    unsafe { libc::unlinkat(folder.tmp.as_raw_fd(), name.as_ptr(), 0) };
}

/// Moves the written file from `folder`'s `tmp/` into its `new/` (`<id>,S=<size>`), the
/// name returned; on failure the tmp file is removed.
fn rename_into_new(folder: &Folder, written: &Written) -> Result<String, DeliveryError> {
    let new_name = format!("{},S={}", written.id, written.size);
    let renamed = cstring(new_name.as_ref()).and_then(|new_c| {
        // SAFETY: valid directory descriptors and NUL-terminated names; the result is checked.
        check(unsafe {
            libc::renameat(
                folder.tmp.as_raw_fd(),
                written.tmp_name.as_ptr(),
                folder.new.as_raw_fd(),
                new_c.as_ptr(),
            )
        })
    });
    match renamed {
        Ok(_) => Ok(new_name),
        Err(e) => {
            remove_tmp(folder, &written.tmp_name);
            Err(e.into())
        }
    }
}

/// Writes `head` then the rest of `body` into `folder` durably. Line ends are written as
/// they come: the caller passes LF text. On any error the tmp file is removed and nothing
/// appears in `new/`.
pub fn deliver(
    folder: &Folder,
    host: &str,
    head: &[u8],
    body: &mut dyn Read,
    syncer: &DirSyncer,
) -> Result<Delivered, DeliveryError> {
    let written = write_tmp(folder, host, head, body)?;
    let new_name = rename_into_new(folder, &written)?;
    let new_dir = folder.path.join("new");
    syncer.sync_after_rename(&new_dir, &folder.new)?;
    Ok(Delivered {
        id: written.id,
        path: new_dir.join(new_name),
    })
}

/// Delivers one message, the same bytes for every folder, into each of `folders`: written
/// and fdatasync'd once, then hard-linked into the other folders' `new/` under their own
/// unique names (as qmail's maildir delivery links and Dovecot's `maildir_copy_with_hardlinks`
/// does) and renamed into the first folder's. A folder on another file system (EXDEV), whose
/// link count is exhausted (EMLINK) or whose file system has no hard links (EPERM,
/// EOPNOTSUPP) gets its own copy, written the same way and linked into the others of its
/// kind. One folder alone is a plain `deliver`: tmp/, then rename. A folder's result
/// is `Ok` only once an fsync of its `new/` that started after its link has finished (group
/// commit through `syncer`; on a journaled file system the first sync commits every link
/// made before it). Results are in the order of `folders`. Durability is per folder, as
/// with `deliver`: nothing here is weaker than one `deliver` per folder.
pub fn deliver_linked<R: Read + io::Seek>(
    folders: &[&Folder],
    host: &str,
    head: &[u8],
    body: &mut R,
    syncer: &DirSyncer,
) -> Vec<Result<Delivered, DeliveryError>> {
    let mut results: Vec<Option<Result<Delivered, DeliveryError>>> =
        (0..folders.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..folders.len()).collect();
    while let Some(&primary) = pending.first() {
        let source = folders[primary];
        let written = body
            .seek(io::SeekFrom::Start(0))
            .map_err(DeliveryError::from)
            .and_then(|_| write_tmp(source, host, head, body));
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                results[primary] = Some(Err(e));
                pending.remove(0);
                continue;
            }
        };
        // The other folders get links; the primary then takes the file itself by rename, as
        // `deliver` does, so every round settles the primary and the loop ends. A folder that
        // cannot take a link (another file system, the link limit, a file system without
        // hard links) is left for a later round, where it writes its own copy.
        let mut elsewhere = Vec::new();
        let mut linked = Vec::new();
        for &i in &pending[1..] {
            let id = unique_name(host);
            let new_name = format!("{id},S={}", written.size);
            let made = cstring(new_name.as_ref()).and_then(|new_c| {
                // SAFETY: valid directory descriptors and NUL-terminated names; checked.
                check(unsafe {
                    libc::linkat(
                        source.tmp.as_raw_fd(),
                        written.tmp_name.as_ptr(),
                        folders[i].new.as_raw_fd(),
                        new_c.as_ptr(),
                        0,
                    )
                })
            });
            match made {
                Ok(_) => linked.push((i, id, new_name)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EMLINK | libc::EPERM | libc::EOPNOTSUPP)
                    ) =>
                {
                    elsewhere.push(i)
                }
                Err(e) => results[i] = Some(Err(e.into())),
            }
        }
        match rename_into_new(source, &written) {
            Ok(new_name) => linked.insert(0, (primary, written.id.clone(), new_name)),
            Err(e) => results[primary] = Some(Err(e)),
        }
        for (i, id, new_name) in linked {
            let new_dir = folders[i].path.join("new");
            results[i] = Some(
                syncer
                    .sync_after_rename(&new_dir, &folders[i].new)
                    .map(|_| Delivered {
                        id,
                        path: new_dir.join(new_name),
                    })
                    .map_err(DeliveryError::from),
            );
        }
        pending = elsewhere;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(DeliveryError::Io(io::Error::other("not delivered")))))
        .collect()
}

/// Removes files older than 36 hours from `folder/tmp` (left by a crash mid-delivery).
/// Returns how many were removed.
pub fn clean_tmp(folder: &Path, now: SystemTime) -> io::Result<usize> {
    let mut removed = 0;
    // Never through a symlink: only a real maildir's own tmp/ is cleaned.
    if !is_real_dir(folder) || !is_real_dir(&folder.join("tmp")) {
        return Ok(0);
    }
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
    use std::sync::Arc;

    #[test]
    fn deliver_creates_a_complete_file_in_new() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a/b/Maildir");
        let opened = ensure_folder(&folder, false).unwrap();
        let junk = folder.join(".Junk");
        ensure_folder(&junk, true).unwrap();
        assert!(junk.join("maildirfolder").exists());
        let syncer = DirSyncer::default();
        let d = deliver(
            &opened,
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
        let opened = Arc::new(ensure_folder(&folder, false).unwrap());
        let syncer = Arc::new(DirSyncer::default());
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (opened, syncer) = (opened.clone(), syncer.clone());
                std::thread::spawn(move || {
                    deliver(
                        &opened,
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
    fn one_message_for_many_folders_is_written_once_and_linked() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = ["a", "b", "c/.Junk"]
            .iter()
            .map(|p| dir.path().join(p))
            .collect();
        let folders: Vec<Folder> = paths
            .iter()
            .map(|p| ensure_folder(p, p.ends_with(".Junk")).unwrap())
            .collect();
        // A folder on another file system gets its own copy: tmpfs under /dev/shm.
        let other = tempfile::tempdir_in("/dev/shm").unwrap();
        let other_fs = ensure_folder(other.path(), false).unwrap();
        assert_ne!(
            fs::metadata(dir.path()).unwrap().dev(),
            fs::metadata(other.path()).unwrap().dev(),
            "the test needs two file systems"
        );
        let syncer = DirSyncer::default();
        let mut body = io::Cursor::new(b"body\n".to_vec());
        body.set_position(3);
        let all = [&folders[0], &other_fs, &folders[1], &folders[2]];
        let results = deliver_linked(&all, "h", b"S: x\n\n", &mut body, &syncer);
        let delivered: Vec<Delivered> = results.into_iter().map(|r| r.unwrap()).collect();
        let ids: std::collections::HashSet<&str> =
            delivered.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), 4, "each copy has its own unique name");
        for d in &delivered {
            assert_eq!(fs::read(&d.path).unwrap(), b"S: x\n\nbody\n");
            assert!(d.path.to_str().unwrap().ends_with(",S=11"), "{:?}", d.path);
        }
        let meta: Vec<fs::Metadata> = delivered
            .iter()
            .map(|d| fs::metadata(&d.path).unwrap())
            .collect();
        // Three links to one inode on this file system, one copy on the other.
        assert_eq!(meta[0].ino(), meta[2].ino());
        assert_eq!(meta[0].ino(), meta[3].ino());
        assert_eq!(meta[0].nlink(), 3);
        assert_eq!(meta[1].nlink(), 1);
        for p in paths.iter().chain([&other.path().to_path_buf()]) {
            assert_eq!(fs::read_dir(p.join("tmp")).unwrap().count(), 0);
            assert_eq!(fs::read_dir(p.join("new")).unwrap().count(), 1);
        }
    }

    #[test]
    fn a_folder_that_cannot_take_the_link_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let good = ensure_folder(&dir.path().join("good"), false).unwrap();
        let bad_path = dir.path().join("bad");
        let bad = ensure_folder(&bad_path, false).unwrap();
        // new/ replaced by a directory it cannot see any more: linkat fails with ENOENT.
        fs::remove_dir(bad_path.join("new")).unwrap();
        let syncer = DirSyncer::default();
        let mut body = io::Cursor::new(Vec::new());
        let results = deliver_linked(&[&bad, &good], "h", b"S: x\n\n", &mut body, &syncer);
        assert!(matches!(results[0], Err(DeliveryError::Io(_))));
        assert!(results[1].is_ok());
        assert_eq!(fs::read_dir(bad_path.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_folder_whose_tmp_and_new_are_on_two_file_systems_ends() {
        // tmp/ on tmpfs, new/ on the disk (a bind mount could do this): the rename into new/
        // fails with EXDEV. That folder fails, alone, once; the others still get the message.
        let disk = tempfile::tempdir().unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let split_path = disk.path().join("split");
        ensure_folder(&split_path, false).unwrap();
        ensure_folder(shm.path(), false).unwrap();
        let dir_fd = |p: &Path| -> OwnedFd { File::open(p).unwrap().into() };
        let split = Folder {
            path: split_path.clone(),
            tmp: dir_fd(&shm.path().join("tmp")),
            new: dir_fd(&split_path.join("new")),
        };
        let good = ensure_folder(&disk.path().join("good"), false).unwrap();
        let syncer = DirSyncer::default();
        for folders in [vec![&split], vec![&split, &good]] {
            let mut body = io::Cursor::new(b"body\n".to_vec());
            let results = deliver_linked(&folders, "h", b"S: x\n\n", &mut body, &syncer);
            assert!(
                matches!(&results[0], Err(DeliveryError::Io(e)) if e.raw_os_error() == Some(libc::EXDEV))
            );
            assert!(results[1..].iter().all(|r| r.is_ok()));
        }
        assert_eq!(
            fs::read_dir(shm.path().join("tmp")).unwrap().count(),
            0,
            "tmp/ cleaned"
        );
        assert_eq!(fs::read_dir(split_path.join("new")).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(disk.path().join("good/new")).unwrap().count(),
            1
        );
    }

    #[test]
    fn symlinks_below_the_base_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("mail");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        let maildir = base.join("example.net/bob/Maildir");
        open_folder(&base, Path::new("example.net/bob/Maildir"), false).unwrap();
        // A planted symlink: a folder, or tmp/ inside one, pointing elsewhere.
        std::os::unix::fs::symlink(&elsewhere, maildir.join(".Junk")).unwrap();
        let err = open_folder(&base, Path::new("example.net/bob/Maildir/.Junk"), true)
            .err()
            .unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_dir_all(maildir.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, maildir.join("tmp")).unwrap();
        assert!(open_folder(&base, Path::new("example.net/bob/Maildir"), false).is_err());
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing made there"
        );
        // The operator's base may itself be a symlink.
        let linked_base = dir.path().join("linked");
        std::os::unix::fs::symlink(&base, &linked_base).unwrap();
        assert!(open_folder(&linked_base, Path::new("example.net/carol/Maildir"), false).is_ok());
        assert!(!is_real_dir(&maildir.join(".Junk")));
        assert!(is_real_dir(&maildir));
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

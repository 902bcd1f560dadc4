//! The AT-SMS device store: one copy of each envelope for every published device of the
//! recipient DID, which each device drains on its own (the AT-SMS client's inbox API lists,
//! fetches and deletes its copies; docs/atsms.md).
//!
//! Layout below `inbox.store`: `<did's mailbox local part>/<fingerprint>/` is a Maildir per
//! device (`tmp/`, `new/`), and `<did's local part>/seen.d/` the envelopes already stored for
//! the DID (`SeenDir`, one file per SHA-256: the same envelope by HTTPS and by SMTP, or twice by
//! one, is kept once). A copy is written as LMTP delivers mail (`maildir::deliver_linked`:
//! into `tmp/` with O_EXCL, fdatasync, linked into each device's `new/`, the directories
//! synced) before it is acknowledged, so `kill -9` at any moment loses nothing acknowledged and
//! never shows a half-written copy. Its id is its Maildir unique name (`<secs>.M<usec>P<pid>Q<n>.
//! <host>`) and its size (`-S<size>`, so a GET or DELETE finds the file by one `stat`, not a
//! listing of the device's folder), its `seq` the microseconds in that name: the order the
//! copies were stored in.
//!
//! Quotas per device (`inbox.max_envelopes_per_device`, `inbox.max_bytes_per_device`) are
//! counted in memory, each device's usage read from its `new/` once (a listing of at most the
//! quota's count) and kept as copies come and go.
//!
//! Everything here blocks on the file system: callers run it off the async runtime.

pub mod notify;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::infra::maildir::{self, DeliveryError, DirSyncer};
use crate::infra::store::SeenDir;

/// How long an envelope stored for a DID is remembered as stored (a repeat within it is
/// answered as stored, not kept again).
pub const REMEMBER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Devices whose usage is kept in memory at most (about 150 bytes each).
const MAX_KNOWN: usize = 100_000;

/// One device's copy, as the inbox API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The copy's Maildir unique name.
    pub id: String,
    /// When it was stored, in microseconds since the epoch: its place in the device's queue.
    pub seq: u64,
    pub size: u64,
}

/// What became of an envelope for one device.
#[derive(Debug)]
pub enum Kept {
    Stored(Copy),
    /// The device is over its quota (count or bytes).
    OverQuota,
    Failed(DeliveryError),
}

/// A device's usage: copies and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub count: usize,
    pub bytes: u64,
}

pub struct DeviceStore {
    root: PathBuf,
    host: String,
    max_envelopes: usize,
    max_bytes: u64,
    syncer: DirSyncer,
    /// Each device's usage, read from its folder once.
    usage: Mutex<HashMap<(String, String), Usage>>,
}

/// A record key of `at.atsms.x509`: 64 lower-case hex digits.
pub fn is_fingerprint(fp: &str) -> bool {
    fp.len() == 64 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A copy's id as this store makes it: a Maildir unique name, one path component.
pub fn is_copy_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'\\' | b'-' | b'_'))
}

/// The `seq` of a copy named `id` (`<secs>.M<usec>…`).
fn seq_of(id: &str) -> Option<u64> {
    let (secs, rest) = id.split_once(".M")?;
    let usec: String = rest.chars().take_while(char::is_ascii_digit).collect();
    secs.parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(usec.parse::<u64>().ok()?)
}

/// The `seq` of a copy id (0 for what this store did not name).
pub fn seq_of_id(id: &str) -> u64 {
    seq_of(id).unwrap_or_default()
}

/// A copy of `new/`'s file `name` (`<unique name>,S=<size>`): its id is `<unique name>-S<size>`,
/// so a copy's file is known from its id alone (`file_of`: one `stat`, not a listing).
fn copy_of(name: &str) -> Option<Copy> {
    let (unique, size) = name.rsplit_once(",S=")?;
    Some(Copy {
        id: format!("{unique}-S{size}"),
        seq: seq_of(unique)?,
        size: size.parse().ok()?,
    })
}

/// The file name in `new/` of the copy `id` (`<unique name>-S<size>` → `<unique name>,S=<size>`).
fn file_of(id: &str) -> Option<(String, u64)> {
    let (unique, size) = id.rsplit_once("-S")?;
    let bytes: u64 = size
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| size.parse().ok())??;
    Some((format!("{unique},S={size}"), bytes))
}

impl DeviceStore {
    pub fn new(root: PathBuf, host: &str, max_envelopes: usize, max_bytes: u64) -> DeviceStore {
        DeviceStore {
            root,
            host: host.to_string(),
            max_envelopes,
            max_bytes,
            syncer: DirSyncer::default(),
            usage: Mutex::default(),
        }
    }

    /// The DID's directory below the root, or `None` for what is not a DID this store takes.
    fn did_dir(&self, did: &str) -> Option<PathBuf> {
        let fits = crate::format::syntax::supported_did_method(did).is_some()
            && !did.contains('/')
            && did.len() <= 2048;
        fits.then(|| PathBuf::from(crate::format::address::local_part_of_did(did)))
    }

    fn folder_path(&self, did: &str, fp: &str) -> io::Result<PathBuf> {
        match self.did_dir(did) {
            Some(dir) if is_fingerprint(fp) => Ok(dir.join(fp)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a DID and device fingerprint",
            )),
        }
    }

    /// Whether the envelope `hash` was stored for `did` before (within [`REMEMBER`]).
    pub fn stored_before(&self, did: &str, hash: &[u8; 32]) -> io::Result<bool> {
        self.seen(did)?.contains(hash, REMEMBER)
    }

    /// Notes the envelope `hash` as stored for `did` (once every copy of it is written): a
    /// repeat within [`REMEMBER`] is then not kept again.
    pub fn mark_stored(&self, did: &str, hash: &[u8; 32]) -> io::Result<()> {
        self.seen(did)?.insert(hash)
    }

    /// Forgets what was stored for `did` longer than [`REMEMBER`] ago.
    pub fn sweep_seen(&self, did: &str) -> io::Result<()> {
        self.seen(did)?.sweep(REMEMBER).map(|_| ())
    }

    fn seen(&self, did: &str) -> io::Result<SeenDir> {
        match self.did_dir(did) {
            Some(dir) => Ok(SeenDir::new(self.root.join(dir).join("seen.d"))),
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a DID")),
        }
    }

    /// Keeps `envelope` once for each device `fingerprints` of `did` (whether it was
    /// stored before is the caller's to ask first: `stored_before`).
    pub fn store(
        &self,
        did: &str,
        fingerprints: &[&str],
        envelope: &[u8],
    ) -> io::Result<Vec<Kept>> {
        if self.did_dir(did).is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a DID"));
        }
        let mut kept: Vec<Option<Kept>> = fingerprints.iter().map(|_| None).collect();
        let mut folders = Vec::new();
        let mut taking = Vec::new();
        for (i, fp) in fingerprints.iter().enumerate() {
            if self.over_quota(did, fp, envelope.len() as u64)? {
                kept[i] = Some(Kept::OverQuota);
                continue;
            }
            match maildir::open_folder(&self.root, &self.folder_path(did, fp)?, false) {
                Ok(folder) => {
                    folders.push(folder);
                    taking.push(i);
                }
                Err(e) => kept[i] = Some(Kept::Failed(e.into())),
            }
        }
        let refs: Vec<&maildir::Folder> = folders.iter().collect();
        let mut body = io::Cursor::new(envelope);
        let written = maildir::deliver_linked(&refs, &self.host, b"", &mut body, &self.syncer);
        for (&i, result) in taking.iter().zip(written) {
            kept[i] = Some(match result {
                Ok(delivered) => {
                    let size = envelope.len() as u64;
                    let copy = Copy {
                        seq: seq_of(&delivered.id).unwrap_or_default(),
                        id: format!("{}-S{size}", delivered.id),
                        size,
                    };
                    self.count(did, fingerprints[i], 1, copy.size as i64);
                    Kept::Stored(copy)
                }
                Err(e) => Kept::Failed(e),
            });
        }
        Ok(kept.into_iter().flatten().collect())
    }

    /// A device's copies, oldest first, at most `limit`.
    pub fn list(&self, did: &str, fp: &str, limit: usize) -> io::Result<Vec<Copy>> {
        let mut copies = self.read_new(did, fp)?;
        copies.sort_by(|a, b| (a.seq, &a.id).cmp(&(b.seq, &b.id)));
        copies.truncate(limit);
        Ok(copies)
    }

    /// A device's copy `id`, or `None`.
    pub fn get(&self, did: &str, fp: &str, id: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(path) = self.copy_path(did, fp, id)? else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a device's copy `id` (that device's only): whether it was there.
    pub fn delete(&self, did: &str, fp: &str, id: &str) -> io::Result<bool> {
        let Some(path) = self.copy_path(did, fp, id)? else {
            return Ok(false);
        };
        let size = file_of(id).map_or(0, |(_, size)| size);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.count(did, fp, -1, -(size as i64));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether every one of `fingerprints` (at least one) is over its quota for a copy of
    /// `size` bytes more: then the envelope is refused rather than kept for nobody.
    pub fn all_over_quota(
        &self,
        did: &str,
        fingerprints: &[String],
        size: u64,
    ) -> io::Result<bool> {
        if fingerprints.is_empty() {
            return Ok(false);
        }
        for fp in fingerprints {
            if !self.over_quota(did, fp, size)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether one more copy of `size` bytes would put the device over its quota. The usage
    /// kept in memory counts this process's copies; copies drained or purged elsewhere (the
    /// `inbox purge` command, another host on a shared store) show when the folder is read
    /// again, which a refusal always does first: a device is never refused on a stale count.
    /// (Deliveries at the same instant may each pass the check: the quota can be passed by
    /// the copies in progress at once.)
    fn over_quota(&self, did: &str, fp: &str, size: u64) -> io::Result<bool> {
        let over = |u: Usage| u.count >= self.max_envelopes || u.bytes + size > self.max_bytes;
        if !over(self.usage_of(did, fp)?) {
            return Ok(false);
        }
        let copies = self.read_new(did, fp)?;
        let usage = Usage {
            count: copies.len(),
            bytes: copies.iter().map(|c| c.size).sum(),
        };
        if let Some(known) = self.lock().get_mut(&(did.to_string(), fp.to_string())) {
            *known = usage;
        }
        Ok(over(usage))
    }

    /// A device's usage now.
    pub fn usage_of(&self, did: &str, fp: &str) -> io::Result<Usage> {
        let key = (did.to_string(), fp.to_string());
        if let Some(usage) = self.lock().get(&key) {
            return Ok(*usage);
        }
        let copies = self.read_new(did, fp)?;
        let usage = Usage {
            count: copies.len(),
            bytes: copies.iter().map(|c| c.size).sum(),
        };
        let mut known = self.lock();
        // Bounded: past `MAX_KNOWN` devices, what is known is read again from the folders.
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        Ok(*known.entry(key).or_insert(usage))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Usage>> {
        self.usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, did: &str, fp: &str, copies: i64, bytes: i64) {
        if let Some(usage) = self.lock().get_mut(&(did.to_string(), fp.to_string())) {
            usage.count = usage.count.saturating_add_signed(copies as isize);
            usage.bytes = usage.bytes.saturating_add_signed(bytes);
        }
    }

    /// The copies in a device's `new/` (none for a device never stored for).
    fn read_new(&self, did: &str, fp: &str) -> io::Result<Vec<Copy>> {
        let new = self.root.join(self.folder_path(did, fp)?).join("new");
        let entries = match std::fs::read_dir(&new) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut copies = Vec::new();
        for entry in entries {
            if let Some(copy) = copy_of(&entry?.file_name().to_string_lossy()) {
                copies.push(copy);
            }
        }
        Ok(copies)
    }

    /// The file of a device's copy `id` (`None`: not a copy this store names), whether or not
    /// it is there.
    fn copy_path(&self, did: &str, fp: &str, id: &str) -> io::Result<Option<PathBuf>> {
        let Some((name, _)) = file_of(id).filter(|_| is_copy_id(id)) else {
            return Ok(None);
        };
        Ok(Some(
            self.root
                .join(self.folder_path(did, fp)?)
                .join("new")
                .join(name),
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The DIDs with a folder in the store (the operator's `inbox list`).
    pub fn dids(&self) -> io::Result<Vec<String>> {
        let mut dids: Vec<String> = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    crate::format::address::did_of_local_part(&e.file_name().to_string_lossy())
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        dids.sort();
        Ok(dids)
    }

    /// The devices of `did` with a folder in the store, each with its usage.
    pub fn devices(&self, did: &str) -> io::Result<Vec<(String, Usage)>> {
        let Some(dir) = self.did_dir(did) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a DID"));
        };
        let mut fingerprints: Vec<String> = match std::fs::read_dir(self.root.join(dir)) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| is_fingerprint(name))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        fingerprints.sort();
        fingerprints
            .into_iter()
            .map(|fp| {
                let copies = self.read_new(did, &fp)?;
                let usage = Usage {
                    count: copies.len(),
                    bytes: copies.iter().map(|c| c.size).sum(),
                };
                Ok((fp, usage))
            })
            .collect()
    }

    /// Deletes every copy of one device (the operator's `inbox purge`): how many.
    pub fn purge(&self, did: &str, fp: &str) -> io::Result<usize> {
        let mut gone = 0;
        for copy in self.read_new(did, fp)? {
            if self.delete(did, fp, &copy.id)? {
                gone += 1;
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";

    fn fp(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn hash(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn one_copy_per_device_each_drained_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::new(dir.path().to_path_buf(), "mx.test", 1000, 1 << 26);
        let (a, b) = (fp(1), fp(2));
        assert!(!store.stored_before(DID, &hash(1)).unwrap());
        let kept = store.store(DID, &[&a, &b], b"sealed").unwrap();
        assert!(
            kept.iter().all(|k| matches!(k, Kept::Stored(_))),
            "{kept:?}"
        );
        store.mark_stored(DID, &hash(1)).unwrap();
        let second = store.store(DID, &[&a, &b], b"second").unwrap();
        assert!(matches!(second[..], [Kept::Stored(_), Kept::Stored(_)]));
        // Once per DID: the same envelope is known as stored, for this DID only.
        assert!(store.stored_before(DID, &hash(1)).unwrap());
        assert!(!store.stored_before(DID, &hash(2)).unwrap());
        assert!(
            !store
                .stored_before("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", &hash(1))
                .unwrap()
        );
        let listed = store.list(DID, &a, 100).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].seq <= listed[1].seq, "oldest first: {listed:?}");
        assert_eq!(
            store.get(DID, &a, &listed[0].id).unwrap().as_deref(),
            Some(&b"sealed"[..])
        );
        assert_eq!(store.list(DID, &a, 1).unwrap().len(), 1, "the limit");
        // Deleting device a's copy leaves device b's.
        assert!(store.delete(DID, &a, &listed[0].id).unwrap());
        assert!(!store.delete(DID, &a, &listed[0].id).unwrap());
        assert_eq!(store.get(DID, &a, &listed[0].id).unwrap(), None);
        assert_eq!(store.list(DID, &b, 100).unwrap().len(), 2);
        assert_eq!(
            store.usage_of(DID, &a).unwrap(),
            Usage { count: 1, bytes: 6 }
        );
        // What a copy is on disk: the envelope's bytes and nothing of the sender.
        let on_disk = std::fs::read_dir(
            dir.path()
                .join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa")
                .join(&b)
                .join("new"),
        )
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
        assert!(on_disk.contains(&b"sealed".to_vec()) && on_disk.contains(&b"second".to_vec()));
    }

    #[test]
    fn quotas_hold_per_device_and_are_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (fp(1), fp(2));
        {
            let store = DeviceStore::new(dir.path().to_path_buf(), "mx.test", 2, 1 << 26);
            store.store(DID, &[&a], b"one").unwrap();
        }
        // A new store (a restart) reads device a's usage from its folder.
        let store = DeviceStore::new(dir.path().to_path_buf(), "mx.test", 2, 1 << 26);
        store.store(DID, &[&a, &b], b"two").unwrap();
        let kept = store.store(DID, &[&a, &b], b"three").unwrap();
        assert!(matches!(kept[0], Kept::OverQuota), "{kept:?}");
        assert!(matches!(kept[1], Kept::Stored(_)), "{kept:?}");
        let small = DeviceStore::new(dir.path().join("small"), "mx.test", 100, 10);
        let kept = small.store(DID, &[&a], &[0; 11]).unwrap();
        assert!(matches!(kept[0], Kept::OverQuota), "bytes too");
        assert!(
            small
                .all_over_quota(DID, std::slice::from_ref(&a), 11)
                .unwrap()
        );
        assert!(
            !small
                .all_over_quota(DID, std::slice::from_ref(&a), 10)
                .unwrap()
        );
        let kept = small.store(DID, &[&a], &[0; 5]).unwrap();
        assert!(matches!(kept[0], Kept::Stored(_)));
    }

    #[test]
    fn paths_are_only_what_this_store_makes() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::new(dir.path().to_path_buf(), "mx.test", 10, 1 << 20);
        for bad_did in ["did:plc:../../etc", "not-a-did", "did:web:a.example/x"] {
            assert!(store.store(bad_did, &[&fp(1)], b"x").is_err(), "{bad_did}");
        }
        assert!(store.list(DID, "../x", 10).is_err());
        assert!(store.list(DID, &fp(0xab).to_uppercase(), 10).is_err());
        for bad_id in ["", "../new", "a/b", ".hidden", "x\0y"] {
            assert_eq!(store.get(DID, &fp(1), bad_id).unwrap(), None, "{bad_id:?}");
            assert!(!store.delete(DID, &fp(1), bad_id).unwrap(), "{bad_id:?}");
        }
        assert_eq!(
            store.list(DID, &fp(9), 10).unwrap(),
            vec![],
            "a device never stored for"
        );
    }

    #[test]
    fn the_operator_sees_dids_devices_and_purges_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::new(dir.path().to_path_buf(), "mx.test", 10, 1 << 20);
        let (a, b) = (fp(1), fp(2));
        store.store(DID, &[&a, &b], b"one").unwrap();
        store.store(DID, &[&a], b"two!").unwrap();
        assert_eq!(store.dids().unwrap(), vec![DID.to_string()]);
        let devices = store.devices(DID).unwrap();
        assert_eq!(
            devices,
            vec![
                (a.clone(), Usage { count: 2, bytes: 7 }),
                (b.clone(), Usage { count: 1, bytes: 3 })
            ]
        );
        assert_eq!(store.purge(DID, &a).unwrap(), 2);
        assert_eq!(store.list(DID, &a, 10).unwrap(), vec![]);
        assert_eq!(store.list(DID, &b, 10).unwrap().len(), 1);
        assert_eq!(store.usage_of(DID, &a).unwrap(), Usage::default());
    }

    #[test]
    fn seq_is_the_microseconds_of_the_name() {
        assert_eq!(
            seq_of("1765000000.M123456P77Q3.mx.test"),
            Some(1_765_000_000_123_456)
        );
        assert_eq!(seq_of("garbage"), None);
        assert_eq!(seq_of("18446744073709551.M1P1Q1.x"), None, "no overflow");
        assert_eq!(
            copy_of("1765000000.M5P1Q0.my-Sx.test,S=42"),
            Some(Copy {
                id: "1765000000.M5P1Q0.my-Sx.test-S42".into(),
                seq: 1_765_000_000_000_005,
                size: 42
            })
        );
        // The id gives the file back, whatever the host name holds.
        assert_eq!(
            file_of("1765000000.M5P1Q0.my-Sx.test-S42"),
            Some(("1765000000.M5P1Q0.my-Sx.test,S=42".into(), 42))
        );
        assert_eq!(file_of("1765000000.M5P1Q0.my-Sx.test"), None);
        assert_eq!(file_of("x-S"), None);
    }
}

//! LMTP mode (RFC 2033): a delivery agent that verifies each message exactly as the milter
//! does and writes each recipient's copy durably into a Maildir. Three parts: the protocol as
//! a pure decoder (`protocol`), the server loop that reads and answers (`server`), and
//! delivery (`delivery`), which asks the one judge and writes through `maildir`; an AT-SMS
//! envelope for a DID mailbox is also kept for each of the DID's devices (`devices`).

pub mod delivery;
pub mod devices;
pub mod incoming;
pub mod protocol;
pub mod recipient;
pub mod server;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::infra::config::LmtpConfig;
use crate::infra::maildir::{self, DirSyncer};
use crate::infra::socket::BoundListener;
use crate::policy::judge::SharedSettings;
use recipient::Mailboxes;

pub use server::session;

/// Everything an LMTP session needs; shared by all connections.
pub struct LmtpService {
    pub settings: SharedSettings,
    /// Replaced on reload (a new recipients list, say); a session keeps the one it began with.
    pub mailboxes: std::sync::RwLock<Arc<Mailboxes>>,
    pub max_message_size: u64,
    /// Per read.
    pub idle_timeout: Duration,
    /// For one whole DATA or BDAT transfer.
    pub data_timeout: Duration,
    pub host: String,
    /// AT-SMS envelopes' device copies (`devices`), shared with the HTTPS inbox.
    pub devices: Arc<devices::Devices>,
    syncer: Arc<DirSyncer>,
    /// Daemon mode cleans stale `tmp/` files of each folder on first use; `--stdio` (one
    /// process per delivery) never touches other deliveries' files.
    clean_tmp: bool,
    cleaned: Mutex<HashSet<PathBuf>>,
}

impl LmtpService {
    pub fn new(
        settings: SharedSettings,
        config: &LmtpConfig,
        inbox: &crate::infra::config::InboxConfig,
        host: String,
        clean_tmp: bool,
    ) -> Result<LmtpService, String> {
        Ok(LmtpService {
            devices: Arc::new(devices::Devices::new(inbox, &host)),
            settings,
            mailboxes: std::sync::RwLock::new(Arc::new(Mailboxes::new(config)?)),
            max_message_size: config.max_message_size,
            idle_timeout: Duration::from_secs(config.idle_timeout.get()),
            data_timeout: Duration::from_secs(config.data_timeout.get()),
            host,
            syncer: Arc::new(DirSyncer::default()),
            clean_tmp,
            cleaned: Mutex::new(HashSet::new()),
        })
    }

    /// At start: stale `tmp/` files of every known mailbox (and its Junk folder) go.
    pub fn clean_known_maildirs(&self) {
        for maildir in self.mailboxes().known_maildirs() {
            for folder in [maildir.clone(), maildir.join(".Junk")] {
                self.clean_once(&folder);
            }
        }
    }

    /// The recipients configuration in force.
    pub fn mailboxes(&self) -> Arc<Mailboxes> {
        self.mailboxes
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Takes a reloaded `[lmtp]` section's recipients list and template.
    pub fn reload_mailboxes(&self, config: &LmtpConfig) -> Result<(), String> {
        let mailboxes = Arc::new(Mailboxes::new(config)?);
        if let Ok(mut slot) = self.mailboxes.write() {
            *slot = mailboxes;
        }
        Ok(())
    }

    pub(crate) fn clean_once(&self, folder: &Path) {
        if !self.clean_tmp {
            return;
        }
        let first = self
            .cleaned
            .lock()
            .map(|mut c| c.insert(folder.to_path_buf()))
            .unwrap_or(false);
        if first {
            match maildir::clean_tmp(folder, SystemTime::now()) {
                Ok(0) => {}
                Ok(n) => info!("removed {n} stale file(s) from {}/tmp", folder.display()),
                Err(e) => warn!("cannot clean {}/tmp: {e}", folder.display()),
            }
        }
    }
}

/// Serves LMTP on `listener` until `shutdown`; sessions in progress finish on their own.
pub async fn run(
    listener: BoundListener,
    service: Arc<LmtpService>,
    shutdown: impl Future,
) -> io::Result<()> {
    info!("LMTP listening on {}", listener.describe());
    crate::infra::socket::serve(&listener, "LMTP", shutdown, |stream| {
        let service = service.clone();
        // A client of its own for the directory's budget (identity::budget).
        let client = crate::atproto::identity::budget::Client::connection();
        async move {
            let session = session(stream, service);
            if let Err(e) = crate::atproto::identity::budget::with_client(client, session).await {
                debug!("LMTP session ended: {e}");
            }
        }
    })
    .await;
    Ok(())
}

//! Who is told of new copies: the push sockets (`transport::xrpc::push`) of each device,
//! woken by whichever carrier kept the copy (LMTP's delivery, the HTTPS inbox). Bounded: at
//! most [`MAX_SOCKETS`] sockets in all, of which [`MAX_UNAUTHENTICATED`] not yet
//! authenticated (so sockets that never say who they are cannot take every place),
//! [`MAX_PER_DEVICE`] authenticated ones a device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Sockets one device may hold open.
pub const MAX_PER_DEVICE: usize = 4;
/// Sockets open at most, all devices together.
pub const MAX_SOCKETS: usize = 4096;
/// Sockets open at most that have not yet authenticated.
pub const MAX_UNAUTHENTICATED: usize = 512;

/// Who is listening for new copies: one channel per device with a socket open.
#[derive(Default)]
pub struct Notifier {
    devices: Mutex<HashMap<(String, String), Listening>>,
    sockets: AtomicUsize,
    /// Of `sockets`, those not yet authenticated.
    unauthenticated: AtomicUsize,
}

struct Listening {
    sender: tokio::sync::watch::Sender<u64>,
    sockets: usize,
}

impl Notifier {
    /// A copy was kept for the device `fp` of `did`: its sockets are told.
    pub fn notify(&self, did: &str, fp: &str) {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(listening) = devices.get(&(did.to_string(), fp.to_string())) {
            listening.sender.send_modify(|n| *n += 1);
        }
    }

    /// A place for one more socket, not yet authenticated, if the bounds allow.
    pub fn open(self: &Arc<Self>) -> Option<Socket> {
        if self.unauthenticated.fetch_add(1, Ordering::Relaxed) >= MAX_UNAUTHENTICATED {
            self.unauthenticated.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self.sockets.fetch_add(1, Ordering::Relaxed) >= MAX_SOCKETS {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            self.unauthenticated.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Socket {
            notifier: self.clone(),
            authenticated: false,
        })
    }

    /// The authenticated device's place among its own sockets: only a device's own token
    /// takes one, so nobody else can fill its places.
    pub fn listen(self: &Arc<Self>, did: &str, fp: &str) -> Option<Listener> {
        let key = (did.to_string(), fp.to_string());
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let listening = devices.entry(key.clone()).or_insert_with(|| Listening {
            sender: tokio::sync::watch::channel(0).0,
            sockets: 0,
        });
        if listening.sockets >= MAX_PER_DEVICE {
            return None;
        }
        listening.sockets += 1;
        Some(Listener {
            notifier: self.clone(),
            receiver: listening.sender.subscribe(),
            key,
        })
    }
}

/// One open socket's place among all; given back when dropped.
pub struct Socket {
    notifier: Arc<Notifier>,
    authenticated: bool,
}

impl Socket {
    /// The socket said who it is: its place no longer counts among the unauthenticated.
    pub fn authenticated(&mut self) {
        if !std::mem::replace(&mut self.authenticated, true) {
            self.notifier
                .unauthenticated
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.notifier.sockets.fetch_sub(1, Ordering::Relaxed);
        if !self.authenticated {
            self.notifier
                .unauthenticated
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An authenticated socket's place among its device's; given back when dropped.
pub struct Listener {
    notifier: Arc<Notifier>,
    pub receiver: tokio::sync::watch::Receiver<u64>,
    key: (String, String),
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut devices = self
            .notifier
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(listening) = devices.get_mut(&self.key) {
            listening.sockets -= 1;
            if listening.sockets == 0 {
                devices.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_not_yet_authenticated_have_places_of_their_own() {
        let notifier = Arc::new(Notifier::default());
        let mut waiting: Vec<Socket> = (0..MAX_UNAUTHENTICATED)
            .map(|_| notifier.open().expect("a place"))
            .collect();
        assert!(notifier.open().is_none(), "the unauthenticated are full");
        waiting[0].authenticated();
        let one_more = notifier
            .open()
            .expect("a place given back by authenticating");
        drop(one_more);
        drop(waiting.pop());
        assert!(notifier.open().is_some());
        waiting.clear();
        assert_eq!(notifier.sockets.load(Ordering::Relaxed), 0);
        assert_eq!(notifier.unauthenticated.load(Ordering::Relaxed), 0);
    }
}

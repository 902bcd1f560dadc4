//! What is in force now: a value the daemon replaces on reload (SIGHUP) while connections
//! keep the one they started with. Each room takes the `Live` of just what it needs (the
//! judge's settings, the routing tables, the signing service's keys); the daemon builds and
//! replaces them together. A leaf: no other room.

use std::sync::{Arc, RwLock};

pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    pub fn new(value: Arc<T>) -> Live<T> {
        Live(Arc::new(RwLock::new(value)))
    }

    /// The value in force (a snapshot: a reload does not change it under its holder).
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `value` in force for whoever asks next.
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

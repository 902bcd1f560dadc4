//! The others' schedule's queue: fair turns by client (`Budget::lookup_for`).

use std::collections::HashMap;
use tokio::time::Instant;

use super::{Client, MAX_WAITING, SERVED_MEMORY};

/// The lookups waiting for a slot of the others' schedule: mail's first, then one queue per
/// client, taken in turn by when each client was last served.
#[derive(Default)]
pub(super) struct FairQueue {
    mail: std::collections::VecDeque<u64>,
    pub(super) clients: HashMap<Client, std::collections::VecDeque<u64>>,
    /// Each waiting lookup's client (`None`: mail).
    owner: HashMap<u64, Option<Client>>,
    served: HashMap<Client, Instant>,
    next: u64,
}

impl FairQueue {
    pub(super) fn len(&self) -> usize {
        self.owner.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.owner.contains_key(&id)
    }

    /// Whose turn it is: mail first, then the front lookup of the client served least
    /// recently (never first; between equals, the one waiting longest).
    pub(super) fn first(&self) -> Option<u64> {
        if let Some(&id) = self.mail.front() {
            return Some(id);
        }
        self.clients
            .iter()
            .filter_map(|(client, queue)| Some((self.served.get(client), *queue.front()?)))
            .min()
            .map(|(_, id)| id)
    }

    pub(super) fn remove(&mut self, id: u64) {
        match self.owner.remove(&id) {
            Some(None) => self.mail.retain(|w| *w != id),
            Some(Some(client)) => {
                if let Some(queue) = self.clients.get_mut(&client) {
                    queue.retain(|w| *w != id);
                    if queue.is_empty() {
                        self.clients.remove(&client);
                    }
                }
            }
            None => {}
        }
    }

    pub(super) fn served(&mut self, client: Client, now: Instant) {
        if self.served.len() >= 4 * MAX_WAITING {
            self.served
                .retain(|_, at| now.saturating_duration_since(*at) < SERVED_MEMORY);
        }
        self.served.insert(client, now);
    }

    /// Places a lookup of `client` (or mail) in the queue: its id. When the queue is full,
    /// the newest lookup of the client with the most waiting gives its place up — unless
    /// that is `client` itself (none: refused).
    pub(super) fn join(&mut self, client: Client, mail: bool) -> Option<u64> {
        if self.len() >= MAX_WAITING {
            let own = match mail {
                true => 0,
                false => self.clients.get(&client).map_or(0, |q| q.len()),
            };
            let (most, count) = self
                .clients
                .iter()
                .map(|(c, q)| (*c, q.len()))
                .max_by_key(|(c, n)| (*n, self.served.get(c)))?;
            if count <= own + usize::from(!mail) {
                return None;
            }
            let newest = *self.clients.get(&most)?.back()?;
            self.remove(newest);
        }
        let id = self.next;
        self.next += 1;
        if mail {
            self.mail.push_back(id);
            self.owner.insert(id, None);
        } else {
            self.clients.entry(client).or_default().push_back(id);
            self.owner.insert(id, Some(client));
        }
        Some(id)
    }
}

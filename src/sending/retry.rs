//! The outbox's worker: the queued deliveries tried again when due, a few at once, until the
//! daemon stops (`Sender::run_outbox`); each try as the call's (`Sender::attempt`), its end
//! kept, forgotten or given up.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tracing::{info, warn};

use super::outbox::{self, Pending};
use super::{RETRIES_AT_ONCE, Sender, Status, Tally};

impl Sender {
    /// Tries again the queued deliveries that are due, a few at once, until `stop`: those
    /// delivered or refused for good are forgotten, the others wait longer, those too old
    /// are given up (logged).
    pub async fn run_outbox(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let outbox = self.outbox.clone();
            let now = crate::infra::clock::unix_now();
            let due = tokio::task::spawn_blocking(move || outbox.due(now, 4 * RETRIES_AT_ONCE))
                .await
                .unwrap_or_default();
            let busy = !due.is_empty();
            let retries = futures::stream::iter(due.into_iter().map(|p| self.retry(p)))
                .buffer_unordered(RETRIES_AT_ONCE)
                .collect::<Vec<()>>();
            tokio::select! {
                _ = retries => {}
                _ = stop.changed() => return,
            }
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    async fn retry(&self, pending: Pending) {
        use base64::Engine;
        let (id, to) = (pending.message_id.clone(), pending.to.clone());
        let Ok(signed) = base64::engine::general_purpose::STANDARD.decode(&pending.signed) else {
            warn!("send.queue: {id} to {to}: damaged; dropped");
            let _ = self.outbox.remove(&pending);
            return;
        };
        let done = Mutex::new(pending.done.iter().cloned().collect::<BTreeSet<_>>());
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let tally = tokio::time::timeout_at(
            deadline.into(),
            self.attempt(&pending.from, &pending.to, &signed, &done),
        )
        .await
        .unwrap_or_else(|_| Tally {
            temporary: Some("a try took longer than a minute".into()),
            ..Tally::default()
        });
        let now = crate::infra::clock::unix_now();
        if let Some(why) = tally.temporary {
            let mut next = pending.clone();
            next.done = done
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .into_iter()
                .collect();
            match next.after_try(now, why.clone(), tally.retry_after) {
                Some(next) => {
                    crate::infra::metrics::global().send_recipient("queued", "retry");
                    let outbox = self.outbox.clone();
                    let kept = tokio::task::spawn_blocking(move || outbox.put_all(&[next]))
                        .await
                        .unwrap_or_default();
                    if let Some(Err(e)) = kept.into_iter().next() {
                        // Not tried again at once (the file still says it is due), nor lost.
                        self.outbox.postpone(&pending, now + 60);
                        warn!("send.queue: {id} to {to}: cannot keep it: {e}");
                    }
                }
                None => {
                    crate::infra::metrics::global().send_recipient("given_up", "retry");
                    warn!(
                        "send: {id} to={to}: given up after {} s: {why}",
                        outbox::MAX_AGE
                    );
                    let _ = self.outbox.remove(&pending);
                }
            }
            return;
        }
        let status = match (&tally.failed, tally.posted + tally.earlier, tally.mailed) {
            (Some(_), _, _) | (None, 0, 0) => Status::Failed,
            (None, _, 0) => Status::Delivered,
            (None, _, _) => Status::Queued,
        };
        crate::infra::metrics::global().send_recipient(status.as_str(), "retry");
        match tally.failed.as_ref().filter(|_| status == Status::Failed) {
            Some(why) => warn!("send: {id} to={to}: refused on a later try: {why}"),
            None if status == Status::Failed => warn!(
                "send: {id} to={to}: refused on a later try: {}",
                tally.missed.join("; ")
            ),
            None => info!(
                "send: {id} to={to} delivered on a later try (posted={} mailed={} earlier={})",
                tally.posted, tally.mailed, tally.earlier
            ),
        }
        if let Err(e) = self.outbox.remove(&pending) {
            // Not tried again at once (and so not sent twice straight away).
            self.outbox.postpone(&pending, now + 3600);
            warn!("send.queue: {id} to {to}: done, but cannot be removed: {e}");
        }
    }
}

//! Postfix lookup tables over the socketmap protocol (`socketmap_table(5)`, Sendmail's
//! socketmap): netstring requests `<map> SP <key>`, netstring replies `OK <data>`,
//! `NOTFOUND `, `TEMP <reason>` or `PERM <reason>`. Postfix keeps a connection open for many
//! requests; each gets one reply, in order. When the client closes its sending side, what is
//! pending is answered and the connection closed (Exim's `${readsocket}` reads until EOF).
//! The answers are `routing`'s; this room only speaks the protocol.

pub mod netstring;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::infra::live::Live;
use crate::infra::socket::{BoundListener, Stream};
use crate::policy::inbox::InboxRules;
use crate::policy::routing::{Answer, Router};

/// The map giving a recipient's inbox rule (`[[inbox.rule]]`), for MTAs that keep one rule per
/// transaction themselves (Exim's RCPT ACL: contrib/exim/acl_rcpt.conf): `OK rule<N>` (the
/// first rule whose pattern matches the recipient's mailbox, counted from 1) or `OK none`.
pub const INBOX_RULE: &str = "atsms_inbox_rule";

/// What the maps answer from: the router (routing and consent by DID documents) and the
/// inbox rules, with the recipient delimiter addresses fold with. Built by the daemon with
/// the rest of a configuration, replaced on reload.
pub struct Tables {
    pub router: Router,
    pub inbox: Arc<InboxRules>,
    /// `lmtp.recipient_delimiter`: `user+detail` is `user`'s mailbox.
    pub delimiter: String,
}

impl Tables {
    /// Answers `map` for `key`.
    pub async fn lookup(&self, map: &str, key: &str) -> Answer {
        if map == INBOX_RULE {
            return match crate::format::address::fold(key, &self.delimiter) {
                Some(folded) => Answer::Found(match self.inbox.rule_for(&folded.mailbox()) {
                    Some(index) => format!("rule{}", index + 1),
                    None => "none".into(),
                }),
                None => Answer::NotFound,
            };
        }
        self.router.lookup(map, key).await
    }
}

/// The longest request accepted: a map name and an address (RFC 5321 caps a path at 256).
pub const MAX_REQUEST: usize = 2048;
/// A connection without a request for this long is closed (Postfix closes its own after 10 s
/// idle and reconnects when it needs to).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the maps on `listener` until `shutdown`, at most `max_connections` at once (more
/// are closed at once; Postfix retries). Each connection answers with the settings in force
/// when it opened (a reload changes `inbox.hosts` for new connections).
pub async fn run(
    listener: BoundListener,
    tables: Live<Tables>,
    max_connections: usize,
    shutdown: impl Future,
) -> std::io::Result<()> {
    info!("socketmap listening on {}", listener.describe());
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    crate::infra::socket::serve(&listener, "socketmap", shutdown, |stream| {
        let tables = tables.get();
        let permit = permits.clone().try_acquire_owned();
        async move {
            let Ok(_permit) = permit else {
                crate::warn_throttled!("socketmap: more than the allowed connections; closing one");
                return;
            };
            let timeout = tables.router.timeout();
            // Each connection (a Postfix process, an Exim lookup) is a client of its own
            // for the directory's budget: one asking for a flood of random DIDs is served in
            // turn with the others (identity::budget).
            let client = crate::atproto::identity::budget::Client::connection();
            let served = connection(stream, &tables, timeout);
            if let Err(e) = crate::atproto::identity::budget::with_client(client, served).await {
                debug!("socketmap connection ended: {e}");
            }
        }
    })
    .await;
    Ok(())
}

/// One request's parts: `<map> SP <key>`.
fn split_request(payload: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (map, key) = text.split_once(' ')?;
    (!map.is_empty() && !key.is_empty() && !key.chars().any(char::is_control)).then_some((map, key))
}

/// The answer to one request payload.
pub async fn answer(tables: &Tables, payload: &[u8]) -> Answer {
    match split_request(payload) {
        Some((map, key)) => {
            let answer = tables.lookup(map, key).await;
            crate::infra::metrics::global().socketmap_lookup(map_label(map), answer.label());
            answer
        }
        None => Answer::Permanent("malformed request".into()),
    }
}

/// Metrics know the maps by name; an unknown one is counted as such.
fn map_label(map: &str) -> &'static str {
    match map {
        crate::policy::routing::ALIAS => crate::policy::routing::ALIAS,
        crate::policy::routing::TRANSPORT => crate::policy::routing::TRANSPORT,
        crate::policy::routing::MAILBOX => crate::policy::routing::MAILBOX,
        INBOX_RULE => INBOX_RULE,
        _ => "unknown",
    }
}

/// Writes `out`, within `timeout`: a client that does not read its answers (its window
/// shut) is not waited for; its connection is closed.
async fn write_answers(stream: &mut Stream, out: &[u8], timeout: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, stream.write_all(out)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client does not read its answers",
        )),
    }
}

/// One client's connection. Writes are bounded by `timeout` (`socketmap.timeout`: an answer
/// not delivered by then is not delivered).
async fn connection(mut stream: Stream, tables: &Tables, timeout: Duration) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut eof = false;
    loop {
        // Answer every complete request already here, in order; then write them together.
        loop {
            match netstring::decode(&buf, MAX_REQUEST) {
                Ok(Some(frame)) => {
                    let reply = answer(tables, &buf[frame.payload.clone()]).await;
                    netstring::encode(reply.to_socketmap().as_bytes(), &mut out);
                    buf.drain(..frame.len);
                }
                Ok(None) => break,
                Err(e) => {
                    // A broken request leaves the stream out of step: say so and close.
                    crate::warn_throttled!("socketmap: {e}; closing the connection");
                    write_answers(&mut stream, &out, timeout).await?;
                    return stream.shutdown().await;
                }
            }
        }
        if !out.is_empty() {
            write_answers(&mut stream, &out, timeout).await?;
            out.clear();
        }
        if eof {
            if !buf.is_empty() {
                debug!("socketmap: the client closed in the middle of a request");
            }
            return stream.shutdown().await;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
            Err(_) => return stream.shutdown().await,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_a_map_and_a_key() {
        assert_eq!(
            split_request(b"atsms_alias a@b"),
            Some(("atsms_alias", "a@b"))
        );
        assert_eq!(split_request(b"atsms_alias *"), Some(("atsms_alias", "*")));
        for bad in [&b"atsms_alias"[..], b" a@b", b"m ", b"m a\rb", b"\xff a"] {
            assert_eq!(split_request(bad), None, "{bad:?}");
        }
    }
}

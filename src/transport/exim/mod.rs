//! Exim at SMTP time: the scanner Exim's `spam` ACL condition asks (`spamd_address = …
//! variant=rspamd`; contrib/exim/main.conf and acl_data.conf). A transport like the milter:
//! it feeds the message to a `MessageSession`, asks the one judge once for all recipients,
//! and translates the judgement into the answer Exim's ACL acts on:
//!
//! ```text
//! RSPAMD/1.3 0 EX_OK
//! Metric: default; True; 1.00 / 1.00 / 0.00
//! Action: reject                              → $spam_action
//! Reply: 550 5.7.1 AT-SMS signature fail      ┐
//! Authentication-Results: mx.example.net;     │ → $spam_report
//!     atsms=fail reason="body hash mismatch" …  ┘
//! ```
//!
//! The action is ours (`accept`, `junk`, `quarantine`, `discard`, `reject`, `tempfail`); the
//! ACL refuses with the `Reply:` text, freezes, discards or adds `X-Spam-Flag: YES`, and adds
//! the `Authentication-Results` field. Mail from `trusted_networks` and SMTP-authenticated
//! mail is not judged (`accept`, no field), as in milter mode. A request that cannot be read
//! gets no answer: Exim then defers the message, never accepts it.

pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::infra::socket::{BoundListener, Stream};
use crate::policy::judge::judgement::{self, Disposition, Origin, Scope, Target};
use crate::policy::judge::{MessageBytes, MessageSession, Mode, Settings, SharedSettings};
use protocol::{HeadDecoder, MboxStripper, ProtocolError, Request};

/// Why a scan ended without an answer.
#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("connection closed before the message ended")]
    Truncated,
    #[error("no byte for {0} s")]
    Idle(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves Exim's scan requests on `listener` until `shutdown`.
pub async fn run(
    listener: BoundListener,
    settings: SharedSettings,
    max_connections: usize,
    idle: Duration,
    shutdown: impl std::future::Future,
) -> std::io::Result<()> {
    info!("Exim scanner listening on {}", listener.describe());
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    crate::infra::socket::serve(&listener, "exim", shutdown, |stream: Stream| {
        let settings = settings.clone();
        let permit = permits.clone().try_acquire_owned();
        async move {
            let Ok(_permit) = permit else {
                crate::warn_throttled!(
                    "exim: more than exim.max_connections scans at once; closing one (Exim defers it)"
                );
                return;
            };
            if let Err(e) = scan(stream, &settings, idle).await {
                crate::warn_throttled!("exim: scan not answered (Exim defers the message): {e}");
            }
        }
    })
    .await;
    Ok(())
}

/// Reads with the idle bound.
async fn read(stream: &mut Stream, buf: &mut [u8], idle: Duration) -> Result<usize, ScanError> {
    match tokio::time::timeout(idle, stream.read(buf)).await {
        Ok(read) => Ok(read?),
        Err(_) => Err(ScanError::Idle(idle.as_secs())),
    }
}

/// One scan: the request, the message, the answer, and the connection closed (Exim reads
/// until it is).
async fn scan(
    mut stream: Stream,
    settings: &SharedSettings,
    idle: Duration,
) -> Result<(), ScanError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = HeadDecoder::new();
    let (request, mut first) = loop {
        let n = read(&mut stream, &mut buf, idle).await?;
        if n == 0 {
            return Err(ScanError::Truncated);
        }
        if let Some((request, used)) = head.feed(&buf[..n])? {
            break (request, buf[used..n].to_vec());
        }
    };
    let settings = settings.get();
    // Exim signs nothing through us: a client a signing key is for is passed on, unjudged.
    let judged = settings.mode_for(request.ip, request.user.as_deref()) == Mode::Judge;
    let mut message = MessageBytes::new(MessageSession::new(&settings), &settings.limits);
    let mut stripper = MboxStripper::new();
    let mut left = request.content_length;
    loop {
        let take = first.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        // Mail that is not judged is read all the same: Exim sends it before it reads.
        if judged {
            let bytes = stripper.feed(&first[..take]);
            message.push(&bytes, &mut |_| {});
        }
        left -= take as u64;
        if left == 0 {
            break;
        }
        let n = read(&mut stream, &mut buf, idle).await?;
        if n == 0 {
            return Err(ScanError::Truncated);
        }
        first = buf[..n].to_vec();
    }
    if judged {
        let rest = stripper.finish();
        message.push(&rest, &mut |_| {});
        message.finish(&mut |_| {});
    }
    let answer = if judged {
        judge_message(&settings, &request, message).await
    } else {
        tracing::debug!(
            "exim {}: trusted or SMTP-authenticated sender; not judged",
            request.queue_id.as_deref().unwrap_or("-")
        );
        protocol::answer("accept", 0.0, 1.0, &[])
    };
    stream.write_all(&answer).await?;
    stream.flush().await?;
    stream.shutdown().await?;
    Ok(())
}

/// The judgement of a received message, as Exim's answer.
async fn judge_message(
    settings: &Arc<Settings>,
    request: &Request,
    mut message: MessageBytes,
) -> Vec<u8> {
    let id = request.queue_id.as_deref().unwrap_or("-");
    if message.too_large {
        let reply = crate::format::reply::header_section_too_large();
        warn!("exim {id}: {reply}");
        return protocol::answer("reject", 1.0, 1.0, &[format!("Reply: {reply}")]);
    }
    let verified = message.session.finish(settings, settings.now()).await;
    let targets: Vec<Target> = request
        .recipients
        .iter()
        .map(|r| Target::new(r, settings))
        .collect();
    let origin = Origin {
        id,
        transport: "exim",
        sender: &request.sender,
    };
    let Some(judgement) = judgement::judge(settings, &origin, &verified, &targets, Scope::Together)
        .await
        .pop()
    else {
        return protocol::answer(
            "tempfail",
            1.0,
            1.0,
            &["Reply: 451 4.3.0 no judgement".into()],
        );
    };
    info!("{}", judgement.log_line);
    let (action, mut lines) = match &judgement.disposition {
        Disposition::Deliver => ("accept", vec![]),
        Disposition::Junk => ("junk", vec![]),
        Disposition::Quarantine(reason) => ("quarantine", vec![format!("Reason: {reason}")]),
        Disposition::Discard => ("discard", vec![]),
        Disposition::Refuse(refusal) => {
            let reply = refusal.reply();
            (
                if reply.is_temporary() {
                    "tempfail"
                } else {
                    "reject"
                },
                vec![format!("Reply: {reply}")],
            )
        }
    };
    if !judgement.refuses() {
        judgement::accepted(settings, &judgement).await;
    }
    // Our field, folded as written: each fold becomes a line of the answer, which Exim turns
    // into a continuation line of $spam_report.
    let mut field = judgement.header_value.split('\n');
    lines.push(format!(
        "{}:{}",
        crate::format::auth_results::FIELD_NAME,
        field.next().unwrap_or_default()
    ));
    lines.extend(field.map(str::to_string));
    let score = if action == "accept" { 0.0 } else { 1.0 };
    protocol::answer(action, score, 1.0, &lines)
}

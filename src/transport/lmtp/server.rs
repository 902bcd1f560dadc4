//! The LMTP server loop: reads bytes, feeds the decoder (`protocol`), keeps the session's
//! state, and writes replies. Pipelined replies go out together, before it waits for more
//! input. Delivery and every decision about the message are `delivery`'s.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::time::Instant;

use super::LmtpService;
use super::delivery::{self, Transaction};
use super::incoming::Incoming;
use super::protocol::{Command, Decoder, Event};
use super::recipient::RecipientError;
use crate::format::reply::{Enhanced, Reply};
use crate::policy::judge::Gate;

/// Most recipients in one transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
const MAX_RECIPIENTS: usize = 1000;
/// Bytes read from the wire at a time.
const READ_BUFFER: usize = 64 * 1024;

fn ok(enhanced: Enhanced, text: &str) -> Reply {
    Reply::new(250, enhanced, text)
}

/// What the session is doing with message bytes that arrive.
enum Receiving {
    /// Not inside a message.
    Nothing,
    /// DATA or a BDAT chunk for the transaction.
    Message,
    /// A BDAT chunk that cannot be used (no valid recipients): read and dropped, then 503.
    Discarding,
}

struct State {
    greeted: bool,
    transaction: Option<Transaction>,
    receiving: Receiving,
    /// Size of the BDAT chunk being read, for its reply.
    chunk_size: u64,
    /// When the DATA/BDAT transfer must be complete (`lmtp.data_timeout`).
    deadline: Option<Instant>,
}

/// Runs one LMTP session over any byte stream (a socket, or stdin/stdout for `--stdio`).
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    service: Arc<LmtpService>,
) -> io::Result<()> {
    let _open = crate::infra::metrics::global().lmtp_connection();
    let (mut reader, write_half) = tokio::io::split(stream);
    let mut writer = BufWriter::new(write_half);
    let host = service.host.clone();
    // The configuration this session began with stays its own until it ends, reloads or not.
    let settings = service.settings.get();
    let mailboxes = service.mailboxes();
    writer
        .write_all(
            Reply::plain(220, [format!("{host} atsms-milter LMTP ready")])
                .to_wire()
                .as_bytes(),
        )
        .await?;
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut decoder = Decoder::new();
    let mut state = State {
        greeted: false,
        transaction: None,
        receiving: Receiving::Nothing,
        chunk_size: 0,
        deadline: None,
    };
    loop {
        let (used, event) = decoder.next(&buf);
        let Some(event) = event else {
            if used > 0 {
                buf.advance(used);
                continue;
            }
            // More input is needed: answers to pipelined commands go out first.
            writer.flush().await?;
            match read_more(&mut reader, &mut buf, &state, &service).await? {
                Read::More => continue,
                Read::End => return Ok(()),
                Read::TimedOut(reply) => {
                    writer.write_all(reply.to_wire().as_bytes()).await?;
                    writer.flush().await?;
                    return Ok(());
                }
            }
        };
        let replies = match event {
            Event::Data(bytes) => {
                if let (Receiving::Message, Some(t)) =
                    (&state.receiving, state.transaction.as_mut())
                {
                    t.push(bytes);
                }
                Vec::new()
            }
            Event::DataEnd => finish(&service, &settings, &mut state).await,
            Event::ChunkEnd { last } => match state.receiving {
                Receiving::Discarding => {
                    state.receiving = Receiving::Nothing;
                    vec![Reply::new(503, Enhanced(5, 5, 1), "no valid recipients")]
                }
                _ if last => finish(&service, &settings, &mut state).await,
                _ => {
                    state.receiving = Receiving::Nothing;
                    vec![ok(
                        Enhanced(2, 0, 0),
                        &format!("{} octets received", state.chunk_size),
                    )]
                }
            },
            Event::LineTooLong => vec![Reply::new(500, Enhanced(5, 5, 2), "line too long")],
            Event::Command(Command::Quit) => {
                let reply =
                    Reply::new(221, Enhanced(2, 0, 0), format!("{host} closing connection"));
                writer.write_all(reply.to_wire().as_bytes()).await?;
                writer.flush().await?;
                return Ok(());
            }
            Event::Command(Command::Data) => {
                vec![start_data(&service, &settings, &mut state, &mut decoder)]
            }
            Event::Command(Command::Bdat { size, .. }) => {
                start_chunk(&service, &settings, &mut state, size);
                Vec::new()
            }
            Event::Command(command) => {
                vec![command_reply(&service, &settings, &mailboxes, &mut state, command).await]
            }
        };
        for reply in replies {
            writer.write_all(reply.to_wire().as_bytes()).await?;
        }
        buf.advance(used);
    }
}

/// What waiting for more input came to.
enum Read {
    More,
    /// End of input: a message in progress is delivered to nobody.
    End,
    /// `lmtp.idle_timeout` or `lmtp.data_timeout` passed: the reply to close with.
    TimedOut(Reply),
}

/// Reads more input into `buf` within the idle timeout, or what is left of the data timeout
/// while a message is being transferred.
async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    state: &State,
    service: &LmtpService,
) -> io::Result<Read> {
    let (wait, data_timeout) = match state.deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            (left.min(service.idle_timeout), left <= service.idle_timeout)
        }
        None => (service.idle_timeout, false),
    };
    buf.reserve(READ_BUFFER);
    match tokio::time::timeout(wait, reader.read_buf(buf)).await {
        Err(_) => {
            let why = if data_timeout {
                "data timeout"
            } else {
                "idle timeout"
            };
            let text = format!("{} {why}, closing connection", service.host);
            Ok(Read::TimedOut(Reply::new(421, Enhanced(4, 4, 2), text)))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Ok(Read::End),
        Ok(Ok(_)) => Ok(Read::More),
    }
}

/// DATA (RFC 2033 §4.2): 354 and the message follows, or 503 without a transaction ready.
fn start_data(
    service: &LmtpService,
    settings: &Arc<crate::policy::judge::Settings>,
    state: &mut State,
    decoder: &mut Decoder,
) -> Reply {
    let ready = match &state.transaction {
        None => Err("MAIL first"),
        Some(t) if t.recipients.is_empty() => Err("no valid recipients"),
        Some(t) if t.incoming.is_some() => Err("BDAT in progress"),
        Some(_) => Ok(()),
    };
    if let Err(why) = ready {
        return Reply::new(503, Enhanced(5, 5, 1), why);
    }
    if let Some(t) = state.transaction.as_mut() {
        t.incoming = Some(Incoming::new(service.max_message_size, settings));
    }
    decoder.start_data();
    state.receiving = Receiving::Message;
    state.deadline = Some(Instant::now() + service.data_timeout);
    Reply::new(354, Enhanced(2, 0, 0), "end data with <CR><LF>.<CR><LF>")
}

/// BDAT (RFC 3030 §2): the chunk is taken into the transaction, or, with no valid recipient,
/// read and dropped so the stream stays in step (503 after it).
fn start_chunk(
    service: &LmtpService,
    settings: &Arc<crate::policy::judge::Settings>,
    state: &mut State,
    size: u64,
) {
    state.chunk_size = size;
    match state
        .transaction
        .as_mut()
        .filter(|t| !t.recipients.is_empty())
    {
        Some(t) => {
            t.via = "bdat";
            t.incoming
                .get_or_insert_with(|| Incoming::new(service.max_message_size, settings));
            state.receiving = Receiving::Message;
            state
                .deadline
                .get_or_insert_with(|| Instant::now() + service.data_timeout);
        }
        None => state.receiving = Receiving::Discarding,
    }
}

/// The end of a message: delivery, one reply per recipient.
async fn finish(
    service: &Arc<LmtpService>,
    settings: &Arc<crate::policy::judge::Settings>,
    state: &mut State,
) -> Vec<Reply> {
    state.receiving = Receiving::Nothing;
    state.deadline = None;
    match state.transaction.take() {
        Some(t) => delivery::deliver_all(service, settings, t).await,
        None => vec![Reply::new(503, Enhanced(5, 5, 1), "no transaction")],
    }
}

/// Commands outside a message: greeting, envelope, housekeeping.
async fn command_reply(
    service: &LmtpService,
    settings: &crate::policy::judge::Settings,
    mailboxes: &super::recipient::Mailboxes,
    state: &mut State,
    command: Command,
) -> Reply {
    match command {
        Command::Lhlo(_) => {
            state.greeted = true;
            state.transaction = None;
            Reply::plain(
                250,
                [
                    service.host.clone(),
                    "PIPELINING".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    format!("SIZE {}", service.max_message_size),
                    "CHUNKING".into(),
                ],
            )
        }
        Command::NotLmtp => Reply::new(500, Enhanced(5, 5, 1), "this is LMTP: use LHLO"),
        Command::Mail(path, params) => {
            if !state.greeted {
                return Reply::new(503, Enhanced(5, 5, 1), "LHLO first");
            }
            if state.transaction.is_some() {
                return Reply::new(503, Enhanced(5, 5, 1), "nested MAIL command");
            }
            if params
                .size
                .is_some_and(|size| size > service.max_message_size)
            {
                return Reply::new(
                    552,
                    Enhanced(5, 3, 4),
                    "message size exceeds fixed maximum message size",
                );
            }
            state.transaction = Some(Transaction::new(path.0));
            ok(Enhanced(2, 1, 0), "OK")
        }
        Command::Rcpt(path) => {
            let Some(t) = state.transaction.as_mut() else {
                return Reply::new(503, Enhanced(5, 5, 1), "MAIL first");
            };
            if t.incoming.is_some() {
                return Reply::new(503, Enhanced(5, 5, 1), "BDAT in progress");
            }
            let address = path.0;
            if address.is_empty() {
                return Reply::new(550, Enhanced(5, 1, 1), "empty recipient address");
            }
            if t.recipients.len() >= MAX_RECIPIENTS {
                return Reply::new(452, Enhanced(4, 5, 3), "too many recipients");
            }
            match mailboxes.resolve(&address) {
                Ok(recipient) => {
                    // The judge at recipient time: a DID mailbox is kept only while the DID
                    // consents to it here, asked of the mailbox the address folds into — the
                    // one delivery writes to — never of the address as given.
                    if let Err(refusal) = settings.admit(Gate::Lmtp, &recipient.mailbox).await {
                        return refusal.reply().for_recipient(&address);
                    }
                    t.recipients.push(recipient);
                    ok(Enhanced(2, 1, 5), "OK")
                }
                Err(RecipientError::Unknown) => {
                    Reply::new(550, Enhanced(5, 1, 1), "user unknown").for_recipient(&address)
                }
                Err(RecipientError::BadAddress) => {
                    Reply::new(550, Enhanced(5, 1, 3), "unusable address").for_recipient(&address)
                }
            }
        }
        Command::Rset => {
            state.transaction = None;
            ok(Enhanced(2, 0, 0), "OK")
        }
        Command::Noop => ok(Enhanced(2, 0, 0), "OK"),
        Command::Vrfy => Reply::new(252, Enhanced(2, 5, 0), "cannot VRFY; send some mail"),
        Command::Unknown(_) => Reply::new(500, Enhanced(5, 5, 2), "command not recognized"),
        Command::Invalid(reply) => reply,
        // Handled by the loop.
        Command::Quit | Command::Data | Command::Bdat { .. } => {
            Reply::new(503, Enhanced(5, 5, 1), "bad sequence of commands")
        }
    }
}

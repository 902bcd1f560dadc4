//! LMTP mode (RFC 2033): a delivery agent that verifies each message exactly as the milter
//! does and writes each recipient's copy durably into a Maildir. Transport only: the verdict,
//! decision and header text come from the session, the writing from `maildir`.

pub mod incoming;
pub mod recipient;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tracing::{debug, error, info, warn};

use crate::auth_results;
use crate::config::{Action, LmtpConfig};
use crate::maildir::{self, DeliveryError, DirSyncer};
use crate::policy;
use crate::session::SharedSettings;
use crate::socket::BoundListener;
use incoming::Incoming;
use recipient::{Mailboxes, Recipient, RecipientError};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; parameters make it longer).
const MAX_COMMAND_LINE: usize = 4096;
/// Most recipients in one transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
const MAX_RECIPIENTS: usize = 1000;
/// Bytes read from the wire at a time while receiving DATA.
const DATA_SEGMENT: u64 = 64 * 1024;

/// Everything an LMTP session needs; shared by all connections.
pub struct LmtpService {
    pub settings: SharedSettings,
    /// Replaced on reload (a new recipients list, say); a session keeps the one it began with.
    pub mailboxes: std::sync::RwLock<Arc<Mailboxes>>,
    pub max_message_size: u64,
    pub idle_timeout: Duration,
    pub host: String,
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
        host: String,
        clean_tmp: bool,
    ) -> Result<LmtpService, String> {
        Ok(LmtpService {
            settings,
            mailboxes: std::sync::RwLock::new(Arc::new(Mailboxes::new(config)?)),
            max_message_size: config.max_message_size,
            idle_timeout: Duration::from_secs(config.idle_timeout.max(1)),
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

    fn clean_once(&self, folder: &Path) {
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = accept(&listener) => {
                match accepted {
                    Ok(Accepted::Tcp(stream)) => {
                        let _ = stream.set_nodelay(true);
                        spawn_session(stream, service.clone());
                    }
                    Ok(Accepted::Unix(stream)) => spawn_session(stream, service.clone()),
                    Err(e) => {
                        // EMFILE and the like pass; do not spin on them.
                        warn!("LMTP accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &BoundListener) -> io::Result<Accepted> {
    match listener {
        BoundListener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        BoundListener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

fn spawn_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    service: Arc<LmtpService>,
) {
    tokio::spawn(async move {
        if let Err(e) = session(stream, service).await {
            debug!("LMTP session ended: {e}");
        }
    });
}

/// A transaction: MAIL, its RCPTs and the message arriving.
struct Transaction {
    sender: String,
    recipients: Vec<Recipient>,
    /// Set by the first BDAT.
    incoming: Option<Incoming>,
    /// How the message came: "data" or "bdat" (for the log).
    via: &'static str,
}

enum Line {
    Text(String),
    TooLong,
}

/// Reads one command line of at most MAX_COMMAND_LINE bytes; `None` at end of input.
async fn read_command<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Option<Line>> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_COMMAND_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        if line.len() <= MAX_COMMAND_LINE {
            return Ok(None); // end of input in the middle of a line
        }
        // Discard the rest of the overlong line.
        let mut rest = Vec::new();
        loop {
            rest.clear();
            let n = (&mut *reader)
                .take(MAX_COMMAND_LINE as u64)
                .read_until(b'\n', &mut rest)
                .await?;
            if n == 0 || rest.ends_with(b"\n") {
                break;
            }
        }
        return Ok(Some(Line::TooLong));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(Line::Text(
        String::from_utf8_lossy(&line).into_owned(),
    )))
}

/// `<path> params` after `FROM:` or `TO:`.
fn parse_path(rest: &str) -> Option<(String, Vec<String>)> {
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?;
    let mut in_quotes = false;
    let mut end = None;
    for (i, c) in inner.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let mut path = inner[..end].to_string();
    // A source route (RFC 5321 §4.1.2, obsolete) is dropped: `<@a,@b:user@c>`.
    if path.starts_with('@')
        && let Some((_, mailbox)) = path.split_once(':')
    {
        path = mailbox.to_string();
    }
    let params = inner[end + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

fn param_name(param: &str) -> String {
    param
        .split('=')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Runs one LMTP session over any byte stream (a socket, or stdin/stdout for `--stdio`).
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    service: Arc<LmtpService>,
) -> io::Result<()> {
    let _open = crate::metrics::global().lmtp_connection();
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut writer = BufWriter::new(write_half);
    let host = service.host.clone();
    writer
        .write_all(format!("220 {host} atsms-milter LMTP ready\r\n").as_bytes())
        .await?;
    // The configuration this session began with stays its own until it ends, reloads or not.
    let settings = match service.settings.read() {
        Ok(s) => s.clone(),
        Err(_) => return Err(io::Error::other("settings lock poisoned")),
    };
    let mailboxes = service.mailboxes();
    let mut greeted = false;
    let mut transaction: Option<Transaction> = None;
    loop {
        // Replies to pipelined commands go out together, before we wait for more input.
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
        let line = match tokio::time::timeout(service.idle_timeout, read_command(&mut reader)).await
        {
            Err(_) => {
                writer
                    .write_all(
                        format!("421 4.4.2 {host} idle timeout, closing connection\r\n").as_bytes(),
                    )
                    .await?;
                writer.flush().await?;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(Line::TooLong))) => {
                writer.write_all(b"500 5.5.2 line too long\r\n").await?;
                continue;
            }
            Ok(Ok(Some(Line::Text(line)))) => line,
        };
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb.to_ascii_uppercase(), rest),
            None => (line.to_ascii_uppercase(), ""),
        };
        let reply: String = match verb.as_str() {
            "LHLO" if rest.trim().is_empty() => "501 5.5.4 LHLO needs a domain".into(),
            "LHLO" => {
                greeted = true;
                transaction = None;
                format!(
                    "250-{host}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-SIZE {}\r\n250 CHUNKING",
                    service.max_message_size
                )
            }
            "HELO" | "EHLO" => "500 5.5.1 this is LMTP: use LHLO".into(),
            "MAIL" => mail(&service, greeted, &mut transaction, rest),
            "RCPT" => rcpt(&mailboxes, &mut transaction, rest),
            "DATA" => {
                let ready = match &transaction {
                    _ if !rest.trim().is_empty() => Err("501 5.5.4 DATA takes no parameters"),
                    None => Err("503 5.5.1 MAIL first"),
                    Some(t) if t.recipients.is_empty() => Err("503 5.5.1 no valid recipients"),
                    Some(t) if t.incoming.is_some() => Err("503 5.5.1 BDAT in progress"),
                    Some(_) => Ok(()),
                };
                match ready {
                    Err(reply) => reply.into(),
                    Ok(()) => {
                        writer
                            .write_all(b"354 2.0.0 end data with <CR><LF>.<CR><LF>\r\n")
                            .await?;
                        writer.flush().await?;
                        let mut t = transaction.take().expect("checked above");
                        let mut incoming =
                            Incoming::new(service.max_message_size, &settings.authserv_id);
                        match tokio::time::timeout(
                            service.idle_timeout,
                            read_data(&mut reader, &mut incoming),
                        )
                        .await
                        {
                            Err(_) => return Ok(()),
                            Ok(Err(e)) => return Err(e),
                            Ok(Ok(false)) => return Ok(()), // lost the client mid-message: deliver nothing
                            Ok(Ok(true)) => {}
                        }
                        t.incoming = Some(incoming);
                        deliver_all(&service, &settings, t).await
                    }
                }
            }
            "BDAT" => {
                let mut words = rest.split_whitespace();
                let size = words.next().and_then(|s| s.parse::<u64>().ok());
                let last = match words.next() {
                    None => Some(false),
                    Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
                    Some(_) => None,
                };
                match (size, last, words.next()) {
                    (Some(size), Some(last), None) => {
                        let usable = transaction
                            .as_ref()
                            .is_some_and(|t| !t.recipients.is_empty());
                        if !usable {
                            // The chunk follows regardless: read it so the stream stays in step.
                            discard_exact(&mut reader, size, service.idle_timeout).await?;
                            "503 5.5.1 no valid recipients".into()
                        } else {
                            let t = transaction.as_mut().expect("checked above");
                            t.via = "bdat";
                            let incoming = t.incoming.get_or_insert_with(|| {
                                Incoming::new(service.max_message_size, &settings.authserv_id)
                            });
                            if !read_exact_into(&mut reader, size, incoming, service.idle_timeout)
                                .await?
                            {
                                return Ok(());
                            }
                            if last {
                                let t = transaction.take().expect("checked above");
                                deliver_all(&service, &settings, t).await
                            } else {
                                format!("250 2.0.0 {size} octets received")
                            }
                        }
                    }
                    _ => "501 5.5.4 syntax: BDAT size [LAST]".into(),
                }
            }
            "RSET" => {
                transaction = None;
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "VRFY" => "252 2.5.0 cannot VRFY; send some mail".into(),
            "QUIT" => {
                writer
                    .write_all(format!("221 2.0.0 {host} closing connection\r\n").as_bytes())
                    .await?;
                writer.flush().await?;
                return Ok(());
            }
            _ => "500 5.5.2 command not recognized".into(),
        };
        writer.write_all(reply.as_bytes()).await?;
        writer.write_all(b"\r\n").await?;
    }
}

fn mail(
    service: &LmtpService,
    greeted: bool,
    transaction: &mut Option<Transaction>,
    rest: &str,
) -> String {
    if !greeted {
        return "503 5.5.1 LHLO first".into();
    }
    if transaction.is_some() {
        return "503 5.5.1 nested MAIL command".into();
    }
    let Some(rest) = rest
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("FROM:"))
        .map(|_| &rest[5..])
    else {
        return "501 5.5.4 syntax: MAIL FROM:<address>".into();
    };
    let Some((sender, params)) = parse_path(rest) else {
        return "501 5.1.7 bad sender address syntax".into();
    };
    for param in &params {
        match param_name(param).as_str() {
            "SIZE" => {
                let size = param
                    .split_once('=')
                    .and_then(|(_, v)| v.parse::<u64>().ok());
                match size {
                    Some(size) if size > service.max_message_size => {
                        return "552 5.3.4 message size exceeds fixed maximum message size".into();
                    }
                    Some(_) => {}
                    None => return "501 5.5.4 bad SIZE parameter".into(),
                }
            }
            "BODY" => {
                let value = param
                    .split_once('=')
                    .map(|(_, v)| v.to_ascii_uppercase())
                    .unwrap_or_default();
                if value != "7BIT" && value != "8BITMIME" {
                    return "555 5.5.4 unsupported BODY type".into();
                }
            }
            "SMTPUTF8" => {}
            _ => return format!("555 5.5.4 unsupported parameter {}", param_name(param)),
        }
    }
    *transaction = Some(Transaction {
        sender,
        recipients: Vec::new(),
        incoming: None,
        via: "data",
    });
    "250 2.1.0 OK".into()
}

fn rcpt(mailboxes: &Mailboxes, transaction: &mut Option<Transaction>, rest: &str) -> String {
    let Some(t) = transaction.as_mut() else {
        return "503 5.5.1 MAIL first".into();
    };
    if t.incoming.is_some() {
        return "503 5.5.1 BDAT in progress".into();
    }
    let Some(rest) = rest
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("TO:"))
        .map(|_| &rest[3..])
    else {
        return "501 5.5.4 syntax: RCPT TO:<address>".into();
    };
    let Some((address, params)) = parse_path(rest) else {
        return "501 5.1.3 bad recipient address syntax".into();
    };
    if let Some(bad) = params
        .iter()
        .find(|p| !matches!(param_name(p).as_str(), "ORCPT" | "NOTIFY"))
    {
        return format!("555 5.5.4 unsupported parameter {}", param_name(bad));
    }
    if address.is_empty() {
        return "550 5.1.1 empty recipient address".into();
    }
    if t.recipients.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 too many recipients".into();
    }
    match mailboxes.resolve(&address) {
        Ok(recipient) => {
            t.recipients.push(recipient);
            "250 2.1.5 OK".into()
        }
        Err(RecipientError::Unknown) => format!("550 5.1.1 <{address}> user unknown"),
        Err(RecipientError::BadAddress) => format!("550 5.1.3 <{address}> unusable address"),
    }
}

/// Reads DATA up to the `CRLF.CRLF` that ends it, dot-unstuffing (RFC 5321 §4.5.2). Only a
/// `.` line preceded by CRLF ends the message: a bare LF never does (SMTP smuggling).
/// Returns false if the input ended first.
async fn read_data<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    incoming: &mut Incoming,
) -> io::Result<bool> {
    // The CRLF that ended the DATA command line counts as the first one.
    let mut at_line_start = true;
    let mut last_byte = b'\n';
    let mut segment = Vec::with_capacity(8192);
    loop {
        segment.clear();
        let n = (&mut *reader)
            .take(DATA_SEGMENT)
            .read_until(b'\n', &mut segment)
            .await?;
        if n == 0 {
            return Ok(false);
        }
        if at_line_start && segment.as_slice() == b".\r\n" {
            incoming.finish();
            return Ok(true);
        }
        let data = if at_line_start && segment.first() == Some(&b'.') {
            &segment[1..]
        } else {
            &segment[..]
        };
        incoming.push(data);
        let before_lf = if segment.len() >= 2 {
            segment[segment.len() - 2]
        } else {
            last_byte
        };
        at_line_start = segment.ends_with(b"\n") && before_lf == b'\r';
        last_byte = *segment.last().expect("n > 0");
    }
}

/// Reads exactly `size` bytes of a BDAT chunk into the message. False if the input ended.
async fn read_exact_into<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    size: u64,
    incoming: &mut Incoming,
    timeout: Duration,
) -> io::Result<bool> {
    let mut remaining = size;
    while remaining > 0 {
        let chunk = match tokio::time::timeout(timeout, reader.fill_buf()).await {
            Err(_) => return Ok(false),
            Ok(chunk) => chunk?,
        };
        if chunk.is_empty() {
            return Ok(false);
        }
        let take = chunk.len().min(remaining as usize);
        incoming.push(&chunk[..take]);
        reader.consume(take);
        remaining -= take as u64;
    }
    Ok(true)
}

async fn discard_exact<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    size: u64,
    timeout: Duration,
) -> io::Result<()> {
    let mut sink = tokio::io::sink();
    let mut chunk = (&mut *reader).take(size);
    let copy = tokio::io::copy(&mut chunk, &mut sink);
    match tokio::time::timeout(timeout, copy).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "BDAT chunk timed out",
        )),
    }
}

/// Where a recipient's copy goes and what it says, decided.
enum Placement {
    Refuse(String),
    Store {
        folder: PathBuf,
        subfolder: bool,
        header_value: String,
    },
}

/// Verifies the message once, then decides, delivers and replies for each recipient in
/// order, duplicates included (RFC 2033 §4.2). Returns the replies as one block.
async fn deliver_all(
    service: &Arc<LmtpService>,
    settings: &Arc<crate::session::Settings>,
    mut t: Transaction,
) -> String {
    let Some(mut incoming) = t.incoming.take() else {
        return "451 4.3.0 internal error: no message".into();
    };
    incoming.finish();
    let one_each = |reply: &dyn Fn(&Recipient) -> String| -> String {
        t.recipients
            .iter()
            .map(reply)
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    if let Some(why) = incoming.refused {
        warn!(
            "message from <{}> refused: {why} ({} bytes)",
            t.sender, incoming.size
        );
        return one_each(&|r| format!("552 5.3.4 <{}> {why}", r.address));
    }
    if let Some(e) = &incoming.io_error {
        error!("spooling a message from <{}> failed: {e}", t.sender);
        return one_each(&|r| {
            format!(
                "451 4.3.0 <{}> temporary failure spooling the message",
                r.address
            )
        });
    }
    let outcome = incoming.session.finish(settings, settings.now(), &[]).await;
    let kept_headers = incoming.kept_header_section();
    let size = incoming.size;
    let incoming = Arc::new(Mutex::new(incoming));
    let single = t.recipients.len() == 1;
    // A recipient given twice is delivered once and answered twice (RFC 2033 §4.2), each
    // reply naming the address as that RCPT gave it.
    let mut done: HashMap<String, String> = HashMap::new();
    let mut replies = Vec::with_capacity(t.recipients.len());
    for recipient in &t.recipients {
        let key = recipient.address.to_lowercase();
        if let Some(reply) = done.get(&key) {
            let (code, rest) = reply.split_once(" <").unwrap_or((reply.as_str(), ""));
            let rest = rest.split_once("> ").map_or("", |(_, r)| r);
            replies.push(format!("{code} <{}> {rest}", recipient.address));
            continue;
        }
        let mut verdict = outcome.verdict.restricted_to(std::slice::from_ref(&key));
        if let Some(replay) = &settings.replay {
            replay.check(&mut verdict, &key).await;
        }
        let decision = policy::decide(&verdict, &settings.policy);
        let action = if settings.policy.dry_run {
            Action::Accept
        } else {
            decision.action
        };
        let placement = match action {
            Action::Reject => Placement::Refuse(format!(
                "550 5.7.1 <{}> AT-SMS signature {}",
                recipient.address, decision.result
            )),
            Action::Tempfail => Placement::Refuse(format!(
                "451 4.7.1 <{}> AT-SMS signature {}, try again later",
                recipient.address, decision.result
            )),
            Action::Junk | Action::Quarantine | Action::Discard => Placement::Store {
                folder: recipient.maildir.join(".Junk"),
                subfolder: true,
                header_value: auth_results::format_value(&settings.authserv_id, &verdict, "\n"),
            },
            Action::Accept => {
                let detail_folder = recipient
                    .detail
                    .as_ref()
                    .map(|d| recipient.maildir.join(format!(".{d}")));
                let (folder, subfolder) = match detail_folder {
                    Some(folder) if folder.is_dir() => (folder, true),
                    _ => (recipient.maildir.clone(), false),
                };
                Placement::Store {
                    folder,
                    subfolder,
                    header_value: auth_results::format_value(&settings.authserv_id, &verdict, "\n"),
                }
            }
        };
        let (reply, folder_shown) = match placement {
            Placement::Refuse(reply) => (reply, "-".to_string()),
            Placement::Store {
                folder,
                subfolder,
                header_value,
            } => {
                let mut head = format!("Return-Path: <{}>\n", t.sender);
                if single {
                    head.push_str(&format!("Delivered-To: {}\n", recipient.address));
                }
                head.push_str(&format!("{}:{header_value}\n", auth_results::FIELD_NAME));
                let mut head = head.into_bytes();
                head.extend_from_slice(&kept_headers);
                head.push(b'\n');
                let shown = folder.display().to_string();
                let result = store(service, &incoming, folder, subfolder, head).await;
                if result.is_ok()
                    && let Some(replay) = &settings.replay
                {
                    replay.record(&verdict, &key, settings.now()).await;
                }
                let reply = match result {
                    Ok(id) => format!("250 2.0.0 <{}> {id} Saved", recipient.address),
                    Err(DeliveryError::Full(e)) => {
                        error!("delivery to <{}> failed: {e}", recipient.address);
                        format!(
                            "452 4.3.1 <{}> insufficient system storage",
                            recipient.address
                        )
                    }
                    Err(DeliveryError::Io(e)) => {
                        error!("delivery to <{}> failed: {e}", recipient.address);
                        format!(
                            "451 4.3.0 <{}> temporary delivery failure",
                            recipient.address
                        )
                    }
                };
                (reply, shown)
            }
        };
        let best = verdict.best_pass().or_else(|| verdict.signatures.first());
        info!(
            "lmtp: from=<{}> to=<{}> via={} size={} atsms={} did={} handle={} action={}{} folder={} resolve_ms={} reply=\"{}\"",
            t.sender,
            recipient.address,
            t.via,
            size,
            decision.result,
            best.and_then(|s| s.did.as_deref()).unwrap_or("-"),
            best.and_then(|s| s.handle.as_deref()).unwrap_or("-"),
            decision.action.as_str(),
            if settings.policy.dry_run {
                " [dry run]"
            } else {
                ""
            },
            folder_shown,
            outcome.resolve_time.as_millis(),
            reply.escape_default()
        );
        let metrics = crate::metrics::global();
        metrics.message("lmtp", decision.result.as_str(), decision.action.as_str());
        metrics.lmtp_delivery(match reply.as_bytes().first() {
            Some(b'2') => "saved",
            Some(b'5') => "rejected",
            _ => "deferred",
        });
        done.insert(key, reply.clone());
        replies.push(reply);
    }
    replies.join("\r\n")
}

/// Writes one copy on the blocking pool: file I/O and fsyncs never stall the runtime.
async fn store(
    service: &Arc<LmtpService>,
    incoming: &Arc<Mutex<Incoming>>,
    folder: PathBuf,
    subfolder: bool,
    head: Vec<u8>,
) -> Result<String, DeliveryError> {
    let service = service.clone();
    let incoming = incoming.clone();
    let task = tokio::task::spawn_blocking(move || {
        maildir::ensure_folder(&folder, subfolder)?;
        service.clean_once(&folder);
        let mut incoming = incoming
            .lock()
            .map_err(|_| io::Error::other("spool lock poisoned"))?;
        let body = incoming.body_reader()?;
        maildir::deliver(&folder, &service.host, &head, body, &service.syncer).map(|d| d.id)
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(DeliveryError::Io(io::Error::other(format!(
            "delivery task failed: {e}"
        )))),
    }
}

//! Milter mode: thin indymilter callbacks over a per-connection `Connection`. Every error is
//! logged with the queue id and becomes a tempfail: never a panic, never a silent accept.

mod bounds;
mod coalesce;

use std::ffi::{CStr, CString};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, NegotiateContext,
    ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use tracing::{debug, error, info, warn};

use crate::format::reply::Reply;
use crate::infra::socket::BoundListener;
use crate::policy::action::Action;
use crate::policy::judge::judgement::{self, Disposition, Origin, Scope, Target};
use crate::policy::judge::{MessageSession, Mode, Settings, SharedSettings};

/// How often to tell the MTA we are still working while identities resolve (SMFIR_PROGRESS),
/// well inside Postfix's `milter_content_timeout` (300 s).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Per-connection state.
pub struct Connection {
    _open: crate::infra::metrics::ConnectionGuard,
    settings: Arc<Settings>,
    skip_negotiated: bool,
    /// The steps the MTA sends without waiting for a reply (SMFIP_NR_*): every answer of
    /// such a step is `Noreply`.
    noreply: ProtoOpts,
    /// The client's address, when it connected over IP.
    client: Option<std::net::IpAddr>,
    message: Option<MessageSession>,
    /// What is done with this message, decided once at MAIL: it is never both judged and
    /// signed.
    mode: Mode,
    sender: String,
    recipients: Vec<String>,
    /// The inbox rule of the first accepted recipient (`Some(None)`: under no rule): one
    /// transaction is judged under one rule.
    rule: Option<Option<usize>>,
}

/// The MTA's queue id (`{i}`), fit for a log line (whoever reaches the milter port writes it).
fn queue_id(macros: &indymilter::Macros) -> String {
    macros
        .get(c"i")
        .map(|v| String::from_utf8_lossy(v.to_bytes()))
        .filter(|v| !v.is_empty())
        .map_or_else(
            || "NOQUEUE".to_string(),
            |v| crate::infra::logging::escaped(&v),
        )
}

fn lossy(s: &CStr) -> String {
    String::from_utf8_lossy(s.to_bytes()).into_owned()
}

/// An envelope address as the MTA passes it (`<a@b>`, perhaps with ESMTP parameters).
fn envelope_address(args: &[CString]) -> String {
    args.first()
        .map(|a| {
            lossy(a)
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .unwrap_or_default()
}

pub fn callbacks(shared: SharedSettings) -> Callbacks<Connection> {
    Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            let settings = shared.get();
            Box::pin(async move { handle_negotiate(cx, settings, actions, opts) })
        })
        .on_connect(|cx, _hostname, socket| Box::pin(async move { handle_connect(cx, socket) }))
        .on_mail(|cx, args| Box::pin(async move { handle_mail(cx, args) }))
        .on_rcpt(|cx, args| Box::pin(async move { handle_rcpt(cx, args) }))
        .on_header(|cx, name, value| Box::pin(async move { handle_header(cx, name, value) }))
        .on_body(|cx, chunk| Box::pin(async move { handle_body(cx, chunk) }))
        .on_eom(|cx| Box::pin(handle_eom(cx)))
        .on_abort(|cx| Box::pin(async move { handle_abort(cx) }))
}

/// The actions this configuration may take: add and delete header fields always, quarantine
/// only if something the judge weighs may ask for it (`Settings::possible_actions`).
fn needed_actions(settings: &Settings) -> Actions {
    let mut actions = Actions::ADD_HEADER | Actions::CHANGE_HEADER;
    if settings.possible_actions().contains(&Action::Quarantine) {
        actions |= Actions::QUARANTINE;
    }
    actions
}

fn handle_negotiate(
    cx: &mut NegotiateContext<Connection>,
    settings: Arc<Settings>,
    mta_actions: Actions,
    mta_opts: ProtoOpts,
) -> Status {
    let needed = needed_actions(&settings);
    if !mta_actions.contains(needed) {
        error!(
            "MTA does not offer the actions needed ({needed:?}, offered {mta_actions:?}); refusing connection"
        );
        return Status::Reject;
    }
    // Header values must arrive exactly as sent (leading space included): the header hash
    // covers them (RFC 6376 §3.4.2 needs the raw value).
    if !mta_opts.contains(ProtoOpts::LEADING_SPACE) {
        error!("MTA does not offer SMFIP_HDR_LEADSPC; refusing connection");
        return Status::Reject;
    }
    cx.requested_actions = needed;
    cx.requested_opts |=
        ProtoOpts::LEADING_SPACE | ProtoOpts::NO_HELO | ProtoOpts::NO_UNKNOWN | ProtoOpts::NO_DATA;
    // Header fields need no answer (they are only recorded): saying so up front saves the MTA a
    // round trip per field. A failure while recording one is answered at end of message.
    // Steps whose answer is always "continue" need none: the MTA sends them without waiting,
    // and a message costs one round trip (end of message) instead of five. Header fields and
    // body chunks are only recorded, connect and MAIL only noted; RCPT is answered only when
    // inbox rules may refuse a recipient there. A failure in an unanswered step is answered
    // at end of message (never a silent accept).
    let mut noreply = ProtoOpts::NOREPLY_CONNECT
        | ProtoOpts::NOREPLY_MAIL
        | ProtoOpts::NOREPLY_HEADER
        | ProtoOpts::NOREPLY_BODY;
    if settings.inbox.is_empty() {
        noreply |= ProtoOpts::NOREPLY_RCPT;
    }
    let noreply = noreply & mta_opts;
    cx.requested_opts |= noreply;
    let skip_negotiated = mta_opts.contains(ProtoOpts::SKIP);
    if skip_negotiated {
        cx.requested_opts |= ProtoOpts::SKIP;
    }
    let macro_list = |names: &str| CString::new(names).expect("no NUL in macro names");
    cx.requested_macros
        .insert(MacroStage::Mail, macro_list("{auth_authen} i"));
    cx.requested_macros
        .insert(MacroStage::Rcpt, macro_list("i"));
    cx.requested_macros.insert(MacroStage::Eom, macro_list("i"));
    cx.data = Some(Connection {
        _open: crate::infra::metrics::global().milter_connection(),
        settings,
        skip_negotiated,
        noreply,
        client: None,
        message: None,
        mode: Mode::Judge,
        sender: String::new(),
        recipients: Vec::new(),
        rule: None,
    });
    Status::Continue
}

fn handle_connect(cx: &mut Context<Connection>, socket: SocketInfo) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        error!("connection state missing at connect");
        return Status::Tempfail;
    };
    if let SocketInfo::Inet(addr) = socket {
        conn.client = Some(addr.ip());
    }
    conn.answer(ProtoOpts::NOREPLY_CONNECT, Status::Continue)
}

impl Connection {
    /// `status`, or no answer when the MTA does not wait for one at this step.
    fn answer(&self, step: ProtoOpts, status: Status) -> Status {
        if self.noreply.contains(step) {
            Status::Noreply
        } else {
            status
        }
    }
}

fn handle_mail(cx: &mut Context<Connection>, args: Vec<CString>) -> Status {
    let login = cx
        .macros
        .get(c"{auth_authen}")
        .filter(|v| !v.is_empty())
        .map(lossy);
    let id = queue_id(&cx.macros);
    let Some(conn) = cx.data.as_mut() else {
        error!("connection state missing at MAIL");
        return Status::Tempfail;
    };
    conn.recipients.clear();
    conn.rule = None;
    conn.sender = envelope_address(&args);
    conn.mode = conn.settings.mode_for(conn.client, login.as_deref());
    if conn.mode == Mode::Pass {
        // Not judged, but its header fields are still read: forged results claiming our
        // authserv-id must go from trusted and authenticated mail too.
        debug!("{id}: trusted or SMTP-authenticated sender; not judged");
    }
    conn.message = Some(match conn.mode {
        Mode::Sign { .. } => MessageSession::to_sign(&conn.settings),
        _ => MessageSession::new(&conn.settings),
    });
    conn.answer(ProtoOpts::NOREPLY_MAIL, Status::Continue)
}

fn handle_rcpt(cx: &mut Context<Connection>, args: Vec<CString>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        error!("connection state missing at RCPT");
        return Status::Tempfail;
    };
    let address = envelope_address(&args);
    if conn.mode == Mode::Judge && !conn.settings.inbox.is_empty() {
        // A milter cannot answer per recipient after DATA: one transaction, one inbox rule.
        match conn.settings.admit_to_transaction(conn.rule, &address) {
            Ok(rule) => conn.rule = Some(rule),
            Err(refusal) => {
                let reply = refusal.reply();
                let enhanced = reply.enhanced.map(|e| e.to_string());
                let _ = cx.reply.set_error_reply(
                    &reply.code.to_string(),
                    enhanced.as_deref(),
                    reply.lines.clone(),
                );
                return Status::Tempfail;
            }
        }
    }
    conn.recipients.push(address);
    conn.answer(ProtoOpts::NOREPLY_RCPT, Status::Continue)
}

fn handle_header(cx: &mut Context<Connection>, name: CString, value: CString) -> Status {
    // The queue id only for a log line: no allocation per field otherwise.
    let id = || queue_id(&cx.macros);
    let Some(conn) = cx.data.as_mut() else {
        // Without connection state the end of message fails too: never a silent accept.
        error!("{}: connection state missing at header", id());
        return Status::Tempfail;
    };
    let Some(message) = conn.message.as_mut() else {
        // The end of message finds no message either and tempfails there.
        error!("{}: header outside a message", id());
        return conn.answer(ProtoOpts::NOREPLY_HEADER, Status::Tempfail);
    };
    // The CStrings are the field's own: kept without a copy (a name that is not UTF-8 is
    // shown lossily and will never match a signed name).
    let name = name
        .into_string()
        .unwrap_or_else(|e| lossy(&e.into_cstring()));
    message.header(name, value.into_bytes());
    conn.answer(ProtoOpts::NOREPLY_HEADER, Status::Continue)
}

fn handle_body(cx: &mut Context<Connection>, chunk: Bytes) -> Status {
    let id = || queue_id(&cx.macros);
    let Some(conn) = cx.data.as_mut() else {
        error!("{}: connection state missing at body", id());
        return Status::Tempfail;
    };
    let Some(message) = conn.message.as_mut() else {
        error!("{}: body outside a message", id());
        return conn.answer(ProtoOpts::NOREPLY_BODY, Status::Tempfail);
    };
    if !(conn.mode != Mode::Pass && message.wants_body()) {
        let status = if conn.skip_negotiated {
            Status::Skip
        } else {
            Status::Continue
        };
        return conn.answer(ProtoOpts::NOREPLY_BODY, status);
    }
    message.body(&chunk);
    conn.answer(ProtoOpts::NOREPLY_BODY, Status::Continue)
}

fn handle_abort(cx: &mut Context<Connection>) -> Status {
    if let Some(conn) = cx.data.as_mut() {
        conn.message = None;
        conn.recipients.clear();
    }
    Status::Continue
}

async fn handle_eom(cx: &mut EomContext<Connection>) -> Status {
    let id = queue_id(&cx.macros);
    match eom(cx, &id).await {
        Ok(status) => status,
        Err(e) => {
            error!("{id}: {e}; temporary failure");
            let _ = cx.reply.set_error_reply(
                "451",
                Some("4.7.1"),
                ["AT-SMS verification failed temporarily"],
            );
            Status::Tempfail
        }
    }
}

/// A refusal as the milter protocol carries it (SMFIR_REPLYCODE).
fn refuse(cx: &mut EomContext<Connection>, reply: &Reply) -> Result<Status, String> {
    let enhanced = reply.enhanced.map(|e| e.to_string());
    cx.reply
        .set_error_reply(
            &reply.code.to_string(),
            enhanced.as_deref(),
            reply.lines.clone(),
        )
        .map_err(|e| e.to_string())?;
    Ok(if reply.is_temporary() {
        Status::Tempfail
    } else {
        Status::Reject
    })
}

async fn eom(cx: &mut EomContext<Connection>, id: &str) -> Result<Status, String> {
    let conn = cx
        .data
        .as_mut()
        .ok_or("connection state missing at end of message")?;
    let mut message = conn
        .message
        .take()
        .ok_or("end of message outside a message")?;
    let settings = conn.settings.clone();
    let mode = std::mem::replace(&mut conn.mode, Mode::Judge);
    let sender = std::mem::take(&mut conn.sender);
    let recipients = std::mem::take(&mut conn.recipients);
    if let Some(reply) = message.refusal() {
        warn!("{id}: {reply}");
        return refuse(cx, &reply);
    }
    match mode {
        Mode::Judge => {}
        Mode::Pass => {
            // RFC 8601 §5: forged results go even from mail that is not judged.
            delete_forged(cx, &message).await?;
            return Ok(Status::Continue);
        }
        Mode::Sign { login } => {
            return sign(
                cx,
                id,
                &settings,
                &mut message,
                login.as_deref(),
                &recipients,
            )
            .await;
        }
    }

    // Keep the MTA informed while identities resolve.
    let verified = {
        let finish = message.finish(&settings, settings.now());
        tokio::pin!(finish);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + PROGRESS_INTERVAL,
            PROGRESS_INTERVAL,
        );
        loop {
            tokio::select! {
                verified = &mut finish => break verified,
                _ = ticker.tick() => {
                    if let Err(e) = cx.actions.progress().await {
                        warn!("{id}: cannot send progress: {e}");
                    }
                }
            }
        }
    };
    let targets: Vec<Target> = recipients
        .iter()
        .map(|r| Target::new(r, &settings))
        .collect();
    let origin = Origin {
        id,
        transport: "milter",
        sender: &sender,
    };
    // One transaction, one answer: the recipients are judged together.
    let judgement = judgement::judge(&settings, &origin, &verified, &targets, Scope::Together)
        .await
        .pop()
        .ok_or("no judgement")?;
    info!("{}", judgement.log_line);
    match &judgement.disposition {
        Disposition::Refuse(refusal) => return refuse(cx, &refusal.reply()),
        Disposition::Discard => {
            judgement::accepted(&settings, &judgement).await;
            return Ok(Status::Discard);
        }
        Disposition::Deliver | Disposition::Junk | Disposition::Quarantine(_) => {}
    }
    delete_forged(cx, &message).await?;
    cx.actions
        .insert_header(
            0,
            crate::format::auth_results::FIELD_NAME,
            judgement.header_value.as_str(),
        )
        .await
        .map_err(|e| format!("cannot add Authentication-Results: {e}"))?;
    if let Disposition::Quarantine(reason) = &judgement.disposition {
        cx.actions
            .quarantine(reason.as_str())
            .await
            .map_err(|e| format!("cannot quarantine: {e}"))?;
    }
    judgement::accepted(&settings, &judgement).await;
    Ok(Status::Continue)
}

/// Outbound: signs the message with the key its From address and the login may use, on top
/// (`AT-SMS-Signature` at index 0). A message no key is for, or that step 10 would fail, passes
/// unsigned (logged); a failure to sign follows `signing.on_error`, never silently unsigned.
async fn sign(
    cx: &mut EomContext<Connection>,
    id: &str,
    settings: &Settings,
    message: &mut MessageSession,
    login: Option<&str>,
    recipients: &[String],
) -> Result<Status, String> {
    use crate::policy::signer::{NotSigned, Outcome};
    delete_forged(cx, message).await?;
    let Some(signer) = &settings.signer else {
        return Ok(Status::Continue);
    };
    let body_hash = message.body_hash();
    match signer.sign(
        message.headers(),
        body_hash,
        login,
        recipients,
        settings.now(),
    ) {
        Outcome::Signed { key, token } => {
            let field = crate::format::envelope::sign::format_field(&key.did, &token, "\n");
            let value = field
                .strip_prefix(crate::format::envelope::FIELD_NAME)
                .and_then(|v| v.strip_prefix(':'))
                .unwrap_or(&field);
            cx.actions
                .insert_header(0, crate::format::envelope::FIELD_NAME, value)
                .await
                .map_err(|e| format!("cannot add AT-SMS-Signature: {e}"))?;
            info!("{id}: signed did={} kid={}", key.did, key.kid);
            Ok(Status::Continue)
        }
        Outcome::Unsigned(NotSigned::NoKey) => {
            debug!("{id}: not signed: {}", NotSigned::NoKey);
            Ok(Status::Continue)
        }
        Outcome::Unsigned(NotSigned::Failed(why)) => {
            error!("{id}: signing failed: {why}; passed on unsigned (signing.on_error)");
            Ok(Status::Continue)
        }
        Outcome::Unsigned(e) => {
            info!("{id}: not signed: {e}");
            Ok(Status::Continue)
        }
        Outcome::Refused { reply, why } => {
            error!("{id}: signing failed: {why}; temporary failure");
            refuse(cx, &reply)
        }
    }
}

/// RFC 8601 §5: removes the fields claiming our authserv-id (and fields hiding one).
async fn delete_forged(
    cx: &mut EomContext<Connection>,
    message: &MessageSession,
) -> Result<(), String> {
    for (name, index) in message.forged_fields() {
        cx.actions
            .change_header(name, index, None::<CString>)
            .await
            .map_err(|e| format!("cannot delete {name} #{index}: {e}"))?;
    }
    Ok(())
}

/// Serves the milter protocol on `listener` until `shutdown` completes.
pub async fn run(
    listener: BoundListener,
    shared: SharedSettings,
    max_connections: usize,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let config = indymilter::Config {
        max_connections,
        // Idle connections are closed after this (libmilter's default is 7210 s); a packet
        // begun has `bounds::PACKET_TIMEOUT` to arrive whole.
        connection_timeout: Duration::from_secs(7210),
        ..Default::default()
    };
    info!("milter listening on {}", listener.describe());
    let callbacks = callbacks(shared);
    match listener {
        BoundListener::Tcp(l) => {
            indymilter::run(
                crate::infra::socket::Patient::new(bounds::Bounded(crate::infra::socket::NoDelay(
                    l,
                ))),
                callbacks,
                config,
                shutdown,
            )
            .await
        }
        BoundListener::Unix(l, _file) => {
            let listener = crate::infra::socket::Patient::new(bounds::Bounded(l));
            indymilter::run(listener, callbacks, config, shutdown).await
        }
    }
}

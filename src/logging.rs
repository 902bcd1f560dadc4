//! Logging: standard error (journald picks it up under systemd) or syslog, facility mail,
//! through the local syslog socket (RFC 3164 datagrams, as glibc's syslog(3) sends them).
//! One line per event; no secrets and no message bodies are ever logged.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogDestination, LogLevel};

/// The local syslog socket. `ATSMS_MILTER_SYSLOG_SOCKET` overrides it (tests stand in for a
/// syslog daemon with it; production has no reason to set it).
fn syslog_socket_path() -> String {
    std::env::var("ATSMS_MILTER_SYSLOG_SOCKET").unwrap_or_else(|_| "/dev/log".to_string())
}

/// LOG_MAIL (RFC 5424 §6.2.1: facility 2).
const FACILITY_MAIL: u8 = 2;

fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

#[derive(Clone)]
struct Syslog {
    socket: Arc<Mutex<Option<UnixDatagram>>>,
    path: String,
}

/// One event's line; sent when the formatter is done with it.
struct SyslogLine {
    syslog: Syslog,
    priority: u8,
    buffer: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let datagram = format!(
            "<{}>atsms-milter[{}]: {text}",
            self.priority,
            std::process::id()
        );
        let mut socket = self.syslog.socket.lock().unwrap_or_else(|e| e.into_inner());
        if socket.is_none() {
            *socket = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.connect(&self.syslog.path).is_ok());
        }
        let sent = socket
            .as_ref()
            .is_some_and(|s| s.send(datagram.as_bytes()).is_ok());
        if !sent {
            // No syslog daemon (or it restarted): say it on standard error rather than lose it.
            *socket = None;
            eprintln!("{text}");
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            syslog: self.clone(),
            priority: FACILITY_MAIL * 8 + severity(&Level::INFO),
            buffer: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        SyslogLine {
            syslog: self.clone(),
            priority: FACILITY_MAIL * 8 + severity(meta.level()),
            buffer: Vec::new(),
        }
    }
}

/// A panic is a bug, never a way to end the process from the network: each connection runs
/// in a task of its own, which a panic ends alone (the runtime catches it). This hook makes
/// it one log line, at error level and through the configured destination, instead of the
/// default text on standard error that syslog set-ups never see.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(
            "internal error (a bug; the connection it served is closed): {}{at}",
            what.escape_default()
        );
    }));
}

/// Installs the logger `config` asks for (once per process).
pub fn init(config: &LogConfig) {
    log_panics();
    let level = match config.level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Trace => Level::TRACE,
    };
    if config.destination == LogDestination::Syslog {
        let syslog = Syslog {
            socket: Arc::new(Mutex::new(None)),
            path: syslog_socket_path(),
        };
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_target(false)
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_writer(syslog)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_target(false)
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_writer(io::stderr)
            .try_init();
    }
}

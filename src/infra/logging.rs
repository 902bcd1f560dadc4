//! Logging: standard error (journald picks it up under systemd) or syslog, facility mail,
//! through the local syslog socket (RFC 3164 datagrams, as glibc's syslog(3) sends them).
//! One line per event; no secrets and no message bodies are ever logged.
//!
//! Standard error is written in batches: a line at `info` or below waits at most
//! [`BATCH_WINDOW`] in memory and goes out with the lines logged beside it in one `write`
//! (at 10,000 messages a second, one system call for fifty lines instead of fifty; rspamd's
//! file logger buffers the same way). A warning or an error is written at once, with every
//! line before it, so the order never changes and nothing that needs an admin waits (a panic
//! is logged at error level, so it writes what waits too). What an abnormal end (SIGKILL,
//! abort, the OOM killer) can lose is the last window of `info` lines; a clean stop (SIGTERM,
//! SIGINT, a returned error) writes them (the guard [`init`] returns).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::infra::config::{LogConfig, LogDestination, LogLevel};

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

/// How long an `info` line may wait to be written with others.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Lines waiting past this size are written by whoever adds one (memory stays bounded when
/// the writer thread falls behind).
const BATCH_LIMIT: usize = 64 * 1024;

/// Standard error, in batches (module comment). Lines wait in `pending`; the writer thread
/// sleeps on `wake` until the first line of a batch arrives, lets [`BATCH_WINDOW`] pass and
/// writes what came.
///
/// Two locks, always taken in this order: `pending` (the lines waiting) and `out` (standard
/// error and the batch being written). A batch is swapped out of `pending` only while `out`
/// is held, so batches leave in the order their lines were logged; `pending` is let go before
/// the `write`, so a line logged meanwhile never waits for a system call (only a warning,
/// which must go out behind the batch being written, does).
#[derive(Clone)]
struct Batched {
    shared: Arc<BatchShared>,
}

struct BatchShared {
    pending: Mutex<Pending>,
    out: Mutex<Out>,
    wake: Condvar,
}

struct Pending {
    lines: Vec<u8>,
    closed: bool,
}

struct Out {
    /// Standard error (a buffer in the tests).
    sink: Box<dyn Write + Send>,
    /// The batch being written; its buffer is swapped back and forth with `Pending::lines`.
    batch: Vec<u8>,
}

impl BatchShared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the waiting lines, letting `pending` go before the system call. A write error
    /// (standard error closed, or a full disk under it) drops the batch, as unbuffered writes
    /// would have dropped each of its lines.
    fn write_out(&self, mut pending: MutexGuard<'_, Pending>) {
        if pending.lines.is_empty() {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Out { sink, batch } = &mut *out;
        std::mem::swap(&mut pending.lines, batch);
        drop(pending);
        let _ = sink.write_all(batch);
        batch.clear();
        batch.shrink_to(BATCH_LIMIT);
    }
}

impl Batched {
    fn start(sink: Box<dyn Write + Send>) -> (Batched, LogGuard) {
        let shared = Arc::new(BatchShared {
            pending: Mutex::new(Pending {
                lines: Vec::new(),
                closed: false,
            }),
            out: Mutex::new(Out {
                sink,
                batch: Vec::new(),
            }),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("atsms-log".to_string())
            .spawn(move || {
                loop {
                    let mut pending = writer.lock();
                    while pending.lines.is_empty() && !pending.closed {
                        pending = writer.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
                    }
                    if pending.closed {
                        return writer.write_out(pending);
                    }
                    drop(pending);
                    std::thread::sleep(BATCH_WINDOW);
                    writer.write_out(writer.lock());
                }
            });
        match thread {
            Ok(thread) => (
                Batched {
                    shared: Arc::clone(&shared),
                },
                LogGuard(Some((shared, thread))),
            ),
            // No thread to write batches: every line is written at once instead.
            Err(_) => {
                shared.lock().closed = true;
                (Batched { shared }, LogGuard(None))
            }
        }
    }
}

/// One event's line for [`Batched`]. The formatter hands a whole line to one `write_all`.
struct BatchedLine {
    shared: Arc<BatchShared>,
    at_once: bool,
}

impl Write for BatchedLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.lock();
        let first = pending.lines.is_empty();
        pending.lines.extend_from_slice(bytes);
        if self.at_once || pending.closed || pending.lines.len() >= BATCH_LIMIT {
            self.shared.write_out(pending);
        } else if first {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = BatchedLine;

    fn make_writer(&'a self) -> BatchedLine {
        BatchedLine {
            shared: Arc::clone(&self.shared),
            at_once: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> BatchedLine {
        BatchedLine {
            shared: Arc::clone(&self.shared),
            at_once: *meta.level() <= Level::WARN,
        }
    }
}

/// Held for as long as the process logs: dropping it writes the lines still waiting and
/// stops the writer thread, so a clean stop loses no line.
#[must_use = "dropping the guard stops batching; keep it until the process ends"]
pub struct LogGuard(Option<(Arc<BatchShared>, std::thread::JoinHandle<()>)>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((shared, thread)) = self.0.take() {
            shared.lock().closed = true;
            shared.wake.notify_one();
            let _ = thread.join();
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

/// A name a client chose (a queue id, an Exim request's field), fit for one log line: as it
/// is when every character is printable ASCII, else escaped (`\u{1b}`, `\r`, …), so no
/// client can forge a line or drive the terminal of whoever reads the log.
pub fn escaped(text: &str) -> String {
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        text.to_string()
    } else {
        text.escape_default().to_string()
    }
}

/// A warning that may repeat without bound (a connection past a limit, a deprecated name
/// called): said at most once per interval, the next time with how many were held back.
pub struct Throttled {
    interval: Duration,
    /// When it was last said, and how many times it was held back since.
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttled {
    pub const fn new(interval: Duration) -> Throttled {
        Throttled {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since it was last said)` when it may be said now.
    pub fn check(&self) -> Option<u64> {
        self.check_at(std::time::Instant::now())
    }

    fn check_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.0 {
            Some(said) if now.saturating_duration_since(said) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// `warn!` at most once a minute for this call site, with the count held back meanwhile.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static SAID: $crate::infra::logging::Throttled =
            $crate::infra::logging::Throttled::new(::std::time::Duration::from_secs(60));
        match SAID.check() {
            Some(0) => ::tracing::warn!($($arg)+),
            Some(held) => ::tracing::warn!(
                "{} ({held} more like it since it was last said)",
                format_args!($($arg)+)
            ),
            None => {}
        }
    }};
}

/// Installs the logger `config` asks for (once per process); keep the guard until the end.
pub fn init(config: &LogConfig) -> LogGuard {
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
        LogGuard(None)
    } else {
        let (batched, guard) = Batched::start(Box::new(io::stderr()));
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_target(false)
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_writer(batched)
            .try_init();
        guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_said_once_an_interval_with_a_count() {
        let t = Throttled::new(Duration::from_secs(60));
        let start = std::time::Instant::now();
        assert_eq!(t.check_at(start), Some(0));
        for s in 1..=59 {
            assert_eq!(t.check_at(start + Duration::from_secs(s)), None);
        }
        assert_eq!(t.check_at(start + Duration::from_secs(60)), Some(59));
        assert_eq!(t.check_at(start + Duration::from_secs(61)), None);
    }

    #[test]
    fn names_from_clients_are_escaped() {
        assert_eq!(escaped("1pXyZa-000AbC-De"), "1pXyZa-000AbC-De");
        assert_eq!(escaped("Q1\r\nforged: line"), "Q1\\r\\nforged: line");
        assert_eq!(escaped("\u{1b}[2J"), "\\u{1b}[2J");
    }

    /// A shared buffer standing in for standard error.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(batched: &Batched, at_once: bool, text: &str) {
        let mut writer = BatchedLine {
            shared: Arc::clone(&batched.shared),
            at_once,
        };
        writer.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_warning_writes_every_line_before_it_at_once_in_order() {
        let sink = Sink::default();
        let (batched, _guard) = Batched::start(Box::new(sink.clone()));
        line(&batched, false, "one\n");
        line(&batched, false, "two\n");
        line(&batched, true, "warning\n");
        assert_eq!(sink.text(), "one\ntwo\nwarning\n");
    }

    #[test]
    fn info_lines_arrive_within_the_window_and_all_at_a_clean_stop() {
        let sink = Sink::default();
        let (batched, guard) = Batched::start(Box::new(sink.clone()));
        line(&batched, false, "first\n");
        // Written by the thread, with nothing else logged: 5 ms, a second allowed for a busy
        // machine (a window of seconds, or none at all, fails here).
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while sink.text().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "not written within a second"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "first\n");
        line(&batched, false, "second\n");
        drop(guard);
        assert_eq!(sink.text(), "first\nsecond\n");
        // After the stop, lines are written at once.
        line(&batched, false, "late\n");
        assert_eq!(sink.text(), "first\nsecond\nlate\n");
    }

    #[test]
    fn lines_from_many_threads_stay_whole_and_bounded() {
        let sink = Sink::default();
        let (batched, guard) = Batched::start(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let batched = batched.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        line(&batched, i % 1000 == 999, &format!("thread {t} line {i}\n"));
                        assert!(batched.shared.lock().lines.len() < BATCH_LIMIT + 64);
                        let out = batched.shared.out.lock().unwrap();
                        assert!(out.batch.capacity() <= BATCH_LIMIT, "the buffer given back");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..5000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "each thread's lines whole and in its order");
        }
        assert_eq!(text.lines().count(), 20_000);
    }
}

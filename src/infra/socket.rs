//! Listening sockets in Postfix's notation: `inet:HOST:PORT`, `inet:[IPv6]:PORT`,
//! `inet6:[IPv6]:PORT`, `unix:/path`, and libmilter's `inet:PORT@HOST` too.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use crate::infra::config::SocketSpec;

/// A bound listener. A unix socket file is removed again when this is dropped.
pub enum BoundListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, UnixSocketFile),
}

/// An accepted connection on either kind of listener.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// The peer's address (none on a unix socket).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok().map(|a| a.ip()),
            Stream::Unix(_) => None,
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How long to wait after a failed `accept()` (EMFILE, ENFILE, ENOBUFS) before trying again.
pub const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Accepts connections on `listener` until `shutdown`, handing each to `handle` on a task of
/// its own. A failed `accept()` (out of file descriptors, say) is logged and retried after a
/// pause: it never stops the service, and it never spins.
pub async fn serve<F, Fut>(
    listener: &BoundListener,
    what: &str,
    shutdown: impl std::future::Future,
    handle: F,
) where
    F: Fn(Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(stream) => {
                tokio::spawn(handle(stream));
            }
            Err(e) => {
                tracing::warn!("{what}: accept failed: {e}; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Removes the socket file on drop.
pub struct UnixSocketFile(PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl BoundListener {
    pub fn describe(&self) -> String {
        match self {
            BoundListener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("inet:{a}"))
                .unwrap_or_default(),
            BoundListener::Unix(_, file) => format!("unix:{}", file.0.display()),
        }
    }

    /// The next connection (TCP ones with TCP_NODELAY: our replies are small and awaited).
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            BoundListener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Stream::Tcp(stream))
            }
            BoundListener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            BoundListener::Tcp(l) => l.local_addr().ok(),
            BoundListener::Unix(..) => None,
        }
    }
}

/// Binds `spec`. A stale unix socket (one nobody listens on) is removed first; a path that
/// is not a socket is never removed. `mode` and `group` apply to unix sockets.
pub async fn bind(spec: &SocketSpec, mode: u32, group: Option<&str>) -> io::Result<BoundListener> {
    match spec {
        SocketSpec::Inet { host, port } => {
            let listener = tokio::net::TcpListener::bind((host.as_str(), *port)).await?;
            Ok(BoundListener::Tcp(listener))
        }
        SocketSpec::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path)?;
            let file = UnixSocketFile(path.clone());
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            if let Some(group) = group {
                let gid = group_id(group)?;
                std::os::unix::fs::chown(path, None, Some(gid))?;
            }
            Ok(BoundListener::Unix(listener, file))
        }
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The numeric id of a group name (or a number).
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad group name"))?;
    // SAFETY: getgrnam returns null or a pointer to static storage; read gr_gid at once.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group {group}"),
        ));
    }
    // SAFETY: entry is non-null and points to a valid group struct.
    Ok(unsafe { (*entry).gr_gid })
}

// The milter's listeners (indymilter accepts connections itself): the same care as
// `serve` — an accept that fails does not stop the listener — and TCP tuned for milter
// replies.

/// A listener that outlasts a failed `accept()`: indymilter stops serving on the first error,
/// and running out of file descriptors (EMFILE) must not stop the daemon. The error is logged
/// and accepting resumes after `socket::ACCEPT_BACKOFF`.
pub struct Patient<L> {
    inner: L,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<L> Patient<L> {
    pub fn new(inner: L) -> Patient<L> {
        Patient { inner, pause: None }
    }
}

impl<L: indymilter::Listener> indymilter::Listener for Patient<L> {
    type Io = L::Io;

    fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<Self::Io>> {
        use std::task::Poll;
        loop {
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            match self.inner.poll_accept(cx) {
                Poll::Ready(Err(e)) => {
                    tracing::warn!("milter: accept failed: {e}; retrying");
                    self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                other => return other,
            }
        }
    }
}

/// A TCP listener whose connections neither delay our replies nor our ACKs.
///
/// - TCP_NODELAY: a milter reply is one small packet the MTA waits for; Nagle would hold it
///   for the ACK of the previous one.
/// - TCP_QUICKACK after every read: Postfix writes a body chunk larger than its stream buffer
///   in two parts, and its own Nagle holds the second part until we ACK the first. A delayed
///   ACK (40 ms on Linux) would stall every message (OpenDKIM stalls there).
pub struct NoDelay(pub tokio::net::TcpListener);

impl indymilter::Listener for NoDelay {
    type Io = QuickAck;

    fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<Self::Io>> {
        self.0.poll_accept(cx).map(|r| {
            r.map(|(stream, _)| {
                let _ = stream.set_nodelay(true);
                QuickAck(stream)
            })
        })
    }
}

/// A TCP stream that re-arms TCP_QUICKACK after each read (Linux clears it on its own).
pub struct QuickAck(tokio::net::TcpStream);

fn quickack(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if result.is_ready() {
            quickack(&self.0);
        }
        result
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notations() {
        let inet = |h: &str, p| SocketSpec::Inet {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            SocketSpec::parse("inet:127.0.0.1:8898").unwrap(),
            inet("127.0.0.1", 8898)
        );
        assert_eq!(
            SocketSpec::parse("inet:8898@127.0.0.1").unwrap(),
            inet("127.0.0.1", 8898)
        );
        assert_eq!(
            SocketSpec::parse("inet6:[::1]:8898").unwrap(),
            inet("::1", 8898)
        );
        assert_eq!(SocketSpec::parse("inet:[::1]:25").unwrap(), inet("::1", 25));
        assert_eq!(
            SocketSpec::parse("inet:localhost:25").unwrap(),
            inet("localhost", 25)
        );
        assert_eq!(
            SocketSpec::parse("unix:/run/x.sock").unwrap(),
            SocketSpec::Unix("/run/x.sock".into())
        );
        for bad in [
            "tcp:1",
            "inet:host",
            "inet::25",
            "unix:relative",
            "inet:h:99999",
        ] {
            assert!(SocketSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn stale_unix_socket_is_replaced_and_removed_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a stale socket is left behind");
        let spec = SocketSpec::Unix(path.clone());
        let bound = bind(&spec, 0o660, None).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o660
        );
        assert!(
            bind(&spec, 0o660, None).await.is_err(),
            "a live socket is not stolen"
        );
        drop(bound);
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert!(
            bind(&spec, 0o660, None).await.is_err(),
            "a regular file is not removed"
        );
    }

    #[tokio::test]
    async fn a_panic_in_one_connection_leaves_the_others_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let spec = SocketSpec::Inet {
            host: "127.0.0.1".into(),
            port: 0,
        };
        let listener = bind(&spec, 0o660, None).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            serve(&listener, "test", stopped, |mut stream| async move {
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).await.is_ok() {
                    assert_ne!(byte[0], b'!', "a bug reached from the network");
                    let _ = stream.write_all(b"ok").await;
                }
            })
            .await
        });
        let talk = |what: &'static [u8]| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(what).await.unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            out
        };
        let (panicked, other) = tokio::join!(talk(b"!"), talk(b"a"));
        assert_eq!(panicked, b"", "the panicking connection is closed");
        assert_eq!(other, b"ok");
        assert_eq!(talk(b"b").await, b"ok", "and the next one is served");
        stop.send(()).unwrap();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_regular_file_is_not_taken_for_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let spec = SocketSpec::Unix(path.clone());
        std::fs::write(&path, b"data").unwrap();
        assert!(
            bind(&spec, 0o660, None).await.is_err(),
            "a regular file is not removed"
        );
    }
}

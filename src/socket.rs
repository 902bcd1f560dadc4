//! Listening sockets in Postfix's notation: `inet:HOST:PORT`, `inet:[IPv6]:PORT`,
//! `inet6:[IPv6]:PORT`, `unix:/path`, and libmilter's `inet:PORT@HOST` too.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl SocketSpec {
    pub fn parse(spec: &str) -> Result<SocketSpec, String> {
        let bad = || format!("\"{spec}\" is not inet:HOST:PORT, inet6:[HOST]:PORT or unix:/path");
        if let Some(path) = spec
            .strip_prefix("unix:")
            .or_else(|| spec.strip_prefix("local:"))
        {
            if !path.starts_with('/') {
                return Err(format!("\"{spec}\": the socket path must be absolute"));
            }
            return Ok(SocketSpec::Unix(PathBuf::from(path)));
        }
        let rest = spec
            .strip_prefix("inet:")
            .or_else(|| spec.strip_prefix("inet6:"))
            .ok_or_else(bad)?;
        let (host, port) = if let Some((port, host)) = rest.split_once('@') {
            (host, port)
        } else if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, port) = bracketed.split_once("]:").ok_or_else(bad)?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(bad)?
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(SocketSpec::Inet {
            host: host.to_string(),
            port,
        })
    }
}

/// A bound listener. A unix socket file is removed again when this is dropped.
pub enum BoundListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, UnixSocketFile),
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
}

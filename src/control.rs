//! The control socket: `atsms-milter cache stats|purge DID` talks to a running daemon.
//! One request line per connection, one answer: `stats` → JSON; `purge DID` → a line.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use crate::identity::IdentityResolver;

/// Serves the control socket at `path` (mode 0600: only the daemon's user and root may
/// purge the cache) until the task is dropped.
pub async fn serve(path: PathBuf, identity: Arc<IdentityResolver>) -> io::Result<()> {
    let spec = crate::socket::SocketSpec::Unix(path.clone());
    let listener = crate::socket::bind(&spec, 0o600, None).await?;
    let crate::socket::BoundListener::Unix(listener, _file) = listener else {
        return Err(io::Error::other("control socket must be a unix socket"));
    };
    info!("control socket on {}", path.display());
    loop {
        let (stream, _) = listener.accept().await?;
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, identity).await {
                warn!("control socket: {e}");
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, identity: Arc<IdentityResolver>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(4096)).read_line(&mut line).await?;
    let mut words = line.split_whitespace();
    let reply = match (words.next(), words.next(), words.next()) {
        (Some("stats"), None, _) => {
            serde_json::to_string_pretty(&identity.stats().await).unwrap_or_default() + "\n"
        }
        (Some("purge"), Some(did), None) => {
            if identity.purge(did).await {
                info!("cache purged for {did} (control socket)");
                format!("purged {did}\n")
            } else {
                format!("not cached: {did}\n")
            }
        }
        _ => "error: expected `stats` or `purge DID`\n".to_string(),
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

/// The client side, for the `cache` command.
pub fn request(path: &Path, request: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

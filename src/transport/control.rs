//! The control socket: `atsms-milter cache stats|purge DID` talks to a running daemon.
//! One request line per connection, one answer: `stats` → JSON; `purge DID` → a line.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use crate::atproto::identity::IdentityResolver;

/// Binds the control socket at `path` (mode 0600: only the daemon's user and root may purge
/// the cache), making its directory when it is missing.
pub async fn bind(path: &Path) -> io::Result<crate::infra::socket::BoundListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
    }
    let spec = crate::infra::socket::SocketSpec::Unix(path.to_path_buf());
    crate::infra::socket::bind(&spec, 0o600, None).await
}

/// Serves the control socket until the task is dropped.
pub async fn serve(listener: crate::infra::socket::BoundListener, identity: Arc<IdentityResolver>) {
    info!("control socket on {}", listener.describe());
    crate::infra::socket::serve(
        &listener,
        "control socket",
        std::future::pending::<()>(),
        |stream| {
            let identity = identity.clone();
            async move {
                if let Err(e) = answer(stream, identity).await {
                    warn!("control socket: {e}");
                }
            }
        },
    )
    .await;
}

async fn answer(
    stream: crate::infra::socket::Stream,
    identity: Arc<IdentityResolver>,
) -> io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
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

//! HTTP/1.1 listeners — the signing service and the metrics — served as every other listener
//! is (`socket::serve`: one accept loop that outlasts EMFILE, a task per connection), with
//! axum routes on hyper and the same bounds: connections held at once (beyond, new ones are
//! closed at once) and the time a client may take to send its request's head (slowloris).
//! TLS belongs to a reverse proxy.

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::infra::socket::{BoundListener, Stream};

/// The address of the connection a request came on (none on a unix socket), for handlers
/// that key limits on the client (an `axum::Extension`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections held open at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's header section.
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`; `what` names the listener in the log.
pub async fn serve(
    listener: &BoundListener,
    what: &'static str,
    app: axum::Router,
    bounds: Bounds,
    shutdown: impl std::future::Future,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    crate::infra::socket::serve(listener, what, shutdown, |stream: Stream| {
        let peer = Peer(stream.peer_ip());
        let app = app.clone().layer(axum::Extension(peer));
        let permit = connections.clone().try_acquire_owned();
        async move {
            let Ok(_permit) = permit else {
                crate::warn_throttled!(
                    "{what}: more than {} connections; closing one",
                    bounds.max_connections
                );
                return;
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                // The HTTPS inbox's push sockets (WebSocket): an upgraded connection leaves
                // this bound for the inbox's own (`transport::xrpc::push`).
                .with_upgrades();
            if let Err(e) = connection.await {
                debug!("{what}: connection ended: {e}");
            }
        }
    })
    .await;
}

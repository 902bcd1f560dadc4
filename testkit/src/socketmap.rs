//! The socketmap server in-process, and a raw netstring client (as Postfix's dict_sockmap
//! speaks it).

use std::sync::Arc;
use std::time::Duration;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::infra::config::{Config, SocketSpec};
use atsms_milter::policy::judge::Settings;
use atsms_milter::verification::verify::Verifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RunningSocketmap {
    pub addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningSocketmap {
    /// Serves the maps with `config`'s resolver, cache, inbox and socketmap sections.
    pub async fn start(config: &Config) -> RunningSocketmap {
        let identity = Arc::new(IdentityResolver::new(&config.resolver, &config.cache).unwrap());
        let settings =
            Settings::from_config(Verifier::new(identity, config.resolver.timeout()), config);
        let shared =
            atsms_milter::infra::live::Live::new(atsms_milter::daemon::routing_tables(&settings));
        let spec: SocketSpec = "inet:127.0.0.1:0".parse().unwrap();
        let listener = atsms_milter::infra::socket::bind(&spec, 0o660, None)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(atsms_milter::transport::socketmap::run(
            listener,
            shared,
            config.socketmap.max_connections.get(),
            async move {
                let _ = rx.await;
            },
        ));
        RunningSocketmap {
            addr,
            shutdown: Some(tx),
        }
    }

    pub async fn client(&self) -> SocketmapClient {
        SocketmapClient::connect(self.addr).await
    }
}

impl Drop for RunningSocketmap {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct SocketmapClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub fn netstring(payload: &str) -> Vec<u8> {
    format!("{}:{payload},", payload.len()).into_bytes()
}

impl SocketmapClient {
    /// A client of the socketmap server at `addr` (the daemon's, say).
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> SocketmapClient {
        SocketmapClient {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next reply's payload; none when the server closed the connection.
    pub async fn reply(&mut self) -> Option<String> {
        loop {
            if let Some(colon) = self.buf.iter().position(|b| *b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buf.len() > colon + len + 1 {
                    assert_eq!(self.buf[colon + 1 + len], b',');
                    let payload =
                        String::from_utf8(self.buf[colon + 1..colon + 1 + len].to_vec()).unwrap();
                    self.buf.drain(..colon + len + 2);
                    return Some(payload);
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("reply timed out")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One lookup: `map key` → the reply.
    pub async fn lookup(&mut self, map: &str, key: &str) -> String {
        self.send(&netstring(&format!("{map} {key}"))).await;
        self.reply().await.expect("a reply")
    }
}

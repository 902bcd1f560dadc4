//! LMTP in-process on a loopback port with Maildirs under a temporary directory, and a raw
//! client that writes exactly the bytes a test gives it (pipelining included).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::infra::config::{
    CacheConfig, InboxConfig, LmtpConfig, PolicyConfig, ResolverConfig,
};
use atsms_milter::infra::socket::{self, SocketSpec};
use atsms_milter::policy::judge::Settings;
use atsms_milter::transport::lmtp::{self, LmtpService};
use atsms_milter::verification::verify::Verifier;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct RunningLmtp {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningLmtp {
    /// `configure` adjusts the [lmtp] section (its maildir template points into `dir`).
    pub async fn start(
        resolver: ResolverConfig,
        policy: PolicyConfig,
        now: i64,
        configure: impl FnOnce(&mut LmtpConfig, &Path),
    ) -> RunningLmtp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LmtpConfig {
            maildir: format!("{}/%d/%n/Maildir", dir.path().display()),
            ..Default::default()
        };
        configure(&mut config, dir.path());
        let identity = Arc::new(IdentityResolver::new(&resolver, &CacheConfig::default()).unwrap());
        let mut settings = Settings::new(Verifier::new(identity, resolver.timeout()), policy);
        settings.fixed_now = Some(now);
        if settings.policy.replay {
            settings.replay = Some(Arc::new(atsms_milter::policy::replay::ReplaySet::new(
                10_000, None,
            )));
        }
        RunningLmtp::serve(settings, &config, InboxConfig::default(), dir).await
    }

    /// Device copies (`inbox.store`) go below the server's directory, whatever `inbox` says.
    async fn serve(
        settings: Settings,
        config: &LmtpConfig,
        mut inbox: InboxConfig,
        dir: tempfile::TempDir,
    ) -> RunningLmtp {
        inbox.store = dir.path().join("inbox");
        let shared = atsms_milter::infra::live::Live::new(Arc::new(settings));
        let service =
            Arc::new(LmtpService::new(shared, config, &inbox, "lmtp.test".into(), true).unwrap());
        let listener = socket::bind(&SocketSpec::parse("inet:127.0.0.1:0").unwrap(), 0o660, None)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(lmtp::run(listener, service, async move {
            let _ = rx.await;
        }));
        RunningLmtp {
            addr,
            dir,
            shutdown: Some(tx),
        }
    }

    /// An LMTP server with a whole configuration (`Settings::from_config`: inbox rules,
    /// limits, …); its `[lmtp]` maildir template points into the server's directory.
    pub async fn start_with_config(
        config: &atsms_milter::infra::config::Config,
        now: i64,
    ) -> RunningLmtp {
        let dir = tempfile::tempdir().unwrap();
        let mut lmtp = config.lmtp.clone().unwrap_or_default();
        lmtp.maildir = format!("{}/%d/%n/Maildir", dir.path().display());
        let identity = Arc::new(IdentityResolver::new(&config.resolver, &config.cache).unwrap());
        let mut settings =
            Settings::from_config(Verifier::new(identity, config.resolver.timeout()), config);
        settings.fixed_now = Some(now);
        if settings.policy.replay {
            settings.replay = Some(Arc::new(atsms_milter::policy::replay::ReplaySet::new(
                10_000, None,
            )));
        }
        RunningLmtp::serve(settings, &lmtp, config.inbox.clone(), dir).await
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir
            .path()
            .join("mx.example.net")
            .join(user)
            .join("Maildir")
    }

    /// Files in `folder/new`, oldest name first.
    pub fn new_files(folder: &Path) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(folder.join("new"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        // In delivery order: by the time and the counter in the unique name
        // (`<secs>.M<usec>P<pid>Q<n>.<host>`), not by its text (`M99` sorts after `M100`).
        names.sort_by_key(|p| delivery_order(&p.file_name().unwrap().to_string_lossy()));
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    pub async fn client(&self) -> LmtpClient {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let mut client = LmtpClient {
            stream: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        client
    }
}

impl Drop for RunningLmtp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct LmtpClient {
    pub stream: BufReader<TcpStream>,
}

impl LmtpClient {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One reply, multi-line replies joined with `\n`.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read_line(&mut line))
                .await
                .expect("reply timed out")
                .unwrap();
            assert!(n > 0, "connection closed; replies so far: {lines:?}");
            let line = line.trim_end().to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return lines.join("\n");
            }
        }
    }

    pub async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.reply().await);
        }
        out
    }

    /// True once the server has closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_line(&mut line)).await,
            Ok(Ok(0))
        )
    }
}

/// Dot-stuffs a message for DATA (RFC 5321 §4.5.2) and appends the terminator.
pub fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The order in which Maildir files were delivered, from their unique names: ours
/// (`<secs>.M<usec>P<pid>Q<n>.<host>`), Dovecot's (`<secs>.M<usec>P<pid>.<host>`) and
/// Postfix's (`<secs>.V<dev>I<inode>M<usec>.<host>`) — by the time and our counter, not by
/// the text (`M99` sorts after `M100`).
pub fn delivery_order(name: &str) -> (u64, u64, u64, String) {
    let number = |text: &str| -> u64 {
        text.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    let secs = number(name);
    let unique = name.split_once('.').map_or("", |(_, rest)| rest);
    let usec = unique.split_once('M').map_or(0, |(_, rest)| number(rest));
    let n = unique.split_once('Q').map_or(0, |(_, rest)| number(rest));
    (secs, usec, n, name.to_string())
}

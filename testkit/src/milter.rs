//! Runs the milter in-process on a loopback port, and feeds it messages the way Postfix does.

use std::sync::Arc;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::infra::config::{CacheConfig, PolicyConfig, ResolverConfig};
use atsms_milter::infra::socket::{self, SocketSpec};
use atsms_milter::policy::judge::Settings;
use atsms_milter::transport::milter;
use atsms_milter::verification::verify::Verifier;

pub struct RunningMilter {
    pub addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningMilter {
    /// A milter judging as of `now` (the vectors' fixed time).
    pub async fn start(resolver: ResolverConfig, policy: PolicyConfig, now: i64) -> RunningMilter {
        RunningMilter::start_with_cache(resolver, policy, now, CacheConfig::default()).await
    }

    /// A milter with a whole configuration (`Settings::from_config`), judging as of `now`.
    pub async fn start_with_config(
        config: &atsms_milter::infra::config::Config,
        now: i64,
    ) -> RunningMilter {
        let identity = Arc::new(IdentityResolver::new(&config.resolver, &config.cache).unwrap());
        let mut settings =
            Settings::from_config(Verifier::new(identity, config.resolver.timeout()), config);
        settings.fixed_now = Some(now);
        settings.signer = atsms_milter::policy::signer::Signer::load(&config.signing)
            .unwrap()
            .map(Arc::new);
        RunningMilter::serve(settings).await
    }

    pub async fn start_with_cache(
        resolver: ResolverConfig,
        policy: PolicyConfig,
        now: i64,
        cache: CacheConfig,
    ) -> RunningMilter {
        let identity = Arc::new(IdentityResolver::new(&resolver, &cache).unwrap());
        let mut settings = Settings::new(Verifier::new(identity, resolver.timeout()), policy);
        settings.fixed_now = Some(now);
        if settings.policy.replay {
            settings.replay = Some(Arc::new(atsms_milter::policy::replay::ReplaySet::new(
                10_000, None,
            )));
            settings.replay_in_milter = true;
        }
        RunningMilter::serve(settings).await
    }

    async fn serve(settings: Settings) -> RunningMilter {
        let shared = atsms_milter::infra::live::Live::new(Arc::new(settings));
        let spec = SocketSpec::parse("inet:127.0.0.1:0").unwrap();
        let listener = socket::bind(&spec, 0o660, None).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(milter::run(listener, shared, 100, async move {
            let _ = rx.await;
        }));
        RunningMilter {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A raw message split as a milter receives it: fields (name, value after the colon with
/// folds as bare LF, as Postfix sends them) and the body with CRLF line ends.
pub fn split_message(raw: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().unwrap();
            last.1.push('\n');
            last.1.push_str(line);
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_string(), value.to_string()));
        }
    }
    (fields, body.replace('\n', "\r\n").into_bytes())
}

/// The value of the first field the milter inserted at the end of a message.
pub fn inserted_field(actions: &[indymilter_test::EomAction]) -> String {
    actions
        .iter()
        .find_map(|a| match a {
            indymilter_test::EomAction::InsertHeader { value, .. } => {
                Some(value.to_str().unwrap().to_string())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no field inserted: {actions:?}"))
}

/// A milter client connected as an MTA would, for a client at 192.0.2.1.
pub async fn open_client(addr: impl tokio::net::ToSocketAddrs) -> indymilter_test::TestConnection {
    let mut conn = indymilter_test::TestConnection::open(addr).await.unwrap();
    conn.connect(
        "client.example",
        std::net::SocketAddr::from(([192, 0, 2, 1], 4000)),
    )
    .await
    .unwrap();
    conn
}

/// One message (MAIL, RCPT, its fields and body, end of message) on `conn`.
pub async fn send(
    conn: &mut indymilter_test::TestConnection,
    message: &[u8],
) -> (Vec<indymilter_test::EomAction>, indymilter_test::Status) {
    conn.mail(["<a@b.example>"]).await.unwrap();
    conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
    let (fields, body) = split_message(message);
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    conn.body(body).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status)
}

/// One message from `client` (and the SASL `login`, none when empty), as Postfix sends it.
pub async fn send_from(
    addr: std::net::SocketAddr,
    client: &str,
    login: &str,
    raw: &[u8],
) -> (Vec<indymilter_test::EomAction>, indymilter_test::Status) {
    let mut conn = indymilter_test::TestConnection::configure()
        .open_tcp(addr)
        .await
        .unwrap();
    let client: std::net::SocketAddr = format!("{client}:40000").parse().unwrap();
    // The milter asks the MTA not to wait for an answer to connect (SMFIP_NR_CONN).
    assert_eq!(
        conn.connect("client.example", client).await.unwrap(),
        indymilter_test::Status::Noreply
    );
    conn.macros(
        indymilter_test::MacroStage::Mail,
        [("i", "4SIGN"), ("{auth_authen}", login)],
    )
    .await
    .unwrap();
    conn.mail(["<sender@signing.test>"]).await.unwrap();
    conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
    let (fields, body) = split_message(raw);
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    conn.body(body).await.unwrap();
    conn.macros(indymilter_test::MacroStage::Eom, [("i", "4SIGN")])
        .await
        .unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    conn.close().await.unwrap();
    (actions.actions, status)
}

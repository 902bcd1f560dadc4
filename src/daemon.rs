//! `atsms-milter serve`: builds the shared identity cache and settings, binds the listeners
//! and runs until SIGTERM or SIGINT.

use std::sync::Arc;

use tracing::info;

use crate::atproto::identity::IdentityResolver;
use crate::infra::config::{Config, FileMode, SocketSpec};
use crate::infra::socket::{self, BoundListener};
use crate::policy::judge::Settings;
use crate::transport::lmtp::{self, LmtpService};
use crate::transport::milter;
use crate::verification::verify::Verifier;

/// Completes on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    // The handlers are installed now, not when the future is first polled: a SIGTERM that
    // arrives during start-up must shut down cleanly too.
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            // Without signal handlers the daemon can still be stopped by SIGKILL; run on.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
        }
    }
}

/// Everything a running daemon judges with, from its configuration.
pub fn build_settings(config: &Config) -> Result<Arc<Settings>, String> {
    build_settings_reusing(config, None)
}

/// The replay set of a daemon: in memory, shared through Redis when configured.
fn new_replay_set(
    config: &Config,
    shared: Option<Arc<crate::infra::store::SharedStore>>,
) -> Arc<crate::policy::replay::ReplaySet> {
    Arc::new(crate::policy::replay::ReplaySet::new(
        config.cache.max_entries.max(100_000) * 10,
        shared,
    ))
}

/// As `build_settings`; on reload, the identity cache and replay set of `previous` are kept
/// when the sections they come from did not change (a reload must not empty the cache).
fn build_settings_reusing(
    config: &Config,
    previous: Option<(&Config, &Settings)>,
) -> Result<Arc<Settings>, String> {
    let (verifier, replay) = match previous {
        Some((old, settings))
            if old.resolver == config.resolver
                && old.cache == config.cache
                && old.store == config.store =>
        {
            (settings.verifier.clone(), settings.replay.clone())
        }
        _ => {
            let shared = match &config.store.redis {
                Some(url) => {
                    let key_file = config
                        .store
                        .key_file
                        .as_deref()
                        .ok_or("store.redis needs store.key_file")?;
                    Some(Arc::new(crate::infra::store::SharedStore::new(
                        url, key_file,
                    )?))
                }
                None => None,
            };
            let identity = IdentityResolver::new(&config.resolver, &config.cache)?
                .with_shared_store(shared.clone());
            let verifier = Verifier::new(Arc::new(identity), config.resolver.timeout());
            (verifier, Some(new_replay_set(config, shared)))
        }
    };
    let mut settings = Settings::from_config(verifier, config);
    if let Some((_, previous)) = previous {
        settings.router = settings.router.keeping_pins_of(&previous.router);
    }
    settings.signer = crate::policy::signer::Signer::load(&config.signing)?.map(Arc::new);
    let previous_reputation = previous.and_then(|(_, s)| s.reputation.clone());
    settings.reputation = crate::policy::reputation::Reputation::load(
        config,
        settings.verifier.identity().clone(),
        previous_reputation.as_deref(),
    )?
    .map(Arc::new);
    settings.replay = if config.policy.replay {
        replay.or_else(|| Some(new_replay_set(config, None)))
    } else {
        None
    };
    let lmtp_in_process = config.lmtp.as_ref().is_some_and(|l| l.listen.is_some());
    settings.replay_in_milter = !lmtp_in_process;
    Ok(Arc::new(settings))
}

/// Each signing key must be listed in its DID document under its `kid`: checked at start
/// when the resolver can be reached (an error: the signatures would not verify), a warning
/// when it cannot.
async fn check_signing_keys(settings: &Settings) -> Result<(), String> {
    let Some(signer) = &settings.signer else {
        return Ok(());
    };
    let identity = settings.verifier.identity();
    let timeout = std::time::Duration::from_secs(10);
    for key in signer.keys() {
        match tokio::time::timeout(timeout, identity.resolve_did(&key.did)).await {
            Ok(Ok(found)) => match found.value.document.key(key.fragment()) {
                Ok(published) if published == key.public_key() => {
                    info!("signing key {} is published in its DID document", key.kid);
                }
                Ok(_) => {
                    return Err(format!(
                        "signing key {}: the DID document lists another key under this id",
                        key.kid
                    ));
                }
                Err(e) => return Err(format!("signing key {}: {e}", key.kid)),
            },
            Ok(Err(e)) if !e.is_transient() => {
                return Err(format!("signing key {}: {e}", key.kid));
            }
            Ok(Err(e)) => tracing::warn!(
                "signing key {}: cannot check its DID document now ({e}); signing anyway",
                key.kid
            ),
            Err(_) => tracing::warn!(
                "signing key {}: its DID document did not come in time; signing anyway",
                key.kid
            ),
        }
    }
    Ok(())
}

/// The control socket: a configured path that cannot be bound is an error; the default one
/// (no writable /run/atsms-milter for a user running the daemon by hand) is skipped quietly.
async fn bind_control_socket(config: &Config) -> Result<Option<socket::BoundListener>, String> {
    let path = config.control.path();
    match crate::transport::control::bind(&path).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if config.control.socket.is_none() => {
            tracing::debug!("no control socket at {}: {e}", path.display());
            Ok(None)
        }
        Err(e) => Err(format!(
            "control.socket: cannot listen on {}: {e}",
            path.display()
        )),
    }
}

/// What `[metrics]` shows of the identity cache.
fn cache_source(identity: Arc<IdentityResolver>) -> crate::infra::metrics::CacheSource {
    Arc::new(move || {
        let identity = identity.clone();
        Box::pin(async move { identity.stats().await.gauges() })
    })
}

/// A file size limit (RLIMIT_FSIZE) must fail a write with EFBIG, which LMTP reports as
/// "insufficient storage", not kill the daemon with SIGXFSZ.
fn ignore_sigxfsz() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

async fn bind(
    listen: &SocketSpec,
    mode: FileMode,
    group: Option<&str>,
) -> Result<socket::BoundListener, String> {
    socket::bind(listen, mode.0, group)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

/// Settings that only take effect when the daemon starts: listening sockets and logging.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.milter_in_force() != new.milter_in_force() {
        changed.push("[milter]");
    }
    let lmtp_fixed = |c: &Config| {
        c.lmtp.as_ref().map(|l| {
            (
                l.listen.clone(),
                l.socket_mode,
                l.socket_group.clone(),
                l.max_message_size,
                l.idle_timeout,
                l.data_timeout,
            )
        })
    };
    if lmtp_fixed(old) != lmtp_fixed(new) {
        changed.push(
            "lmtp.listen, socket_mode, socket_group, max_message_size, idle_timeout or data_timeout",
        );
    }
    if old.control != new.control {
        changed.push("[control]");
    }
    if old.metrics != new.metrics {
        changed.push("[metrics]");
    }
    let socketmap_fixed = |c: &Config| {
        (
            c.socketmap.listen.clone(),
            c.socketmap.socket_mode,
            c.socketmap.socket_group.clone(),
            c.socketmap.max_connections,
        )
    };
    if socketmap_fixed(old) != socketmap_fixed(new) {
        changed.push("socketmap.listen, socket_mode, socket_group or max_connections");
    }
    if old.devices != new.devices || old.send != new.send {
        changed.push("[[device]] or [send]");
    }
    if old.exim != new.exim {
        changed.push("[exim]");
    }
    if old.xrpc != new.xrpc || old.store.jti_file != new.store.jti_file {
        changed.push("[xrpc] or store.jti_file");
    }
    let inbox_posts = |c: &Config| {
        (
            c.inbox.post_rate_per_network,
            c.inbox.post_rate_per_did,
            c.inbox.max_concurrent_posts,
            c.inbox.upload_timeout,
        )
    };
    if inbox_posts(old) != inbox_posts(new) {
        changed.push(
            "inbox.post_rate_per_network, post_rate_per_did, max_concurrent_posts or upload_timeout",
        );
    }
    if old.log != new.log {
        changed.push("[log]");
    }
    changed
}

/// What the rooms work with, built from one configuration and put in force together (at
/// start, and on reload): the judge's settings (milter, LMTP, Exim), the routing tables
/// (socketmap) and what the signing service signs with (XRPC). Each room gets only its own.
struct Runtime {
    settings: crate::infra::live::Live<Settings>,
    tables: crate::infra::live::Live<crate::transport::socketmap::Tables>,
    signing: crate::infra::live::Live<crate::transport::xrpc::Signing>,
}

impl Runtime {
    fn new(settings: Arc<Settings>) -> Runtime {
        Runtime {
            tables: crate::infra::live::Live::new(routing_tables(&settings)),
            signing: crate::infra::live::Live::new(Runtime::signing(&settings)),
            settings: crate::infra::live::Live::new(settings),
        }
    }

    fn set(&self, settings: Arc<Settings>) {
        self.tables.set(routing_tables(&settings));
        self.signing.set(Runtime::signing(&settings));
        self.settings.set(settings);
    }

    fn signing(settings: &Settings) -> Arc<crate::transport::xrpc::Signing> {
        Arc::new(crate::transport::xrpc::Signing {
            signer: settings.signer.clone(),
            verifier: settings.verifier.clone(),
            fixed_now: settings.fixed_now,
        })
    }
}

/// The socketmap's tables of the settings `settings`: their router, inbox rules and
/// recipient delimiter.
pub fn routing_tables(settings: &Settings) -> Arc<crate::transport::socketmap::Tables> {
    Arc::new(crate::transport::socketmap::Tables {
        router: settings.router.clone(),
        inbox: settings.inbox.clone(),
        delimiter: settings.recipient_delimiter.clone(),
    })
}

/// SIGHUP: re-reads the configuration file. A broken file is logged and the running
/// configuration kept; what cannot change at runtime is reported. Connections in progress
/// keep the settings they started with (each takes a snapshot when it begins).
fn reload(
    path: Option<&std::path::Path>,
    current: &mut Config,
    runtime: &Runtime,
    lmtp: Option<&LmtpService>,
) {
    let Some(path) = path else {
        info!("SIGHUP: running on built-in defaults, no configuration file to reload");
        return;
    };
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e}");
            return;
        }
    };
    for what in restart_only_changes(current, &new) {
        tracing::warn!(
            "reload: {what} changed; this takes effect only when atsms-milter is restarted"
        );
    }
    let previous = runtime.settings.get();
    let settings = match build_settings_reusing(&new, Some((&*current, &previous))) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e}");
            return;
        }
    };
    if let (Some(service), Some(lmtp_config)) = (lmtp, &new.lmtp)
        && let Err(e) = service.reload_mailboxes(lmtp_config)
    {
        tracing::error!("reload failed, keeping the running configuration: {e}");
        return;
    }
    runtime.set(settings);
    info!("configuration reloaded from {}", path.display());
    *current = new;
}

/// Every listening socket of a configuration, bound before anything is served: a bad address
/// fails the start, not half of it.
struct Listeners {
    milter: Option<(BoundListener, usize)>,
    lmtp: Option<(BoundListener, Arc<LmtpService>)>,
    socketmap: Option<BoundListener>,
    xrpc: Option<(BoundListener, Arc<crate::transport::xrpc::Service>)>,
    exim: Option<BoundListener>,
    metrics: Option<BoundListener>,
}

impl Listeners {
    async fn bind(config: &Config, runtime: &Runtime) -> Result<Listeners, String> {
        let shared = &runtime.settings;
        let milter = match &config.milter_in_force() {
            Some(m) => Some((
                bind(&m.listen, m.socket_mode, m.socket_group.as_deref()).await?,
                m.max_connections.get(),
            )),
            None => None,
        };
        let lmtp = match &config.lmtp {
            Some(l) if l.listen.is_some() => {
                let listen = l.listen.as_ref().expect("checked");
                let host = crate::infra::host::name();
                let service = LmtpService::new(shared.clone(), l, &config.inbox, host, true)?;
                // Before the socket is bound: once it is, a client (or a readiness check) may
                // connect and look while stale files are still there.
                service.clean_known_maildirs();
                let listener = bind(listen, l.socket_mode, l.socket_group.as_deref()).await?;
                Some((listener, Arc::new(service)))
            }
            _ => None,
        };
        let socketmap = match &config.socketmap.listen {
            Some(listen) => {
                let s = &config.socketmap;
                Some(bind(listen, s.socket_mode, s.socket_group.as_deref()).await?)
            }
            None => None,
        };
        let xrpc = match &config.xrpc.listen {
            Some(listen) => Some((
                bind(listen, FileMode(0o660), None).await?,
                Arc::new(xrpc_service(
                    config,
                    runtime,
                    lmtp.as_ref().map(|(_, s)| s),
                )?),
            )),
            None => None,
        };
        let exim = match &config.exim.listen {
            Some(listen) => {
                let e = &config.exim;
                Some(bind(listen, e.socket_mode, e.socket_group.as_deref()).await?)
            }
            None => None,
        };
        let metrics = match config.metrics.listen {
            Some(listen) => {
                let (host, port) = (listen.0.ip().to_string(), listen.0.port());
                Some(bind(&SocketSpec::Inet { host, port }, FileMode(0o660), None).await?)
            }
            None => None,
        };
        Ok(Listeners {
            milter,
            lmtp,
            socketmap,
            xrpc,
            exim,
            metrics,
        })
    }

    fn is_empty(&self) -> bool {
        self.milter.is_none()
            && self.lmtp.is_none()
            && self.socketmap.is_none()
            && self.xrpc.is_none()
            && self.exim.is_none()
    }
}

/// The signing service, with `[[device]]` the PDS-side sender, and with `xrpc.inbox` the HTTPS
/// inbox, which stores as LMTP does: through the LMTP service when it runs here, else one of
/// its own.
fn xrpc_service(
    config: &Config,
    runtime: &Runtime,
    lmtp: Option<&Arc<LmtpService>>,
) -> Result<crate::transport::xrpc::Service, String> {
    let mut service = crate::transport::xrpc::Service::new(
        runtime.signing.clone(),
        &config.xrpc,
        &config.store.jti_file,
    )?;
    if !config.devices.is_empty() {
        let identity = runtime.settings.get().verifier.identity().clone();
        let sender = crate::sending::Sender::new(config, identity)?;
        info!(
            "sendMessage: holding devices for {}",
            config
                .devices
                .iter()
                .map(|d| d.did.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        service = service.with_sender(Arc::new(sender));
    }
    if !config.xrpc.inbox {
        return Ok(service);
    }
    let lmtp_service = match lmtp {
        Some(service) => service.clone(),
        None => {
            let lmtp_config = config.lmtp.clone().unwrap_or_default();
            let host = crate::infra::host::name();
            Arc::new(LmtpService::new(
                runtime.settings.clone(),
                &lmtp_config,
                &config.inbox,
                host,
                true,
            )?)
        }
    };
    let hosts = config
        .inbox
        .hosts()
        .iter()
        .filter_map(|h| crate::format::syntax::ascii_domain(h))
        .collect();
    let inbox = crate::transport::xrpc::inbox::Inbox::new(lmtp_service, hosts, &config.inbox);
    Ok(service.with_inbox(inbox))
}

/// The listeners served, each on a task of its own until `stop`; LMTP's service (a reload
/// re-reads its recipients).
fn spawn_services(
    listeners: Listeners,
    config: &Config,
    runtime: &Runtime,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (
    tokio::task::JoinSet<Result<(), String>>,
    Option<Arc<LmtpService>>,
) {
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let shared = &runtime.settings;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((listener, max_connections)) = listeners.milter {
        let (shared, stop) = (shared.clone(), stopped(stop.clone()));
        tasks.spawn(async move {
            milter::run(listener, shared, max_connections, stop)
                .await
                .map_err(|e| format!("milter stopped: {e}"))
        });
    }
    if let Some(listener) = listeners.socketmap {
        let (tables, stop) = (runtime.tables.clone(), stopped(stop.clone()));
        let max = config.socketmap.max_connections.get();
        tasks.spawn(async move {
            crate::transport::socketmap::run(listener, tables, max, stop)
                .await
                .map_err(|e| format!("socketmap stopped: {e}"))
        });
    }
    if let Some(listener) = listeners.exim {
        let (shared, stop) = (shared.clone(), stopped(stop.clone()));
        let max = config.exim.max_connections.get();
        let idle = std::time::Duration::from_secs(config.exim.timeout.get());
        tasks.spawn(async move {
            crate::transport::exim::run(listener, shared, max, idle, stop)
                .await
                .map_err(|e| format!("Exim scanner stopped: {e}"))
        });
    }
    if let Some((listener, service)) = listeners.xrpc {
        if let Some(sender) = service.sender() {
            let stop = stop.clone();
            tasks.spawn(async move {
                sender.run_outbox(stop).await;
                Ok(())
            });
        }
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            crate::transport::xrpc::run(listener, service, stop)
                .await
                .map_err(|e| format!("signing service stopped: {e}"))
        });
    }
    let lmtp_service = listeners.lmtp.as_ref().map(|(_, service)| service.clone());
    if let Some((listener, service)) = listeners.lmtp {
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            lmtp::run(listener, service, stop)
                .await
                .map_err(|e| format!("LMTP stopped: {e}"))
        });
    }
    (tasks, lmtp_service)
}

/// The metrics endpoint and the control socket: served until the daemon aborts them.
fn spawn_side_services(
    metrics: Option<BoundListener>,
    control: Option<BoundListener>,
    config: &Config,
    runtime: &Runtime,
) -> (
    Option<tokio::task::JoinHandle<()>>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let identity = runtime.settings.get().verifier.identity().clone();
    let metrics = metrics.map(|listener| {
        let app = crate::infra::metrics::router(cache_source(identity.clone()));
        let bounds = crate::infra::http::Bounds {
            max_connections: 64,
            header_read_timeout: std::time::Duration::from_secs(5),
        };
        if let Some(listen) = config.metrics.listen {
            info!("metrics on http://{}/metrics", listen.0);
        }
        tokio::spawn(async move {
            crate::infra::http::serve(
                &listener,
                "metrics",
                app,
                bounds,
                std::future::pending::<()>(),
            )
            .await
        })
    });
    let control =
        control.map(|listener| tokio::spawn(crate::transport::control::serve(listener, identity)));
    (metrics, control)
}

/// Runs the daemon with `config` (read from `path`, for reloads) until a shutdown signal: the
/// milter, LMTP, or both in one process with one identity cache.
pub async fn serve(config: Config, path: Option<std::path::PathBuf>) -> Result<(), String> {
    let shutdown = shutdown_signal();
    // Before anything else: SIGHUP's default action would end the process.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    ignore_sigxfsz();
    let settings = build_settings(&config)?;
    check_signing_keys(&settings).await?;
    let runtime = Runtime::new(settings);
    let listeners = Listeners::bind(&config, &runtime).await?;
    if listeners.is_empty() {
        return Err(
            "nothing to serve: [lmtp] has no listen address and there is no [milter] section \
                    (use `serve --stdio` for one LMTP session on standard input)"
                .into(),
        );
    }
    info!("atsms-milter {} starting", env!("CARGO_PKG_VERSION"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let control_listener = bind_control_socket(&config).await?;
    let mut listeners = listeners;
    let (metrics, control) = spawn_side_services(
        listeners.metrics.take(),
        control_listener,
        &config,
        &runtime,
    );
    let (mut tasks, lmtp_service) = spawn_services(listeners, &config, &runtime, &stop_rx);
    let mut config = config;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                reload(path.as_deref(), &mut config, &runtime, lmtp_service.as_deref());
                continue;
            }
            _ = &mut shutdown => break,
            Some(result) = tasks.join_next() => {
            // A service ended on its own: its listener broke. Stop the rest too.
            let _ = stop_tx.send(true);
            if let Some(control) = &control {
                control.abort();
            }
            tasks.join_all().await;
            return result.map_err(|e| e.to_string()).and_then(|r| r).and_then(|()| Err("a service stopped unexpectedly".into()));
            }
        }
    }
    let _ = stop_tx.send(true);
    if let Some(metrics) = &metrics {
        metrics.abort();
    }
    if let Some(control) = control {
        control.abort();
        // Let the aborted task drop its listener, which removes the socket file.
        let _ = control.await;
    }
    for result in tasks.join_all().await {
        result?;
    }
    info!("atsms-milter shut down");
    Ok(())
}

/// `serve --stdio`: one LMTP session on standard input and output (Exim's pipe-style `lmtp`
/// transport runs one process per delivery). Stale `tmp/` files are left alone.
pub async fn serve_stdio(config: Config) -> Result<(), String> {
    ignore_sigxfsz();
    let mut settings = build_settings(&config)?;
    // One process per delivery: without Redis, replays are remembered in a file.
    if config.policy.replay && config.store.redis.is_none() {
        let file = crate::infra::store::SeenFile::new(config.store.replay_file.clone());
        let replay = crate::policy::replay::ReplaySet::new(10_000, None).with_file(file);
        if let Some(s) = Arc::get_mut(&mut settings) {
            s.replay = Some(Arc::new(replay));
        }
    }
    let shared = crate::infra::live::Live::new(settings);
    let lmtp_config = config.lmtp.clone().unwrap_or_default();
    let service = Arc::new(LmtpService::new(
        shared,
        &lmtp_config,
        &config.inbox,
        crate::infra::host::name(),
        false,
    )?);
    let stream = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    // In a task of its own, like every connection of the daemon: a panic (a bug) ends the
    // session and becomes an error, never an abort the MTA cannot read.
    match tokio::spawn(lmtp::session(stream, service)).await {
        Ok(result) => result.map_err(|e| format!("LMTP session: {e}")),
        Err(e) => Err(format!("LMTP session ended by an internal error: {e}")),
    }
}

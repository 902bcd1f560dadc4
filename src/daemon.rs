//! `atsms-milter serve`: builds the shared identity cache and settings, binds the listeners
//! and runs until SIGTERM or SIGINT.

use std::sync::{Arc, RwLock};

use tracing::info;

use crate::config::{Config, parse_mode};
use crate::identity::IdentityResolver;
use crate::milter;
use crate::session::Settings;
use crate::socket::{self, SocketSpec};
use crate::verify::Verifier;

/// Sets up logging to standard error (journald picks it up under systemd).
pub fn init_logging(level: &str) {
    let level = level
        .parse::<tracing::Level>()
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be stopped by SIGKILL; run on.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
    }
}

pub fn build_settings(config: &Config) -> Result<Arc<Settings>, String> {
    let identity = Arc::new(IdentityResolver::new(&config.resolver, &config.cache)?);
    let verifier = Verifier::new(identity, config.resolver.timeout());
    Settings::new(verifier, config.policy.clone()).map(Arc::new)
}

/// Runs the daemon with `config` until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), String> {
    if config.log.destination == "syslog" {
        tracing::warn!(
            "log.destination = \"syslog\" is not supported yet; logging to standard error"
        );
    }
    let settings = build_settings(&config)?;
    let shared = Arc::new(RwLock::new(settings));
    let Some(milter_config) = config.milter_in_force() else {
        return Err("no [milter] section and LMTP is not available in this version".into());
    };
    let spec =
        SocketSpec::parse(&milter_config.listen).map_err(|e| format!("milter.listen: {e}"))?;
    let mode = parse_mode(&milter_config.socket_mode)?;
    let listener = socket::bind(&spec, mode, milter_config.socket_group.as_deref())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", milter_config.listen))?;
    info!("atsms-milter {} starting", env!("CARGO_PKG_VERSION"));
    milter::run(
        listener,
        shared,
        milter_config.max_connections,
        shutdown_signal(),
    )
    .await
    .map_err(|e| format!("milter stopped: {e}"))?;
    info!("atsms-milter shut down");
    Ok(())
}

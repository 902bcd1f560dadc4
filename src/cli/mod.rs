//! The command line (docs/interfaces: commands, options, JSON fields and exit codes are fixed).
//! Wiring only: every decision is made by the library rooms.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::atproto::identity::IdentityResolver;
use crate::format::auth_results;
use crate::format::crypto::{Alg, SigningKey};
use crate::format::envelope::AuthResult;
use crate::format::message;
use crate::infra::config::{CacheConfig, Config, DEFAULT_CONFIG_PATH, ResolverConfig};
use crate::verification::verify::Verifier;

mod device;
mod identity;
mod inbox;
mod open;
mod signing;
mod verifying;

use identity::{resolve, route};
use signing::{keygen, send, sign};
use verifying::{verify, verify_cms};

/// Exit statuses of `verify` (and the other commands where they fit): sysexits.h.
pub mod exit {
    pub const PASS: u8 = 0;
    pub const NO_PASS: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_SIGNATURE: u8 = 3;
    /// EX_NOINPUT: the input cannot be read.
    pub const NO_INPUT: u8 = 66;
    /// EX_SOFTWARE: an internal error.
    pub const SOFTWARE: u8 = 70;
    /// EX_TEMPFAIL: try again later.
    pub const TEMPFAIL: u8 = 75;
}

#[derive(Parser, Debug)]
#[command(
    name = "atsms-milter",
    version,
    about = "Verifies AT-SMS signatures on mail from atproto identities"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: the milter (and LMTP when configured).
    Serve(ServeArgs),
    /// Print the effective configuration (defaults filled in); exit 1 naming the error.
    CheckConfig(ConfigArgs),
    /// Verify a saved message and print the Authentication-Results field it would get.
    Verify(VerifyArgs),
    /// Verify a CMS SignedData (DER, PEM, or an S/MIME message) from an AT-SMS device
    /// certificate: the X.509 floor, e.g. content a client has decrypted.
    VerifyCms(VerifyCmsArgs),
    /// Add an AT-SMS-Signature field to a message.
    Sign(SignArgs),
    /// Make a private key (PKCS#8 PEM on stdout; its Multikey and did:key on stderr).
    Keygen(KeygenArgs),
    /// Resolve a DID or handle and check it in both directions.
    Resolve(ResolveArgs),
    /// What each Postfix table (atsms_alias, atsms_transport, atsms_mailbox) would answer for
    /// an address, and why; no running daemon needed.
    Route(RouteArgs),
    /// Ask a running daemon for its identity cache statistics, or drop a DID from its cache.
    Cache(CacheArgs),
    /// The AT-SMS device copies kept in inbox.store: list, show, purge.
    Inbox(inbox::InboxArgs),
    /// Make a device this service holds for a sending identity, or its next prekey; prints the
    /// records to publish.
    Device(device::DeviceArgs),
    /// Open an AT-SMS envelope with a device's keys (sealed, then encrypted, then signed) and
    /// print its sender and text; ok only when the sender's device is published.
    Open(open::OpenArgs),
    /// Send a text through a sending service (sendMessage): signed once by the device it
    /// holds for you, sealed for every device of every recipient; prints its answer (JSON).
    Send(SendArgs),
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The sending service's base URL.
    #[arg(long, value_name = "URL")]
    remote: String,
    /// The service token from your PDS (com.atproto.server.getServiceAuth with the service's
    /// DID as aud and lxm org.atsms-milter.mail.sendMessage).
    #[arg(long, value_name = "JWT")]
    service_auth: String,
    /// A recipient DID; repeatable.
    #[arg(long, value_name = "DID", required = true)]
    to: Vec<String>,
    /// The text; else FILE, else standard input.
    #[arg(long, value_name = "TEXT", conflicts_with = "file")]
    text: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CacheArgs {
    /// The daemon's control socket (default: control.socket of the configuration,
    /// /run/atsms-milter/control.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(Subcommand, Debug)]
enum CacheAction {
    /// Hits, misses, stale serves and entries of the identity cache, as JSON.
    Stats,
    /// Forget a DID's document and device certificates (after a known key change).
    Purge { did: String },
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// The configuration file (default: /etc/atsms-milter/atsms-milter.toml when it exists,
    /// else built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Speak one LMTP session on standard input and output, then exit (for Exim's
    /// pipe-style lmtp transport).
    #[arg(long)]
    stdio: bool,
}

impl ConfigArgs {
    /// The file the configuration comes from: the one given, or the default path if present.
    fn path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        }
    }

    fn load(&self) -> Result<Config, String> {
        match &self.config {
            Some(path) => Config::load(path).map_err(|e| e.to_string()),
            None => {
                let default = std::path::Path::new(DEFAULT_CONFIG_PATH);
                if default.exists() {
                    Config::load(default).map_err(|e| e.to_string())
                } else {
                    Ok(Config::default())
                }
            }
        }
    }
}

/// How identities are looked up (shared by `verify` and `resolve`).
#[derive(Args, Debug)]
struct ResolverArgs {
    /// Verify as of this time (Unix seconds) instead of now.
    #[arg(long, value_name = "UNIX_SECONDS")]
    now: Option<i64>,
    /// PLC directory URL; repeat to try several in order.
    #[arg(long = "plc-url", value_name = "URL")]
    plc_urls: Vec<crate::infra::config::HttpUrl>,
    /// DNS server (IP or IP:PORT) instead of the system resolver; repeatable.
    #[arg(long = "dns-server", value_name = "IP:PORT")]
    dns_servers: Vec<crate::infra::config::DnsServer>,
    /// Permit loopback and private targets, and plain http to them (test setups only).
    #[arg(long)]
    allow_private_addresses: bool,
    /// Seconds allowed for one identity lookup.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    timeout: u64,
}

impl ResolverArgs {
    fn config(&self) -> ResolverConfig {
        let mut config = ResolverConfig::default();
        if !self.plc_urls.is_empty() {
            config.plc_urls = self.plc_urls.clone();
        }
        config.dns_servers = self.dns_servers.clone();
        config.allow_private_addresses = self.allow_private_addresses;
        config.timeout = std::num::NonZeroU64::new(self.timeout.max(1)).unwrap_or(config.timeout);
        config
    }

    fn now(&self) -> i64 {
        self.now.unwrap_or_else(crate::infra::clock::unix_now)
    }

    fn resolver(&self) -> Result<IdentityResolver, String> {
        IdentityResolver::new(&self.config(), &CacheConfig::default())
    }
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The message (RFC 5322); standard input when absent.
    file: Option<PathBuf>,
    /// One JSON object per AT-SMS-Signature field, top first.
    #[arg(long)]
    json: bool,
    /// The authserv-id of the Authentication-Results field (default: this host's name).
    #[arg(long, value_name = "NAME")]
    authserv_id: Option<String>,
    /// An envelope recipient, for the rcpt claim; repeatable.
    #[arg(long, value_name = "ADDR")]
    rcpt: Vec<String>,
    #[command(flatten)]
    resolver: ResolverArgs,
}

#[derive(Args, Debug)]
struct VerifyCmsArgs {
    /// The SignedData: DER, PEM, or an S/MIME message; standard input when absent.
    file: Option<PathBuf>,
    /// {"result", "did", "fingerprint", "published", "reason"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    resolver: ResolverArgs,
}

#[derive(Args, Debug)]
struct SignArgs {
    /// PKCS#8 PEM private key (P-256 or secp256k1).
    #[arg(long, value_name = "KEY.pem", required_unless_present = "remote")]
    key: Option<PathBuf>,
    /// The key id: DID#fragment, or at://DID/at.atsms.x509/FINGERPRINT.
    #[arg(long, value_name = "KID", required_unless_present = "remote")]
    kid: Option<String>,
    /// Have the signing service at URL sign (its base, e.g. https://signer.example.net): the
    /// message is hashed here and never leaves this machine.
    #[arg(long, value_name = "URL", requires = "service_auth", conflicts_with_all = ["key", "kid", "now"])]
    remote: Option<String>,
    /// The service token from your PDS (com.atproto.server.getServiceAuth with the service's
    /// DID as aud and lxm org.atsms-milter.mail.signEnvelope).
    #[arg(long, value_name = "JWT", requires = "remote")]
    service_auth: Option<String>,
    /// Lifetime of the signature in seconds (at most 604800).
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    ttl: i64,
    /// Restrict the signature to this recipient; repeatable.
    #[arg(long, value_name = "ADDR")]
    rcpt: Vec<String>,
    /// Sign as of this time (Unix seconds) instead of now.
    #[arg(long, value_name = "UNIX_SECONDS")]
    now: Option<i64>,
    /// The message; standard input when absent.
    file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Curve {
    K256,
    P256,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    #[arg(long, value_enum)]
    curve: Curve,
    /// The DID the key is for: stderr then also holds the verificationMethod to publish.
    #[arg(long, value_name = "DID")]
    did: Option<String>,
    /// The fragment of the key's id (`DID#NAME`).
    #[arg(long, value_name = "NAME", default_value = "atsms", requires = "did")]
    fragment: String,
}

#[derive(Args, Debug)]
struct RouteArgs {
    /// A DID mailbox address: did.plc.<id>@domain (or did!plc!<id>@domain).
    address: String,
    #[arg(long)]
    json: bool,
    /// A name by which DID documents point at this host (inbox.hosts); repeatable. Default:
    /// inbox.hosts of the configuration file, else this host's name.
    #[arg(long = "inbox-host", value_name = "NAME")]
    inbox_hosts: Vec<String>,
    /// A domain `atsms_alias` rewrites (routing.alias_domains); repeatable. Default:
    /// routing.alias_domains of the configuration file (none: nothing is aliased).
    #[arg(long = "alias-domain", value_name = "DOMAIN")]
    alias_domains: Vec<crate::infra::config::MailDomain>,
    #[command(flatten)]
    resolver: ResolverArgs,
}

#[derive(Args, Debug)]
struct ResolveArgs {
    /// A DID (did:plc:…, did:web:…) or a handle.
    identity: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    resolver: ResolverArgs,
}

fn read_input(file: Option<&PathBuf>) -> Result<Box<dyn Read>, String> {
    match file {
        Some(path) => std::fs::File::open(path)
            .map(|f| Box::new(f) as Box<dyn Read>)
            .map_err(|e| format!("{}: {e}", path.display())),
        None => Ok(Box::new(io::stdin().lock())),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("atsms-milter: {message}");
    ExitCode::from(code)
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Verify(args) => verify(args),
        Command::VerifyCms(args) => verify_cms(args),
        Command::Sign(args) => sign(args),
        Command::Keygen(args) => keygen(args),
        Command::Resolve(args) => resolve(args),
        Command::Route(args) => route(args),
        Command::Cache(args) => cache(args),
        Command::Inbox(args) => inbox::inbox(args),
        Command::Open(args) => open::open(args),
        Command::Device(args) => device::run(args),
        Command::Send(args) => send(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok(config) => config,
        Err(e) => return fail(exit::NO_PASS, e),
    };
    let _log = crate::infra::logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let run = async {
        if args.stdio {
            crate::daemon::serve_stdio(config).await
        } else {
            crate::daemon::serve(config, args.config.path()).await
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(exit::NO_PASS, e)
        }
    }
}

fn check_config(args: ConfigArgs) -> ExitCode {
    match args.load() {
        Ok(config) => match toml::to_string(&config.effective()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::SOFTWARE, e),
        },
        Err(e) => fail(exit::NO_PASS, e),
    }
}

fn cache(args: CacheArgs) -> ExitCode {
    let socket = args.socket.unwrap_or_else(|| {
        let config = ConfigArgs { config: None }.load().unwrap_or_default();
        config.control.path()
    });
    let request = match &args.action {
        CacheAction::Stats => "stats".to_string(),
        CacheAction::Purge { did } => format!("purge {did}"),
    };
    match crate::transport::control::request(&socket, &request) {
        Ok(reply) if reply.starts_with("error") => fail(exit::USAGE, reply.trim()),
        Ok(reply) => {
            print!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(
            exit::TEMPFAIL,
            format!("{}: {e} (is the daemon running?)", socket.display()),
        ),
    }
}

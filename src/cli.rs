//! The command line (docs/interfaces: commands, options, JSON fields and exit codes are fixed).
//! Wiring only: every decision is made by the library rooms.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth_results;
use crate::config::{CacheConfig, Config, DEFAULT_CONFIG_PATH, ResolverConfig};
use crate::crypto::{Alg, SigningKey};
use crate::envelope::{AuthResult, sign};
use crate::identity::IdentityResolver;
use crate::message;
use crate::verify::{Context, Verifier};

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
    plc_urls: Vec<crate::config::HttpUrl>,
    /// DNS server (IP or IP:PORT) instead of the system resolver; repeatable.
    #[arg(long = "dns-server", value_name = "IP:PORT")]
    dns_servers: Vec<crate::config::DnsServer>,
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
        self.now.unwrap_or_else(crate::clock::unix_now)
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
    /// DID as aud and lxm at.atsms.mail.signEnvelope).
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
        Command::Sign(args) => sign(args),
        Command::Keygen(args) => keygen(args),
        Command::Resolve(args) => resolve(args),
        Command::Route(args) => route(args),
        Command::Cache(args) => cache(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok(config) => config,
        Err(e) => return fail(exit::NO_PASS, e),
    };
    crate::logging::init(&config.log);
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

fn verify(args: VerifyArgs) -> ExitCode {
    let parsed = match read_input(args.file.as_ref())
        .and_then(|r| message::read_message(r).map_err(|e| e.to_string()))
    {
        Ok(parsed) => parsed,
        Err(e) => return fail(exit::NO_INPUT, e),
    };
    let resolver = match args.resolver.resolver() {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let verifier = Verifier::new(Arc::new(resolver), args.resolver.config().timeout());
    let recipients: Vec<String> = args.rcpt.iter().map(|r| r.to_ascii_lowercase()).collect();
    let context = Context {
        now: args.resolver.now(),
        recipients: &recipients,
    };
    let verdict = rt.block_on(verifier.verify(&parsed.headers, &parsed.body_hash, &context));
    let output = if args.json {
        serde_json::to_string_pretty(&verdict).unwrap_or_else(|_| "[]".into())
    } else {
        let authserv_id = args.authserv_id.unwrap_or_else(crate::host::name);
        format!(
            "{}:{}",
            auth_results::FIELD_NAME,
            auth_results::format_value(&authserv_id, &verdict, &[], "\n")
        )
    };
    println!("{output}");
    let results: Vec<AuthResult> = verdict.signatures.iter().map(|s| s.result).collect();
    ExitCode::from(if results.is_empty() {
        exit::NO_SIGNATURE
    } else if results.contains(&AuthResult::Pass) {
        exit::PASS
    } else if results.contains(&AuthResult::Temperror) {
        exit::TEMPFAIL
    } else {
        exit::NO_PASS
    })
}

fn sign(args: SignArgs) -> ExitCode {
    let mut raw = Vec::new();
    if let Err(e) = read_input(args.file.as_ref())
        .and_then(|mut r| r.read_to_end(&mut raw).map_err(|e| e.to_string()))
    {
        return fail(exit::NO_INPUT, e);
    }
    let parsed = match message::read_message(&raw[..]) {
        Ok(parsed) => parsed,
        Err(e) => return fail(exit::NO_INPUT, e),
    };
    let (did, token) = match (&args.remote, &args.key, &args.kid) {
        (Some(url), _, _) => {
            let jwt = args.service_auth.as_deref().unwrap_or_default();
            match sign_remotely(url, jwt, &args, &parsed) {
                Ok(signed) => signed,
                Err((code, e)) => return fail(code, e),
            }
        }
        (None, Some(key), Some(kid)) => match sign_locally(key, kid, &args, &parsed) {
            Ok(signed) => signed,
            Err((code, e)) => return fail(code, e),
        },
        _ => {
            return fail(
                exit::USAGE,
                "--key and --kid, or --remote and --service-auth",
            );
        }
    };
    let field = sign::format_field(&did, &token, parsed.newline);
    let mut out = io::stdout().lock();
    let written = out
        .write_all(field.as_bytes())
        .and_then(|_| out.write_all(parsed.newline.as_bytes()))
        .and_then(|_| out.write_all(&raw))
        .and_then(|_| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(exit::SOFTWARE, format!("writing the message: {e}")),
    }
}

type Signed = Result<(String, String), (u8, String)>;

/// `sign --key --kid`: the token, signed here.
fn sign_locally(
    path: &std::path::Path,
    kid: &str,
    args: &SignArgs,
    parsed: &message::ParsedMessage,
) -> Signed {
    use crate::signer::{Outcome, Signer};
    let pem = std::fs::read_to_string(path)
        .map_err(|e| (exit::NO_INPUT, format!("{}: {e}", path.display())))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| (exit::NO_PASS, format!("{}: {e}", path.display())))?;
    // The same signer as the milter's: a message the verifier could not pass is not signed.
    let signer =
        Signer::one(key, kid, args.ttl, !args.rcpt.is_empty()).map_err(|e| (exit::USAGE, e))?;
    let now = args.now.unwrap_or_else(crate::clock::unix_now);
    match signer.sign(&parsed.headers, parsed.body_hash, None, &args.rcpt, now) {
        Outcome::Signed { key, token } => Ok((key.did.clone(), token)),
        Outcome::Unsigned(why) => Err((exit::NO_PASS, format!("not signed: {why}"))),
        Outcome::Refused { why, .. } => Err((exit::NO_PASS, format!("not signed: {why}"))),
    }
}

/// `sign --remote --service-auth`: the token, from the signing service.
fn sign_remotely(url: &str, jwt: &str, args: &SignArgs, parsed: &message::ParsedMessage) -> Signed {
    use crate::xrpc::client::{ClientError, sign_remote};
    let rt = runtime().map_err(|e| (exit::TEMPFAIL, e))?;
    rt.block_on(sign_remote(url, jwt, parsed, &args.rcpt, args.ttl))
        .map_err(|e| match e {
            ClientError::Temporary(why) => (exit::TEMPFAIL, why),
            ClientError::Refused(why) => (exit::NO_PASS, why),
            ClientError::Wrong(why) => (exit::SOFTWARE, why),
        })
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
    match crate::control::request(&socket, &request) {
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

fn keygen(args: KeygenArgs) -> ExitCode {
    let alg = match args.curve {
        Curve::K256 => Alg::Es256k,
        Curve::P256 => Alg::Es256,
    };
    match SigningKey::generate(alg) {
        Ok(key) => {
            let public = key.public_key();
            if let Some(did) = &args.did
                && crate::syntax::supported_did_method(did).is_none()
            {
                return fail(
                    exit::USAGE,
                    format!("{did} is not a did:plc or did:web DID"),
                );
            }
            print!("{}", key.to_pkcs8_pem());
            eprintln!("multikey: {}", public.to_multikey());
            eprintln!("did:key: {}", public.to_did_key());
            if let Some(did) = &args.did {
                // The verificationMethod to add to the DID document (docs/signing.md says how).
                let method = serde_json::json!({
                    "id": format!("{did}#{}", args.fragment),
                    "type": "Multikey",
                    "controller": did,
                    "publicKeyMultibase": public.to_multikey(),
                });
                eprintln!("{method}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::SOFTWARE, e),
    }
}

#[derive(serde::Serialize)]
struct Resolution {
    did: String,
    handle: Option<String>,
    handle_claimed: Option<String>,
    key: Option<String>,
    alg: Option<&'static str>,
    pds: Option<String>,
    mail_service: Option<String>,
    source: ResolutionSource,
}

#[derive(serde::Serialize)]
struct ResolutionSource {
    /// The URL the DID document came from.
    document: String,
    /// How the handle was resolved to the DID (`dns` or `https`), when it was.
    handle: Option<crate::identity::HandleSource>,
    /// Where the key came from: the `#atproto` verification method.
    key: Option<String>,
}

fn resolve(args: ResolveArgs) -> ExitCode {
    let resolver = match args.resolver.resolver() {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(exit::USAGE, e),
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let timeout = args.resolver.config().timeout();
    let outcome = rt.block_on(async {
        tokio::time::timeout(timeout * 3, async {
            let input = args.identity.trim();
            let did = if input.starts_with("did:") {
                input.to_string()
            } else {
                resolver
                    .resolve_handle(input)
                    .await
                    .map_err(|e| (e.is_transient(), e.to_string()))?
                    .0
                    .clone()
            };
            let resolved = resolver
                .resolve_did(&did)
                .await
                .map_err(|e| (e.is_transient(), e.to_string()))?;
            let checked = resolver.checked_handle(&resolved.value.document).await;
            Ok::<_, (bool, String)>((resolved.value, checked))
        })
        .await
        .unwrap_or_else(|_| Err((true, "timed out".to_string())))
    });
    let (resolved, checked) = match outcome {
        Ok(found) => found,
        Err((transient, reason)) => {
            return fail(
                if transient {
                    exit::TEMPFAIL
                } else {
                    exit::NO_PASS
                },
                reason,
            );
        }
    };
    let document = &resolved.document;
    let key = document.key("atproto").ok();
    let resolution = Resolution {
        did: document.id.clone(),
        handle: checked.as_ref().map(|(h, _)| h.clone()),
        handle_claimed: document.handle_claim(),
        key: key.as_ref().map(|k| k.to_multikey()),
        alg: key.as_ref().map(|k| k.alg().jws_name()),
        pds: document.pds().map(str::to_string),
        mail_service: document.mail_service().map(str::to_string),
        source: ResolutionSource {
            document: resolved.source.clone(),
            handle: checked.as_ref().map(|(_, s)| *s),
            key: key.as_ref().map(|_| format!("{}#atproto", document.id)),
        },
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resolution).unwrap_or_default()
        );
    } else {
        let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
        println!("did:          {}", resolution.did);
        println!("handle:       {}", show(&resolution.handle));
        println!("claimed:      {}", show(&resolution.handle_claimed));
        println!(
            "key:          {} {}",
            show(&resolution.key),
            resolution.alg.unwrap_or("")
        );
        println!("pds:          {}", show(&resolution.pds));
        println!("mail service: {}", show(&resolution.mail_service));
        println!("document:     {}", resolution.source.document);
    }
    if resolution.key.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NO_PASS)
    }
}

#[derive(serde::Serialize)]
struct RouteMaps {
    atsms_alias: String,
    atsms_transport: String,
    atsms_mailbox: String,
}

#[derive(serde::Serialize)]
struct Route {
    address: String,
    /// The DID the address names, if it is a DID mailbox address.
    did: Option<String>,
    /// The document's `#atsms_mail` endpoint as written.
    endpoint: Option<String>,
    /// Whether this host may keep the mailbox (null: the document could not be had).
    consent: Option<bool>,
    /// Whether the endpoint's host publishes `_atsms-mail` TXT `v=atsms1` (null: no
    /// `smtp://` endpoint with a host name).
    mailhost_txt: Option<bool>,
    maps: RouteMaps,
}

fn route(args: RouteArgs) -> ExitCode {
    use crate::routing::{self, Consent, DidAddress};
    let resolver = match args.resolver.resolver() {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(exit::USAGE, e),
    };
    let hosts = if args.inbox_hosts.is_empty() {
        ConfigArgs { config: None }
            .load()
            .unwrap_or_default()
            .inbox
            .hosts()
    } else {
        args.inbox_hosts.clone()
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let timeout = args.resolver.config().timeout();
    let router = routing::Router::new(resolver.clone(), &hosts, timeout);
    let address = args.address.trim().to_string();
    let route = rt.block_on(async {
        let parsed = DidAddress::parse(&address);
        let mut endpoint = None;
        let mut mailhost_txt = None;
        let mut consent = None;
        if let Some(parsed) = &parsed {
            if let Ok(Ok(found)) =
                tokio::time::timeout(timeout, resolver.resolve_did(&parsed.did)).await
            {
                let document = &found.value.document;
                endpoint = document.mail_service().map(str::to_string);
                if let Some(crate::identity::did_doc::MailEndpoint::Smtp {
                    host: crate::identity::did_doc::MailHost::Name(host),
                    ..
                }) = document.mail_endpoint()
                {
                    mailhost_txt = Some(resolver.mail_host_vouches(&host).await);
                }
            }
            consent = match router.consent(parsed).await {
                Consent::Given => Some(true),
                Consent::Refused => Some(false),
                Consent::Unknown(_) => None,
            };
        }
        Route {
            did: parsed.map(|p| p.did),
            endpoint,
            consent,
            mailhost_txt,
            maps: RouteMaps {
                atsms_alias: router.lookup(routing::ALIAS, &address).await.to_socketmap(),
                atsms_transport: router
                    .lookup(routing::TRANSPORT, &address)
                    .await
                    .to_socketmap(),
                atsms_mailbox: router
                    .lookup(routing::MAILBOX, &address)
                    .await
                    .to_socketmap(),
            },
            address: address.clone(),
        }
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&route).unwrap_or_default()
        );
    } else {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        println!("address:         {}", route.address);
        println!("did:             {}", show(&route.did));
        println!("endpoint:        {}", show(&route.endpoint));
        println!("consent here:    {}", yes_no(route.consent));
        println!("_atsms-mail TXT: {}", yes_no(route.mailhost_txt));
        println!("atsms_alias:     {}", route.maps.atsms_alias);
        println!("atsms_transport: {}", route.maps.atsms_transport);
        println!("atsms_mailbox:   {}", route.maps.atsms_mailbox);
    }
    ExitCode::SUCCESS
}

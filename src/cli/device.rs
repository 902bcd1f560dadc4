//! `atsms-milter device new --did DID --out DIR [--receive] [--inbox-url URL] [--days N]` and
//! `device rotate DIR`: a device this service holds for a sending identity
//! (`atproto::device`), and the records its owner publishes for it. We hold no PDS
//! credentials: the output is the records, each exactly as `com.atproto.repo.putRecord`
//! takes it, for the operator to publish.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{exit, fail};
use crate::atproto::device;

#[derive(Args, Debug)]
pub(super) struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Make a device: DIR/device.key (0600), DIR/device.crt, with --receive a prekey.
    New(NewArgs),
    /// Make the next prekey (a week's), keeping the two before it (the grace week, and one
    /// made but perhaps not yet published).
    Rotate {
        /// The device's directory.
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct NewArgs {
    #[arg(long, value_name = "DID")]
    did: String,
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also make a prekey, so that what is sealed to this device can be opened (`open`).
    #[arg(long)]
    receive: bool,
    /// Print an at.atsms.inbox record naming this inbox URL (publishing it replaces the DID's
    /// current one).
    #[arg(long, value_name = "URL")]
    inbox_url: Option<String>,
    /// Days the certificate is good for.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes `contents` to a new file readable by its owner only.
fn write_secret(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A device directory's prekey secrets (`prekey-<createdAt>.key`), newest first: the names
/// sort as their times do.
pub(super) fn prekey_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("prekey-") && name.ends_with(".key")
        })
        .collect();
    names.sort();
    names.reverse();
    Ok(names)
}

/// The file name of a prekey made at `created_at` (ISO time: names sort as times do).
fn prekey_name(created_at: &str) -> String {
    format!("prekey-{created_at}.key")
}

fn new(args: NewArgs) -> Result<Value, String> {
    if crate::format::syntax::supported_did_method(&args.did).is_none() {
        return Err(format!("{}: not a did:plc or did:web", args.did));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let now = now_millis();
    let made = device::new_device(&args.did, args.days, now / 1000)?;
    write_secret(&args.out.join("device.key"), &made.key_pem)?;
    std::fs::write(args.out.join("device.crt"), &made.cert_pem)
        .map_err(|e| format!("device.crt: {e}"))?;
    let mut records = json!({"at.atsms.x509": made.record});
    if args.receive {
        let key = device::read_key(&args.out)?;
        let prekey = device::new_prekey(&key, now)?;
        write_secret(
            &args.out.join(prekey_name(&prekey.created_at)),
            &prekey.secret_pem,
        )?;
        records["at.atsms.prekey"] = prekey.record;
    }
    if let Some(url) = &args.inbox_url {
        eprintln!(
            "atsms-milter: publishing the at.atsms.inbox record replaces the DID's current one"
        );
        records["at.atsms.inbox"] = json!({"$type": "at.atsms.inbox", "endpoints": [{"uri": url}]});
    }
    Ok(json!({"did": args.did, "fingerprint": made.fingerprint, "records": records}))
}

fn rotate(dir: &Path) -> Result<Value, String> {
    let key = device::read_key(dir)?;
    let fingerprint = device::fingerprint(&p256::PublicKey::from(key.verifying_key()));
    let prekey = device::new_prekey(&key, now_millis())?;
    write_secret(
        &dir.join(prekey_name(&prekey.created_at)),
        &prekey.secret_pem,
    )?;
    // Three generations are kept: the new one, the one before it (the grace week), and the
    // one before that (a rotation made twice before publishing must not drop the published
    // one's secret).
    for old in prekey_files(dir)?.iter().skip(3) {
        std::fs::remove_file(old).map_err(|e| format!("{}: {e}", old.display()))?;
    }
    Ok(json!({"fingerprint": fingerprint, "records": {"at.atsms.prekey": prekey.record}}))
}

pub(super) fn run(args: DeviceArgs) -> ExitCode {
    let made = match args.command {
        DeviceCommand::New(args) => new(args),
        DeviceCommand::Rotate { dir } => rotate(&dir),
    };
    match made {
        Ok(value) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::from(exit::PASS)
        }
        Err(e) => fail(exit::USAGE, e),
    }
}

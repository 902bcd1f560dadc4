//! `atsms-milter open --device DIR FILE [--json]`: what a device that drained an envelope
//! reads of it, layer by layer as the AT-SMS client opens it — the sealed envelope with the
//! device's prekeys (current, then the previous week's: `format::sealed`), the EnvelopedData
//! with the device's key (`format::enveloped`), then the SignedData by the X.509 floor: `ok`
//! only when the signer's device certificate is published by its DID, as the client requires.
//! Prints the sender and the text (`format::atsms_content`).
//!
//! The device's directory holds `device.key` (PKCS#8 P-256) and `prekey-<createdAt>.key` (the
//! X25519 prekey secrets, PKCS#8 PEM or 32 raw bytes), refused when others can read them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::{ResolverArgs, exit, fail, read_input, runtime};
use crate::format::atsms_content;
use crate::format::envelope::AuthResult;
use crate::format::enveloped;
use crate::format::sealed;

#[derive(Args, Debug)]
pub(super) struct OpenArgs {
    /// The device's directory: device.key and its prekey-*.key.
    #[arg(long, value_name = "DIR")]
    device: PathBuf,
    /// A sealed envelope or a CMS EnvelopedData, as a device drains it; standard input when
    /// absent.
    file: Option<PathBuf>,
    /// {"ok", "sender_did", "sender_fingerprint", "content_type", "text", "error"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    resolver: ResolverArgs,
}

/// What `open` found.
#[derive(Debug, Default, serde::Serialize)]
struct Opened {
    ok: bool,
    sender_did: Option<String>,
    sender_fingerprint: Option<String>,
    content_type: Option<u64>,
    text: Option<String>,
    error: Option<String>,
    /// The sender's publication could not be checked now (exit 75, as `verify`).
    #[serde(skip)]
    temporary: bool,
}

/// The device's keys: its certificate's key and its prekey secrets, newest first.
struct DeviceKeys {
    key: p256::SecretKey,
    prekeys: Vec<[u8; 32]>,
}

/// An X25519 secret: 32 raw bytes, or PKCS#8 (RFC 8410) in PEM.
fn x25519_secret(raw: &[u8]) -> Option<[u8; 32]> {
    if let Ok(secret) = <[u8; 32]>::try_from(raw) {
        return Some(secret);
    }
    let (label, der) = der::pem::decode_vec(raw).ok()?;
    // PrivateKeyInfo { version 0, AlgorithmIdentifier { id-X25519 }, OCTET STRING { OCTET
    // STRING (32) } }: 48 bytes, the key last.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04,
        0x20,
    ];
    (label == "PRIVATE KEY" && der.len() == 48 && der[..16] == PREFIX)
        .then(|| <[u8; 32]>::try_from(&der[16..]).ok())?
}

fn device_keys(dir: &Path) -> Result<DeviceKeys, String> {
    let key = p256::SecretKey::from(crate::atproto::device::read_key(dir)?.as_nonzero_scalar());
    let prekeys = super::device::prekey_files(dir)?
        .iter()
        .map(|p| {
            x25519_secret(&crate::infra::secret::read(p)?)
                .ok_or_else(|| format!("{}: not an X25519 secret", p.display()))
        })
        .collect::<Result<_, _>>()?;
    Ok(DeviceKeys { key, prekeys })
}

/// Opens `raw` with `keys`: the SignedData inside, and the content type it came as.
fn unwrap_layers(raw: &[u8], keys: &DeviceKeys) -> Result<(u64, Vec<u8>), String> {
    // A bare EnvelopedData (a device without a prekey is sent one) starts as DER does.
    let (content_type, enveloped) = if raw.first() == Some(&0x30) {
        (sealed::CONTENT_CMS, raw.to_vec())
    } else {
        sealed::open(raw, &keys.prekeys).map_err(|e| e.to_string())?
    };
    if content_type != sealed::CONTENT_CMS {
        return Err(format!(
            "content type {content_type}: not a one-shot message"
        ));
    }
    let signed = enveloped::decrypt(&enveloped, &keys.key).map_err(|e| e.to_string())?;
    Ok((content_type, signed))
}

/// What the client's receiving path drops a one-shot message for after its signature: no
/// recipients extension, or a conversation id that is not the one of the signer and those
/// recipients (a message replayed into another thread), or an ephemeral message.
fn thread_problem(signer: &str, content: &atsms_content::Content) -> Option<&'static str> {
    let Some(recipients) = &content.recipients else {
        return Some("no recipients extension");
    };
    let mut participants = vec![signer];
    participants.extend(recipients.iter().map(String::as_str));
    if atsms_content::one_shot_convo_id(&participants) != content.convo_id {
        return Some("the conversation id is not the signer's and the recipients'");
    }
    content
        .ephemeral
        .then_some("an ephemeral message (the client drops it unread)")
}

async fn open_all(args: &OpenArgs, raw: &[u8]) -> Opened {
    let mut opened = Opened::default();
    let keys = match device_keys(&args.device) {
        Ok(keys) => keys,
        Err(e) => {
            opened.error = Some(e);
            return opened;
        }
    };
    let (content_type, signed) = match unwrap_layers(raw, &keys) {
        Ok(layers) => layers,
        Err(e) => {
            opened.error = Some(e);
            return opened;
        }
    };
    opened.content_type = Some(content_type);
    let resolver = match args.resolver.resolver() {
        Ok(r) => Arc::new(r),
        Err(e) => {
            opened.error = Some(e);
            return opened;
        }
    };
    // The signature checked once; its content read, and its publication asked (the floor).
    let checked = crate::verification::atsms_parts::check_signed(&signed, None);
    let floor = match &checked {
        Ok(checked) => {
            crate::verification::atsms_parts::published(&resolver, checked, args.resolver.now())
                .await
        }
        Err(e) => crate::verification::atsms_parts::FloorVerdict::unchecked(e),
    };
    opened.sender_did = floor.did.clone();
    opened.sender_fingerprint = floor.fingerprint.clone();
    if let Ok(checked) = &checked {
        match atsms_content::parse(&checked.content) {
            Some(content) => match thread_problem(&checked.did, &content) {
                None => opened.text = content.text,
                Some(problem) => opened.error = Some(problem.into()),
            },
            None => opened.error = Some("the content is not the client's version 2".into()),
        }
    }
    opened.ok = floor.result == AuthResult::Pass && opened.error.is_none();
    if !opened.ok {
        // What is not the sender's, or not as sent, is not shown as a message.
        opened.text = None;
    }
    opened.temporary = floor.result == AuthResult::Temperror;
    if floor.result != AuthResult::Pass {
        opened.error = Some(format!(
            "the sender's signature: {}{}",
            floor.result,
            floor.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    opened
}

pub(super) fn open(args: OpenArgs) -> ExitCode {
    let mut raw = Vec::new();
    // At most what a device is sent: a sealed envelope, or an EnvelopedData of the HTTPS
    // inbox's largest.
    let max = crate::transport::xrpc::inbox::MAX_CMS as u64;
    if let Err(e) = read_input(args.file.as_ref()).and_then(|r| {
        r.take(max + 1)
            .read_to_end(&mut raw)
            .map_err(|e| e.to_string())
    }) {
        return fail(exit::NO_INPUT, e);
    }
    if raw.len() as u64 > max {
        return fail(
            exit::NO_INPUT,
            format!("larger than {max} bytes: not an envelope"),
        );
    }
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let opened = rt.block_on(open_all(&args, &raw));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&opened).unwrap_or_else(|_| "{}".into())
        );
    } else if opened.ok {
        println!(
            "from {}\n\n{}",
            opened.sender_did.as_deref().unwrap_or("-"),
            opened.text.as_deref().unwrap_or("")
        );
    } else {
        eprintln!(
            "atsms-milter: not opened: {}",
            opened.error.as_deref().unwrap_or("unknown")
        );
    }
    ExitCode::from(match (opened.ok, opened.temporary) {
        (true, _) => exit::PASS,
        (false, true) => exit::TEMPFAIL,
        (false, false) => exit::NO_PASS,
    })
}

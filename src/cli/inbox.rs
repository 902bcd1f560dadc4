//! `atsms-milter inbox list|show|purge`: the operator's view of the AT-SMS device copies in
//! `inbox.store` (docs/atsms.md). It reads and deletes the files themselves, as the daemon
//! does, so it works with the daemon running or not; each answer is JSON on standard output.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{ConfigArgs, exit, fail};
use crate::infra::device_store::{DeviceStore, is_fingerprint};

#[derive(Args, Debug)]
pub(super) struct InboxArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The store (default: inbox.store of the configuration).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    action: InboxAction,
}

#[derive(Subcommand, Debug)]
pub(super) enum InboxAction {
    /// The DIDs with copies kept (no argument), or a DID's devices with their copies and bytes.
    List { did: Option<String> },
    /// The copies of a DID's devices, or of one device (DID/FINGERPRINT): id, seq, size.
    Show { target: String },
    /// Delete the copies of a DID's devices, or of one device (DID/FINGERPRINT).
    Purge { target: String },
}

/// `DID` or `DID/FINGERPRINT`.
fn target(text: &str) -> Result<(String, Option<String>), String> {
    let (did, fp) = match text.split_once('/') {
        Some((did, fp)) if is_fingerprint(fp) => (did, Some(fp.to_string())),
        Some(_) => return Err(format!("{text}: not DID/FINGERPRINT (64 lower-case hex)")),
        None => (text, None),
    };
    if crate::format::syntax::supported_did_method(did).is_none() {
        return Err(format!("{did}: not a did:plc or did:web DID"));
    }
    Ok((did.to_string(), fp))
}

/// The devices `fp` names, or every device of `did` in the store.
fn devices_of(store: &DeviceStore, did: &str, fp: Option<String>) -> std::io::Result<Vec<String>> {
    match fp {
        Some(fp) => Ok(vec![fp]),
        None => Ok(store.devices(did)?.into_iter().map(|(fp, _)| fp).collect()),
    }
}

pub(super) fn inbox(args: InboxArgs) -> ExitCode {
    let root = match args.store {
        Some(root) => root,
        None => match args.config.load() {
            Ok(config) => config.inbox.store,
            Err(e) => return fail(exit::USAGE, e),
        },
    };
    let store = DeviceStore::new(root, &crate::infra::host::name(), usize::MAX, u64::MAX);
    let answer = match args.action {
        InboxAction::List { did: None } => store.dids().map(|dids| serde_json::json!(dids)),
        InboxAction::List { did: Some(did) } => match target(&did) {
            Ok((did, _)) => store.devices(&did).map(|devices| {
                let devices: Vec<serde_json::Value> = devices
                    .iter()
                    .map(|(fp, usage)| {
                        serde_json::json!({"fingerprint": fp, "copies": usage.count, "bytes": usage.bytes})
                    })
                    .collect();
                serde_json::json!({"did": did, "devices": devices})
            }),
            Err(e) => return fail(exit::USAGE, e),
        },
        InboxAction::Show { target: text } => match target(&text) {
            Ok((did, fp)) => devices_of(&store, &did, fp).and_then(|fps| {
                let mut devices = Vec::new();
                for fp in fps {
                    let copies: Vec<serde_json::Value> = store
                        .list(&did, &fp, usize::MAX)?
                        .iter()
                        .map(|c| serde_json::json!({"id": c.id, "seq": c.seq, "size": c.size}))
                        .collect();
                    devices.push(serde_json::json!({"fingerprint": fp, "copies": copies}));
                }
                Ok(serde_json::json!({"did": did, "devices": devices}))
            }),
            Err(e) => return fail(exit::USAGE, e),
        },
        InboxAction::Purge { target: text } => match target(&text) {
            Ok((did, fp)) => devices_of(&store, &did, fp).and_then(|fps| {
                let mut purged = 0;
                for fp in &fps {
                    purged += store.purge(&did, fp)?;
                }
                Ok(serde_json::json!({"did": did, "devices": fps, "purged": purged}))
            }),
            Err(e) => return fail(exit::USAGE, e),
        },
    };
    match answer {
        Ok(json) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::SOFTWARE, format!("inbox store: {e}")),
    }
}

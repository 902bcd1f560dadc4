//! `atsms-milter sign` (here, or by the signing service) and `keygen`.

use std::io::{self, Read, Write};

use super::*;

pub(super) fn sign(args: SignArgs) -> ExitCode {
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
    let field = crate::format::envelope::sign::format_field(&did, &token, parsed.newline);
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
pub(super) fn sign_locally(
    path: &std::path::Path,
    kid: &str,
    args: &SignArgs,
    parsed: &message::ParsedMessage,
) -> Signed {
    use crate::policy::signer::{Outcome, Signer};
    let pem = std::fs::read_to_string(path)
        .map_err(|e| (exit::NO_INPUT, format!("{}: {e}", path.display())))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| (exit::NO_PASS, format!("{}: {e}", path.display())))?;
    // The same signer as the milter's: a message the verifier could not pass is not signed.
    let signer =
        Signer::one(key, kid, args.ttl, !args.rcpt.is_empty()).map_err(|e| (exit::USAGE, e))?;
    let now = args.now.unwrap_or_else(crate::infra::clock::unix_now);
    match signer.sign(&parsed.headers, parsed.body_hash, None, &args.rcpt, now) {
        Outcome::Signed { key, token } => Ok((key.did.clone(), token)),
        Outcome::Unsigned(why) => Err((exit::NO_PASS, format!("not signed: {why}"))),
        Outcome::Refused { why, .. } => Err((exit::NO_PASS, format!("not signed: {why}"))),
    }
}

/// `sign --remote --service-auth`: the token, from the signing service.
pub(super) fn sign_remotely(
    url: &str,
    jwt: &str,
    args: &SignArgs,
    parsed: &message::ParsedMessage,
) -> Signed {
    use crate::transport::xrpc::client::{ClientError, sign_remote};
    let rt = runtime().map_err(|e| (exit::TEMPFAIL, e))?;
    rt.block_on(sign_remote(url, jwt, parsed, &args.rcpt, args.ttl))
        .map_err(|e| match e {
            ClientError::Temporary(why) => (exit::TEMPFAIL, why),
            ClientError::Refused(why) => (exit::NO_PASS, why),
            ClientError::Wrong(why) => (exit::SOFTWARE, why),
        })
}

pub(super) fn keygen(args: KeygenArgs) -> ExitCode {
    let alg = match args.curve {
        Curve::K256 => Alg::Es256k,
        Curve::P256 => Alg::Es256,
    };
    match SigningKey::generate(alg) {
        Ok(key) => {
            let public = key.public_key();
            if let Some(did) = &args.did
                && crate::format::syntax::supported_did_method(did).is_none()
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

/// `send --remote --service-auth --to …`: the service's answer on standard output; exit 0
/// when no recipient failed, 1 when one did, 75 when the service could not answer now.
pub(super) fn send(args: SendArgs) -> ExitCode {
    use crate::transport::xrpc::client::{ClientError, send_remote};
    let text = match &args.text {
        Some(text) => text.clone(),
        None => {
            let mut text = String::new();
            let read = read_input(args.file.as_ref()).and_then(|mut input| {
                input
                    .by_ref()
                    .take(crate::sending::MAX_TEXT as u64 + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| format!("the text: {e}"))
            });
            if let Err(e) = read {
                return fail(exit::NO_INPUT, e);
            }
            text
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(exit::TEMPFAIL, e),
    };
    match rt.block_on(send_remote(
        &args.remote,
        &args.service_auth,
        &args.to,
        &text,
    )) {
        Ok(output) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&output).unwrap_or_default()
            );
            let failed = output
                .results
                .iter()
                .any(|r| r.status == crate::sending::Status::Failed);
            ExitCode::from(if failed { exit::NO_PASS } else { exit::PASS })
        }
        Err(ClientError::Temporary(why)) => fail(exit::TEMPFAIL, why),
        Err(ClientError::Refused(why)) => fail(exit::NO_PASS, why),
        Err(ClientError::Wrong(why)) => fail(exit::SOFTWARE, why),
    }
}
